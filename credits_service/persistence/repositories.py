"""Repositories: the only place that writes SQL. Each works on the unit of work's connection.

Balance changes are conditional UPDATEs on the fixed account row (`WHERE balance - reserved >=
...`), hold transitions are compare-and-set on status. Rows come back as domain dataclasses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from credits_service.domain.model import (
    BalanceSnapshot,
    EntryType,
    GrantType,
    LedgerEntry,
    Reservation,
    ReservationStatus,
)

_ACCOUNT_COLUMNS = (
    "account_id, balance, reserved, active_reservation_count, lifetime_granted, lifetime_used"
)
_ENTRY_COLUMNS = (
    "entry_id, account_id, entry_type, grant_type, amount, balance_after, "
    "reservation_id::text AS reservation_id, reason, metadata::text AS metadata, actor, "
    "create_time"
)
_RESERVATION_COLUMNS = (
    "reservation_id::text AS reservation_id, account_id, amount, status, committed_amount, "
    "create_time, expire_time, finish_time, metadata::text AS metadata"
)


def _json(metadata: Mapping[str, str]) -> str:
    return json.dumps(dict(metadata), sort_keys=True, separators=(",", ":"))


def _balance(row: Any) -> BalanceSnapshot:
    return BalanceSnapshot(
        account_id=row.account_id,
        balance=row.balance,
        reserved=row.reserved,
        active_reservation_count=row.active_reservation_count,
        lifetime_granted=row.lifetime_granted,
        lifetime_used=row.lifetime_used,
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
    )


def _reservation(row: Any) -> Reservation:
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
    )


class AccountRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def _one(self, sql: str, **params: Any) -> BalanceSnapshot | None:
        row = (await self._connection.execute(text(sql), params)).one_or_none()
        return _balance(row) if row is not None else None

    async def get(self, account_id: str) -> BalanceSnapshot | None:
        return await self._one(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE account_id = :account_id",
            account_id=account_id,
        )

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
                   update_time = now()
             WHERE a.balance + EXCLUDED.balance <= :balance_max
            RETURNING {_ACCOUNT_COLUMNS}
            """,
            account_id=account_id,
            amount=amount,
            balance_max=balance_max,
        )

    async def hold(self, account_id: str, amount: int) -> BalanceSnapshot | None:
        """Reserve `amount` if available covers it; None if not (or no such account)."""
        return await self._one(
            f"""
            UPDATE accounts
               SET reserved = reserved + :amount,
                   active_reservation_count = active_reservation_count + 1,
                   update_time = now()
             WHERE account_id = :account_id AND balance - reserved >= :amount
            RETURNING {_ACCOUNT_COLUMNS}
            """,
            account_id=account_id,
            amount=amount,
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
                   update_time = now()
             WHERE account_id = :account_id AND balance - :amount >= reserved - :held
            RETURNING {_ACCOUNT_COLUMNS}
            """,
            account_id=account_id,
            held=held,
            amount=amount,
        )

    async def unhold(self, account_id: str, held: int) -> BalanceSnapshot:
        """Give a hold of `held` back to available."""
        balance = await self._one(
            f"""
            UPDATE accounts
               SET reserved = reserved - :held,
                   active_reservation_count = active_reservation_count - 1,
                   update_time = now()
             WHERE account_id = :account_id
            RETURNING {_ACCOUNT_COLUMNS}
            """,
            account_id=account_id,
            held=held,
        )
        assert balance is not None, "a hold's account always exists"
        return balance


class LedgerRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

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
    ) -> LedgerEntry:
        row = (
            await self._connection.execute(
                text(
                    f"""
                    INSERT INTO ledger_entries (account_id, entry_type, grant_type, amount,
                        balance_after, reservation_id, reason, metadata, actor)
                    VALUES (:account_id, :entry_type, :grant_type, :amount, :balance_after,
                        CAST(:reservation_id AS uuid), :reason, CAST(:metadata AS jsonb), :actor)
                    RETURNING {_ENTRY_COLUMNS}
                    """
                ),
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
                },
            )
        ).one()
        return _entry(row)

    async def usage_of(self, reservation_id: str) -> LedgerEntry | None:
        row = (
            await self._connection.execute(
                text(
                    f"SELECT {_ENTRY_COLUMNS} FROM ledger_entries "
                    "WHERE reservation_id = CAST(:reservation_id AS uuid) AND entry_type = 'USAGE'"
                ),
                {"reservation_id": reservation_id},
            )
        ).one_or_none()
        return _entry(row) if row is not None else None

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
        rows = await self._connection.execute(
            text(
                f"""
                SELECT {_ENTRY_COLUMNS} FROM ledger_entries
                 WHERE account_id = :account_id
                   AND (CAST(:before AS bigint) IS NULL OR entry_id < :before)
                   AND (CAST(:types AS text[]) IS NULL OR entry_type = ANY(:types))
                   AND (CAST(:start_time AS timestamptz) IS NULL OR create_time >= :start_time)
                   AND (CAST(:end_time AS timestamptz) IS NULL OR create_time < :end_time)
                 ORDER BY entry_id DESC
                 LIMIT :limit
                """
            ),
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


class ReservationRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def insert(
        self,
        *,
        reservation_id: str,
        account_id: str,
        amount: int,
        ttl_ms: int,
        metadata: Mapping[str, str],
        actor: str,
    ) -> Reservation:
        row = (
            await self._connection.execute(
                text(
                    f"""
                    INSERT INTO reservations (reservation_id, account_id, amount, status,
                        expire_time, metadata, actor)
                    VALUES (CAST(:reservation_id AS uuid), :account_id, :amount, 'ACTIVE',
                        now() + :ttl_ms * interval '1 millisecond', CAST(:metadata AS jsonb),
                        :actor)
                    RETURNING {_RESERVATION_COLUMNS}
                    """
                ),
                {
                    "reservation_id": reservation_id,
                    "account_id": account_id,
                    "amount": amount,
                    "ttl_ms": ttl_ms,
                    "metadata": _json(metadata),
                    "actor": actor,
                },
            )
        ).one()
        return _reservation(row)

    async def lock(self, reservation_id: str) -> tuple[Reservation, bool] | None:
        """The hold, locked for this transaction, and whether its expire_time has passed."""
        row = (
            await self._connection.execute(
                text(
                    f"SELECT {_RESERVATION_COLUMNS}, expire_time <= now() AS is_due "
                    "FROM reservations WHERE reservation_id = CAST(:reservation_id AS uuid) "
                    "FOR UPDATE"
                ),
                {"reservation_id": reservation_id},
            )
        ).one_or_none()
        return (_reservation(row), row.is_due) if row is not None else None

    async def finish(
        self,
        reservation_id: str,
        status: ReservationStatus,
        *,
        committed_amount: int | None = None,
        release_reason: str = "",
    ) -> Reservation | None:
        """Compare-and-set ACTIVE -> `status`; None if the hold was no longer ACTIVE."""
        row = (
            await self._connection.execute(
                text(
                    f"""
                    UPDATE reservations
                       SET status = :status, committed_amount = :committed_amount,
                           release_reason = :release_reason, finish_time = now()
                     WHERE reservation_id = CAST(:reservation_id AS uuid) AND status = 'ACTIVE'
                    RETURNING {_RESERVATION_COLUMNS}
                    """
                ),
                {
                    "reservation_id": reservation_id,
                    "status": status.value,
                    "committed_amount": committed_amount,
                    "release_reason": release_reason,
                },
            )
        ).one_or_none()
        return _reservation(row) if row is not None else None

    async def expire_due(self, batch_size: int) -> int:
        """Expire up to `batch_size` ACTIVE holds past expire_time (database clock) and give
        their credits back; returns how many. Holds locked by a Commit or Release in flight are
        skipped, not waited for: that transaction decides them, and the next sweep sees them."""
        row = (
            await self._connection.execute(
                text(
                    """
                    WITH due AS (
                        SELECT reservation_id FROM reservations
                         WHERE status = 'ACTIVE' AND expire_time <= now()
                         ORDER BY expire_time
                         LIMIT :batch_size
                         FOR UPDATE SKIP LOCKED
                    ), expired AS (
                        UPDATE reservations r
                           SET status = 'EXPIRED', finish_time = now()
                          FROM due
                         WHERE r.reservation_id = due.reservation_id AND r.status = 'ACTIVE'
                        RETURNING r.account_id, r.amount
                    ), per_account AS (
                        SELECT account_id, sum(amount) AS amount, count(*) AS holds
                          FROM expired GROUP BY account_id
                    ), updated AS (
                        UPDATE accounts a
                           SET reserved = a.reserved - p.amount,
                               active_reservation_count = a.active_reservation_count - p.holds,
                               update_time = now()
                          FROM per_account p
                         WHERE a.account_id = p.account_id
                        RETURNING p.holds
                    )
                    SELECT coalesce(sum(holds), 0)::bigint AS expired FROM updated
                    """
                ),
                {"batch_size": batch_size},
            )
        ).one()
        return int(row.expired)


class IdempotencyRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def claim(self, scope: str, key: str, method: str, request_hash: bytes) -> bool:
        """Insert the key for this transaction. False if it exists: a concurrent holder of the
        same key is waited for (unique index), so a False always sees a finished record."""
        row = (
            await self._connection.execute(
                text(
                    """
                    INSERT INTO idempotency_keys (scope, idempotency_key, method, request_hash)
                    VALUES (:scope, :key, :method, :request_hash)
                    ON CONFLICT (scope, idempotency_key) DO NOTHING
                    RETURNING 1
                    """
                ),
                {"scope": scope, "key": key, "method": method, "request_hash": request_hash},
            )
        ).one_or_none()
        return row is not None

    async def get(self, scope: str, key: str) -> tuple[bytes, Any] | None:
        """(request_hash, stored response) of a finished key."""
        row = (
            await self._connection.execute(
                text(
                    "SELECT request_hash, response::text AS response FROM idempotency_keys "
                    "WHERE scope = :scope AND idempotency_key = :key"
                ),
                {"scope": scope, "key": key},
            )
        ).one_or_none()
        if row is None:
            return None
        return bytes(row.request_hash), json.loads(row.response) if row.response else None

    async def complete(self, scope: str, key: str, response: Any) -> None:
        await self._connection.execute(
            text(
                "UPDATE idempotency_keys SET response = CAST(:response AS jsonb) "
                "WHERE scope = :scope AND idempotency_key = :key"
            ),
            {"scope": scope, "key": key, "response": json.dumps(response, sort_keys=True)},
        )

    async def purge(self, older_than_s: float, batch_size: int) -> int:
        result = await self._connection.execute(
            text(
                """
                DELETE FROM idempotency_keys WHERE ctid IN (
                    SELECT ctid FROM idempotency_keys
                     WHERE create_time < now() - :older_than_s * interval '1 second'
                     LIMIT :batch_size)
                """
            ),
            {"older_than_s": older_than_s, "batch_size": batch_size},
        )
        return result.rowcount
