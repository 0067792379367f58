"""The ledger's invariants, each a query answering the rows that break it (none when it
holds): what `credits-service verify` runs over a whole database, and what every test that
touches the database asserts when it ends (tests/ledger_checks.py). They read whole tables:
run them on a replica or at a quiet hour on a large ledger."""

from __future__ import annotations

from typing import Any

_HOUR = "date_trunc('hour', create_time, 'UTC')"
_FEATURE = "coalesce(feature, '')"
# A usage rollup (migration 0012) and the USAGE entries summed by its keys: the keys where
# they differ.
_ROLLUP_MATCHES = """
        SELECT {keys}, r.credits AS rollup, e.credits AS entries
          FROM {table} r
          FULL JOIN (SELECT {values}, -sum(amount) AS credits, coalesce(sum(units), 0) AS units,
                            count(*) AS calls
                       FROM ledger_entries WHERE entry_type = 'USAGE'
                      GROUP BY {groups}) e ({keys}, credits, units, calls) USING ({keys})
         WHERE (r.credits, r.units, r.calls) IS DISTINCT FROM (e.credits, e.units, e.calls)"""

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
    "debt == taken beyond lots - repaid - forgiven": """
        SELECT a.account_id, a.debt FROM accounts a
          LEFT JOIN (SELECT account_id, sum(debt_amount) AS owed FROM reservations
                      WHERE debt_amount > 0 GROUP BY 1) r USING (account_id)
          LEFT JOIN (SELECT account_id, -sum(amount) AS owed FROM ledger_entries
                      WHERE entry_type = 'ADJUSTMENT' AND lot_id IS NULL GROUP BY 1) e
               USING (account_id)
          LEFT JOIN (SELECT account_id, sum(repaid) AS repaid FROM credit_lots
                      WHERE repaid > 0 GROUP BY 1) l USING (account_id)
         WHERE a.debt <> coalesce(r.owed, 0) + coalesce(e.owed, 0) - coalesce(l.repaid, 0)""",
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
    "balance == sum(lot remaining) - debt, reserved == sum(lot held) + held beyond lots": """
        SELECT a.account_id, a.balance, a.reserved, l.remaining, l.held FROM accounts a
          LEFT JOIN (SELECT account_id, sum(remaining) AS remaining, sum(held) AS held
                       FROM credit_lots GROUP BY 1) l USING (account_id)
          LEFT JOIN (SELECT r.account_id, sum(r.amount - coalesce(d.held, 0)) AS beyond
                       FROM reservations r
                       LEFT JOIN (SELECT reservation_id, sum(held) AS held
                                    FROM reservation_lots GROUP BY 1) d USING (reservation_id)
                      WHERE r.status = 'ACTIVE' GROUP BY 1) u USING (account_id)
         WHERE a.balance <> coalesce(l.remaining, 0) - a.debt
            OR a.reserved <> coalesce(l.held, 0) + coalesce(u.beyond, 0)""",
    "each lot's held == what active reservations drew from it": """
        SELECT l.lot_id, l.held, coalesce(d.held, 0) AS drawn FROM credit_lots l
          LEFT JOIN (SELECT d.lot_id, sum(d.held) AS held FROM reservation_lots d
                       JOIN reservations r USING (reservation_id)
                      WHERE r.status = 'ACTIVE' GROUP BY 1) d USING (lot_id)
         WHERE l.held <> coalesce(d.held, 0)""",
    "each lot's amount - remaining == consumed + written off + deducted + given - refunded "
    "+ repaid": """
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
         WHERE l.amount - l.remaining
               <> coalesce(c.consumed, 0) + coalesce(x.gone, 0) + l.repaid""",
    # Reservations that finished before lots existed (migration 0002) have no draws. Under a
    # credit limit a reservation may hold beyond its lots (what it drew is less than its
    # amount, the account's reserved counts the rest) and a commit take beyond them.
    "a reservation drew at most its amount; a committed one consumed its committed amount "
    "less what went into debt": """
        SELECT r.reservation_id FROM reservations r
          LEFT JOIN reservation_lots d USING (reservation_id)
         GROUP BY r.reservation_id, r.amount, r.status, r.committed_amount, r.debt_amount
        HAVING coalesce(sum(d.held), 0) > r.amount
            OR ((count(d.lot_id) > 0 OR r.debt_amount > 0) AND r.status = 'COMMITTED'
                AND coalesce(sum(d.consumed), 0) + r.debt_amount <> r.committed_amount)
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

INVARIANTS.update({
    "no lot negative, none holding more than it has": """
        SELECT lot_id FROM credit_lots WHERE remaining < 0 OR held < 0 OR held > remaining
            OR remaining > amount""",
    "refunds within what each reservation captured": """
        SELECT reservation_id FROM reservations
         WHERE refunded_amount < 0 OR refunded_amount > coalesce(committed_amount, 0)""",
    "usage_hours == the USAGE entries by account, hour and feature": _ROLLUP_MATCHES.format(
        table="usage_hours", keys="account_id, hour, feature",
        values=f"account_id, {_HOUR}, {_FEATURE}", groups="1, 2, 3"),
    "usage_days == the USAGE entries by day, account and feature": _ROLLUP_MATCHES.format(
        table="usage_days", keys="day, account_id, feature",
        values=f"(create_time AT TIME ZONE 'UTC')::date, account_id, {_FEATURE}",
        groups="1, 2, 3"),
    "usage_months == the USAGE entries by month, account and feature": _ROLLUP_MATCHES.format(
        table="usage_months", keys="month, account_id, feature",
        values=f"date_trunc('month', create_time AT TIME ZONE 'UTC')::date, account_id, {_FEATURE}",
        groups="1, 2, 3"),
    "usage_shards == the USAGE entries by hour and feature": _ROLLUP_MATCHES.format(
        table="(SELECT hour, feature, sum(credits) AS credits, sum(units) AS units, "
              "sum(calls) AS calls FROM usage_shards GROUP BY 1, 2)",
        keys="hour, feature", values=f"{_HOUR}, {_FEATURE}", groups="1, 2"),
    "every subscription grant is a SUBSCRIPTION lot of its account, of its credits": """
        SELECT g.grant_id, g.subscription_id, g.lot_id FROM subscription_grants g
          JOIN subscriptions s USING (subscription_id)
          LEFT JOIN credit_lots l ON l.lot_id = g.lot_id
         WHERE g.lot_id IS NOT NULL
           AND (l.account_id IS DISTINCT FROM s.account_id
                OR l.grant_type IS DISTINCT FROM 'SUBSCRIPTION'
                OR l.amount <> g.credits + g.carried)""",
    "a subscription's last period is the last one granted": """
        SELECT s.subscription_id, s.last_period, g.last FROM subscriptions s
          LEFT JOIN (SELECT subscription_id, max(period) AS last FROM subscription_grants
                      WHERE kind = 'PERIOD' GROUP BY 1) g USING (subscription_id)
         WHERE s.last_period <> coalesce(g.last, -1)""",
    "a member's held == its active holds on the pool, total_used == its commits there": """
        SELECT m.account_id, m.held, m.total_used, r.held AS holds, r.used AS commits
          FROM organization_members m
          LEFT JOIN LATERAL (
                SELECT coalesce(sum(amount) FILTER (WHERE status = 'ACTIVE'), 0) AS held,
                       coalesce(sum(committed_amount) FILTER (WHERE status = 'COMMITTED'), 0)
                           AS used
                  FROM reservations WHERE member_account_id = m.account_id
                   AND create_time >= m.create_time) r ON true
         WHERE (m.held, m.total_used) <> (r.held, r.used)""",
    "a member's account names its pool, and only a member's": """
        SELECT a.account_id, a.pool_account_id, o.pool_account_id AS pool
          FROM accounts a
          FULL JOIN (organization_members m JOIN organizations o USING (organization_id))
               ON m.account_id = a.account_id
         WHERE (a.pool_account_id IS NOT NULL OR m.account_id IS NOT NULL)
           AND a.pool_account_id IS DISTINCT FROM o.pool_account_id""",
    "usage_members == the commits of members' holds on pools": """
        SELECT coalesce(u.pool_account_id, r.account_id), coalesce(u.member_account_id,
               r.member_account_id), u.credits, r.credits
          FROM (SELECT pool_account_id, member_account_id, sum(credits) AS credits,
                       sum(calls) AS calls
                  FROM usage_members GROUP BY 1, 2) u
          FULL JOIN (SELECT account_id, member_account_id, sum(committed_amount) AS credits,
                            count(*) AS calls
                       FROM reservations
                      WHERE member_account_id IS NOT NULL AND committed_amount > 0
                      GROUP BY 1, 2) r
            ON r.account_id = u.pool_account_id AND r.member_account_id = u.member_account_id
         WHERE (u.credits, u.calls) IS DISTINCT FROM (r.credits, r.calls)""",
    "every idempotency record is complete": """
        SELECT scope, idempotency_key FROM idempotency_keys
         WHERE response IS NULL OR octet_length(request_hash) <> 32""",
})

SAMPLE_ROWS = 5


async def broken(connection: Any, names: list[str] | None = None) -> dict[str, list[Any]]:
    """The invariants broken (all of them, or those named), each with a few offending rows."""
    found = {}
    for name, query in INVARIANTS.items():
        if names is not None and name not in names:
            continue
        rows = await connection.fetch(f"SELECT * FROM ({query}) broken LIMIT {SAMPLE_ROWS}")
        if rows:
            found[name] = [tuple(row.values()) for row in rows]
    return found
