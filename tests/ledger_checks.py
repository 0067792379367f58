"""The ledger invariants of ../shared/RELIABILITY.md, checked in SQL against the real tables,
and emptying those tables between tests."""

from __future__ import annotations

import asyncio

import asyncpg

TABLES = ("account_totals, account_changes, reservation_lots, ledger_entries, credit_lots, "
          "reservations, idempotency_keys, accounts")
TABLE_NAMES = tuple(TABLES.split(", "))
_EMPTY_ATTEMPTS = 5


async def empty_ledger(connection: asyncpg.Connection, timeout_s: float | None = None) -> None:
    """TRUNCATE every ledger table. The server's sweeper can be in a transaction that locks
    these tables in another order; PostgreSQL then fails one of the two with a deadlock, and
    the TRUNCATE runs again."""
    for attempt in range(_EMPTY_ATTEMPTS):
        try:
            await connection.execute(f"TRUNCATE {TABLES}", timeout=timeout_s)
            return
        except asyncpg.DeadlockDetectedError:
            if attempt == _EMPTY_ATTEMPTS - 1:
                raise


INVARIANTS: dict[str, str] = {
    "balance == sum(ledger amounts)": """
        SELECT a.account_id, a.balance, coalesce(l.total, 0) AS ledger
          FROM accounts a
          LEFT JOIN (SELECT account_id, sum(amount) AS total FROM ledger_entries GROUP BY 1) l
               USING (account_id)
         WHERE a.balance <> coalesce(l.total, 0)""",
    "reserved == sum(active reservations), count matches": """
        SELECT a.account_id, a.reserved, coalesce(r.total, 0) AS reservations
          FROM accounts a
          LEFT JOIN (SELECT account_id, sum(amount) AS total, count(*) AS n FROM reservations
                      WHERE status = 'ACTIVE' GROUP BY 1) r USING (account_id)
         WHERE a.reserved <> coalesce(r.total, 0)
            OR a.active_reservation_count <> coalesce(r.n, 0)""",
    "available >= 0": "SELECT account_id FROM accounts WHERE balance - reserved < 0",
    "lifetime totals match the ledger": """
        SELECT a.account_id FROM accounts a
          LEFT JOIN (SELECT account_id,
                            sum(amount) FILTER (WHERE entry_type = 'GRANT') AS granted,
                            -sum(amount) FILTER (WHERE entry_type = 'USAGE') AS used
                       FROM ledger_entries GROUP BY 1) l USING (account_id)
         WHERE a.lifetime_granted <> coalesce(l.granted, 0)
            OR a.lifetime_used <> coalesce(l.used, 0)""",
    "account_totals == the entries of each kind": """
        SELECT coalesce(t.account_id, e.account_id), coalesce(t.kind, e.kind)
          FROM account_totals t
          FULL JOIN (SELECT account_id,
                            CASE entry_type
                                WHEN 'GRANT' THEN 'GRANTED_' || grant_type
                                WHEN 'REFUND' THEN 'REFUNDED'
                                WHEN 'ADJUSTMENT' THEN CASE WHEN amount > 0 THEN 'ADJUSTED_IN'
                                                            ELSE 'ADJUSTED_OUT' END
                                WHEN 'TRANSFER_IN' THEN 'TRANSFERRED_IN'
                                WHEN 'TRANSFER_OUT' THEN 'TRANSFERRED_OUT'
                            END AS kind, sum(abs(amount)) AS credits
                       FROM ledger_entries
                      WHERE entry_type NOT IN ('USAGE', 'EXPIRY') GROUP BY 1, 2) e
               ON e.account_id = t.account_id AND e.kind = t.kind
         WHERE t.credits IS DISTINCT FROM e.credits""",
    "refunded_amount == the REFUND entries of the reservation": """
        SELECT r.reservation_id FROM reservations r
          LEFT JOIN (SELECT reservation_id, sum(amount) AS refunded FROM ledger_entries
                      WHERE entry_type = 'REFUND' GROUP BY 1) f USING (reservation_id)
         WHERE r.refunded_amount <> coalesce(f.refunded, 0)""",
    "lifetime_expired == the EXPIRY entries": """
        SELECT a.account_id FROM accounts a
          LEFT JOIN (SELECT account_id, -sum(amount) AS expired FROM ledger_entries
                      WHERE entry_type = 'EXPIRY' GROUP BY 1) l USING (account_id)
         WHERE a.lifetime_expired <> coalesce(l.expired, 0)""",
    "balance == sum(lot remaining), reserved == sum(lot held)": """
        SELECT a.account_id, a.balance, a.reserved, l.remaining, l.held FROM accounts a
          LEFT JOIN (SELECT account_id, sum(remaining) AS remaining, sum(held) AS held
                       FROM credit_lots GROUP BY 1) l USING (account_id)
         WHERE a.balance <> coalesce(l.remaining, 0) OR a.reserved <> coalesce(l.held, 0)""",
    "each lot's held == what active reservations drew from it": """
        SELECT l.lot_id, l.held, coalesce(d.held, 0) AS drawn FROM credit_lots l
          LEFT JOIN (SELECT d.lot_id, sum(d.held) AS held FROM reservation_lots d
                       JOIN reservations r USING (reservation_id)
                      WHERE r.status = 'ACTIVE' GROUP BY 1) d USING (lot_id)
         WHERE l.held <> coalesce(d.held, 0)""",
    "each lot's amount - remaining == consumed + written off + deducted + given - refunded": """
        SELECT l.lot_id FROM credit_lots l
          LEFT JOIN (SELECT d.lot_id, sum(d.consumed) - coalesce(sum(f.credits), 0) AS consumed
                       FROM reservation_lots d
                       JOIN reservations r USING (reservation_id)
                       LEFT JOIN (SELECT reservation_id, lot_id, sum(amount) AS credits
                                    FROM ledger_entries WHERE entry_type = 'REFUND'
                                   GROUP BY 1, 2) f USING (reservation_id, lot_id)
                      WHERE r.status = 'COMMITTED' GROUP BY 1) c USING (lot_id)
          LEFT JOIN (SELECT lot_id, -sum(amount) AS gone FROM ledger_entries
                      WHERE entry_type IN ('EXPIRY', 'TRANSFER_OUT')
                         OR (entry_type = 'ADJUSTMENT' AND amount < 0) GROUP BY 1) x
               USING (lot_id)
         WHERE l.amount - l.remaining <> coalesce(c.consumed, 0) + coalesce(x.gone, 0)""",
    # Reservations that finished before lots existed (migration 0002) have no draws.
    "a reservation drew its amount; a committed one consumed its committed amount": """
        SELECT r.reservation_id FROM reservations r
          LEFT JOIN reservation_lots d USING (reservation_id)
         GROUP BY r.reservation_id, r.amount, r.status, r.committed_amount
        HAVING ((count(d.lot_id) > 0 OR r.status = 'ACTIVE')
                AND coalesce(sum(d.held), 0) <> r.amount)
            OR (count(d.lot_id) > 0 AND r.status = 'COMMITTED'
                AND coalesce(sum(d.consumed), 0) <> r.committed_amount)
            OR (r.status <> 'COMMITTED' AND count(d.consumed) <> 0)""",
    "a committed reservation has exactly one USAGE entry of its amount, others none": """
        SELECT r.reservation_id FROM reservations r
          LEFT JOIN ledger_entries e
                 ON e.reservation_id = r.reservation_id AND e.entry_type = 'USAGE'
         GROUP BY r.reservation_id, r.status, r.committed_amount
        HAVING (r.status = 'COMMITTED'
                AND (count(e.entry_id) <> 1 OR -sum(e.amount) <> r.committed_amount))
            OR (r.status <> 'COMMITTED' AND count(e.entry_id) <> 0)""",
    "balance_after of each account's newest entry is its balance": """
        SELECT a.account_id FROM accounts a
          JOIN LATERAL (SELECT balance_after FROM ledger_entries e
                         WHERE e.account_id = a.account_id
                         ORDER BY entry_id DESC LIMIT 1) last ON true
         WHERE last.balance_after <> a.balance""",
}

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
