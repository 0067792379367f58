"""The ledger: immutable entries, each with the balance right after it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from credits_service.domain.model import (
    BalanceSnapshot,
    EntryType,
    GrantType,
    LedgerEntry,
    total_kind,
)
from credits_service.domain.rows import WriteOff
from credits_service.persistence import columns

# The entry, and its credits added to the account's lifetime total of its kind ($12; NULL:
# none), in one statement.
_APPEND = f"""
    WITH entry AS (
        INSERT INTO ledger_entries (account_id, entry_type, grant_type, amount, balance_after,
                                    reservation_id, reason, metadata, actor, lot_id,
                                    transfer_id, feature, units, rate_card_version)
        VALUES ($1, $2, $3, $4, $5, $6::uuid, $7, $8::jsonb, $9, $10, $11::uuid, $13, $14,
                $15)
        RETURNING {columns.ENTRY}
    ), total AS (
        INSERT INTO account_totals AS t (account_id, kind, credits)
        SELECT $1, $12::text, abs($4::bigint) WHERE $12::text IS NOT NULL
        ON CONFLICT (account_id, kind) DO UPDATE SET credits = t.credits + EXCLUDED.credits
    )
    SELECT * FROM entry"""

_REFUNDED_TO_LOTS = """
    SELECT lot_id, sum(amount)::bigint AS credits FROM ledger_entries
     WHERE reservation_id = $1::uuid AND entry_type = 'REFUND'
     GROUP BY lot_id"""

# Takes the write-offs off each account's balance and appends their EXPIRY entries with
# running balances, in the order given.
_WRITE_OFF = f"""
    WITH w AS (
        SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::uuid[])
                      WITH ORDINALITY AS w (account_id, lot_id, amount, reservation_id,
                                            position)
    ), totals AS (
        SELECT account_id, sum(amount) AS total FROM w GROUP BY account_id
    ), updated AS (
        UPDATE accounts a
           SET balance = a.balance - t.total,
               lifetime_expired = a.lifetime_expired + t.total,
               update_time = credits_now()
          FROM totals t
         WHERE a.account_id = t.account_id AND a.account_id = ANY($1::text[])
        RETURNING {columns.A_ACCOUNT}, a.balance + t.total AS balance_before
    ), entries AS (
        INSERT INTO ledger_entries (account_id, entry_type, amount, balance_after,
                                    reservation_id, actor, lot_id)
        SELECT w.account_id, 'EXPIRY', -w.amount,
               u.balance_before - sum(w.amount) OVER (
                   PARTITION BY w.account_id ORDER BY w.position),
               w.reservation_id, $5, w.lot_id
          FROM w JOIN updated u USING (account_id)
         ORDER BY w.position
    )
    SELECT * FROM updated"""

_GET = f"SELECT {columns.ENTRY} FROM ledger_entries WHERE entry_id = $1"

_USAGE_OF = f"""
    SELECT {columns.ENTRY} FROM ledger_entries
     WHERE reservation_id = $1::uuid AND entry_type = 'USAGE'"""

# Optional filters are NULL when unset; keyset pagination by entry id.
_PAGE = f"""
    SELECT {columns.ENTRY} FROM ledger_entries
     WHERE account_id = $1
       AND ($2::bigint IS NULL OR entry_id < $2)
       AND ($3::text[] IS NULL OR entry_type = ANY($3))
       AND ($4::timestamptz IS NULL OR create_time >= $4)
       AND ($5::timestamptz IS NULL OR create_time < $5)
       AND ($7::text[] IS NULL OR grant_type = ANY($7))
     ORDER BY entry_id DESC
     LIMIT $6"""


class EntryRepository:
    def __init__(self, connection: Any) -> None:
        self._connection = connection  # asyncpg, in the unit of work's transaction

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
        transfer_id: str | None = None,
        feature: str | None = None,
        units: int | None = None,
        rate_card_version: str | None = None,
    ) -> LedgerEntry:
        row = await self._connection.fetchrow(
            _APPEND, account_id, entry_type.value, grant_type.value if grant_type else None,
            amount, balance_after, reservation_id, reason, columns.json_text(metadata or {}),
            actor, lot_id, transfer_id, total_kind(entry_type, grant_type, amount),
            feature, units, rate_card_version,
        )
        return columns.entry(row)

    async def refunded_to_lots(self, reservation_id: str) -> dict[int, int]:
        """What refunds of the reservation gave back so far, per lot."""
        rows = await self._connection.fetch(_REFUNDED_TO_LOTS, reservation_id)
        return {row["lot_id"]: row["credits"] for row in rows}

    async def write_off(
        self, write_offs: Sequence[WriteOff], actor: str
    ) -> dict[str, BalanceSnapshot]:
        """Take expired credits off the accounts' balances, with one EXPIRY entry each, in the
        order given; returns the accounts' new balances."""
        rows = await self._connection.fetch(
            _WRITE_OFF,
            [w.account_id for w in write_offs], [w.lot_id for w in write_offs],
            [w.amount for w in write_offs], [w.reservation_id for w in write_offs], actor,
        )
        return {row["account_id"]: columns.balance(row) for row in rows}

    async def get(self, entry_id: int) -> LedgerEntry | None:
        row = await self._connection.fetchrow(_GET, entry_id)
        return columns.entry(row) if row is not None else None

    async def usage_of(self, reservation_id: str) -> LedgerEntry | None:
        """The USAGE entry a Commit of the reservation wrote, if any."""
        row = await self._connection.fetchrow(_USAGE_OF, reservation_id)
        return columns.entry(row) if row is not None else None

    async def page(
        self,
        *,
        account_id: str,
        before_entry_id: int | None,
        entry_types: Iterable[EntryType],
        start_time: datetime | None,
        end_time: datetime | None,
        limit: int,
        grant_types: Iterable[GrantType] = (),
    ) -> list[LedgerEntry]:
        """Entries newest first, strictly older than `before_entry_id` when given."""
        types = sorted(t.value for t in entry_types) or None
        grants = sorted(t.value for t in grant_types) or None
        rows = await self._connection.fetch(
            _PAGE, account_id, before_entry_id, types, start_time, end_time, limit, grants)
        return [columns.entry(row) for row in rows]
