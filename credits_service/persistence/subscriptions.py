"""Subscriptions and the allocations granted to them (migration 0013). A subscription's row
is locked before its account's, by every transaction that changes it, so that they never
deadlock on the pair; the scheduler skips rows another transaction holds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from credits_service.domain.subscriptions import (
    Allocation,
    Rollover,
    RolloverKind,
    Subscription,
    SubscriptionStatus,
)

_COLUMNS = """subscription_id, account_id, plan, allocation::text AS allocation, anchor,
              status, last_period, next_plan, next_allocation::text AS next_allocation,
              cancel_time, create_time"""

_ACTIVE = f"SELECT {_COLUMNS} FROM subscriptions WHERE account_id = $1 AND status = 'ACTIVE'"
_LATEST = f"""
    SELECT {_COLUMNS} FROM subscriptions WHERE account_id = $1
     ORDER BY subscription_id DESC LIMIT 1"""

_CREATE = f"""
    INSERT INTO subscriptions (account_id, plan, allocation, anchor, last_period,
                               next_grant_time)
    VALUES ($1, $2, $3::jsonb, $4, -1, $4)
    RETURNING {_COLUMNS}"""

_SAVE = f"""
    UPDATE subscriptions
       SET plan = $2, allocation = $3::jsonb, status = $4, last_period = $5,
           next_grant_time = $6, next_plan = $7, next_allocation = $8::jsonb,
           cancel_time = $9, update_time = credits_now()
     WHERE subscription_id = $1
    RETURNING {_COLUMNS}"""

# Due soonest first; rows another scheduler (or a change) holds are left to it.
_LOCK_DUE = f"""
    SELECT {_COLUMNS} FROM subscriptions
     WHERE status = 'ACTIVE' AND next_grant_time <= credits_now()
     ORDER BY next_grant_time LIMIT $1
       FOR UPDATE SKIP LOCKED"""

_RECORD_GRANT = """
    INSERT INTO subscription_grants (subscription_id, period, kind, plan, credits, carried,
                                     lot_id, rollover, rollover_cap)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"""

# What each lot granted for a period had left when it expired (its EXPIRY entry), with the
# rollover rule it was granted under
_LEFT_OVER = """
    SELECT g.rollover, g.rollover_cap, -e.amount AS unused
      FROM subscription_grants g
      JOIN ledger_entries e ON e.lot_id = g.lot_id AND e.entry_type = 'EXPIRY'
                           AND e.reservation_id IS NULL
     WHERE g.subscription_id = $1 AND g.period = $2"""

_GRANTED_IN = """
    SELECT coalesce(sum(credits + carried), 0)::bigint FROM subscription_grants
     WHERE subscription_id = $1 AND period = $2 AND lot_id IS NOT NULL"""


class SubscriptionRepository:
    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def active(self, account_id: str, *, lock: bool = False) -> Subscription | None:
        """The account's ACTIVE subscription; `lock`: its row locked for the transaction."""
        row = await self._connection.fetchrow(
            _ACTIVE + (" FOR UPDATE" if lock else ""), account_id)
        return _subscription(row) if row is not None else None

    async def latest(self, account_id: str) -> Subscription | None:
        """The account's subscription, ACTIVE or the last one CANCELED."""
        row = await self._connection.fetchrow(_LATEST, account_id)
        return _subscription(row) if row is not None else None

    async def create(
        self, account_id: str, plan: str, allocation: Allocation, anchor: datetime
    ) -> Subscription:
        """A new ACTIVE subscription with no period granted yet (period 0 due at `anchor`)."""
        return _subscription(await self._connection.fetchrow(
            _CREATE, account_id, plan, _json(allocation), anchor))

    async def save(self, subscription: Subscription) -> Subscription:
        """Write the subscription's state (its row locked by this transaction)."""
        s = subscription
        return _subscription(await self._connection.fetchrow(
            _SAVE, s.subscription_id, s.plan, _json(s.allocation), s.status.value,
            s.last_period, s.next_grant_time, s.next_plan,
            _json(s.next_allocation) if s.next_allocation is not None else None,
            s.cancel_time))

    async def lock_due(self, limit: int) -> list[Subscription]:
        """ACTIVE subscriptions whose next period is due by the database clock, locked,
        skipping those locked elsewhere."""
        return [_subscription(row) for row in await self._connection.fetch(_LOCK_DUE, limit)]

    async def record_grant(
        self, subscription_id: int, period: int, kind: str, plan: str, credits: int,
        carried: int, lot_id: int | None, rollover: Rollover,
    ) -> None:
        """Record an allocation granted, with the rollover rule its credits carry by; a
        second PERIOD grant of one period violates the unique index (and rolls its
        transaction back)."""
        await self._connection.execute(
            _RECORD_GRANT, subscription_id, period, kind, plan, credits, carried, lot_id,
            rollover.kind.value, rollover.cap)

    async def left_over(self, subscription_id: int, period: int) -> list[tuple[int, Rollover]]:
        """What each of the period's allocation lots had left when written off, with the
        rollover rule it was granted under."""
        rows = await self._connection.fetch(_LEFT_OVER, subscription_id, period)
        return [(row["unused"], Rollover(RolloverKind(row["rollover"]), row["rollover_cap"]))
                for row in rows]

    async def granted_in(self, subscription_id: int, period: int) -> int:
        """The credits granted for the period so far (its allocation, upgrades, carry)."""
        value: int = await self._connection.fetchval(_GRANTED_IN, subscription_id, period)
        return value


def _json(allocation: Allocation) -> str:
    return orjson.dumps(allocation.stored()).decode()


def _subscription(row: Any) -> Subscription:
    next_allocation = row["next_allocation"]
    return Subscription(
        subscription_id=row["subscription_id"],
        account_id=row["account_id"],
        plan=row["plan"],
        allocation=Allocation.restore(orjson.loads(row["allocation"])),
        anchor=row["anchor"],
        status=SubscriptionStatus(row["status"]),
        last_period=row["last_period"],
        next_plan=row["next_plan"],
        next_allocation=(Allocation.restore(orjson.loads(next_allocation))
                         if next_allocation is not None else None),
        cancel_time=row["cancel_time"],
        create_time=row["create_time"],
    )

