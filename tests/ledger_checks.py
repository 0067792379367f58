"""The ledger invariants (credits_service/persistence/invariants.py, what `credits-service
verify` checks) asserted against the real tables, and emptying those tables between tests."""

from __future__ import annotations

import asyncio

import asyncpg

from credits_service.persistence.invariants import INVARIANTS

TABLES = ("webhook_dead_letters, webhook_endpoints, events, usage_members, "
          "organization_members, organizations, subscription_grants, "
          "subscriptions, usage_hours, usage_days, usage_months, "
          "usage_shards, imported_rows, account_totals, "
          "account_changes, reservation_lots, ledger_entries, credit_lots, reservations, "
          "idempotency_keys, accounts")
TABLE_NAMES = tuple(TABLES.split(", "))
_EMPTY_ATTEMPTS = 5


async def empty_ledger(connection: asyncpg.Connection, timeout_s: float | None = None) -> None:
    """TRUNCATE every ledger table. The server's sweeper can be in a transaction that locks
    these tables in another order; PostgreSQL then fails one of the two with a deadlock, and
    the TRUNCATE runs again."""
    for attempt in range(_EMPTY_ATTEMPTS):
        try:
            await connection.execute(f"TRUNCATE {TABLES}", timeout=timeout_s)
            # Nothing purged yet: the purge's watermark back at the start
            await connection.execute("UPDATE events_purged SET xid = 0, event_id = 0",
                                     timeout=timeout_s)
            return
        except asyncpg.DeadlockDetectedError:
            if attempt == _EMPTY_ATTEMPTS - 1:
                raise


IDLE_IN_TRANSACTION = """
    SELECT count(*) FROM pg_stat_activity
     WHERE application_name = 'credits-service' AND state LIKE 'idle in transaction%'"""


async def assert_invariants(connection: asyncpg.Connection, settle_s: float = 2.0) -> None:
    """Fail with the offending rows if any invariant is broken.

    Calls a test abandoned (cancelled, deadline exceeded) may still be finishing their
    transaction, so idle-in-transaction sessions get `settle_s` to go away.
    """
    broken = {}
    for name, query in INVARIANTS.items():
        rows = await connection.fetch(query)
        if rows:
            broken[name] = [dict(row) for row in rows[:5]]
    assert not broken, f"ledger invariants broken: {broken}"
    deadline = asyncio.get_running_loop().time() + settle_s
    while (idle := await connection.fetchval(IDLE_IN_TRANSACTION)) and (
        asyncio.get_running_loop().time() < deadline
    ):
        await asyncio.sleep(0.05)
    assert idle == 0, f"{idle} service sessions left idle in a transaction"


async def row_counts(connection: asyncpg.Connection) -> dict[str, int]:
    """The number of rows of every ledger table: what a refused call must leave unchanged."""
    return {table: await connection.fetchval(f"SELECT count(*) FROM {table}")
            for table in TABLE_NAMES}
