"""Token configuration, the gatekeeper and the `token` command, without a server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from credits_service.app import StartupError, build_gatekeeper
from credits_service.domain.errors import PermissionDenied, RateLimited, Unauthenticated
from credits_service.settings import Settings
from credits_service.transport.grpc.auth import (
    CREDITS_SERVICE,
    Gatekeeper,
    Principal,
    Role,
    TokenBucket,
    mint_token,
    parse_token_lines,
    token_digest,
)

TOKEN = mint_token()
DIGEST = token_digest(TOKEN)


def test_token_lines_parse_with_comments_and_separators():
    other = token_digest("other")
    principals = parse_token_lines(f"# ops\nops admin {DIGEST}  # on call\n; ci service {other}")
    assert principals == {DIGEST: Principal("ops", Role.ADMIN),
                          other: Principal("ci", Role.SERVICE)}


@pytest.mark.parametrize("text", [
    "ops admin",                              # missing digest
    f"ops root {DIGEST}",                     # unknown role
    f"ops admin {TOKEN}",                     # the token itself, not its digest
    f"ops admin {DIGEST.upper()}",            # not lowercase hex
    f"o/ps admin {DIGEST}",                   # bad name
    f"ops admin {DIGEST}; ops service {token_digest('x')}",  # name twice
    f"a admin {DIGEST}; b service {DIGEST}",  # digest twice
])
def test_bad_token_lines_are_refused(text):
    with pytest.raises(ValueError, match="token entry"):
        parse_token_lines(text)


def _metadata(value: str) -> list[tuple[str, str]]:
    return [("user-agent", "test"), ("authorization", value)]


def test_gatekeeper_authenticates_authorizes_and_never_echoes_the_token():
    keeper = Gatekeeper({DIGEST: Principal("ci", Role.SERVICE)})
    admitted = keeper.admit(CREDITS_SERVICE, "Commit", _metadata(f"Bearer {TOKEN}"))
    assert admitted == Principal("ci", Role.SERVICE)
    assert keeper.admit(CREDITS_SERVICE, "Commit", _metadata(f"bearer {TOKEN}")).name == "ci"
    with pytest.raises(PermissionDenied):
        keeper.admit(CREDITS_SERVICE, "Grant", _metadata(f"Bearer {TOKEN}"))
    for metadata in ([], _metadata(TOKEN), _metadata("Bearer nope"), _metadata("Bearer "),
                     [*_metadata(f"Bearer {TOKEN}"), ("authorization", "Bearer x")]):
        with pytest.raises(Unauthenticated) as raised:
            keeper.admit(CREDITS_SERVICE, "Commit", metadata)
        assert TOKEN not in str(raised.value)


def test_the_token_bucket_allows_the_burst_then_the_rate():
    bucket = TokenBucket(rate_per_s=10, burst=3, tokens=3, updated_s=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.1) == 0.0


def test_a_batch_costs_one_token_per_item_and_at_most_the_burst():
    bucket = TokenBucket(rate_per_s=10, burst=100, tokens=100, updated_s=0.0)
    assert bucket.take(0.0, cost=60) == 0.0
    assert bucket.take(0.0, cost=60) == 2.0  # 40 left: 20 more take 2 s at 10/s
    assert bucket.take(2.0, cost=60) == 0.0
    big = TokenBucket(rate_per_s=10, burst=5, tokens=5, updated_s=0.0)
    assert big.take(0.0, cost=100) == 0.0  # charged as the whole burst, never refused forever


def test_rate_limits_are_per_principal():
    other = token_digest("other")
    keeper = Gatekeeper({DIGEST: Principal("a", Role.SERVICE), other: Principal("b", Role.SERVICE)},
                        rate_limit_per_s=0.001, rate_limit_burst=2)
    keeper.admit(CREDITS_SERVICE, "Commit", _metadata(f"Bearer {TOKEN}"))
    keeper.admit(CREDITS_SERVICE, "Commit", _metadata(f"Bearer {TOKEN}"))
    with pytest.raises(RateLimited):
        keeper.admit(CREDITS_SERVICE, "Commit", _metadata(f"Bearer {TOKEN}"))
    assert keeper.admit(CREDITS_SERVICE, "Commit", _metadata("Bearer other")).name == "b"


def _gatekeeper(**values) -> Gatekeeper:
    settings = Settings.build(**values)
    return build_gatekeeper(settings.auth, settings.server.listen)


def test_auth_disabled_is_refused_off_loopback():
    with pytest.raises(StartupError, match="loopback"):
        _gatekeeper(auth_disabled=True, listen="0.0.0.0:50051")
    for listen in ("127.0.0.1:50051", "[::1]:50051", "localhost:50051"):
        assert _gatekeeper(auth_disabled=True, listen=listen).enabled is False


def test_auth_on_without_any_principal_is_refused():
    with pytest.raises(StartupError, match="no principal is configured"):
        _gatekeeper(auth_disabled=False)


def test_principals_come_from_the_setting_and_the_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"ops admin {DIGEST}\n")
    keeper = _gatekeeper(auth_disabled=False, auth_tokens_file=str(path),
                         auth_tokens=f"ci service {token_digest('x')}")
    assert {p.name for p in keeper.principals.values()} == {"ops", "ci"}


def test_the_token_command_prints_a_token_and_the_line_that_admits_it():
    result = subprocess.run(
        [sys.executable, "-m", "credits_service", "token", "--name", "billing", "--role",
         "service"], capture_output=True, text=True, timeout=60, check=True)
    lines = [line.strip() for line in result.stdout.splitlines()]
    token = lines[1]
    config = lines[3]
    keeper = Gatekeeper(parse_token_lines(config))
    admitted = keeper.admit(CREDITS_SERVICE, "Commit", _metadata(f"Bearer {token}"))
    assert admitted == Principal("billing", Role.SERVICE)


def test_services_may_transfer_only_when_the_setting_says_so():
    tokens = f"ci service {DIGEST}"
    closed = _gatekeeper(auth_disabled=False, auth_tokens=tokens)
    with pytest.raises(PermissionDenied):
        closed.admit(CREDITS_SERVICE, "Transfer", _metadata(f"Bearer {TOKEN}"))
    opened = _gatekeeper(auth_disabled=False, auth_tokens=tokens, service_transfers=True)
    assert opened.admit(CREDITS_SERVICE, "Transfer", _metadata(f"Bearer {TOKEN}")).name == "ci"
    with pytest.raises(PermissionDenied):
        opened.admit(CREDITS_SERVICE, "Adjust", _metadata(f"Bearer {TOKEN}"))
