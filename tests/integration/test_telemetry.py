"""Operators can see what the service does: Prometheus counters move with traffic, and each
RPC is logged once, as JSON when asked, with the idempotency key hashed and no token."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import grpc
from google.protobuf.duration_pb2 import Duration

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from credits_service.app import Application
from credits_service.telemetry import JsonFormatter, TextFormatter
from credits_service.transport.grpc.auth import mint_token, token_digest
from tests.conftest import SWEEP_INTERVAL_S
from tests.grpc_errors import expect_error
from tests.metrics import scrape, value


async def test_counters_move_with_traffic(app, stub):
    before = await scrape(app)
    grant = pb.GrantRequest(account_id="m", amount=100, type=pb.GRANT_TYPE_PURCHASE,
                            idempotency_key="g")
    await stub.Grant(grant)
    await stub.Grant(grant)  # a replay
    held = [await stub.CheckAndReserve(pb.CheckAndReserveRequest(
        account_id="m", amount=10, idempotency_key=f"r{i}", ttl=Duration(seconds=1)))
        for i in range(3)]
    batch = await stub.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(items=[
        pb.CheckAndReserveRequest(account_id="m", amount=1, idempotency_key=f"b{i}")
        for i in range(4)]))  # one group placing 4 reservations counts 4
    assert all(result.HasField("response") for result in batch.results)
    await stub.Commit(pb.CommitRequest(reservation_id=held[0].reservation.reservation_id,
                                       amount=7))
    await stub.Release(pb.ReleaseRequest(reservation_id=held[1].reservation.reservation_id))
    await expect_error(stub.GetBalance(pb.GetBalanceRequest(account_id="nobody")))
    await asyncio.sleep(1 + 3 * SWEEP_INTERVAL_S)  # the third reservation expires
    after = await scrape(app)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("credits_rpc_requests_total", method="Grant", code="OK") == 2
    assert moved("credits_rpc_requests_total", method="GetBalance", code="NOT_FOUND") == 1
    assert moved("credits_rpc_duration_seconds_count", method="CheckAndReserve") == 3
    assert moved("credits_idempotent_replays_total", method="Grant") == 1
    assert moved("credits_credits_total", kind="granted") == 100
    assert moved("credits_credits_total", kind="consumed") == 7
    for event, count in {"placed": 3 + 4, "committed": 1, "released": 1, "expired": 1}.items():
        assert moved("credits_reservations_total", event=event) == count, event
    assert moved("credits_db_pool_wait_seconds_count") >= 7
    assert value(after, "credits_db_pool_connections_in_use") >= 0
    assert 0 <= value(after, "credits_sweeper_lag_seconds") < 5


async def test_each_rpc_is_logged_once_as_json_without_its_token_or_raw_key(
        test_settings, caplog):
    token = mint_token()
    settings = test_settings.replace(auth_disabled=False,
                                     auth_tokens=f"ops admin {token_digest(token)}")
    app = await Application.start(settings)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("credits_service.rpc").addHandler(handler)
    caplog.set_level(logging.INFO, logger="credits_service.rpc")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = credits_pb2_grpc.CreditsServiceStub(channel)
            await stub.Grant(pb.GrantRequest(account_id="logged", amount=5,
                                             idempotency_key="secret-key",
                                             type=pb.GRANT_TYPE_PROMO),
                             metadata=(("authorization", f"Bearer {token}"),))
            await expect_error(stub.GetBalance(pb.GetBalanceRequest(account_id="logged"),
                                               metadata=(("authorization", "Bearer wrong"),)))
    finally:
        logging.getLogger("credits_service.rpc").removeHandler(handler)
        await app.stop()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["method"], line["code"], line["principal"]) for line in lines] == [
        ("Grant", "OK", "ops"), ("GetBalance", "UNAUTHENTICATED", None)]
    assert lines[0]["account_id"] == "logged"
    assert len(lines[0]["idempotency_key_sha256"]) == 16
    assert lines[0]["duration_ms"] > 0 and lines[0]["level"] == "INFO"
    everything = stream.getvalue() + caplog.text
    assert token not in everything and "secret-key" not in everything


RPC_FIELDS = ("request_id", "method", "principal", "code", "reason", "duration_ms")


async def test_text_and_json_lines_carry_the_same_fields(stub):
    """The fields the documentation promises, in both formats: request_id (the caller's
    x-request-id when it sends one), method, principal, code, reason, duration_ms, and the
    account or reservation the request names."""
    streams = {"text": io.StringIO(), "json": io.StringIO()}
    handlers = []
    for name, formatter in (("text", TextFormatter()), ("json", JsonFormatter())):
        handler = logging.StreamHandler(streams[name])
        handler.setFormatter(formatter)
        handlers.append(handler)
    rpc_log = logging.getLogger("credits_service.rpc")
    level = rpc_log.level
    rpc_log.setLevel(logging.INFO)
    for handler in handlers:
        rpc_log.addHandler(handler)
    try:
        await expect_error(stub.GetBalance(pb.GetBalanceRequest(account_id="nobody"),
                                           metadata=(("x-request-id", "req-42"),)))
        await stub.Grant(pb.GrantRequest(account_id="text-log", amount=5, idempotency_key="k",
                                         type=pb.GRANT_TYPE_PROMO))
        await asyncio.sleep(0.05)  # the server logs a call once it has answered
    finally:
        for handler in handlers:
            rpc_log.removeHandler(handler)
        rpc_log.setLevel(level)
    text = streams["text"].getvalue().splitlines()
    json_lines = [json.loads(line) for line in streams["json"].getvalue().splitlines()]
    assert len(text) == len(json_lines) == 2
    assert json_lines[0]["request_id"] == "req-42" and "request_id=req-42" in text[0]
    assert json_lines[0]["reason"] == "ACCOUNT_NOT_FOUND" and "reason=ACCOUNT_NOT_FOUND" in text[0]
    assert len(json_lines[1]["request_id"]) == 16  # one made for a caller that sent none
    for line, fields in zip(text, json_lines, strict=True):
        for name in (*RPC_FIELDS, "account_id"):
            assert name in fields, (name, fields)
            assert f"{name}={fields[name]}" in line, (name, line)
