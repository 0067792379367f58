"""Accounts: one fixed row per account holding its balance and the credits its active
reservations hold. Every change is a conditional write on that row."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from credits_service.domain.model import Account, AccountStatus, BalanceSnapshot
from credits_service.domain.rows import AccountSummary, HeldTotals
from credits_service.persistence import columns

_GET = f"SELECT {columns.ACCOUNT} FROM accounts WHERE account_id = $1"
_PROFILE = f"SELECT {columns.PROFILE} FROM accounts WHERE account_id = $1"
# GetBalance's account: balance, terms and totals in one round trip
_SUMMARY = f"""
    SELECT {columns.ACCOUNT}, plan, create_time, status,
           (SELECT coalesce(jsonb_object_agg(t.kind, t.credits), '{{}}')::text
              FROM account_totals t WHERE t.account_id = a.account_id) AS totals
      FROM accounts a WHERE a.account_id = $1"""

# Waits for a transaction inserting the same account, then inserts nothing if it committed.
_CREATE = f"""
    INSERT INTO accounts (account_id, plan) VALUES ($1, $2)
    ON CONFLICT (account_id) DO NOTHING
    RETURNING {columns.ACCOUNT}"""

# In one order (account_id), so two transactions locking several never deadlock on them.
_LOCK = f"""
    SELECT {columns.ACCOUNT} FROM accounts WHERE account_id = ANY($1::text[])
     ORDER BY account_id FOR UPDATE"""

_CREDIT = f"""
    INSERT INTO accounts AS a (account_id, balance, lifetime_granted)
    VALUES ($1, $2, $4)
    ON CONFLICT (account_id) DO UPDATE
       SET balance = a.balance + EXCLUDED.balance,
           lifetime_granted = a.lifetime_granted + EXCLUDED.lifetime_granted,
           update_time = credits_now()
     WHERE a.balance + EXCLUDED.balance <= $3 AND a.status <> 'CLOSED'
    RETURNING {columns.ACCOUNT}"""

# Compare-and-set of one of the account's terms, recorded in account_changes in the same
# statement. {column} is `status` or `plan`; $2 the value expected, $3 the new one.
_CHANGE = """
    WITH changed AS (
        UPDATE accounts SET {column} = $3, update_time = credits_now()
         WHERE account_id = $1 AND {column} = $2
        RETURNING {profile}
    ), recorded AS (
        INSERT INTO account_changes (account_id, kind, old_value, new_value, reason, actor)
        SELECT account_id, '{kind}', $2, $3, $4, $5 FROM changed
    )
    SELECT * FROM changed"""
_SET_STATUS = _CHANGE.format(column="status", kind="STATUS", profile=columns.PROFILE)
_SET_PLAN = _CHANGE.format(column="plan", kind="PLAN", profile=columns.PROFILE)

# Takes free credits off the balance (the caller takes them off lots): never below what the
# account's reservations hold.
_DEBIT = f"""
    UPDATE accounts
       SET balance = balance - $2, update_time = credits_now()
     WHERE account_id = $1 AND balance - $2 >= reserved
    RETURNING {columns.ACCOUNT}"""

_CAPTURE = f"""
    UPDATE accounts
       SET balance = balance - $3,
           reserved = reserved - $2,
           active_reservation_count = active_reservation_count - 1,
           lifetime_used = lifetime_used + $3,
           update_time = credits_now()
     WHERE account_id = $1 AND balance - $3 >= reserved - $2
    RETURNING {columns.ACCOUNT}"""

_UNHOLD = f"""
    UPDATE accounts a
       SET reserved = a.reserved - h.held,
           active_reservation_count = a.active_reservation_count - h.reservations,
           update_time = credits_now()
      FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS h (account_id, held, reservations)
     WHERE a.account_id = h.account_id AND a.account_id = ANY($1::text[])
    RETURNING {columns.A_ACCOUNT}"""


class AccountRepository:
    def __init__(self, connection: Any) -> None:
        self._connection = connection  # asyncpg, in the unit of work's transaction

    async def _one(self, sql: str, *args: Any) -> BalanceSnapshot | None:
        row = await self._connection.fetchrow(sql, *args)
        return columns.balance(row) if row is not None else None

    async def get(self, account_id: str) -> BalanceSnapshot | None:
        return await self._one(_GET, account_id)

    async def profile(self, account_id: str) -> Account | None:
        row = await self._connection.fetchrow(_PROFILE, account_id)
        return columns.account(row) if row is not None else None

    async def summary(self, account_id: str) -> AccountSummary | None:
        """The account's balance, terms and lifetime totals by kind, at once."""
        row = await self._connection.fetchrow(_SUMMARY, account_id)
        if row is None:
            return None
        return AccountSummary(columns.balance(row), columns.account(row),
                              orjson.loads(row["totals"]))

    async def create(self, account_id: str, plan: str) -> BalanceSnapshot | None:
        """Create the account, empty, on `plan` (locked until the transaction ends); None if
        it exists (once a transaction creating it concurrently has committed)."""
        return await self._one(_CREATE, account_id, plan)

    async def lock(self, account_ids: Iterable[str]) -> dict[str, BalanceSnapshot]:
        """Lock the accounts for this transaction (every change to an account's lots happens
        under its lock); unknown ones are left out."""
        rows = await self._connection.fetch(_LOCK, sorted(set(account_ids)))
        return {row["account_id"]: columns.balance(row) for row in rows}

    async def set_status(
        self, account_id: str, old: AccountStatus, new: AccountStatus, reason: str, actor: str
    ) -> Account | None:
        """Change the status from `old` to `new`, recorded with the reason and actor; None if
        it was not `old`."""
        row = await self._connection.fetchrow(
            _SET_STATUS, account_id, old.value, new.value, reason, actor)
        return columns.account(row) if row is not None else None

    async def set_plan(
        self, account_id: str, old: str, new: str, reason: str, actor: str
    ) -> Account | None:
        """Move the account from plan `old` to `new`, recorded with the reason and actor; None
        if it was not on `old`."""
        row = await self._connection.fetchrow(_SET_PLAN, account_id, old, new, reason, actor)
        return columns.account(row) if row is not None else None

    async def credit(
        self, account_id: str, amount: int, balance_max: int, granted: bool = True
    ) -> BalanceSnapshot | None:
        """Add `amount`, creating the account, counted in lifetime_granted when `granted` (an
        adjustment is not); None if the balance would pass `balance_max` or the account is
        closed."""
        return await self._one(_CREDIT, account_id, amount, balance_max,
                               amount if granted else 0)

    async def debit(self, account_id: str, amount: int) -> BalanceSnapshot | None:
        """Take `amount` of free credits off the balance; None if available is less."""
        return await self._one(_DEBIT, account_id, amount)

    async def capture(self, account_id: str, held: int, amount: int) -> BalanceSnapshot | None:
        """Turn a reservation of `held` into usage of `amount`; None if available cannot cover
        it."""
        return await self._one(_CAPTURE, account_id, held, amount)

    async def unhold(self, held: Mapping[str, HeldTotals]) -> dict[str, BalanceSnapshot]:
        """Give reservations' credits back to available, per account."""
        rows = await self._connection.fetch(
            _UNHOLD, list(held), [totals.credits for totals in held.values()],
            [totals.reservations for totals in held.values()],
        )
        balances = {row["account_id"]: columns.balance(row) for row in rows}
        assert len(balances) == len(held), "a reservation's account always exists"
        return balances
