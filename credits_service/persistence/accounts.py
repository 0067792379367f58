"""Accounts: one fixed row per account holding its balance and the credits its active
reservations hold. Every change is a conditional write on that row."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from credits_service.domain.model import Account, AccountStatus, BalanceSnapshot, Lot
from credits_service.domain.rows import AccountSummary, BalanceListing, HeldTotals
from credits_service.persistence import columns

_GET = f"SELECT {columns.ACCOUNT} FROM accounts WHERE account_id = $1"
_PROFILE = f"SELECT {columns.PROFILE} FROM accounts WHERE account_id = $1"
# GetBalance's account: balance, terms and totals in one round trip
_SUMMARY = f"""
    SELECT {columns.ACCOUNT}, plan, create_time, status, pool_account_id,
           (SELECT coalesce(jsonb_object_agg(t.kind, t.credits), '{{}}')::text
              FROM account_totals t WHERE t.account_id = a.account_id) AS totals
      FROM accounts a WHERE a.account_id = $1"""

# GetBalance of several accounts at once, one statement outside any transaction: for each
# asked (account, window in ms, ordinal n), a kind 0 row (the summary, and the free credits
# of unexpired lots expiring within the window; $4: the clock's offset, as credits_now()
# adds it) and kind 1 rows (its lots that hold credits, in consumption order, $3 at most).
# The two kinds share create_time (the account's, the lot's) and account_id.
_LOT_COLUMNS = ("lot_id bigint, grant_type text, priority integer, expire_time timestamptz, "
                "amount bigint, remaining bigint, held bigint, expired boolean, "
                "grant_entry_id bigint")
_NO_LOT = ", ".join(f"NULL::{kind} AS {name}"
                   for name, kind in (c.split() for c in _LOT_COLUMNS.split(", ")))
_NO_BALANCE = ", ".join(["NULL::bigint"] * (len(columns.ACCOUNT.split(",")) - 1))
_BALANCES = f"""
    WITH q AS (SELECT * FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY
                          AS q(account_id, within_ms, n))
    SELECT 0 AS kind, q.n, {columns.A_ACCOUNT}, a.plan, a.create_time, a.status,
           a.pool_account_id,
           (SELECT coalesce(jsonb_object_agg(t.kind, t.credits), '{{}}')::text
              FROM account_totals t WHERE t.account_id = a.account_id) AS totals,
           CASE WHEN q.within_ms IS NULL THEN 0 ELSE (
               SELECT coalesce(sum(e.remaining - e.held), 0)::bigint FROM credit_lots e
                WHERE e.account_id = a.account_id AND e.expired_time IS NULL
                  AND e.expire_time <= now() + ($4::bigint + q.within_ms)
                                               * interval '1 millisecond') END AS expiring,
           {_NO_LOT}
      FROM q JOIN accounts a ON a.account_id = q.account_id
    UNION ALL
    SELECT 1, q.n, l.account_id, {_NO_BALANCE},
           NULL::text, l.create_time, NULL::text, NULL::text, NULL::text, NULL::bigint,
           l.lot_id, l.grant_type, l.priority, l.expire_time, l.amount, l.remaining, l.held,
           l.expired, l.grant_entry_id
      FROM q CROSS JOIN LATERAL (
           SELECT {columns.LOT} FROM credit_lots l
            WHERE l.account_id = q.account_id AND l.remaining > 0
            ORDER BY {columns.CONSUMPTION_ORDER} LIMIT $3) l
     ORDER BY n, kind, priority, expire_time, lot_id"""

# Waits for a transaction inserting the same account, then inserts nothing if it committed.
_CREATE = f"""
    INSERT INTO accounts (account_id, plan, credit_limit) VALUES ($1, $2, $3)
    ON CONFLICT (account_id) DO NOTHING
    RETURNING {columns.ACCOUNT}"""

# In one order (account_id), so two transactions locking several never deadlock on them.
_LOCK = f"""
    SELECT {columns.ACCOUNT} FROM accounts WHERE account_id = ANY($1::text[])
     ORDER BY account_id FOR UPDATE"""

# $4: the amount again when it is a grant (lifetime_granted counts it, and it is the last
# top-up a percentage low-balance rule follows: set in this same write, so the account's
# alert level is judged once, against the new threshold), else 0.
_CREDIT = f"""
    INSERT INTO accounts AS a (account_id, balance, lifetime_granted, last_top_up)
    VALUES ($1, $2, $4, $4)
    ON CONFLICT (account_id) DO UPDATE
       SET balance = a.balance + EXCLUDED.balance,
           lifetime_granted = a.lifetime_granted + EXCLUDED.lifetime_granted,
           last_top_up = CASE WHEN EXCLUDED.last_top_up > 0 THEN EXCLUDED.last_top_up
                              ELSE a.last_top_up END,
           update_time = credits_now()
     WHERE a.balance + EXCLUDED.balance <= $3 AND a.status <> 'CLOSED'
    RETURNING {columns.ACCOUNT}"""

# Compare-and-set of one of the account's terms, recorded in account_changes in the same
# statement. {column} is `status` or `plan`; $2 the value expected, $3 the new one; a plan
# brings its credit limit ($6), at once.
_CHANGE = """
    WITH changed AS (
        UPDATE accounts SET {column} = $3{also}, update_time = credits_now()
         WHERE account_id = $1 AND {column} = $2
        RETURNING {profile}
    ), recorded AS (
        INSERT INTO account_changes (account_id, kind, old_value, new_value, reason, actor)
        SELECT account_id, '{kind}', $2, $3, $4, $5 FROM changed
    )
    SELECT * FROM changed"""
_SET_STATUS = _CHANGE.format(column="status", also="", kind="STATUS", profile=columns.PROFILE)
_SET_PLAN = _CHANGE.format(column="plan", also=", credit_limit = $6", kind="PLAN",
                           profile=columns.PROFILE)

# Every account on a plan of $1 gets that plan's credit limit in $2 (when a plans file
# changed it): one scan of the accounts whatever the number of plans, locking them in account
# order as every transaction does (a replica serving meanwhile cannot deadlock with it).
_SYNC_LIMITS = """
    WITH due AS (
        SELECT a.account_id, p.credit_limit
          FROM accounts a JOIN unnest($1::text[], $2::bigint[]) AS p (plan, credit_limit)
            ON a.plan = p.plan
         WHERE a.credit_limit <> p.credit_limit
         ORDER BY a.account_id
           FOR UPDATE OF a
    )
    UPDATE accounts a SET credit_limit = due.credit_limit, update_time = credits_now()
      FROM due WHERE a.account_id = due.account_id"""

# Takes credits off the balance: $2 in all, of which $3 beyond its lots go into debt (the
# caller takes the rest off lots). Available (with the credit limit) must cover them, unless
# $4 (an operator's deduction allowed below the floor); $5 counts only the account's own
# credits (a transfer gives nothing it owes).
_DEBIT = f"""
    UPDATE accounts
       SET balance = balance - $2, debt = debt + $3, update_time = credits_now()
     WHERE account_id = $1
       AND ($4::boolean
            OR balance - $2 + CASE WHEN $5::boolean THEN 0 ELSE credit_limit END >= reserved)
    RETURNING {columns.ACCOUNT}"""

# Credits just added pay what the account owes.
_REPAY = f"""
    UPDATE accounts SET debt = debt - $2, update_time = credits_now()
     WHERE account_id = $1 AND debt >= $2
    RETURNING {columns.ACCOUNT}"""

# A reservation of $2 turned into usage of $3, of which $4 beyond its lots go into debt:
# within the reservation always (it was held), beyond it if available covers the rest.
_CAPTURE = f"""
    UPDATE accounts
       SET balance = balance - $3,
           reserved = reserved - $2,
           active_reservation_count = active_reservation_count - 1,
           lifetime_used = lifetime_used + $3,
           debt = debt + $4,
           update_time = credits_now()
     WHERE account_id = $1
       AND ($3::bigint <= $2::bigint OR balance - $3 + credit_limit >= reserved - $2)
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
    def __init__(self, connection: Any, clock_offset_ms: int = 0) -> None:
        self._connection = connection  # asyncpg, in the unit of work's transaction
        self._clock_offset_ms = clock_offset_ms  # credits_now()'s, for statements outside one

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
                              orjson.loads(row["totals"]), row["pool_account_id"])

    async def balances(
        self, asked: Sequence[tuple[str, int | None]], lots_max: int
    ) -> list[BalanceListing | None]:
        """For each (account, expiring window in ms or None) asked, in order, its summary,
        lots and expiring credits (BalanceListing), or None for an unknown account: in one
        statement (a group of GetBalance calls)."""
        rows = await self._connection.fetch(
            _BALANCES, [account_id for account_id, _ in asked],
            [within_ms for _, within_ms in asked], lots_max, self._clock_offset_ms)
        found: list[BalanceListing | None] = [None] * len(asked)
        lots: list[list[Lot]] = [[] for _ in asked]
        for row in rows:
            n = row["n"] - 1
            if row["kind"] == 0:
                found[n] = BalanceListing(
                    AccountSummary(columns.balance(row), columns.account(row),
                                   orjson.loads(row["totals"]), row["pool_account_id"]),
                    lots[n], row["expiring"])
            else:  # in consumption order (the ORDER BY)
                lots[n].append(columns.lot(row))
        return found

    async def create(
        self, account_id: str, plan: str, credit_limit: int = 0
    ) -> BalanceSnapshot | None:
        """Create the account, empty, on `plan` with its `credit_limit` (locked until the
        transaction ends); None if it exists (once a transaction creating it concurrently has
        committed)."""
        return await self._one(_CREATE, account_id, plan, credit_limit)

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
        self, account_id: str, old: str, new: str, credit_limit: int, reason: str, actor: str
    ) -> Account | None:
        """Move the account from plan `old` to `new` with its `credit_limit`, recorded with
        the reason and actor; None if it was not on `old`."""
        row = await self._connection.fetchrow(
            _SET_PLAN, account_id, old, new, reason, actor, credit_limit)
        return columns.account(row) if row is not None else None

    async def sync_credit_limits(self, limits: Mapping[str, int]) -> int:
        """Give every account on each plan its plan's credit limit; how many changed."""
        status = await self._connection.execute(
            _SYNC_LIMITS, list(limits), list(limits.values()))
        return int(status.split()[-1])

    async def credit(
        self, account_id: str, amount: int, balance_max: int, granted: bool = True
    ) -> BalanceSnapshot | None:
        """Add `amount`, creating the account, counted in lifetime_granted when `granted` (an
        adjustment is not); None if the balance would pass `balance_max` or the account is
        closed."""
        return await self._one(_CREDIT, account_id, amount, balance_max,
                               amount if granted else 0)

    async def debit(
        self, account_id: str, amount: int, into_debt: int = 0, *,
        allow_negative: bool = False, own_credits: bool = False,
    ) -> BalanceSnapshot | None:
        """Take `amount` off the balance, `into_debt` of it beyond the account's lots; None if
        available is less (without the credit limit when `own_credits`), unless
        `allow_negative`."""
        return await self._one(_DEBIT, account_id, amount, into_debt, allow_negative,
                               own_credits)

    async def repay(self, account_id: str, credits: int) -> BalanceSnapshot | None:
        """Take `credits` just added to the balance off the account's debt, instead of
        putting them in a lot; None if it owes less."""
        return await self._one(_REPAY, account_id, credits)

    async def capture(
        self, account_id: str, held: int, amount: int, into_debt: int = 0
    ) -> BalanceSnapshot | None:
        """Turn a reservation of `held` into usage of `amount`, `into_debt` of it beyond the
        account's lots; None if available cannot cover it."""
        return await self._one(_CAPTURE, account_id, held, amount, into_debt)

    async def unhold(self, held: Mapping[str, HeldTotals]) -> dict[str, BalanceSnapshot]:
        """Give reservations' credits back to available, per account."""
        rows = await self._connection.fetch(
            _UNHOLD, list(held), [totals.credits for totals in held.values()],
            [totals.reservations for totals in held.values()],
        )
        balances = {row["account_id"]: columns.balance(row) for row in rows}
        assert len(balances) == len(held), "a reservation's account always exists"
        return balances
