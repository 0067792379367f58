"""Database failures never become business answers (F10): real Postgres errors, raised by a
trigger on the ledger inside the service's own transaction, reach callers as retriable codes,
serialization failures are retried as a whole transaction, and nothing half-written remains.
Also: calls abandoned by their deadline apply fully or not at all (F9)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits_service.app import Application
from tests.grpc_errors import expect_error
from tests.support.calls import commit, grant, grant_request, place_reservation

ACCOUNT = "faulty"

FAULT_TRIGGER = """
CREATE TABLE IF NOT EXISTS test_fault (sqlstate text NOT NULL, times bigint NOT NULL);
CREATE SEQUENCE IF NOT EXISTS test_fault_calls;
CREATE OR REPLACE FUNCTION test_raise_fault() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE fault record;
BEGIN
    -- nextval() is not rolled back with the failing transaction: it counts every attempt.
    SELECT sqlstate, times INTO fault FROM test_fault;
    IF fault IS NOT NULL AND nextval('test_fault_calls') <= fault.times THEN
        RAISE EXCEPTION 'injected fault %', fault.sqlstate USING ERRCODE = fault.sqlstate;
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER test_fault BEFORE INSERT ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION test_raise_fault();
"""


@pytest.fixture
async def inject(db) -> AsyncIterator[object]:
    """inject(sqlstate, times): the next `times` ledger inserts fail with that SQLSTATE."""
    await db.execute(FAULT_TRIGGER)

    async def arm(sqlstate: str, times: int) -> None:
        await db.execute("DELETE FROM test_fault")
        await db.execute("ALTER SEQUENCE test_fault_calls RESTART")
        await db.execute("INSERT INTO test_fault VALUES ($1, $2)", sqlstate, times)

    try:
        yield arm
    finally:
        await db.execute("DROP TRIGGER test_fault ON ledger_entries")
        await db.execute("DROP TABLE test_fault")
        await db.execute("DROP SEQUENCE test_fault_calls")


async def _rows(db) -> tuple[int, int, int]:
    return (
        await db.fetchval("SELECT count(*) FROM ledger_entries"),
        await db.fetchval("SELECT count(*) FROM idempotency_keys"),
        await db.fetchval("SELECT coalesce(sum(balance), 0) FROM accounts"),
    )


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
async def test_serialization_failures_and_deadlocks_are_retried_as_a_whole(
    stub, db, inject, sqlstate
):
    await inject(sqlstate, 2)
    response = await grant(stub, ACCOUNT, 10, key="retried")
    assert response.balance.balance == 10
    assert await _rows(db) == (1, 1, 10)


async def test_conflicts_past_the_retry_bound_are_aborted_and_write_nothing(
    app: Application, stub, db, inject
):
    await inject("40001", app.settings.ledger.transaction_attempts_max)
    failure = await expect_error(grant(stub, ACCOUNT, 10, key="aborted"))
    assert (failure.code, failure.reason) == (grpc.StatusCode.ABORTED, "CONCURRENCY_CONFLICT")
    assert await _rows(db) == (0, 0, 0)
    # The same key, retried as callers are told to, applies once.
    assert (await grant(stub, ACCOUNT, 10, key="aborted")).balance.balance == 10


@pytest.mark.parametrize(
    ("sqlstate", "reason"),
    [
        ("57P01", "DATABASE_UNAVAILABLE"),  # admin_shutdown
        ("08006", "DATABASE_UNAVAILABLE"),  # connection_failure
        ("53300", "DATABASE_UNAVAILABLE"),  # too_many_connections
        ("57014", "DATABASE_TIMEOUT"),  # query_canceled (statement_timeout)
        ("55P03", "DATABASE_TIMEOUT"),  # lock_not_available (lock_timeout)
    ],
)
async def test_database_outages_are_unavailable_never_a_business_answer(
    stub, db, inject, sqlstate, reason
):
    await inject(sqlstate, 1)
    failure = await expect_error(grant(stub, ACCOUNT, 10, key="outage"))
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, reason)
    assert await _rows(db) == (0, 0, 0)
    assert (await grant(stub, ACCOUNT, 10, key="outage")).balance.balance == 10


async def test_an_unexpected_database_error_is_internal_without_details(stub, db, inject):
    await inject("22012", 1)  # division_by_zero: a bug, not an outage
    failure = await expect_error(grant(stub, ACCOUNT, 10, key="bug"))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert "injected" not in failure.message
    assert await _rows(db) == (0, 0, 0)


async def test_commit_failing_mid_transaction_leaves_the_reservation_active(stub, db, inject):
    """The USAGE insert fails after the account and reservation rows were updated: all of it rolls
    back, the reservation stays ACTIVE and can be committed afterwards."""
    await grant(stub, ACCOUNT, 100, key="g")
    rid = await place_reservation(stub, ACCOUNT, 40, key="r")
    await inject("57P01", 1)
    await expect_error(commit(stub, rid))
    row = await db.fetchrow("SELECT balance, reserved FROM accounts")
    assert tuple(row) == (100, 40)
    committed = await commit(stub, rid)
    assert committed.balance.balance == 60


async def test_calls_cut_off_by_their_deadline_apply_fully_or_not_at_all(stubs, db):
    """F9: thousands of deadlines shorter than the work; each key replays to one outcome and
    no session is left idle in a transaction (checked after every test)."""
    rng = random.Random(7)
    keys = [f"d{i}" for i in range(1000)]
    in_flight = asyncio.Semaphore(200)  # below the server's max_concurrent_rpcs

    async def hurried(i: int, key: str) -> None:
        async with in_flight:
            try:
                await stubs[i % len(stubs)].Grant(grant_request(ACCOUNT, 1, key=key),
                                                  timeout=rng.uniform(0.0005, 0.02))
            except grpc.aio.AioRpcError as error:
                assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED, error

    async def replay(i: int, key: str) -> pb.GrantResponse:
        # Right after a thousand client cancellations grpc itself sometimes answers CANCELLED
        # to a new call before our handler is entered (seen on grpcio 1.85). Like any caller
        # without a definite answer, retry with the same key: the replay must still be one
        # outcome per key.
        async with in_flight:
            for _ in range(5):
                try:
                    return await grant(stubs[i % len(stubs)], ACCOUNT, 1, key=key)
                except grpc.aio.AioRpcError as error:
                    if error.code() is not grpc.StatusCode.CANCELLED:
                        raise
            raise AssertionError(f"{key}: no definite answer after 5 tries")

    await asyncio.gather(*(hurried(i, key) for i, key in enumerate(keys)))
    replays = await asyncio.gather(*(replay(i, key) for i, key in enumerate(keys)))
    entry_ids = {r.entry.entry_id for r in replays}
    assert len(entry_ids) == len(keys)
    assert await db.fetchval("SELECT count(*) FROM ledger_entries") == len(keys)
    assert await db.fetchval("SELECT balance FROM accounts") == len(keys)


SLOW_LEDGER = """
CREATE OR REPLACE FUNCTION test_slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$;
CREATE OR REPLACE TRIGGER test_slow BEFORE INSERT ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION test_slow_insert();
"""
BUSY_ON_LEDGER = """
SELECT count(*) FROM pg_stat_activity
 WHERE application_name = 'credits-service' AND state = 'active'
   AND query ILIKE '%ledger_entries%'"""


async def test_a_call_deadline_bounds_the_database_work_it_started(stub, db):
    """F9/F11: work slower than the caller's deadline is cut at the deadline (the transaction's
    statement timeout is lowered to the time left), not left running for the full statement
    timeout; nothing is written."""
    await db.execute(SLOW_LEDGER)
    try:
        started = time.monotonic()
        error = await expect_error(stub.Grant(grant_request(ACCOUNT, 10, key="slow"),
                                              timeout=0.5))
        assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
        while await db.fetchval(BUSY_ON_LEDGER) and time.monotonic() - started < 5:
            await asyncio.sleep(0.02)
        busy_s = time.monotonic() - started
    finally:
        await db.execute("DROP TRIGGER test_slow ON ledger_entries")
        await db.execute("DROP FUNCTION test_slow_insert()")
    assert busy_s < 1.5, f"the service worked on the call for {busy_s:.2f}s after a 0.5s deadline"
    assert await _rows(db) == (0, 0, 0)
