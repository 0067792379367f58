"""Repositories: the only place that writes SQL. Each runs its statements on the raw asyncpg
connection under the unit of work's pooled SQLAlchemy connection, in its transaction.

Balance changes are conditional UPDATEs on the fixed account row (`WHERE balance - reserved >=
...`), hold transitions are compare-and-set on status. Rows come back as domain dataclasses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import operator
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from credits_service.domain.errors import TransientConflict
from credits_service.domain.lots import LotChange
from credits_service.domain.model import (
    BalanceSnapshot,
    EntryType,
    GrantType,
    LedgerEntry,
    Lot,
    LotDraw,
    Reservation,
    ReservationStatus,
)

_ACCOUNT_COLUMNS = (
    "account_id, balance, reserved, active_reservation_count, lifetime_granted, lifetime_used, "
    "lifetime_expired"
)
# The group statements read balances by position: BalanceSnapshot(*row[i:i + 7]).
if _ACCOUNT_COLUMNS.replace(" ", "").split(",") != [
        f.name for f in dataclasses.fields(BalanceSnapshot)]:
    raise ImportError("_ACCOUNT_COLUMNS must list BalanceSnapshot's fields in order")
# The same columns of an UPDATE's target aliased `a`, for its RETURNING clause
_A_ACCOUNT_COLUMNS = ", ".join("a." + c.strip() for c in _ACCOUNT_COLUMNS.split(","))
_ENTRY_COLUMNS = (
    "entry_id, account_id, entry_type, grant_type, amount, balance_after, "
    "reservation_id::text AS reservation_id, reason, metadata::text AS metadata, actor, "
    "create_time, lot_id"
)
_RESERVATION_COLUMNS = (
    "reservation_id::text AS reservation_id, account_id, amount, status, committed_amount, "
    "create_time, expire_time, finish_time, metadata::text AS metadata, release_reason"
)
_LOT_COLUMNS = (
    "l.lot_id, l.account_id, l.source_type, l.priority, l.expire_time, l.amount, l.remaining, "
    "l.held, l.expired_time IS NOT NULL AS expired, l.create_time, "
    "(SELECT e.entry_id FROM ledger_entries e WHERE e.lot_id = l.lot_id "
    "AND e.entry_type = 'GRANT') AS grant_entry_id"
)
# Consumption order (credits_service/domain/lots.py); expire_time ascending puts NULLs last.
_CONSUMPTION_ORDER = "l.priority, l.expire_time, l.lot_id"
# Draws with their lots' consumption order columns, for a FROM clause: `d` the draw, `l` its
# lot. Each lot is found by its primary key, once per draw: the LIMIT keeps the planner from
# joining the two tables wholesale. Until autovacuum first analyzed reservation_lots (a new
# database's first minute or so), the planner took each hold for about 200 draws and answered
# a plain join with a hash join over a sequential scan of every lot, once per hold: 7.6 ms
# instead of 0.46 ms for a group of 20 Commits over 10,000 lots. Once analyzed, both plan
# alike.
_DRAWS_AND_LOTS = """reservation_lots d CROSS JOIN LATERAL (
        SELECT l.lot_id, l.priority, l.expire_time FROM credit_lots l
         WHERE l.lot_id = d.lot_id LIMIT 1) l"""
_DRAWS_OF = f"""
    SELECT d.reservation_id::text AS reservation_id, d.lot_id, d.held, d.consumed
      FROM {_DRAWS_AND_LOTS}
     WHERE d.reservation_id = ANY(CAST(:ids AS uuid[]))
     ORDER BY d.reservation_id, {_CONSUMPTION_ORDER}"""
# Marks the (locked) accounts' lots past expire_time as expired, keeping their held credits.
_EXPIRE_DUE = """
    UPDATE credit_lots l
       SET remaining = l.held, expired_time = credits_now()
      FROM (SELECT lot_id, remaining - held AS unheld FROM credit_lots
             WHERE account_id = ANY({account_ids}) AND expired_time IS NULL
               AND expire_time <= credits_now()) due
     WHERE l.lot_id = due.lot_id AND l.expired_time IS NULL
    RETURNING l.account_id, l.lot_id, due.unheld, l.expire_time"""
# For a lateral join on w (account_id, amount > 0): the account's unexpired lots with unheld
# credits in consumption order, (lot_id, free, running total), as many as cover w.amount.
# Each such lot has at least one free credit, so the first w.amount of them always cover it:
# the LIMIT lets the scan of the consumption-order index stop there instead of reading and
# sorting every lot of the account (one lot instead of 6,000 for a hold of 1 credit). The
# unexpired test is written with coalesce, not as "IS NULL OR >", which the planner answered
# with a BitmapOr over a second index for every account (2.5 instead of 3.0 ms for 490).
_FREE_LOTS = f"""
    SELECT lot_id, free, running FROM (
        SELECT l.lot_id, l.free,
               sum(l.free) OVER (ORDER BY {_CONSUMPTION_ORDER} ROWS UNBOUNDED PRECEDING)
                   AS running
          FROM (SELECT l.lot_id, l.remaining - l.held AS free, l.priority, l.expire_time
                  FROM credit_lots l
                 WHERE l.account_id = w.account_id AND l.remaining > 0
                   AND l.remaining > l.held AND l.expired_time IS NULL
                   AND coalesce(l.expire_time, 'infinity') > credits_now()
                 ORDER BY {_CONSUMPTION_ORDER}
                 LIMIT w.amount) l) x
     WHERE running - free < w.amount"""


_NAMED_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.cache
def _positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """`sql` with its :name parameters numbered as asyncpg takes them ($1, $2, ...; a name
    used twice keeps its number), and the names in number order. Casts (::type) are left
    alone; a string literal holding ":word" would not be, so such a value goes as a parameter."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return _NAMED_PARAMETER.sub(number, sql), tuple(names)


async def _fetch_named(driver: Any, sql: str, params: Mapping[str, Any]) -> list[Any]:
    """Run `sql` (with :name parameters) on the raw asyncpg connection under the unit of work's
    SQLAlchemy one: the unit of work's transaction, without SQLAlchemy's per-statement work
    (much of a Grant's server CPU, most of a Release's, went there)."""
    positional, names = _positional(sql)
    return await driver.fetch(positional, *[params[name] for name in names], record_class=_Row)


def _json(metadata: Mapping[str, str]) -> str:
    return orjson.dumps(dict(metadata)).decode()  # for jsonb, which orders keys itself


def _balance(row: Any) -> BalanceSnapshot:
    return BalanceSnapshot(
        account_id=row.account_id,
        balance=row.balance,
        reserved=row.reserved,
        active_reservation_count=row.active_reservation_count,
        lifetime_granted=row.lifetime_granted,
        lifetime_used=row.lifetime_used,
        lifetime_expired=row.lifetime_expired,
    )


def _entry(row: Any) -> LedgerEntry:
    return LedgerEntry(
        entry_id=row.entry_id,
        account_id=row.account_id,
        entry_type=EntryType(row.entry_type),
        grant_type=GrantType(row.grant_type) if row.grant_type else None,
        amount=row.amount,
        balance_after=row.balance_after,
        reservation_id=row.reservation_id,
        reason=row.reason,
        metadata=json.loads(row.metadata),
        actor=row.actor,
        create_time=row.create_time,
        lot_id=row.lot_id,
    )


def _lot(row: Any) -> Lot:
    return Lot(
        lot_id=row.lot_id,
        account_id=row.account_id,
        source_type=GrantType(row.source_type) if row.source_type else None,
        priority=row.priority,
        expire_time=row.expire_time,
        amount=row.amount,
        remaining=row.remaining,
        held=row.held,
        expired=row.expired,
        grant_entry_id=row.grant_entry_id,
        create_time=row.create_time,
    )


def _reservation(row: Any, draws: tuple[LotDraw, ...] = ()) -> Reservation:
    return Reservation(
        reservation_id=row.reservation_id,
        account_id=row.account_id,
        amount=row.amount,
        status=ReservationStatus(row.status),
        committed_amount=row.committed_amount,
        create_time=row.create_time,
        expire_time=row.expire_time,
        finish_time=row.finish_time,
        metadata=json.loads(row.metadata),
        draws=draws,
        release_reason=row.release_reason,
    )


class AccountRepository:
    def __init__(self, driver: Any) -> None:
        self._driver = driver  # the asyncpg connection under the unit of work's (_fetch_named)

    async def _one(self, sql: str, **params: Any) -> BalanceSnapshot | None:
        rows = await _fetch_named(self._driver, sql, params)
        return _balance(rows[0]) if rows else None

    async def get(self, account_id: str) -> BalanceSnapshot | None:
        return await self._one(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE account_id = :account_id",
            account_id=account_id,
        )

    async def lock(self, account_ids: Iterable[str]) -> dict[str, BalanceSnapshot]:
        """Lock the accounts for this transaction (every change to an account's lots happens
        under its lock), in one order (account_id) so that two transactions locking several
        never deadlock on them."""
        rows = await _fetch_named(
            self._driver,
            f"""
            SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE account_id = ANY(:account_ids)
             ORDER BY account_id FOR UPDATE
            """,
            {"account_ids": sorted(set(account_ids))},
        )
        return {row.account_id: _balance(row) for row in rows}

    async def credit(
        self, account_id: str, amount: int, balance_max: int
    ) -> BalanceSnapshot | None:
        """Add `amount`, creating the account; None if the balance would pass `balance_max`."""
        return await self._one(
            f"""
            INSERT INTO accounts AS a (account_id, balance, lifetime_granted)
            VALUES (:account_id, :amount, :amount)
            ON CONFLICT (account_id) DO UPDATE
               SET balance = a.balance + EXCLUDED.balance,
                   lifetime_granted = a.lifetime_granted + EXCLUDED.lifetime_granted,
                   update_time = credits_now()
             WHERE a.balance + EXCLUDED.balance <= :balance_max
            RETURNING {_ACCOUNT_COLUMNS}
            """,
            account_id=account_id,
            amount=amount,
            balance_max=balance_max,
        )

    async def capture(self, account_id: str, held: int, amount: int) -> BalanceSnapshot | None:
        """Turn a hold of `held` into usage of `amount`; None if available cannot cover it."""
        return await self._one(
            f"""
            UPDATE accounts
               SET balance = balance - :amount,
                   reserved = reserved - :held,
                   active_reservation_count = active_reservation_count - 1,
                   lifetime_used = lifetime_used + :amount,
                   update_time = credits_now()
             WHERE account_id = :account_id AND balance - :amount >= reserved - :held
            RETURNING {_ACCOUNT_COLUMNS}
            """,
            account_id=account_id,
            held=held,
            amount=amount,
        )

    async def unhold(self, holds: Mapping[str, tuple[int, int]]) -> dict[str, BalanceSnapshot]:
        """Give holds back to available: per account, (credits held, number of holds)."""
        rows = await _fetch_named(
            self._driver,
            f"""
            UPDATE accounts a
               SET reserved = a.reserved - h.held,
                   active_reservation_count = a.active_reservation_count - h.holds,
                   update_time = credits_now()
              FROM unnest(CAST(:account_ids AS text[]), CAST(:held AS bigint[]),
                          CAST(:holds AS bigint[])) AS h (account_id, held, holds)
             WHERE a.account_id = h.account_id AND a.account_id = ANY(:account_ids)
            RETURNING {_A_ACCOUNT_COLUMNS}
            """,
            {
                "account_ids": list(holds),
                "held": [held for held, _ in holds.values()],
                "holds": [count for _, count in holds.values()],
            },
        )
        balances = {row.account_id: _balance(row) for row in rows}
        assert len(balances) == len(holds), "a hold's account always exists"
        return balances


class LedgerRepository:
    def __init__(self, driver: Any) -> None:
        self._driver = driver  # the asyncpg connection under the unit of work's (_fetch_named)

    async def append(
        self,
        *,
        account_id: str,
        entry_type: EntryType,
        amount: int,
        balance_after: int,
        actor: str,
        grant_type: GrantType | None = None,
        reservation_id: str | None = None,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        lot_id: int | None = None,
    ) -> LedgerEntry:
        (row,) = await _fetch_named(
            self._driver,
            f"""
            INSERT INTO ledger_entries (account_id, entry_type, grant_type, amount,
                balance_after, reservation_id, reason, metadata, actor, lot_id)
            VALUES (:account_id, :entry_type, :grant_type, :amount, :balance_after,
                CAST(:reservation_id AS uuid), :reason, CAST(:metadata AS jsonb), :actor,
                :lot_id)
            RETURNING {_ENTRY_COLUMNS}
            """,
            {
                "account_id": account_id,
                "entry_type": entry_type.value,
                "grant_type": grant_type.value if grant_type else None,
                "amount": amount,
                "balance_after": balance_after,
                "reservation_id": reservation_id,
                "reason": reason,
                "metadata": _json(metadata or {}),
                "actor": actor,
                "lot_id": lot_id,
            },
        )
        return _entry(row)

    async def write_off(
        self, write_offs: list[tuple[str, int, int, str | None]], actor: str
    ) -> dict[str, BalanceSnapshot]:
        """Write off expired credits, given as (account_id, lot_id, amount, reservation_id or
        None) in the order their EXPIRY entries are to follow one another: one statement takes
        them off each account's balance and appends the entries with running balances."""
        rows = await _fetch_named(
            self._driver,
            f"""
            WITH w AS (
                SELECT * FROM unnest(CAST(:account_ids AS text[]), CAST(:lot_ids AS bigint[]),
                                     CAST(:amounts AS bigint[]), CAST(:holds AS uuid[]))
                              WITH ORDINALITY AS w (account_id, lot_id, amount,
                                                    reservation_id, position)
            ), totals AS (
                SELECT account_id, sum(amount) AS total FROM w GROUP BY account_id
            ), updated AS (
                UPDATE accounts a
                   SET balance = a.balance - t.total,
                       lifetime_expired = a.lifetime_expired + t.total,
                       update_time = credits_now()
                  FROM totals t
                 WHERE a.account_id = t.account_id AND a.account_id = ANY(:account_ids)
                RETURNING {_A_ACCOUNT_COLUMNS},
                          a.balance + t.total AS balance_before
            ), entries AS (
                INSERT INTO ledger_entries (account_id, entry_type, amount, balance_after,
                                            reservation_id, actor, lot_id)
                SELECT w.account_id, 'EXPIRY', -w.amount,
                       u.balance_before - sum(w.amount) OVER (
                           PARTITION BY w.account_id ORDER BY w.position),
                       w.reservation_id, :actor, w.lot_id
                  FROM w JOIN updated u USING (account_id)
                 ORDER BY w.position
            )
            SELECT * FROM updated
            """,
            {
                "account_ids": [w[0] for w in write_offs],
                "lot_ids": [w[1] for w in write_offs],
                "amounts": [w[2] for w in write_offs],
                "holds": [w[3] for w in write_offs],
                "actor": actor,
            },
        )
        return {row.account_id: _balance(row) for row in rows}

    async def usage_of(self, reservation_id: str) -> LedgerEntry | None:
        rows = await _fetch_named(
            self._driver,
            f"SELECT {_ENTRY_COLUMNS} FROM ledger_entries "
            "WHERE reservation_id = CAST(:reservation_id AS uuid) AND entry_type = 'USAGE'",
            {"reservation_id": reservation_id},
        )
        return _entry(rows[0]) if rows else None

    async def page(
        self,
        *,
        account_id: str,
        before_entry_id: int | None,
        entry_types: Iterable[EntryType],
        start_time: datetime | None,
        end_time: datetime | None,
        limit: int,
    ) -> list[LedgerEntry]:
        """Entries newest first, strictly older than `before_entry_id` when given."""
        types = sorted(t.value for t in entry_types) or None
        rows = await _fetch_named(
            self._driver,
            f"""
            SELECT {_ENTRY_COLUMNS} FROM ledger_entries
             WHERE account_id = :account_id
               AND (CAST(:before AS bigint) IS NULL OR entry_id < :before)
               AND (CAST(:types AS text[]) IS NULL OR entry_type = ANY(:types))
               AND (CAST(:start_time AS timestamptz) IS NULL OR create_time >= :start_time)
               AND (CAST(:end_time AS timestamptz) IS NULL OR create_time < :end_time)
             ORDER BY entry_id DESC
             LIMIT :limit
            """,
            {
                "account_id": account_id,
                "before": before_entry_id,
                "types": types,
                "start_time": start_time,
                "end_time": end_time,
                "limit": limit,
            },
        )
        return [_entry(row) for row in rows]


class LotRepository:
    """Credit lots. Every change to an account's lots runs under that account's row lock
    (AccountRepository.lock), so reads made after taking it are current."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver  # the asyncpg connection under the unit of work's (_fetch_named)

    async def now(self) -> datetime:
        """The service clock (credits_now(): the database clock plus any test offset)."""
        (row,) = await _fetch_named(
            self._driver,
            "SELECT credits_now() AS now",
            {},
        )
        return row.now

    async def create(
        self,
        *,
        account_id: str,
        source_type: GrantType,
        priority: int,
        expire_time: datetime | None,
        amount: int,
    ) -> Lot:
        (row,) = await _fetch_named(
            self._driver,
            f"""
            INSERT INTO credit_lots AS l (account_id, source_type, priority,
                                          expire_time, amount, remaining)
            VALUES (:account_id, :source_type, :priority, :expire_time, :amount, :amount)
            RETURNING {_LOT_COLUMNS}
            """,
            {
                "account_id": account_id,
                "source_type": source_type.value,
                "priority": priority,
                "expire_time": expire_time,
                "amount": amount,
            },
        )
        return _lot(row)

    async def expire_due(self, account_ids: Iterable[str]) -> list[tuple[str, int, int]]:
        """Mark the (locked) accounts' lots past expire_time as expired, keeping only their held
        credits; returns (account_id, lot_id, unheld credits to write off) in expiry order.
        Compare-and-set on expired_time: a lot is written off once, whoever gets there first."""
        rows = await _fetch_named(
            self._driver,
            _EXPIRE_DUE.format(account_ids=":account_ids"),
            {"account_ids": sorted(set(account_ids))},
        )
        ordered = sorted(rows, key=lambda r: (r.account_id, r.expire_time, r.lot_id))
        return [(row.account_id, row.lot_id, row.unheld) for row in ordered]

    async def due_accounts(self, limit: int) -> list[str]:
        """Accounts with lots past expire_time not yet written off, soonest first; accounts
        locked by another transaction are left out (it writes their lots off itself)."""
        rows = await _fetch_named(
            self._driver,
            """
            SELECT a.account_id FROM accounts a
             WHERE a.account_id IN (
                    SELECT account_id FROM credit_lots
                     WHERE expired_time IS NULL AND expire_time <= credits_now()
                     ORDER BY expire_time LIMIT :scan)
             ORDER BY a.account_id
             LIMIT :limit
               FOR UPDATE OF a SKIP LOCKED
            """,
            {"scan": limit * 4, "limit": limit},
        )
        return [row.account_id for row in rows]

    async def free_in_order_many(
        self, wanted: Mapping[str, int]
    ) -> dict[str, list[tuple[int, int]]]:
        """Per account, its unexpired lots with unheld credits in consumption order, as
        (lot_id, unheld credits): just as many as it takes to cover the credits wanted."""
        rows = await _fetch_named(
            self._driver,
            f"""
            SELECT w.account_id, s.lot_id, s.free
              FROM unnest(CAST(:account_ids AS text[]), CAST(:amounts AS bigint[]))
                   WITH ORDINALITY AS w (account_id, amount, position)
             CROSS JOIN LATERAL ({_FREE_LOTS}) s
             ORDER BY w.position, s.running
            """,
            {"account_ids": list(wanted), "amounts": list(wanted.values())},
        )
        free: dict[str, list[tuple[int, int]]] = {account_id: [] for account_id in wanted}
        for row in rows:
            free[row.account_id].append((row.lot_id, row.free))
        return free

    async def apply(self, changes: Iterable[LotChange]) -> None:
        """Move each lot's held and remaining credits by the given deltas."""
        changes = [c for c in changes if c.held_delta or c.remaining_delta]
        if not changes:
            return
        rows = await _fetch_named(
            self._driver,
            """
            UPDATE credit_lots l
               SET held = l.held + c.held_delta, remaining = l.remaining + c.remaining_delta
              FROM unnest(CAST(:lot_ids AS bigint[]), CAST(:held AS bigint[]),
                          CAST(:remaining AS bigint[]))
                   AS c (lot_id, held_delta, remaining_delta)
             WHERE l.lot_id = c.lot_id AND l.lot_id = ANY(:lot_ids)
            RETURNING 1
            """,
            {
                "lot_ids": [c.lot_id for c in changes],
                "held": [c.held_delta for c in changes],
                "remaining": [c.remaining_delta for c in changes],
            },
        )
        assert len(rows) == len(changes), "every lot changed exists"

    async def expired_among(self, lot_ids: Iterable[int]) -> set[int]:
        """Which of these lots have expired."""
        rows = await _fetch_named(
            self._driver,
            "SELECT lot_id FROM credit_lots WHERE lot_id = ANY(:lot_ids) "
            "AND expired_time IS NOT NULL",
            {"lot_ids": sorted(set(lot_ids))},
        )
        return {row.lot_id for row in rows}

    async def listing(
        self, account_id: str, limit: int, expiring_within_ms: int | None
    ) -> tuple[list[Lot], int]:
        """The account's lots that still hold credits, in consumption order (at most `limit`),
        and the unheld credits of unexpired lots expiring within the window from now."""
        rows = await _fetch_named(
            self._driver,
            f"""
            SELECT {_LOT_COLUMNS} FROM credit_lots l
             WHERE l.account_id = :account_id AND l.remaining > 0
             ORDER BY {_CONSUMPTION_ORDER} LIMIT :limit
            """,
            {"account_id": account_id, "limit": limit},
        )
        lots = [_lot(row) for row in rows]
        if expiring_within_ms is None:
            return lots, 0
        (row,) = await _fetch_named(
            self._driver,
            """
            SELECT coalesce(sum(remaining - held), 0)::bigint AS expiring
              FROM credit_lots
             WHERE account_id = :account_id AND expired_time IS NULL
               AND expire_time <= credits_now() + :ms * interval '1 millisecond'
            """,
            {"account_id": account_id, "ms": expiring_within_ms},
        )
        return lots, int(row.expiring)


class ReservationRepository:
    def __init__(self, driver: Any) -> None:
        self._driver = driver  # the asyncpg connection under the unit of work's (_fetch_named)

    async def lock(self, reservation_id: str) -> tuple[Reservation, bool] | None:
        """The hold with its draws, locked for this transaction, and whether its expire_time
        has passed."""
        rows = await _fetch_named(
            self._driver,
            f"SELECT {_RESERVATION_COLUMNS}, expire_time <= credits_now() AS is_due "
            "FROM reservations WHERE reservation_id = CAST(:reservation_id AS uuid) "
            "FOR UPDATE",
            {"reservation_id": reservation_id},
        )
        if not rows:
            return None
        row = rows[0]
        draws = await self.draws_of([reservation_id])
        return _reservation(row, draws.get(reservation_id, ())), row.is_due

    async def draws_of(self, reservation_ids: list[str]) -> dict[str, tuple[LotDraw, ...]]:
        """Each hold's draws, in the consumption order of their lots."""
        rows = await _fetch_named(
            self._driver,
            _DRAWS_OF,
            {"ids": reservation_ids},
        )
        draws: dict[str, list[LotDraw]] = {}
        for row in rows:
            draws.setdefault(row.reservation_id, []).append(
                LotDraw(row.lot_id, row.held, row.consumed)
            )
        return {key: tuple(value) for key, value in draws.items()}

    async def record_consumption(
        self, reservation_id: str, draws: tuple[LotDraw, ...], consumed: Mapping[int, int]
    ) -> tuple[LotDraw, ...]:
        """Write what Commit consumed from each lot (lots it took beyond the hold are added with
        nothing held); returns the hold's draws."""
        held = {draw.lot_id: draw.held for draw in draws}
        await _fetch_named(
            self._driver,
            """
            INSERT INTO reservation_lots AS d (reservation_id, lot_id, held, consumed)
            SELECT CAST(:reservation_id AS uuid), c.lot_id, c.held, c.consumed
              FROM unnest(CAST(:lot_ids AS bigint[]), CAST(:held AS bigint[]),
                          CAST(:consumed AS bigint[])) AS c (lot_id, held, consumed)
            ON CONFLICT (reservation_id, lot_id) DO UPDATE SET consumed = EXCLUDED.consumed
            """,
            {
                "reservation_id": reservation_id,
                "lot_ids": list(consumed),
                "held": [held.get(lot_id, 0) for lot_id in consumed],
                "consumed": list(consumed.values()),
            },
        )
        return (await self.draws_of([reservation_id])).get(reservation_id, ())

    async def finish(
        self,
        reservation_ids: list[str],
        status: ReservationStatus,
        *,
        committed_amount: int | None = None,
        release_reason: str = "",
    ) -> dict[str, Reservation]:
        """Compare-and-set ACTIVE -> `status`; holds no longer ACTIVE are left out."""
        rows = await _fetch_named(
            self._driver,
            f"""
            UPDATE reservations
               SET status = :status, committed_amount = :committed_amount,
                   release_reason = :release_reason, finish_time = credits_now()
             WHERE reservation_id = ANY(CAST(:ids AS uuid[])) AND status = 'ACTIVE'
            RETURNING {_RESERVATION_COLUMNS}
            """,
            {
                "ids": reservation_ids,
                "status": status.value,
                "committed_amount": committed_amount,
                "release_reason": release_reason,
            },
        )
        return {row.reservation_id: _reservation(row) for row in rows}

    async def extend(self, reservation_id: str, ttl_ms: int, lifetime_max_ms: int) -> Reservation:
        """Move an ACTIVE (locked) hold's expire_time to now + ttl, never earlier than it was and
        never past create_time + lifetime_max."""
        (row,) = await _fetch_named(
            self._driver,
            f"""
            UPDATE reservations
               SET expire_time = greatest(expire_time, least(
                       credits_now() + :ttl_ms * interval '1 millisecond',
                       create_time + :lifetime_ms * interval '1 millisecond'))
             WHERE reservation_id = CAST(:reservation_id AS uuid) AND status = 'ACTIVE'
            RETURNING {_RESERVATION_COLUMNS}
            """,
            {"reservation_id": reservation_id, "ttl_ms": ttl_ms, "lifetime_ms": lifetime_max_ms},
        )
        return _reservation(row)

    async def lock_due(self, batch_size: int) -> list[Reservation]:
        """Up to `batch_size` ACTIVE holds past expire_time, locked. Holds locked by a Commit or
        Release in flight are skipped, not waited for: that transaction decides them, and the
        next sweep sees them."""
        rows = await _fetch_named(
            self._driver,
            f"""
            SELECT {_RESERVATION_COLUMNS} FROM reservations
             WHERE status = 'ACTIVE' AND expire_time <= credits_now()
             ORDER BY expire_time
             LIMIT :batch_size
               FOR UPDATE SKIP LOCKED
            """,
            {"batch_size": batch_size},
        )
        holds = [_reservation(row) for row in rows]
        if not holds:
            return []
        draws = await self.draws_of([hold.reservation_id for hold in holds])
        return [_with_draws(hold, draws.get(hold.reservation_id, ())) for hold in holds]

    async def page(
        self,
        *,
        account_id: str,
        statuses: Iterable[ReservationStatus],
        before: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Reservation]:
        """Holds newest first (create_time, then id), strictly before `before` when given."""
        rows = await _fetch_named(
            self._driver,
            f"""
            SELECT {_RESERVATION_COLUMNS} FROM reservations
             WHERE account_id = :account_id
               AND (CAST(:statuses AS text[]) IS NULL OR status = ANY(:statuses))
               AND (CAST(:before_time AS timestamptz) IS NULL
                    OR (create_time, reservation_id)
                       < (:before_time, CAST(:before_id AS uuid)))
             ORDER BY create_time DESC, reservation_id DESC
             LIMIT :limit
            """,
            {
                "account_id": account_id,
                "statuses": sorted(s.value for s in statuses) or None,
                "before_time": before[0] if before else None,
                "before_id": before[1] if before else None,
                "limit": limit,
            },
        )
        holds = [_reservation(row) for row in rows]
        if not holds:
            return []
        draws = await self.draws_of([hold.reservation_id for hold in holds])
        return [_with_draws(hold, draws.get(hold.reservation_id, ())) for hold in holds]


def _with_draws(hold: Reservation, draws: tuple[LotDraw, ...]) -> Reservation:
    return dataclasses.replace(hold, draws=draws)


class IdempotencyRepository:
    def __init__(self, driver: Any) -> None:
        self._driver = driver  # the asyncpg connection under the unit of work's (_fetch_named)

    async def claim(self, scope: str, key: str, method: str, request_hash: bytes) -> bool:
        """Insert the key for this transaction. False if it exists: a concurrent holder of the
        same key is waited for (unique index), so a False always sees a finished record."""
        rows = await _fetch_named(
            self._driver,
            """
            INSERT INTO idempotency_keys (scope, idempotency_key, method, request_hash)
            VALUES (:scope, :key, :method, :request_hash)
            ON CONFLICT (scope, idempotency_key) DO NOTHING
            RETURNING 1
            """,
            {"scope": scope, "key": key, "method": method, "request_hash": request_hash},
        )
        return bool(rows)

    async def get(self, scope: str, key: str) -> tuple[bytes, str | None] | None:
        """(request_hash, stored response as JSON text) of a finished key."""
        rows = await _fetch_named(
            self._driver,
            "SELECT request_hash, response FROM idempotency_keys "
            "WHERE scope = :scope AND idempotency_key = :key",
            {"scope": scope, "key": key},
        )
        if not rows:
            return None
        return bytes(rows[0].request_hash), rows[0].response

    async def complete(self, scope: str, key: str, response: str) -> None:
        """Store the response (JSON text) of a claimed key."""
        await _fetch_named(
            self._driver,
            "UPDATE idempotency_keys SET response = :response "
            "WHERE scope = :scope AND idempotency_key = :key",
            {"scope": scope, "key": key, "response": response},
        )

    async def purge(self, older_than_s: float, batch_size: int) -> int:
        rows = await _fetch_named(
            self._driver,
            """
            DELETE FROM idempotency_keys WHERE ctid IN (
                SELECT ctid FROM idempotency_keys
                 WHERE create_time < credits_now() - :older_than_s * interval '1 second'
                 LIMIT :batch_size)
            RETURNING 1
            """,
            {"older_than_s": older_than_s, "batch_size": batch_size},
        )
        return len(rows)


class _Row(asyncpg.Record):
    """A raw asyncpg row whose columns read as attributes too, like SQLAlchemy's rows (but
    for columns named like Record's methods: keys, values, items, get)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


_NO_ACCOUNT_COLUMNS = (
    "NULL::text, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, "
    "NULL::bigint"
)


def _key_arguments(method: str, responses: list[tuple[str, str, bytes, str]]) -> list[Any]:
    """_STORE_KEYS' arguments: the (scope, key, request_hash, response) keys' arrays in key
    order, the method third."""
    ordered = sorted(responses, key=_SCOPE_AND_KEY)
    scopes, keys, hashes, texts = ([r[n] for r in ordered] for n in range(4))
    return [scopes, keys, method, hashes, texts]


_MICROSECOND = timedelta(microseconds=1)


_SCOPE_AND_KEY = operator.itemgetter(0, 1)


_FIND_AND_LOCK = f"""
    WITH k AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
               AS k (scope, idempotency_key, account_id)
    ), stored AS MATERIALIZED (
        SELECT i.scope, i.idempotency_key, i.request_hash, i.response
          FROM k JOIN idempotency_keys i
            ON i.scope = k.scope AND i.idempotency_key = k.idempotency_key
    ), fresh AS MATERIALIZED (  -- one array, so the accounts are found in one index scan
        SELECT array_agg(k.account_id) AS account_ids FROM k
         WHERE NOT EXISTS (SELECT FROM stored s WHERE s.scope = k.scope
                                                 AND s.idempotency_key = k.idempotency_key)
    ), locked AS MATERIALIZED (
        SELECT {_ACCOUNT_COLUMNS} FROM accounts a
         WHERE a.account_id = ANY((SELECT account_ids FROM fresh)::text[])
         ORDER BY a.account_id
           FOR UPDATE OF a
    )
    SELECT NULL::text AS scope, NULL::text AS idempotency_key, NULL::bytea AS request_hash,
           NULL::text AS response, {_ACCOUNT_COLUMNS}
      FROM locked
    UNION ALL
    SELECT scope, idempotency_key, request_hash, response, {_NO_ACCOUNT_COLUMNS} FROM stored
    """

# The keys a group decided, each with its response. _key_arguments sorts them by (scope, key),
# so two transactions taking keys of each other wait in one order (sorting in SQL costs as
# much as the rest of the insert: the rows are wide). A key another transaction stored since
# FIND_AND_LOCK is waited for, then violates the primary key (_keys_taken). A plain INSERT:
# ON CONFLICT DO NOTHING would probe the index once more per key, about 2.8 us of 15 for a
# key in a group of 500. The method, one for all, is a scalar: asyncpg encodes an array
# element by element on the event loop.
_STORE_KEYS = """
    INSERT INTO idempotency_keys (scope, idempotency_key, method, request_hash, response)
    SELECT scope, idempotency_key, {2}::text, request_hash, response
      FROM unnest({0}::text[], {1}::text[], {3}::bytea[], {4}::text[])
           AS r (scope, idempotency_key, request_hash, response)
    """

_KEY_TAKEN = "an idempotency key was stored by a concurrent transaction"


@contextlib.contextmanager
def _keys_taken() -> Iterator[None]:
    """A key a concurrent transaction stored (another shard's, the unary group's, a replica's)
    fails the statement and aborts the transaction: TransientConflict, so the unit of work
    rolls back and the retry replays that key."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "pk_idempotency_keys":
            raise
        raise TransientConflict(_KEY_TAKEN) from exc


_COMPLETE = _STORE_KEYS.format("$1", "$2", "$3", "$4", "$5")

_EXPIRE_AND_FIND = f"""
    WITH expired AS ({_EXPIRE_DUE.format(account_ids="$1::text[]")})
    SELECT 0 AS kind, account_id, lot_id, unheld AS credits, expire_time AS at,
           0::bigint AS position, 0::numeric AS running
      FROM expired
    UNION ALL
    SELECT 1, w.account_id, s.lot_id, s.free, NULL, w.position, s.running
      FROM unnest($2::text[], $3::bigint[])
           WITH ORDINALITY AS w (account_id, amount, position)
     CROSS JOIN LATERAL ({_FREE_LOTS}) s
    UNION ALL
    SELECT 2, NULL, NULL, NULL, credits_now(), NULL, NULL
     ORDER BY 1, 6, 7, 2, 5, 3
    """

_PLACE = f"""
    WITH lots_held AS (
        UPDATE credit_lots l SET held = l.held + c.held
          FROM unnest($1::bigint[], $2::bigint[]) AS c (lot_id, held)
         WHERE l.lot_id = c.lot_id AND l.lot_id = ANY($1::bigint[])
        RETURNING 1
    ), held AS (
        UPDATE accounts a
           SET reserved = a.reserved + h.held,
               active_reservation_count = a.active_reservation_count + h.holds,
               update_time = credits_now()
          FROM unnest($3::text[], $4::bigint[], $5::bigint[]) AS h (account_id, held, holds)
         WHERE a.account_id = h.account_id AND a.account_id = ANY($3::text[])
           AND a.balance - a.reserved >= h.held
        RETURNING {_A_ACCOUNT_COLUMNS}
    ), placed AS (  -- $9: the holds' one create_time; expire_time from it by the microsecond
        INSERT INTO reservations (reservation_id, account_id, amount, status,
                                  create_time, expire_time, metadata, actor)
        SELECT h.reservation_id, h.account_id, h.amount, 'ACTIVE', $9::timestamptz,
               $9::timestamptz + h.ttl_us * interval '1 microsecond',
               CAST(h.metadata AS jsonb), h.actor
          FROM unnest($6::uuid[], $7::text[], $8::bigint[], $10::bigint[], $11::text[],
                      $12::text[])
               AS h (reservation_id, account_id, amount, ttl_us, metadata, actor)
        RETURNING 1
    ), drawn AS (
        INSERT INTO reservation_lots (reservation_id, lot_id, held)
        SELECT * FROM unnest($13::uuid[], $14::bigint[], $15::bigint[])
        RETURNING 1
    ), completed AS ({_STORE_KEYS.format("$16", "$17", "$18", "$19", "$20")}
        RETURNING 1
    )
    SELECT {_ACCOUNT_COLUMNS}, 0, 0, 0, 0 FROM held
    UNION ALL
    SELECT {_NO_ACCOUNT_COLUMNS}, (SELECT count(*) FROM lots_held),
           (SELECT count(*) FROM placed), (SELECT count(*) FROM drawn),
           (SELECT count(*) FROM completed)
    """

_LOCK_FOR_COMMIT = f"""
    WITH h AS MATERIALIZED (
        SELECT {_RESERVATION_COLUMNS}, expire_time <= credits_now() AS is_due
          FROM reservations WHERE reservation_id = ANY($1::uuid[])
         ORDER BY reservation_id FOR UPDATE
    ), a AS MATERIALIZED (
        SELECT {_ACCOUNT_COLUMNS} FROM accounts
         WHERE account_id IN (SELECT account_id FROM h
                               WHERE status = 'ACTIVE' AND NOT is_due)
         ORDER BY account_id FOR UPDATE
    )
    SELECT h.*, d.lot_ids, d.held, d.consumed, credits_now() AS now,
           {_NO_ACCOUNT_COLUMNS}
      FROM h LEFT JOIN LATERAL (
           SELECT array_agg(d.lot_id ORDER BY {_CONSUMPTION_ORDER}) AS lot_ids,
                  array_agg(d.held ORDER BY {_CONSUMPTION_ORDER}) AS held,
                  array_agg(d.consumed ORDER BY {_CONSUMPTION_ORDER}) AS consumed
             FROM {_DRAWS_AND_LOTS}
            WHERE d.reservation_id = h.reservation_id::uuid) d ON true
    UNION ALL
    SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, {_ACCOUNT_COLUMNS}
      FROM a
    """

_EXPIRE_AND_CHECK = f"""
    WITH expired AS ({_EXPIRE_DUE.format(account_ids="$1::text[]")})
    SELECT 0 AS kind, account_id, lot_id, unheld, expire_time FROM expired
    UNION ALL
    SELECT 1, NULL, lot_id, NULL, NULL FROM credit_lots
     WHERE lot_id = ANY($2::bigint[]) AND expired_time IS NOT NULL
     ORDER BY 1, 2, 5, 3
    """

# The group writes' first step: lots $1 move their held and remaining credits by $2 and $3.
_LOTS_CHANGED = """lots_changed AS (
        UPDATE credit_lots l
           SET held = l.held + c.held_delta, remaining = l.remaining + c.remaining_delta
          FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])
               AS c (lot_id, held_delta, remaining_delta)
         WHERE l.lot_id = c.lot_id AND l.lot_id = ANY($1::bigint[])
        RETURNING 1
    )"""

_CAPTURE = f"""
    WITH {_LOTS_CHANGED}, captured AS (
        UPDATE accounts a
           SET balance = a.balance - c.used,
               reserved = a.reserved - c.held,
               active_reservation_count = a.active_reservation_count - c.holds,
               lifetime_used = a.lifetime_used + c.used,
               update_time = credits_now()
          FROM unnest($4::text[], $5::bigint[], $6::bigint[], $7::bigint[])
               AS c (account_id, held, used, holds)
         WHERE a.account_id = c.account_id AND a.account_id = ANY($4::text[])
           AND a.balance - c.used >= a.reserved - c.held
        RETURNING {_A_ACCOUNT_COLUMNS}
    ), finished AS (
        UPDATE reservations r
           SET status = 'COMMITTED', committed_amount = c.amount,
               finish_time = credits_now()
          FROM unnest($8::uuid[], $9::bigint[]) AS c (reservation_id, amount)
         WHERE r.reservation_id = c.reservation_id
           AND r.reservation_id = ANY($8::uuid[]) AND r.status = 'ACTIVE'
        RETURNING r.reservation_id
    ), recorded AS (
        UPDATE reservation_lots d
           SET consumed = u.consumed
          FROM unnest($10::uuid[], $11::bigint[], $12::bigint[])
               AS u (reservation_id, lot_id, consumed)
         WHERE d.reservation_id = u.reservation_id AND d.lot_id = u.lot_id
           AND d.reservation_id = ANY($10::uuid[])
           AND u.reservation_id IN (SELECT reservation_id FROM finished)
        RETURNING 1
    ), entries AS (
        INSERT INTO ledger_entries (account_id, entry_type, amount, balance_after,
                                    reservation_id, metadata, actor)
        SELECT u.account_id, 'USAGE', -u.amount, u.balance_after, u.reservation_id,
               CAST(u.metadata AS jsonb), u.actor
          FROM unnest($13::text[], $14::bigint[], $15::bigint[], $16::uuid[],
                      $17::text[], $18::text[])
               WITH ORDINALITY AS u (account_id, amount, balance_after, reservation_id,
                                     metadata, actor, position)
         ORDER BY u.position
        RETURNING reservation_id::text AS reservation_id, entry_id
    )
    SELECT 0 AS kind, {_ACCOUNT_COLUMNS} FROM captured
    UNION ALL
    SELECT 1, reservation_id, entry_id, NULL, NULL, NULL, NULL, NULL FROM entries
    UNION ALL
    SELECT 2, NULL, (SELECT count(*) FROM lots_changed), (SELECT count(*) FROM finished),
           (SELECT count(*) FROM recorded), NULL, NULL, NULL
    """

# The grouped Release's write: what each lot holds no more, per account the credits and holds
# it holds no more, and each hold's compare-and-set from ACTIVE to RELEASED with its reason.
_RELEASE = f"""
    WITH {_LOTS_CHANGED}, unheld AS (
        UPDATE accounts a
           SET reserved = a.reserved - c.held,
               active_reservation_count = a.active_reservation_count - c.holds,
               update_time = credits_now()
          FROM unnest($4::text[], $5::bigint[], $6::bigint[]) AS c (account_id, held, holds)
         WHERE a.account_id = c.account_id AND a.account_id = ANY($4::text[])
        RETURNING {_A_ACCOUNT_COLUMNS}
    ), finished AS (
        UPDATE reservations r
           SET status = 'RELEASED', release_reason = c.reason, finish_time = credits_now()
          FROM unnest($7::uuid[], $8::text[]) AS c (reservation_id, reason)
         WHERE r.reservation_id = c.reservation_id
           AND r.reservation_id = ANY($7::uuid[]) AND r.status = 'ACTIVE'
        RETURNING 1
    )
    SELECT {_ACCOUNT_COLUMNS}, NULL::bigint, NULL::bigint FROM unheld
    UNION ALL
    SELECT {_NO_ACCOUNT_COLUMNS}, (SELECT count(*) FROM lots_changed),
           (SELECT count(*) FROM finished)
    """


class HoldsRepository:
    """The group transactions' statements, on the raw asyncpg connection, each spanning tables.
    A grouped CheckAndReserve (Ledger.check_and_reserve_many) takes three: find the keys
    stored already and lock the accounts of the others; expire due lots and find free ones;
    write the holds with everything they change, the new keys with their responses included.
    A grouped Commit (Ledger._commit_many) takes three: lock the holds and their accounts;
    expire due lots and check give-backs; write the captures. A grouped Release
    (Ledger._release_many) takes the same first two, then writes the releases. The same rows
    and locks as the one-table statements of the other repositories, in fewer round trips.
    The statements (_FIND_AND_LOCK and the others above) are built once, at import."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver  # the asyncpg connection under the unit of work's

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        return await self._driver.fetch(sql, *args, record_class=_Row)

    async def find_and_lock(
        self, keys: list[tuple[str, str, str]]
    ) -> tuple[dict[tuple[str, str], tuple[bytes, str]], dict[str, BalanceSnapshot]]:
        """Find (scope, key, account_id) keys stored already (IdempotencyRepository.get does one),
        then lock the accounts of the others, in account order (AccountRepository.lock).
        Returns (request_hash, response as JSON text) by (scope, key) of the keys found, and the
        locked accounts' balances (an unknown account is left out). A key is not taken here:
        place or complete store it with its response, or roll back."""
        rows = await self._fetch(
            _FIND_AND_LOCK, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
        )
        stored = {(row[0], row[1]): (bytes(row[2]), row[3]) for row in rows if row[0] is not None}
        # _ACCOUNT_COLUMNS are BalanceSnapshot's fields in order: read by position, not name
        return stored, {row[4]: BalanceSnapshot(*row[4:11]) for row in rows if row[0] is None}

    async def expire_and_find(
        self, account_ids: list[str], wanted: Mapping[str, int]
    ) -> tuple[list[tuple[str, int, int]], dict[str, list[tuple[int, int]]], datetime]:
        """For (locked) accounts: LotRepository.expire_due, and LotRepository.free_in_order_many
        for the credits `wanted` per account, and the service clock (credits_now()), at once.
        The free lots leave out the lots this statement expires, as they would after it."""
        rows = await self._fetch(
            _EXPIRE_AND_FIND,
            sorted(set(account_ids)), list(wanted), list(wanted.values()),
        )
        expired: list[tuple[str, int, int]] = []
        free: dict[str, list[tuple[int, int]]] = {account_id: [] for account_id in wanted}
        now: datetime | None = None
        for row in rows:
            kind = row[0]
            if kind == 1:
                free[row[1]].append((row[2], row[3]))
            elif kind == 0:
                expired.append((row[1], row[2], row[3]))
            else:
                now = row[4]
        assert now is not None
        return expired, free, now

    async def place(
        self,
        lot_holds: Mapping[int, int],
        per_account: Mapping[str, tuple[int, int]],
        holds: list[Reservation],
        actors: list[str],
        method: str,
        responses: list[tuple[str, str, bytes, str]],
    ) -> tuple[dict[str, BalanceSnapshot], tuple[int, int, int, int]]:
        """Write decided holds at once: the credits each lot newly holds, per account the
        (credits, number of holds) it holds if available covers them (a conditional write, as
        AccountRepository.capture), the ACTIVE holds with their draws, and the idempotency keys
        (scope, key, request_hash, response) of `method` the group decided (complete). The
        holds share one create_time. Returns the accounts' new balances (those available did
        not cover are left out) and the rows written: (lots, holds, draws, keys)."""
        draws = [(hold.reservation_id, draw.lot_id, draw.held)
                 for hold in holds for draw in hold.draws]
        account_ids = list(per_account)
        created = holds[0].create_time
        if any(hold.create_time != created for hold in holds):
            raise ValueError("holds placed together share one create_time")
        with _keys_taken():
            rows = await self._fetch(
                _PLACE,
                list(lot_holds), list(lot_holds.values()),
                account_ids, [held for held, _ in per_account.values()],
                [count for _, count in per_account.values()],
                [hold.reservation_id for hold in holds], [hold.account_id for hold in holds],
                [hold.amount for hold in holds], created,
                [(hold.expire_time - created) // _MICROSECOND for hold in holds],
                [_json(hold.metadata) for hold in holds], actors,
                [d[0] for d in draws], [d[1] for d in draws], [d[2] for d in draws],
                *_key_arguments(method, responses),
            )
        balances = {row[0]: BalanceSnapshot(*row[:7]) for row in rows if row[0] is not None}
        counts = next(row for row in rows if row[0] is None)
        return balances, (counts[7], counts[8], counts[9], counts[10])

    async def complete(self, method: str, responses: list[tuple[str, str, bytes, str]]) -> None:
        """Store the idempotency keys (scope, key, request_hash, response) of `method` a group
        decided, when it placed no hold. A key another transaction stored since find_and_lock
        raises TransientConflict."""
        with _keys_taken():
            await self._driver.execute(_COMPLETE, *_key_arguments(method, responses))

    async def lock_for_commit(
        self, reservation_ids: list[str]
    ) -> tuple[dict[str, tuple[Reservation, bool]], dict[str, BalanceSnapshot], datetime]:
        """For the grouped Commit: lock the holds (ReservationRepository.lock, in
        reservation_id order) with their draws, then lock the accounts of
        the holds still ACTIVE and not due (AccountRepository.lock), and the service clock,
        at once. A hold's draws are read with it: they change only when it leaves ACTIVE."""
        rows = await self._fetch(_LOCK_FOR_COMMIT, sorted(set(reservation_ids)))
        holds: dict[str, tuple[Reservation, bool]] = {}
        balances: dict[str, BalanceSnapshot] = {}
        now: datetime | None = None
        for row in rows:
            if row[0] is None:
                balances[row[15]] = BalanceSnapshot(*row[15:22])
                continue
            now = row[14]
            draws = tuple(LotDraw(*draw) for draw in zip(row[11] or (), row[12] or (),
                                                          row[13] or (), strict=True))
            holds[row[0]] = (_reservation(row, draws), row[10])
        return holds, balances, now or datetime.min

    async def expire_and_check(
        self, account_ids: list[str], lot_ids: list[int]
    ) -> tuple[list[tuple[str, int, int]], set[int]]:
        """For (locked) accounts: LotRepository.expire_due, and which of `lot_ids` are expired
        after it (LotRepository.expired_among), at once."""
        rows = await self._fetch(_EXPIRE_AND_CHECK, sorted(set(account_ids)), sorted(set(lot_ids)))
        wanted = set(lot_ids)  # kind 1 rows are among them already; kind 0 rows may not be
        expired = [(row[1], row[2], row[3]) for row in rows if row[0] == 0]
        return expired, {row[2] for row in rows if row[0] == 1 or row[2] in wanted}

    async def capture(
        self,
        lot_changes: Mapping[int, tuple[int, int]],
        captures: Mapping[str, tuple[int, int, int]],
        commits: list[tuple[str, int]],
        consumed: list[tuple[str, int, int]],
        usages: list[tuple[str, int, int, str, Mapping[str, str], str]],
    ) -> tuple[dict[str, BalanceSnapshot], dict[str, int], tuple[int, int, int]]:
        """Write decided Commits at once: each lot's (held, remaining) deltas
        (LotRepository.apply); per account (credits held, credits used, number of holds) if
        available covers it (as AccountRepository.capture does one); the holds' compare-and-set
        from ACTIVE to COMMITTED with what each consumed per lot (ReservationRepository.finish
        and record_consumption); their USAGE entries (LedgerRepository.append). Returns the
        accounts' new balances, the entry ids by reservation_id and the rows written: (lots,
        holds, draws)."""
        rows = await self._fetch(
            _CAPTURE,
            list(lot_changes), [held for held, _ in lot_changes.values()],
            [remaining for _, remaining in lot_changes.values()],
            list(captures), [c[0] for c in captures.values()], [c[1] for c in captures.values()],
            [c[2] for c in captures.values()],
            [c[0] for c in commits], [c[1] for c in commits],
            [c[0] for c in consumed], [c[1] for c in consumed], [c[2] for c in consumed],
            [u[0] for u in usages], [u[1] for u in usages], [u[2] for u in usages],
            [u[3] for u in usages], [_json(u[4]) for u in usages], [u[5] for u in usages],
        )
        balances: dict[str, BalanceSnapshot] = {}
        entry_ids: dict[str, int] = {}
        counts = (0, 0, 0)
        for row in rows:
            if row[0] == 0:
                balances[row[1]] = BalanceSnapshot(*row[1:8])
            elif row[0] == 1:
                entry_ids[row[1]] = row[2]
            else:
                counts = (row[2], row[3], row[4])
        return balances, entry_ids, counts

    async def release(
        self,
        lot_changes: Mapping[int, tuple[int, int]],
        per_account: Mapping[str, tuple[int, int]],
        releases: list[tuple[str, str]],
    ) -> tuple[dict[str, BalanceSnapshot], tuple[int, int]]:
        """Write decided Releases at once: each lot's (held, remaining) deltas
        (LotRepository.apply); per account the (credits, number of holds) it holds no more
        (AccountRepository.unhold); each (reservation_id, reason) hold's compare-and-set from
        ACTIVE to RELEASED (ReservationRepository.finish). Returns the accounts' new balances
        and the rows written: (lots, holds)."""
        rows = await self._fetch(
            _RELEASE,
            list(lot_changes), [held for held, _ in lot_changes.values()],
            [remaining for _, remaining in lot_changes.values()],
            list(per_account), [held for held, _ in per_account.values()],
            [count for _, count in per_account.values()],
            [r[0] for r in releases], [r[1] for r in releases],
        )
        balances = {row[0]: BalanceSnapshot(*row[:7]) for row in rows if row[0] is not None}
        counts = next(row for row in rows if row[0] is None)
        return balances, (counts[7], counts[8])
