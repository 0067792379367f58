"""F13: who may do what. Every RPC x {no token, bad token, service token, admin token}, TLS and
mutual TLS, idempotency keys scoped to the principal, the principal recorded as actor, and the
per-principal rate limit. A refused call writes nothing.

Each test starts its own server (auth on) against the shared test database.
"""

from __future__ import annotations

import datetime
import ipaddress
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from credits_service.app import Application
from credits_service.settings import Settings
from credits_service.transport.grpc.auth import mint_token, token_digest
from credits_service.transport.grpc.server import check_tls_files
from tests.grpc_errors import expect_error
from tests.ledger_checks import row_counts

SERVICE_TOKEN = mint_token()
OTHER_SERVICE_TOKEN = mint_token()
ADMIN_TOKEN = mint_token()
BILLING_TOKEN = mint_token()
TOKENS = "; ".join([
    f"payments billing {token_digest(BILLING_TOKEN)}",
    f"billing service {token_digest(SERVICE_TOKEN)}",
    f"render service {token_digest(OTHER_SERVICE_TOKEN)}",
    f"ops admin {token_digest(ADMIN_TOKEN)}",
])
DENIED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

TEST_RATE_CARD = Path(__file__).resolve().parents[1] / "fixtures" / "rates.toml"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Application]:
    app = await Application.start(settings)
    try:
        yield app
    finally:
        await app.stop()


@pytest.fixture
def auth_settings(test_settings: Settings) -> Settings:
    return test_settings.replace(auth_disabled=False, auth_tokens=TOKENS, shutdown_grace_s=1,
                                 rate_card_file=str(TEST_RATE_CARD))


@pytest.fixture
async def stub(auth_settings: Settings) -> AsyncIterator[credits_pb2_grpc.CreditsServiceStub]:
    async with serving(auth_settings) as app, grpc.aio.insecure_channel(
            f"127.0.0.1:{app.port}") as channel:
        yield credits_pb2_grpc.CreditsServiceStub(channel)


# --- the authorization matrix --------------------------------------------------------------

CALLERS = {
    "no token": (),
    "bad token": bearer("cst_not-a-token"),
    "not bearer": (("authorization", f"Basic {SERVICE_TOKEN}"),),
    "service": bearer(SERVICE_TOKEN),
    "admin": bearer(ADMIN_TOKEN),
    "billing": bearer(BILLING_TOKEN),
}
EXPECTED_DENIAL = {
    "no token": grpc.StatusCode.UNAUTHENTICATED,
    "bad token": grpc.StatusCode.UNAUTHENTICATED,
    "not bearer": grpc.StatusCode.UNAUTHENTICATED,
    "service": None,
    "admin": None,
    "billing": None,
}
# What a billing principal may call; its Grant here is of PROMO credits, which it may not.
BILLING_ALLOWED_METHODS = {"EnsureAccount", "GetBalance", "History", "Quote", "GetRateCard"}
SERVICE_DENIED_METHODS = {"Grant", "Adjust", "Transfer", "Refund", "SetAccountStatus",
                          "ChangePlan"}


def _requests(reservation_id: str) -> dict[str, object]:
    return {
        "EnsureAccount": pb.EnsureAccountRequest(account_id="acct"),
        "SetAccountStatus": pb.SetAccountStatusRequest(
            account_id="acct", status=pb.ACCOUNT_STATUS_ACTIVE, reason="matrix"),
        "ChangePlan": pb.ChangePlanRequest(account_id="acct", plan="default", reason="matrix"),
        "Adjust": pb.AdjustRequest(account_id="acct", mode=pb.ADJUST_MODE_ADD, amount=1,
                                   idempotency_key=f"a-{uuid.uuid4()}", reason="matrix"),
        "Refund": pb.RefundRequest(reservation_id=reservation_id,
                                   idempotency_key=f"f-{uuid.uuid4()}"),
        "Transfer": pb.TransferRequest(from_account_id="acct", to_account_id="acct-2",
                                       amount=1, idempotency_key=f"t-{uuid.uuid4()}"),
        "Grant": pb.GrantRequest(account_id="acct", amount=5, type=pb.GRANT_TYPE_PROMO,
                                 idempotency_key=f"g-{uuid.uuid4()}"),
        "CheckAndReserve": pb.CheckAndReserveRequest(account_id="acct", amount=1,
                                                     idempotency_key=f"r-{uuid.uuid4()}"),
        "Commit": pb.CommitRequest(reservation_id=reservation_id, amount=1),
        "Release": pb.ReleaseRequest(reservation_id=reservation_id),
        "ExtendReservation": pb.ExtendReservationRequest(reservation_id=reservation_id,
                                                         ttl=Duration(seconds=60)),
        "GetBalance": pb.GetBalanceRequest(account_id="acct"),
        "History": pb.HistoryRequest(account_id="acct"),
        "ListReservations": pb.ListReservationsRequest(account_id="acct"),
        "Quote": pb.QuoteRequest(account_id="acct", feature="image"),
        "GetRateCard": pb.GetRateCardRequest(account_id="acct"),
        "BatchCheckAndReserve": pb.BatchCheckAndReserveRequest(items=[
            pb.CheckAndReserveRequest(account_id="acct", amount=1,
                                      idempotency_key=f"b-{uuid.uuid4()}")]),
        "BatchCommit": pb.BatchCommitRequest(
            items=[pb.CommitRequest(reservation_id=reservation_id)]),
    }


@pytest.mark.parametrize("caller", list(CALLERS))
async def test_every_rpc_for_every_kind_of_caller(stub, db, caller):
    admin = bearer(ADMIN_TOKEN)
    await stub.Grant(pb.GrantRequest(account_id="acct", amount=100, type=pb.GRANT_TYPE_PURCHASE,
                                     idempotency_key="seed"), metadata=admin)
    await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="acct-2"), metadata=admin)
    for method, request in _requests(str(uuid.uuid4())).items():
        if method in ("Commit", "Release", "ExtendReservation"):  # a fresh reservation for each
            reserved = await stub.CheckAndReserve(pb.CheckAndReserveRequest(
                account_id="acct", amount=1, idempotency_key=f"h-{uuid.uuid4()}"),
                metadata=admin)
            request.reservation_id = reserved.reservation.reservation_id
        if method == "Refund":  # a committed reservation
            reserved = await stub.CheckAndReserve(pb.CheckAndReserveRequest(
                account_id="acct", amount=1, idempotency_key=f"h-{uuid.uuid4()}"),
                metadata=admin)
            request.reservation_id = reserved.reservation.reservation_id
            await stub.Commit(pb.CommitRequest(reservation_id=request.reservation_id),
                              metadata=admin)
        denial = EXPECTED_DENIAL[caller]
        if caller == "service" and method in SERVICE_DENIED_METHODS:
            denial = grpc.StatusCode.PERMISSION_DENIED
        if caller == "billing" and method not in BILLING_ALLOWED_METHODS:
            denial = grpc.StatusCode.PERMISSION_DENIED
        before = await row_counts(db)
        call = getattr(stub, method)(request, metadata=CALLERS[caller], timeout=10)
        if denial is None:
            await call  # allowed: the call goes through
            continue
        error = await expect_error(call)
        assert error.code is denial, (caller, method, error)
        assert error.reason == denial.name and error.domain == "credits.v1", error
        assert SERVICE_TOKEN not in error.message and ADMIN_TOKEN not in error.message
        assert await row_counts(db) == before, (caller, method)


async def test_permission_denied_names_principal_role_and_method(stub):
    error = await expect_error(stub.Grant(
        pb.GrantRequest(account_id="acct", amount=5, type=pb.GRANT_TYPE_PROMO,
                        idempotency_key="k"), metadata=bearer(SERVICE_TOKEN)))
    assert error.metadata == {"principal": "billing", "role": "service", "method": "Grant"}


async def test_health_stays_open_without_a_token(auth_settings):
    async with serving(auth_settings) as app, grpc.aio.insecure_channel(
            f"127.0.0.1:{app.port}") as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def _list_services(channel: grpc.aio.Channel, metadata=()) -> list[str]:
    """The services server reflection lists (as grpcurl list asks)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for response in stub.ServerReflectionInfo(iter([request]), metadata=metadata,
                                                    timeout=10):
        return [service.name for service in response.list_services_response.service]
    raise AssertionError("reflection answered nothing")


async def test_reflection_follows_authentication_unless_left_open(auth_settings):
    """By default reflection, like our RPCs, needs a token (any role); auth_open_services
    can leave it open, and can close health too."""
    async with serving(auth_settings) as app, grpc.aio.insecure_channel(
            f"127.0.0.1:{app.port}") as channel:
        error = await expect_error(_list_services(channel))
        assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED,
                                              "UNAUTHENTICATED")
        assert "credits.v1.CreditsService" in await _list_services(
            channel, bearer(SERVICE_TOKEN))

    opened = auth_settings.replace(auth_open_services="health,reflection")
    async with serving(opened) as app, grpc.aio.insecure_channel(
            f"127.0.0.1:{app.port}") as channel:
        assert "credits.v1.CreditsService" in await _list_services(channel)

    closed = auth_settings.replace(auth_open_services="")
    async with serving(closed) as app, grpc.aio.insecure_channel(
            f"127.0.0.1:{app.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        error = await expect_error(health.Check(health_pb2.HealthCheckRequest(), timeout=10))
        assert error.code is grpc.StatusCode.UNAUTHENTICATED
        response = await health.Check(health_pb2.HealthCheckRequest(),
                                      metadata=bearer(SERVICE_TOKEN), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


# Bytes that are no GrantRequest: a varint longer than ten bytes
CORRUPT = b"\x10" + b"\xff" * 11


async def test_no_token_no_work_even_for_bytes_that_do_not_decode(auth_settings, caplog):
    """Authentication and the rate limit come before the request is decoded: corrupt bytes
    from a caller without a valid token are UNAUTHENTICATED (not a decoding error), a caller
    over its rate is RESOURCE_EXHAUSTED, and only an admitted caller learns the bytes are
    malformed. No traceback is logged for any of them."""
    settings = auth_settings.replace(rate_limit_per_s=0.001, rate_limit_burst=1)
    async with serving(settings) as app, grpc.aio.insecure_channel(
            f"127.0.0.1:{app.port}") as channel:
        grant = channel.unary_unary("/credits.v1.CreditsService/Grant")
        for metadata in ((), bearer("cst_not-a-token")):
            error = await expect_error(grant(CORRUPT, metadata=metadata, timeout=10))
            assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED,
                                                  "UNAUTHENTICATED")
        error = await expect_error(grant(CORRUPT, metadata=bearer(ADMIN_TOKEN), timeout=10))
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT,
                                              "MALFORMED_REQUEST")
        error = await expect_error(grant(CORRUPT, metadata=bearer(ADMIN_TOKEN), timeout=10))
        assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                              "RATE_LIMITED")
    assert not any(record.exc_info for record in caplog.records)


# --- principals ---------------------------------------------------------------------------


async def test_idempotency_keys_are_scoped_to_the_principal(stub, db):
    await stub.Grant(pb.GrantRequest(account_id="acct", amount=100, type=pb.GRANT_TYPE_PURCHASE,
                                     idempotency_key="seed"), metadata=bearer(ADMIN_TOKEN))
    request = pb.CheckAndReserveRequest(account_id="acct", amount=10, idempotency_key="same")
    first = await stub.CheckAndReserve(request, metadata=bearer(SERVICE_TOKEN))
    again = await stub.CheckAndReserve(request, metadata=bearer(SERVICE_TOKEN))
    other = await stub.CheckAndReserve(request, metadata=bearer(OTHER_SERVICE_TOKEN))
    assert first.reservation.reservation_id == again.reservation.reservation_id
    assert other.reservation.reservation_id != first.reservation.reservation_id
    assert await db.fetchval("SELECT reserved FROM accounts") == 20


async def test_ledger_entries_record_the_principal_as_actor(stub, db):
    granted = await stub.Grant(pb.GrantRequest(
        account_id="acct", amount=100, type=pb.GRANT_TYPE_PURCHASE, idempotency_key="seed"),
        metadata=bearer(ADMIN_TOKEN))
    reserved = await stub.CheckAndReserve(pb.CheckAndReserveRequest(
        account_id="acct", amount=10, idempotency_key="r"), metadata=bearer(SERVICE_TOKEN))
    committed = await stub.Commit(pb.CommitRequest(
        reservation_id=reserved.reservation.reservation_id), metadata=bearer(OTHER_SERVICE_TOKEN))
    assert (granted.entry.actor, committed.entry.actor) == ("ops", "render")
    actors = await db.fetch("SELECT entry_type, actor FROM ledger_entries ORDER BY entry_id")
    assert [tuple(row) for row in actors] == [("GRANT", "ops"), ("USAGE", "render")]


# --- rate limit ---------------------------------------------------------------------------


async def test_a_principal_over_its_rate_limit_is_throttled_while_another_is_not(
        auth_settings, db):
    settings = auth_settings.replace(rate_limit_per_s=0.5, rate_limit_burst=5)
    async with serving(settings) as app, grpc.aio.insecure_channel(
            f"127.0.0.1:{app.port}") as channel:
        stub = credits_pb2_grpc.CreditsServiceStub(channel)
        request = pb.GetBalanceRequest(account_id="nobody")
        codes = []
        for _ in range(12):
            codes.append(await expect_error(stub.GetBalance(
                request, metadata=bearer(SERVICE_TOKEN), timeout=10)))
        other = await expect_error(stub.GetBalance(request, metadata=bearer(OTHER_SERVICE_TOKEN),
                                                   timeout=10))
    limited = [e for e in codes if e.code is grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert 5 <= len(codes) - len(limited) <= 6  # the burst, plus what refilled meanwhile
    assert limited and all(e.reason == "RATE_LIMITED" for e in limited)
    assert int(limited[0].metadata["retryAfterMs"]) > 0
    assert other.code is grpc.StatusCode.NOT_FOUND  # not throttled: reached the ledger


# --- TLS and mutual TLS -------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from a CA the server does not trust
    rogue_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool = False,
                 server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")

    def write(name: str, cert: x509.Certificate, key) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    ca_key, rogue_ca_key = _key(), _key()
    ca, _ = write("ca", _certificate("test ca", ca_key, "test ca", ca_key, ca=True), ca_key)
    server_key, client_key, rogue_key = _key(), _key(), _key()
    server = write("server", _certificate("localhost", server_key, "test ca", ca_key,
                                          server=True), server_key)
    client = write("client", _certificate("billing", client_key, "test ca", ca_key), client_key)
    rogue = write("rogue", _certificate("rogue", rogue_key, "rogue ca", rogue_ca_key), rogue_key)
    return Pki(ca, *server, *client, *rogue)


def _tls_channel(address: str, pki: Pki, cert: Path | None = None,
                 key: Path | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.aio.secure_channel(address, credentials,
                                   options=[("grpc.ssl_target_name_override", "localhost")])


async def _balance_call(channel: grpc.aio.Channel) -> grpc.StatusCode:
    stub = credits_pb2_grpc.CreditsServiceStub(channel)
    try:
        await stub.GetBalance(pb.GetBalanceRequest(account_id="nobody"),
                              metadata=bearer(SERVICE_TOKEN), timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


Connect = Callable[[str], grpc.aio.Channel]


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
async def test_tls_refuses_plaintext_and_untrusted_clients(auth_settings, pki, mutual):
    settings = auth_settings.replace(
        tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca) if mutual else "")
    connections: dict[str, Connect] = {
        "plaintext": grpc.aio.insecure_channel,
        "no client cert": lambda address: _tls_channel(address, pki),
        "untrusted client cert": lambda address: _tls_channel(address, pki, pki.rogue_cert,
                                                              pki.rogue_key),
        "trusted client cert": lambda address: _tls_channel(address, pki, pki.client_cert,
                                                            pki.client_key),
    }
    # Without a client CA the server asks for no client certificate, so any TLS client is in.
    expected_ok = {"trusted client cert"} if mutual else set(connections) - {"plaintext"}
    results = {}
    async with serving(settings) as app:
        for name, connect in connections.items():
            async with connect(f"127.0.0.1:{app.port}") as channel:
                results[name] = await _balance_call(channel)
    for name, code in results.items():
        if name in expected_ok:
            assert code is grpc.StatusCode.NOT_FOUND, (name, code)  # reached the service
        else:
            assert code is grpc.StatusCode.UNAVAILABLE, (name, code)  # no connection at all


async def test_the_client_library_speaks_mutual_tls_and_tokens(auth_settings, pki):
    from credits_client import AccountNotFound, CreditsClient, PermissionDenied, Unauthenticated

    settings = auth_settings.replace(
        tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca))
    tls = {"root_certificates": pki.ca.read_bytes(),
           "client_certificate": pki.client_cert.read_bytes(),
           "client_key": pki.client_key.read_bytes(),
           "options": [("grpc.ssl_target_name_override", "localhost")]}
    async with serving(settings) as app:
        target = f"127.0.0.1:{app.port}"
        async with CreditsClient(target, token=SERVICE_TOKEN, **tls) as client:
            with pytest.raises(AccountNotFound):  # in, and answered
                await client.get_balance("nobody")
            with pytest.raises(PermissionDenied):
                await client.call("SetAccountStatus", pb.SetAccountStatusRequest(
                    account_id="x", status=pb.ACCOUNT_STATUS_FROZEN, reason="r"))
        async with CreditsClient(target, **tls) as anonymous:
            with pytest.raises(Unauthenticated):
                await anonymous.get_balance("nobody")


def test_tls_files_that_cannot_serve_are_named_before_anything_starts(auth_settings, pki,
                                                                      tmp_path):
    """A missing file, a key that is not the certificate's, or a client CA bundle with no
    certificate stops the start, naming the setting; checked before the database."""
    base = dict(tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key))
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("no certificate here\n")
    cases = {
        "--tls-cert-file": dict(base, tls_cert_file=str(tmp_path / "missing.crt")),
        "--tls-key-file": dict(base, tls_key_file=str(pki.client_key)),
        "--tls-client-ca-file": dict(base, tls_client_ca_file=str(not_pem)),
    }
    for flag, files in cases.items():
        with pytest.raises(ValueError, match=flag):
            check_tls_files(auth_settings.replace(**files).server)
    check_tls_files(auth_settings.replace(**base, tls_client_ca_file=str(pki.ca)).server)
