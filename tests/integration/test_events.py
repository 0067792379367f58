"""The events outbox (issue 30, part 1) against the real database: every kind of change writes
its events in its own transaction (none for a change that rolled back), and events are read
in commit order, so a reader never skips an event whose transaction took a lower id but
committed later (two overlapping transactions, then 20 writers racing a reader)."""

from __future__ import annotations

import asyncio
import random

import pytest

from credits.v1 import credits_pb2 as pb
from credits_service.domain.errors import InvalidArgument
from credits_service.domain.events import EventType, Position
from tests.grpc_errors import expect_error
from tests.support.calls import adjust, commit, grant, refund, release, reserve, transfer

E = EventType


async def events_of(app, cursor: str = "", **filters):
    page = await app.ledger.events.page(cursor, **filters)
    return [(e.event_type, e.account_id) for e in page.events], page


async def test_each_kind_of_change_writes_its_events(app, stub, db, clock):
    await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="a"))
    await grant(stub, "a", 100)
    await commit(stub, (await reserve(stub, "a", 10)).reservation.reservation_id, 7)
    await release(stub, (await reserve(stub, "a", 5)).reservation.reservation_id)
    used = await commit(stub, (await reserve(stub, "a", 3)).reservation.reservation_id)
    await refund(stub, used.reservation.reservation_id, 2)
    await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="b"))
    await transfer(stub, "a", "b", 4)
    await adjust(stub, "a", pb.ADJUST_MODE_DEDUCT, 1)
    await stub.SetAccountStatus(pb.SetAccountStatusRequest(
        account_id="b", status=pb.ACCOUNT_STATUS_FROZEN, reason="check"))
    await stub.SetAccountStatus(pb.SetAccountStatusRequest(
        account_id="b", status=pb.ACCOUNT_STATUS_ACTIVE, reason="checked"))
    await reserve(stub, "a", 1, ttl_s=1)
    clock.advance(2)
    await app.sweeper.sweep_once()
    seen, page = await events_of(app)
    assert seen == [
        (E.ACCOUNT_CREATED, "a"), (E.GRANTED, "a"),
        (E.RESERVED, "a"), (E.COMMITTED, "a"),
        (E.RESERVED, "a"), (E.RELEASED, "a"),
        (E.RESERVED, "a"), (E.COMMITTED, "a"), (E.REFUNDED, "a"),
        (E.ACCOUNT_CREATED, "b"), (E.TRANSFERRED, "a"), (E.TRANSFERRED, "b"),
        (E.ADJUSTED, "a"), (E.ACCOUNT_FROZEN, "b"), (E.ACCOUNT_ACTIVATED, "b"),
        (E.RESERVED, "a"), (E.RESERVATION_EXPIRED, "a")]
    committed = page.events[3]
    assert (committed.data["amount"], committed.data["balance_after"]) == (-7, 93)
    assert committed.data["reservation_id"] == page.events[2].data["reservation_id"]
    # Filters, and reading on from a cursor
    only, _ = await events_of(app, event_types=[E.TRANSFERRED], account_ids=["b"])
    assert only == [(E.TRANSFERRED, "b")]
    after, _ = await events_of(app, page.events[12].position.cursor())
    assert after == seen[13:]
    caught_up, end = await events_of(app, page.position.cursor())
    assert caught_up == [] and end.position >= page.position


async def test_credits_expiring_have_their_event(
        app, stub, db, clock):
    from google.protobuf.timestamp_pb2 import Timestamp

    await grant(stub, "x", 10)
    now = await db.fetchval("SELECT now()")
    expire = Timestamp()
    expire.FromSeconds(int(now.timestamp()) + 5)
    await grant(stub, "x", 3, expire_time=expire)
    clock.advance(10)
    await app.sweeper.sweep_once()
    seen, page = await events_of(app, event_types=[E.CREDITS_EXPIRED])
    assert seen == [(E.CREDITS_EXPIRED, "x")] and page.events[0].data["amount"] == -3


async def test_a_change_that_rolls_back_writes_no_event_and_a_declined_call_none(
        app, stub, db):
    _, start = await events_of(app, None)
    await db.execute("INSERT INTO accounts (account_id) VALUES ('ghost')")
    try:
        async with db.transaction():
            await db.execute("INSERT INTO accounts (account_id) VALUES ('gone')")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="poor"))
    declined = await expect_error(reserve(stub, "poor", 5))
    assert declined.reason == "INSUFFICIENT_CREDITS"  # declined: nothing changed
    seen, _ = await events_of(app, start.position.cursor())
    assert seen == [(E.ACCOUNT_CREATED, "ghost"), (E.ACCOUNT_CREATED, "poor")]


async def test_a_reader_never_skips_an_event_whose_transaction_committed_later(
        app, db_pool):
    """Transaction A takes event id N-1, B takes N and commits first. A reader trusting ids
    would hand out cursor N and never see N-1; ours sees neither until A ends, then both."""
    _, start = await events_of(app, "")
    async with db_pool.acquire() as a, db_pool.acquire() as b:
        transaction_a = a.transaction()
        await transaction_a.start()
        await a.execute("INSERT INTO accounts (account_id) VALUES ('first-id')")
        async with b.transaction():
            await b.execute("INSERT INTO accounts (account_id) VALUES ('first-commit')")
        ids = dict(await b.fetch("SELECT account_id, event_id FROM events"))
        assert list(ids) == ["first-commit"]  # A's event is not visible yet
        naive_cursor = ids["first-commit"]  # what a reader of ids would stand at
        seen, middle = await events_of(app, start.position.cursor())
        assert seen == []  # B's event waits behind A, still running
        await transaction_a.commit()
    seen, _ = await events_of(app, middle.position.cursor())
    assert seen == [(E.ACCOUNT_CREATED, "first-id"), (E.ACCOUNT_CREATED, "first-commit")]
    first_id = await db_pool.fetchval(
        "SELECT event_id FROM events WHERE account_id = 'first-id'")
    assert first_id < naive_cursor  # the naive reader would have skipped it


async def test_twenty_writers_and_a_reader_every_event_exactly_once_in_commit_order(
        app, db_pool):
    writers, transactions_each = 20, 15
    committed: set[str] = set()
    rolled_back: set[str] = set()
    done = asyncio.Event()

    async def writer(w: int) -> None:
        async with db_pool.acquire() as connection:
            for t in range(transactions_each):
                names = [f"w{w}-t{t}-{k}" for k in range(random.randint(1, 3))]
                transaction = connection.transaction()
                await transaction.start()
                for name in names:
                    await connection.execute(
                        "INSERT INTO accounts (account_id) VALUES ($1)", name)
                    await asyncio.sleep(random.random() * 0.004)
                if t % 5 == 4:
                    await transaction.rollback()
                    rolled_back.update(names)
                else:
                    await transaction.commit()
                    committed.update(names)

    seen: list[str] = []
    positions: list[Position] = []

    async def reader() -> None:
        cursor = ""
        while True:
            finished = done.is_set()
            page = await app.ledger.events.page(cursor, limit=50)
            seen.extend(e.account_id for e in page.events)
            positions.extend(e.position for e in page.events)
            cursor = page.position.cursor()
            if finished and not page.events:
                return
            if not page.events:
                await asyncio.sleep(0.002)

    reading = asyncio.create_task(reader())
    await asyncio.gather(*(writer(w) for w in range(writers)))
    done.set()
    await reading
    assert len(seen) == len(set(seen)), "an event was read twice"
    assert set(seen) == committed and not set(seen) & rolled_back
    assert positions == sorted(positions)


async def test_a_cursor_the_service_did_not_make_is_refused(app):
    for cursor in ("nonsense", "e1.", "e1.bm90LWEtcG9zaXRpb24", "e2.MS4y"):
        with pytest.raises(InvalidArgument):
            await app.ledger.events.page(cursor)
    assert Position.of_cursor(Position(12, 34).cursor()) == Position(12, 34)
