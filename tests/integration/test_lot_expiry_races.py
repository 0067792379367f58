"""Lot expiry under concurrency: extra sweepers, commits, releases and new reservations all racing
the moment lots expire never write the same credits off twice and never spend expired credits."""

from __future__ import annotations

import asyncio
import random

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from credits.v1 import credits_pb2 as pb
from tests.support.calls import commit, grant, release, reserve

ACCOUNTS = [f"race-{i}" for i in range(6)]
PROMO = 200  # expiring credits per account, drawn first (priority 0)
PLAIN = 400  # never-expiring credits per account
EXPIRE_AFTER_S = 1.5


async def test_sweepers_and_commits_racing_expiry_write_off_once_and_spend_nothing_expired(
        app, stubs, db):
    now = await db.fetchval("SELECT now()")
    expires = Timestamp()
    expires.FromDatetime(now)
    expires.nanos = 0
    expires.seconds += int(EXPIRE_AFTER_S) + 1
    promo = {}
    for account in ACCOUNTS:
        promo[account] = int((await grant(stubs[0], account, PROMO, grant_type=pb.GRANT_TYPE_PROMO,
                                          priority=0, expire_time=expires)).lot.lot_id)
        await grant(stubs[0], account, PLAIN, grant_type=pb.GRANT_TYPE_PROMO)
    rng = random.Random(7)
    stop = asyncio.Event()
    outcomes: dict[str, int] = {}

    def count(what: str) -> None:
        outcomes[what] = outcomes.get(what, 0) + 1

    async def sweeper() -> None:  # two of these, besides the server's own every 0.2 s
        while not stop.is_set():
            await app.ledger.maintenance.expire_due_lots(batch_size=2)
            await app.ledger.maintenance.expire_due_reservations(batch_size=5)
            await asyncio.sleep(0.001)

    async def worker(n: int) -> None:
        stub = stubs[n % len(stubs)]
        while not stop.is_set():
            account = rng.choice(ACCOUNTS)
            try:
                reservation = (await reserve(stub, account, rng.randint(1, 12))).reservation
                await asyncio.sleep(rng.uniform(0, 0.05))
                if rng.random() < 0.3:
                    await release(stub, reservation.reservation_id)
                    count("released")
                else:  # smaller, equal or larger than the reservation
                    amount = max(1, reservation.amount + rng.choice([-3, 0, 0, 4]))
                    await commit(stub, reservation.reservation_id, amount)
                    count("committed")
            except grpc.aio.AioRpcError as error:
                assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error
                count(error.code().name)

    tasks = [asyncio.create_task(sweeper()) for _ in range(2)]
    tasks += [asyncio.create_task(worker(n)) for n in range(12)]
    await asyncio.sleep(EXPIRE_AFTER_S + 2.5)  # well past the expiry moment
    stop.set()
    await asyncio.gather(*tasks)
    await app.sweeper.sweep_once()
    assert outcomes.get("committed", 0) > 50 and outcomes.get("released", 0) > 10, outcomes

    lots = {row["lot_id"]: row for row in await db.fetch(
        "SELECT lot_id, amount, remaining, held, expired_time, expire_time FROM credit_lots "
        "WHERE lot_id = ANY($1)", list(promo.values()))}
    for account, lot_id in promo.items():
        lot = lots[lot_id]
        assert lot["expired_time"] is not None, account
        # Written off: the unheld remainder once, and each reservation's give-back once.
        rows = await db.fetch(
            "SELECT reservation_id, amount FROM ledger_entries "
            "WHERE entry_type = 'EXPIRY' AND lot_id = $1", lot_id)
        assert sum(1 for row in rows if row["reservation_id"] is None) <= 1, rows
        per_reservation = [row["reservation_id"] for row in rows
                           if row["reservation_id"] is not None]
        assert len(per_reservation) == len(set(per_reservation)), rows
        # No reservation placed once the lot had expired drew from it, and no commit made once it
        # had expired took more from it than its reservation drew (times: each transaction's own
        # clock).
        late = await db.fetch(
            "SELECT r.reservation_id, d.held, d.consumed FROM reservation_lots d "
            "JOIN reservations r USING (reservation_id) WHERE d.lot_id = $1 "
            "AND ((d.held > 0 AND r.create_time >= $2) "
            "OR (coalesce(d.consumed, 0) > d.held AND r.finish_time >= $2))",
            lot_id, lot["expire_time"])
        assert late == []
        consumed = await db.fetchval(
            "SELECT coalesce(sum(consumed), 0) FROM reservation_lots WHERE lot_id = $1", lot_id)
        written_off = -sum(row["amount"] for row in rows)
        assert lot["remaining"] == lot["held"] == 0
        assert consumed + written_off == PROMO
