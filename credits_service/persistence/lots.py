"""Credit lots: the credits of each grant, spent in consumption order. Every change to an
account's lots runs under that account's row lock (AccountRepository.lock), so reads made
after taking it are current."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from credits_service.domain.lots import LotChange
from credits_service.domain.model import GrantType, Lot
from credits_service.domain.rows import ExpiredLot, FreeLot
from credits_service.persistence import columns
from credits_service.persistence.group_sql import EXPIRE_DUE, FREE_LOTS

_CREATE = f"""
    INSERT INTO credit_lots AS l (account_id, grant_type, priority, expire_time, amount,
                                  remaining, repaid)
    VALUES ($1, $2, $3, $4, $5::bigint, $6::bigint, $5::bigint - $6::bigint)
    RETURNING {columns.LOT}"""

_OF = f"SELECT {columns.LOT} FROM credit_lots l WHERE l.lot_id = ANY($1::bigint[])"

_EXPIRE_DUE = EXPIRE_DUE.format(account_ids="$1::text[]")

# Accounts with lots past expire_time not yet written off, soonest first; accounts locked by
# another transaction are left out (it writes their lots off itself).
_DUE_ACCOUNTS = """
    SELECT a.account_id FROM accounts a
     WHERE a.account_id IN (
            SELECT account_id FROM credit_lots
             WHERE expired_time IS NULL AND expire_time <= credits_now()
             ORDER BY expire_time LIMIT $1)
     ORDER BY a.account_id
     LIMIT $2
       FOR UPDATE OF a SKIP LOCKED"""

_FREE_IN_ORDER = f"""
    SELECT w.account_id, s.lot_id, s.free
      FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS w (account_id, amount, position)
     CROSS JOIN LATERAL ({FREE_LOTS}) s
     ORDER BY w.position, s.running"""

_APPLY = """
    UPDATE credit_lots l
       SET held = l.held + c.held_delta, remaining = l.remaining + c.remaining_delta
      FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])
           AS c (lot_id, held_delta, remaining_delta)
     WHERE l.lot_id = c.lot_id AND l.lot_id = ANY($1::bigint[])
    RETURNING 1"""

_EXPIRED_AMONG = """
    SELECT lot_id FROM credit_lots WHERE lot_id = ANY($1::bigint[]) AND expired_time IS NOT NULL"""

_LISTING = f"""
    SELECT {columns.LOT} FROM credit_lots l
     WHERE l.account_id = $1 AND l.remaining > 0
     ORDER BY {columns.CONSUMPTION_ORDER} LIMIT $2"""

_EXPIRING = """
    SELECT coalesce(sum(remaining - held), 0)::bigint
      FROM credit_lots
     WHERE account_id = $1 AND expired_time IS NULL
       AND expire_time <= credits_now() + $2 * interval '1 millisecond'"""


class LotRepository:
    def __init__(self, connection: Any) -> None:
        self._connection = connection  # asyncpg, in the unit of work's transaction

    async def create(
        self,
        *,
        account_id: str,
        grant_type: GrantType | None,
        priority: int,
        expire_time: datetime | None,
        amount: int,
        remaining: int | None = None,
    ) -> Lot:
        row = await self._connection.fetchrow(
            _CREATE, account_id, grant_type.value if grant_type else None, priority, expire_time,
            amount, amount if remaining is None else remaining)
        return columns.lot(row)

    async def of(self, lot_ids: Iterable[int]) -> dict[int, Lot]:
        """These lots, by id."""
        rows = await self._connection.fetch(_OF, sorted(set(lot_ids)))
        return {row["lot_id"]: columns.lot(row) for row in rows}

    async def expire_due(self, account_ids: Iterable[str]) -> list[ExpiredLot]:
        """Mark the (locked) accounts' lots past expire_time as expired, keeping only their held
        credits; returns them in expiry order. Compare-and-set on expired_time: a lot is
        written off once, whoever gets there first."""
        rows = await self._connection.fetch(_EXPIRE_DUE, sorted(set(account_ids)))
        ordered = sorted(rows, key=lambda r: (r["account_id"], r["expire_time"], r["lot_id"]))
        return [ExpiredLot(row["account_id"], row["lot_id"], row["unheld"]) for row in ordered]

    async def due_accounts(self, limit: int) -> list[str]:
        """Up to `limit` accounts with lots past expire_time not yet written off, locked."""
        rows = await self._connection.fetch(_DUE_ACCOUNTS, limit * 4, limit)
        return [row["account_id"] for row in rows]

    async def free_in_order(self, wanted: Mapping[str, int]) -> dict[str, list[FreeLot]]:
        """Per account, its unexpired lots with free credits in consumption order: just as
        many as it takes to cover the credits wanted."""
        rows = await self._connection.fetch(_FREE_IN_ORDER, list(wanted), list(wanted.values()))
        free: dict[str, list[FreeLot]] = {account_id: [] for account_id in wanted}
        for row in rows:
            free[row["account_id"]].append(FreeLot(row["lot_id"], row["free"]))
        return free

    async def apply(self, changes: Iterable[LotChange]) -> None:
        """Move each lot's held and remaining credits by the given deltas."""
        changes = [c for c in changes if c.held_delta or c.remaining_delta]
        if not changes:
            return
        rows = await self._connection.fetch(
            _APPLY, [c.lot_id for c in changes], [c.held_delta for c in changes],
            [c.remaining_delta for c in changes],
        )
        assert len(rows) == len(changes), "every lot changed exists"

    async def expired_among(self, lot_ids: Iterable[int]) -> set[int]:
        """Which of these lots have expired."""
        rows = await self._connection.fetch(_EXPIRED_AMONG, sorted(set(lot_ids)))
        return {row["lot_id"] for row in rows}

    async def listing(
        self, account_id: str, limit: int, expiring_within_ms: int | None
    ) -> tuple[list[Lot], int]:
        """The account's lots that still hold credits, in consumption order (at most `limit`),
        and the free credits of unexpired lots expiring within the window from now."""
        rows = await self._connection.fetch(_LISTING, account_id, limit)
        listed = [columns.lot(row) for row in rows]
        if expiring_within_ms is None:
            return listed, 0
        expiring = await self._connection.fetchval(_EXPIRING, account_id, expiring_within_ms)
        return listed, int(expiring)
