"""Three `credits-service serve` processes on one database, as replicas behind a balancer run
(issue 33; docs/operating.md, "Running several replicas"): the concurrency and idempotency
battery spread over them. 600 holds of 1 on a balance of 100 over the three accept exactly
100; a key replayed on every replica has one effect; commits and releases go to another
replica than the hold's; every replica's sweeper runs, and each hold expires once. (The
background workers' other duplicates are tested where each lives: schedulers in
test_subscriptions.py, usage folds in test_usage_summary.py, webhook deliveries in
test_webhooks.py.) The autouse fixture checks the ledger's invariants afterwards."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from tests.serve_launcher import Launcher
from tests.support.calls import grant_request, reserve_request

REPLICAS = 3


@pytest.fixture
async def replicas(launcher: Launcher, database_url: str) -> AsyncIterator[list[Any]]:
    """A stub of each of three serve processes on the test database, sweeping every 0.2 s."""
    servers = [launcher.serve(launcher.data_dir(f"replica-{i}"), "--database-url",
                              database_url, "--sweep-interval-s", "0.2", "--pool-size", "5")
               for i in range(REPLICAS)]
    await asyncio.gather(*(server.wait_serving() for server in servers))
    channels = [grpc.aio.insecure_channel(server.address) for server in servers]
    try:
        yield [credits_pb2_grpc.CreditsServiceStub(channel) for channel in channels]
    finally:
        for channel in channels:
            await channel.close()
        await asyncio.gather(*(server.stop() for server in servers))


async def test_600_holds_over_three_replicas_accept_exactly_the_100_credits(replicas, db):
    await replicas[0].Grant(grant_request("rep-hot", 100, key="rep-hot-fund"))
    in_flight = asyncio.Semaphore(150)  # below each server's max_concurrent_rpcs

    async def hold(i: int) -> str:
        async with in_flight:
            try:
                await replicas[i % REPLICAS].CheckAndReserve(
                    reserve_request("rep-hot", 1, key=f"rep-hot-{i}"), timeout=30)
                return "OK"
            except grpc.aio.AioRpcError as error:
                return error.code().name

    outcomes = Counter(await asyncio.gather(*(hold(i) for i in range(600))))
    assert outcomes == {"OK": 100, "FAILED_PRECONDITION": 500}
    account = await db.fetchrow(
        "SELECT balance, reserved, active_reservation_count FROM accounts "
        "WHERE account_id = 'rep-hot'")
    assert tuple(account) == (100, 100, 100)


async def test_a_key_replayed_on_every_replica_has_one_effect(replicas, db):
    grants = await asyncio.gather(*(stub.Grant(grant_request("rep-key", 50, key="order-77"))
                                    for stub in replicas))
    assert len({g.entry.entry_id for g in grants}) == 1
    holds = []
    for stub in replicas:  # one after another, and then all at once
        holds.append(await stub.CheckAndReserve(reserve_request("rep-key", 5, key="hold-1")))
    holds += await asyncio.gather(*(stub.CheckAndReserve(
        reserve_request("rep-key", 5, key="hold-1")) for stub in replicas))
    assert len({h.reservation.reservation_id for h in holds}) == 1
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE account_id = "
                             "'rep-key'") == 1
    assert tuple(await db.fetchrow(
        "SELECT balance, reserved FROM accounts WHERE account_id = 'rep-key'")) == (50, 5)


async def test_commits_and_releases_on_another_replica_than_the_hold(replicas, db):
    await replicas[0].Grant(grant_request("rep-move", 1000, key="rep-move-fund"))
    holds = await asyncio.gather(*(replicas[i % REPLICAS].CheckAndReserve(
        reserve_request("rep-move", 10, key=f"rep-move-{i}")) for i in range(60)))

    async def settle(i: int, reservation_id: str) -> None:
        if i % 2:  # released by the next replica but one
            await replicas[(i + 2) % REPLICAS].Release(pb.ReleaseRequest(
                reservation_id=reservation_id, reason="failed"))
            return
        # committed by the next replica, and by the other two at once: one capture
        await asyncio.gather(*(replicas[(i + k) % REPLICAS].Commit(pb.CommitRequest(
            reservation_id=reservation_id, amount=7)) for k in (1, 2, 3)))

    await asyncio.gather(*(settle(i, h.reservation.reservation_id)
                           for i, h in enumerate(holds)))
    statuses = Counter(row["status"] for row in await db.fetch(
        "SELECT status FROM reservations WHERE account_id = 'rep-move'"))
    assert statuses == {"COMMITTED": 30, "RELEASED": 30}
    assert await db.fetchval("SELECT count(*) FROM ledger_entries WHERE account_id = "
                             "'rep-move' AND entry_type = 'USAGE'") == 30
    assert tuple(await db.fetchrow(
        "SELECT balance, reserved FROM accounts WHERE account_id = 'rep-move'")) == (790, 0)


async def test_every_replica_sweeps_and_each_hold_expires_once(replicas, db):
    await replicas[0].Grant(grant_request("rep-exp", 100, key="rep-exp-fund"))
    await asyncio.gather(*(replicas[i % REPLICAS].CheckAndReserve(
        reserve_request("rep-exp", 2, key=f"rep-exp-{i}", ttl_s=1)) for i in range(30)))
    deadline = time.monotonic() + 20
    while await db.fetchval("SELECT count(*) FROM reservations WHERE account_id = 'rep-exp' "
                            "AND status = 'ACTIVE'"):
        assert time.monotonic() < deadline, "the holds did not expire"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)  # every sweeper has run again since
    expired = Counter(row["reservation_id"] for row in await db.fetch(
        "SELECT data->>'reservation_id' AS reservation_id FROM events "
        "WHERE account_id = 'rep-exp' AND event_type = 'RESERVATION_EXPIRED'"))
    assert len(expired) == 30 and set(expired.values()) == {1}
    assert tuple(await db.fetchrow(
        "SELECT balance, reserved, active_reservation_count FROM accounts "
        "WHERE account_id = 'rep-exp'")) == (100, 0, 0)
