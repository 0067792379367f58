"""Usage summaries, read from the usage rollups (migration 0012) instead of the ledger: a
month of one account is at most 744 rows of usage_hours per feature, whatever its number of
entries; all accounts' buckets come from usage_shards, their top spenders from usage_months
(whole months), usage_days (the other whole days) and usage_hours (the hours left)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from credits_service.domain.rows import AccountSpend, MemberSpend, UsageRow

# Optional filters are NULL when unset. $1 the bucket ('hour', 'day', 'month'); [$2, $3) the
# range, whole hours; $4 features; $5 the most rows to answer.
_BUCKETS_OF_ACCOUNTS = """
    SELECT date_trunc($1, hour, 'UTC') AS bucket, feature, sum(credits)::bigint AS credits,
           sum(units) AS units, sum(calls)::bigint AS calls
      FROM usage_hours
     WHERE account_id = ANY($6::text[]) AND hour >= $2 AND hour < $3
       AND ($4::text[] IS NULL OR feature = ANY($4))
     GROUP BY 1, 2 ORDER BY 1, 2 LIMIT $5"""

_BUCKETS_OF_ALL = """
    SELECT date_trunc($1, hour, 'UTC') AS bucket, feature, sum(credits)::bigint AS credits,
           sum(units) AS units, sum(calls)::bigint AS calls
      FROM usage_shards
     WHERE hour >= $2 AND hour < $3
       AND ($4::text[] IS NULL OR feature = ANY($4))
       AND ($6::text IS NULL OR plan = $6)
     GROUP BY 1, 2 ORDER BY 1, 2 LIMIT $5"""

# [$1, $2) the range, $3 features, $4 how many; $5 the accounts
# What members spent of their pools ($5; NULL: every pool) in [$1, $2), by pool, most first
_BY_MEMBER = """
    SELECT pool_account_id, member_account_id, sum(credits)::bigint AS credits,
           sum(calls)::bigint AS calls
      FROM usage_members
     WHERE ($5::text[] IS NULL OR pool_account_id = ANY($5::text[]))
       AND hour >= $1 AND hour < $2 AND ($3::text[] IS NULL OR feature = ANY($3))
     GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2 LIMIT $4"""

_TOP_OF_ACCOUNTS = """
    SELECT account_id, sum(credits)::bigint AS credits, sum(calls)::bigint AS calls
      FROM usage_hours
     WHERE account_id = ANY($5::text[]) AND hour >= $1 AND hour < $2
       AND ($3::text[] IS NULL OR feature = ANY($3))
     GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $4"""

# [$1, $2) the range; [$5, $6) its whole days and [$8, $9) its whole months (each empty when
# it has none); $3 features, $4 how many; $7 a plan: only the accounts on it now. Each part
# of the range is read once: its whole months from usage_months, its other whole days from
# usage_days, its other hours from usage_hours.
_TOP_OF_ALL = """
    WITH spent AS (
        SELECT account_id, credits, calls FROM usage_months
         WHERE month >= $8::date AND month < $9::date
           AND ($3::text[] IS NULL OR feature = ANY($3))
        UNION ALL
        SELECT account_id, credits, calls FROM usage_days
         WHERE day >= $5::date AND day < $6::date
           AND NOT (day >= $8::date AND day < $9::date)
           AND ($3::text[] IS NULL OR feature = ANY($3))
        UNION ALL
        SELECT account_id, credits, calls FROM usage_hours
         WHERE hour >= $1 AND hour < $2
           AND NOT (hour >= ($5::date)::timestamp AT TIME ZONE 'UTC'
                    AND hour < ($6::date)::timestamp AT TIME ZONE 'UTC')
           AND ($3::text[] IS NULL OR feature = ANY($3))
    )
    SELECT account_id, sum(credits)::bigint AS credits, sum(calls)::bigint AS calls
      FROM spent
     WHERE $7::text IS NULL
        OR account_id IN (SELECT account_id FROM accounts WHERE plan = $7::text)
     GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $4"""

# Folds the shards of up to $2 rows of hours that ended more than $1 seconds ago into one
# row per hour, plan and feature (shard -1). No transaction adds to those hours any more; were
# one to, its row would be folded by the next run. Replicas folding at once take different
# rows (SKIP LOCKED), so each row is folded once and neither waits on the other's.
_COMPACT_SHARDS = """
    WITH moved AS (
        DELETE FROM usage_shards s
         WHERE (s.hour, s.plan, s.feature, s.shard) IN (
               SELECT hour, plan, feature, shard FROM usage_shards
                WHERE hour < credits_now() - $1 * interval '1 second' - interval '1 hour'
                  AND shard >= 0
                ORDER BY hour LIMIT $2 FOR UPDATE SKIP LOCKED)
        RETURNING s.hour, s.plan, s.feature, s.credits, s.units, s.calls
    ), folded AS (
        INSERT INTO usage_shards AS u (hour, plan, feature, shard, credits, units, calls)
        SELECT hour, plan, feature, -1, sum(credits), sum(units), sum(calls)
          FROM moved GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (hour, plan, feature, shard) DO UPDATE
           SET credits = u.credits + excluded.credits, units = u.units + excluded.units,
               calls = u.calls + excluded.calls
    )
    SELECT count(*) FROM moved"""


class UsageRepository:
    def __init__(self, connection: Any) -> None:
        self._connection = connection  # asyncpg, in the unit of work's transaction

    async def buckets(
        self, *, bucket: str, start: datetime, end: datetime, features: Sequence[str],
        account_ids: Sequence[str], plan: str, limit: int,
    ) -> list[UsageRow]:
        """Usage per bucket and feature in [start, end) (whole hours), of `account_ids` (none:
        every account; or, with `plan`, those that were on it), at most `limit` rows, by
        bucket then feature."""
        filters = list(features) or None
        if account_ids:
            rows = await self._connection.fetch(
                _BUCKETS_OF_ACCOUNTS, bucket, start, end, filters, limit, list(account_ids))
        else:
            rows = await self._connection.fetch(
                _BUCKETS_OF_ALL, bucket, start, end, filters, limit, plan or None)
        return [UsageRow(row["bucket"], row["feature"], row["credits"], int(row["units"]),
                         row["calls"]) for row in rows]

    async def top_accounts(
        self, *, start: datetime, end: datetime, days: tuple[datetime, datetime],
        months: tuple[datetime, datetime], features: Sequence[str], account_ids: Sequence[str],
        plan: str, limit: int,
    ) -> list[AccountSpend]:
        """The `limit` accounts (of `account_ids`; none: all, or those on `plan` now) that
        spent most in [start, end) (whole hours; `days` and `months`, its whole days and
        months), most first."""
        filters = list(features) or None
        if account_ids:
            rows = await self._connection.fetch(
                _TOP_OF_ACCOUNTS, start, end, filters, limit, list(account_ids))
        else:
            rows = await self._connection.fetch(
                _TOP_OF_ALL, start, end, filters, limit, days[0].date(), days[1].date(),
                plan or None, months[0].date(), months[1].date())
        return [AccountSpend(row["account_id"], row["credits"], row["calls"]) for row in rows]

    async def by_member(
        self, *, start: datetime, end: datetime, features: Sequence[str],
        pool_account_ids: Sequence[str], limit: int,
    ) -> list[MemberSpend]:
        """What each member spent of its pool (of `pool_account_ids`; none: every pool) in
        [start, end), by pool, most first; at most `limit` rows."""
        rows = await self._connection.fetch(
            _BY_MEMBER, start, end, list(features) or None, limit,
            list(pool_account_ids) or None)
        return [MemberSpend(row["pool_account_id"], row["member_account_id"], row["credits"],
                            row["calls"]) for row in rows]

    async def compact_shards(self, older_than_s: float, batch_size: int) -> int:
        """Fold the shards of up to `batch_size` rows of hours that ended more than
        `older_than_s` ago into one row each; returns how many rows it folded."""
        return int(await self._connection.fetchval(_COMPACT_SHARDS, older_than_s, batch_size))
