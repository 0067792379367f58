"""Imported balances written set-based: a batch of rows is a handful of statements in one
transaction whatever its size (service/imports.py has the rules). The accounts are created
and locked in account order, as every transaction locks them, so an import can run beside
the service."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from credits_service.domain.model import BALANCE_MAX, CREDIT_LIMIT_UNLIMITED, PRIORITY_DEFAULT
from credits_service.domain.rows import ImportRow

_ATTEMPTS_MAX = 5
_ALREADY = "SELECT import_key FROM imported_rows WHERE import_key = ANY($1::text[])"

_CREATE_ACCOUNTS = """
    INSERT INTO accounts (account_id, plan, credit_limit)
    SELECT account_id, plan, credit_limit
      FROM unnest($1::text[], $2::text[], $3::bigint[]) AS r (account_id, plan, credit_limit)
     ORDER BY account_id
    ON CONFLICT (account_id) DO NOTHING
    RETURNING account_id"""

_LOCK = """
    SELECT account_id, balance, debt, credit_limit, status FROM accounts
     WHERE account_id = ANY($1::text[])
     ORDER BY account_id FOR UPDATE"""

# A key another import stored meanwhile is waited for, then left out.
_CLAIM = """
    INSERT INTO imported_rows (import_key, account_id)
    SELECT * FROM unnest($1::text[], $2::text[])
    ON CONFLICT (import_key) DO NOTHING
    RETURNING import_key"""

# Lots in row order (identity values follow it within one statement; each lot's remaining is
# its amount less what it repaid of the account's debt), then each lot's GRANT entry with the
# running balance, then the accounts (their debt less what the rows repaid) and their totals.
_WRITE = f"""
    WITH r AS (
        SELECT * FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::bigint[],
                             $5::text[], $7::bigint[]) WITH ORDINALITY
               AS r (account_id, amount, expire_time, balance_after, metadata, repaid,
                     position)
    ), lots AS (
        INSERT INTO credit_lots (account_id, grant_type, priority, expire_time, amount,
                                 remaining, repaid)
        SELECT account_id, 'ADMIN_GRANT', {PRIORITY_DEFAULT}, expire_time, amount,
               amount - repaid, repaid
          FROM r ORDER BY position
        RETURNING lot_id
    ), numbered AS (
        SELECT lot_id, row_number() OVER (ORDER BY lot_id) AS position FROM lots
    ), entries AS (
        INSERT INTO ledger_entries (account_id, entry_type, grant_type, amount, balance_after,
                                    reason, metadata, actor, lot_id)
        SELECT r.account_id, 'GRANT', 'ADMIN_GRANT', r.amount, r.balance_after, 'import',
               r.metadata::jsonb, $6, n.lot_id
          FROM r JOIN numbered n USING (position)
         ORDER BY r.position
        RETURNING 1
    ), totals AS (
        SELECT account_id, sum(amount) AS total, sum(repaid) AS repaid FROM r
         GROUP BY account_id
    ), accounts_updated AS (
        UPDATE accounts a
           SET balance = a.balance + t.total, lifetime_granted = a.lifetime_granted + t.total,
               debt = a.debt - t.repaid, update_time = credits_now()
          FROM totals t WHERE a.account_id = t.account_id
        RETURNING 1
    ), totals_updated AS (
        INSERT INTO account_totals AS k (account_id, kind, credits)
        SELECT account_id, 'GRANTED_ADMIN_GRANT', total FROM totals
        ON CONFLICT (account_id, kind) DO UPDATE SET credits = k.credits + EXCLUDED.credits
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM entries) AS entries,
           (SELECT count(*) FROM accounts_updated) AS accounts"""


class BalanceImports:
    """service.imports.BalanceImportStore over an asyncpg connection."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def already_imported(self, keys: list[str]) -> set[str]:
        rows = await self._connection.fetch(_ALREADY, keys)
        return {row["import_key"] for row in rows}

    async def existing_accounts(self, account_ids: list[str]) -> set[str]:
        rows = await self._connection.fetch(
            "SELECT account_id FROM accounts WHERE account_id = ANY($1::text[])", account_ids)
        return {row["account_id"] for row in rows}

    async def import_batch(
        self, rows: list[ImportRow], actor: str
    ) -> tuple[list[ImportRow], list[tuple[ImportRow, str]], int]:
        """The batch in one transaction, run again (a few times at most) when it deadlocks
        with the service's transactions (new accounts are created before existing ones are
        locked) or hits a serialization failure."""
        for attempt in range(1, _ATTEMPTS_MAX + 1):
            try:
                return await self._import_batch(rows, actor)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                if attempt == _ATTEMPTS_MAX:
                    raise
        raise AssertionError("unreachable")

    async def _import_batch(
        self, rows: list[ImportRow], actor: str
    ) -> tuple[list[ImportRow], list[tuple[ImportRow, str]], int]:
        async with self._connection.transaction():
            plans: dict[str, ImportRow] = {}
            for row in rows:
                plans.setdefault(row.account_id, row)
            created = await self._connection.fetch(
                _CREATE_ACCOUNTS, list(plans), [row.plan for row in plans.values()],
                [row.credit_limit for row in plans.values()])
            locked = {r["account_id"]: r for r in await self._connection.fetch(
                _LOCK, sorted(plans))}
            claimed = {r["import_key"] for r in await self._connection.fetch(
                _CLAIM, [row.import_key for row in rows], [row.account_id for row in rows])}
            balances = {account_id: r["balance"] for account_id, r in locked.items()}
            written: list[ImportRow] = []
            refused: list[tuple[ImportRow, str]] = []
            for row in rows:
                if row.import_key not in claimed:
                    continue  # imported before (or twice in this batch)
                claimed.discard(row.import_key)
                if locked[row.account_id]["status"] == "CLOSED":
                    refused.append((row, f"account {row.account_id!r} is closed"))
                elif balances[row.account_id] + row.amount > BALANCE_MAX:
                    refused.append((row, f"the balance of {row.account_id!r} would pass "
                                         f"{BALANCE_MAX}"))
                else:
                    balances[row.account_id] += row.amount
                    written.append(row)
            if refused:  # their keys stay unclaimed: a later run may import them
                await self._connection.execute(
                    "DELETE FROM imported_rows WHERE import_key = ANY($1::text[])",
                    [row.import_key for row, _ in refused])
            if written:
                running: dict[str, int] = {a: r["balance"] for a, r in locked.items()}
                owed: dict[str, int] = {  # an unlimited account's debt is not paid
                    a: r["debt"] if r["credit_limit"] < CREDIT_LIMIT_UNLIMITED else 0
                    for a, r in locked.items()}
                after, repaid = [], []
                for row in written:
                    running[row.account_id] += row.amount
                    after.append(running[row.account_id])
                    repaid.append(min(row.amount, owed[row.account_id]))
                    owed[row.account_id] -= repaid[-1]
                result = await self._connection.fetchrow(
                    _WRITE, [row.account_id for row in written], [row.amount for row in written],
                    [row.expire_time for row in written], after,
                    [_metadata(row) for row in written], actor, repaid)
                assert result["entries"] == len(written), "one entry per row"
            return written, refused, len(created)


def _metadata(row: ImportRow) -> str:
    metadata = {"import_line": str(row.line)}
    if row.external_id:
        metadata["external_id"] = row.external_id
    return orjson.dumps(metadata).decode()
