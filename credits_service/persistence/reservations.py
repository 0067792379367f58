"""Reservations and their draws (what each drew from each lot). A reservation leaves ACTIVE
once, by compare-and-set on its status."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from credits_service.domain.model import LotDraw, Reservation, ReservationStatus
from credits_service.domain.rows import LockedReservation
from credits_service.persistence import columns
from credits_service.persistence.group_sql import DRAWS_OF

_LOCK = f"""
    SELECT {columns.RESERVATION}, expire_time <= credits_now() AS is_due
      FROM reservations WHERE reservation_id = $1::uuid
       FOR UPDATE"""

# What Commit consumed from each lot; lots it took beyond the reservation are added with
# nothing held.
_RECORD_CONSUMPTION = """
    INSERT INTO reservation_lots AS d (reservation_id, lot_id, held, consumed)
    SELECT $1::uuid, c.lot_id, c.held, c.consumed
      FROM unnest($2::bigint[], $3::bigint[], $4::bigint[]) AS c (lot_id, held, consumed)
    ON CONFLICT (reservation_id, lot_id) DO UPDATE SET consumed = EXCLUDED.consumed"""

_FINISH = f"""
    UPDATE reservations
       SET status = $2, committed_amount = $3, release_reason = $4, debt_amount = $5,
           finish_time = credits_now()
     WHERE reservation_id = ANY($1::uuid[]) AND status = 'ACTIVE'
    RETURNING {columns.RESERVATION}"""

# Compare-and-set: refunds never add up to more than the committed amount.
_ADD_REFUND = """
    UPDATE reservations SET refunded_amount = refunded_amount + $2
     WHERE reservation_id = $1::uuid AND status = 'COMMITTED'
       AND refunded_amount + $2 <= committed_amount
    RETURNING refunded_amount"""

_EXTEND = f"""
    UPDATE reservations
       SET expire_time = greatest(expire_time, least(
               credits_now() + $2 * interval '1 millisecond',
               create_time + $3 * interval '1 millisecond'))
     WHERE reservation_id = $1::uuid AND status = 'ACTIVE'
    RETURNING {columns.RESERVATION}"""

# Reservations locked by a Commit or Release in flight are skipped, not waited for: that
# transaction decides them, and the next sweep sees them.
_LOCK_DUE = f"""
    SELECT {columns.RESERVATION} FROM reservations
     WHERE status = 'ACTIVE' AND expire_time <= credits_now()
     ORDER BY expire_time
     LIMIT $1
       FOR UPDATE SKIP LOCKED"""

_PAGE = f"""
    SELECT {columns.RESERVATION} FROM reservations
     WHERE account_id = $1
       AND ($2::text[] IS NULL OR status = ANY($2))
       AND ($3::timestamptz IS NULL OR (create_time, reservation_id) < ($3, $4::uuid))
     ORDER BY create_time DESC, reservation_id DESC
     LIMIT $5"""


class ReservationRepository:
    def __init__(self, connection: Any) -> None:
        self._connection = connection  # asyncpg, in the unit of work's transaction

    async def lock(self, reservation_id: str) -> LockedReservation | None:
        """The reservation with its draws, locked for this transaction."""
        row = await self._connection.fetchrow(_LOCK, reservation_id)
        if row is None:
            return None
        draws = await self.draws_of([reservation_id])
        return LockedReservation(columns.reservation(row, draws.get(reservation_id, ())),
                                 row["is_due"])

    async def draws_of(self, reservation_ids: list[str]) -> dict[str, tuple[LotDraw, ...]]:
        """Each reservation's draws, in the consumption order of their lots."""
        rows = await self._connection.fetch(DRAWS_OF, reservation_ids)
        draws: dict[str, list[LotDraw]] = {}
        for row in rows:
            draws.setdefault(row["reservation_id"], []).append(
                LotDraw(row["lot_id"], row["held"], row["consumed"]))
        return {key: tuple(value) for key, value in draws.items()}

    async def record_consumption(
        self, reservation_id: str, draws: tuple[LotDraw, ...], consumed: Mapping[int, int]
    ) -> tuple[LotDraw, ...]:
        """Write what Commit consumed from each lot; returns the reservation's draws."""
        held = {draw.lot_id: draw.held for draw in draws}
        await self._connection.execute(
            _RECORD_CONSUMPTION, reservation_id, list(consumed),
            [held.get(lot_id, 0) for lot_id in consumed], list(consumed.values()),
        )
        return (await self.draws_of([reservation_id])).get(reservation_id, ())

    async def finish(
        self,
        reservation_ids: list[str],
        status: ReservationStatus,
        *,
        committed_amount: int | None = None,
        release_reason: str = "",
        debt_amount: int = 0,
    ) -> dict[str, Reservation]:
        """Compare-and-set ACTIVE -> `status` (COMMITTED: for `committed_amount`, of which
        `debt_amount` went beyond the lots into debt); reservations no longer ACTIVE are left
        out."""
        rows = await self._connection.fetch(
            _FINISH, reservation_ids, status.value, committed_amount, release_reason,
            debt_amount)
        return {row["reservation_id"]: columns.reservation(row) for row in rows}

    async def add_refund(self, reservation_id: str, amount: int) -> int | None:
        """Count `amount` more as refunded; the refunded amount after, or None if that would
        pass the committed amount."""
        value = await self._connection.fetchval(_ADD_REFUND, reservation_id, amount)
        return int(value) if value is not None else None

    async def extend(self, reservation_id: str, ttl_ms: int, lifetime_max_ms: int) -> Reservation:
        """Move an ACTIVE (locked) reservation's expire_time to now + ttl, never earlier than
        it was and never past create_time + lifetime_max."""
        row = await self._connection.fetchrow(_EXTEND, reservation_id, ttl_ms, lifetime_max_ms)
        return columns.reservation(row)

    async def lock_due(self, batch_size: int) -> list[Reservation]:
        """Up to `batch_size` ACTIVE reservations past expire_time, with their draws, locked."""
        rows = await self._connection.fetch(_LOCK_DUE, batch_size)
        return await self._with_draws(rows)

    async def page(
        self,
        *,
        account_id: str,
        statuses: Iterable[ReservationStatus],
        before: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Reservation]:
        """Reservations newest first (create_time, then id), strictly before `before` when
        given, with their draws."""
        rows = await self._connection.fetch(
            _PAGE, account_id, sorted(s.value for s in statuses) or None,
            before[0] if before else None, before[1] if before else None, limit,
        )
        return await self._with_draws(rows)

    async def _with_draws(self, rows: list[Any]) -> list[Reservation]:
        found = [columns.reservation(row) for row in rows]
        if not found:
            return []
        draws = await self.draws_of([r.reservation_id for r in found])
        return [dataclasses.replace(r, draws=draws.get(r.reservation_id, ())) for r in found]
