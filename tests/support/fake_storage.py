"""An in-memory fake of the storage ports (credits_service/service/ports.py), for fast unit
tests of the service layer's rules: milliseconds, no PostgreSQL.

Each repository method mirrors the SQL of its counterpart in credits_service/persistence/:
the same rows written, the same rows left out by a conditional write or a compare-and-set,
the same order of results, the service clock (credits_now()) fixed for the transaction. The
schema's CHECK, unique and foreign key constraints are checked after every statement, and a
failed statement aborts its transaction, as in PostgreSQL.

What it does not model: row locks and concurrency (transactions run one at a time, each on a
copy of the committed tables), plans, timeouts. Races, SQL and faults stay with the Postgres
tests; this fake never stands in for them.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import itertools
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from credits_service.domain.lots import LotChange
from credits_service.domain.model import (
    Account,
    AccountStatus,
    BalanceSnapshot,
    EntryType,
    GrantType,
    LedgerEntry,
    Lot,
    LotDraw,
    Reservation,
    ReservationStatus,
    total_kind,
)
from credits_service.domain.rates import HeldPrice
from credits_service.domain.rows import (
    AccountSummary,
    BalanceListing,
    Capture,
    Captured,
    CaptureTotals,
    Consumption,
    ExpiredAndFree,
    ExpiredLot,
    FoundAndLocked,
    FreeLot,
    HeldTotals,
    KeyedAccount,
    KeyRecord,
    LockedForSettling,
    LockedReservation,
    Placed,
    Released,
    ReleaseOf,
    StoredResponse,
    UsageEntry,
    WriteOff,
)
from credits_service.persistence.errors import StorageError, StorageTimeout, TransientConflict

_log = logging.getLogger(__name__)

CLOCK_START = datetime(2030, 1, 1, tzinfo=UTC)
_BALANCE_CHECK_MAX = 10**15  # ck_accounts_balance_max, written in the migration as a literal
_KEY_TAKEN = "an idempotency key was stored by a concurrent transaction"
ACTIVE = ReservationStatus.ACTIVE


class FakeClock:
    """The service clock, moved only by the test (as DatabaseClock.advance moves the
    database's)."""

    def __init__(self, start: datetime = CLOCK_START) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._now += timedelta(milliseconds=round(seconds * 1000))


class ConstraintViolation(Exception):
    """A CHECK, unique or foreign key constraint broke: PostgreSQL's IntegrityError, which is
    no StorageError (a bug in the service, never retried)."""


class AbortedTransaction(Exception):
    """A statement sent after one failed (SQLSTATE 25P02): no StorageError either."""


# --- the tables -----------------------------------------------------------------------------


@dataclass(slots=True)
class AccountRow:
    account_id: str
    balance: int = 0
    reserved: int = 0
    active_reservation_count: int = 0
    lifetime_granted: int = 0
    lifetime_used: int = 0
    lifetime_expired: int = 0
    plan: str = "default"
    create_time: datetime = CLOCK_START
    status: AccountStatus = AccountStatus.ACTIVE
    credit_limit: int = 0
    debt: int = 0

    def snapshot(self) -> BalanceSnapshot:
        return BalanceSnapshot(
            self.account_id, self.balance, self.reserved, self.active_reservation_count,
            self.lifetime_granted, self.lifetime_used, self.lifetime_expired,
            self.credit_limit, self.debt)


@dataclass(slots=True)
class LotRow:
    lot_id: int
    account_id: str
    grant_type: GrantType | None
    priority: int
    expire_time: datetime | None
    amount: int
    remaining: int
    held: int
    create_time: datetime
    expired_time: datetime | None = None
    repaid: int = 0

    def order(self) -> tuple[int, bool, datetime, int]:
        """ORDER BY priority, expire_time, lot_id: ascending puts NULL (never expires) last."""
        return (self.priority, self.expire_time is None, self.expire_time or CLOCK_START,
                self.lot_id)


@dataclass(slots=True)
class ReservationRow:
    reservation_id: str
    account_id: str
    amount: int
    status: ReservationStatus
    committed_amount: int | None
    create_time: datetime
    expire_time: datetime
    finish_time: datetime | None
    metadata: dict[str, str]
    actor: str
    release_reason: str = ""
    refunded_amount: int = 0
    debt_amount: int = 0
    price: HeldPrice | None = None


@dataclass(slots=True)
class DrawRow:
    held: int
    consumed: int | None = None


@dataclass(slots=True)
class KeyRow:
    method: str
    request_hash: bytes
    response: str | None
    create_time: datetime


@dataclass
class Tables:
    """Every table's rows. Entries are immutable, so a copy shares them."""

    accounts: dict[str, AccountRow] = field(default_factory=dict)
    lots: dict[int, LotRow] = field(default_factory=dict)
    reservations: dict[str, ReservationRow] = field(default_factory=dict)
    draws: dict[tuple[str, int], DrawRow] = field(default_factory=dict)
    entries: list[LedgerEntry] = field(default_factory=list)
    keys: dict[tuple[str, str], KeyRow] = field(default_factory=dict)
    # account_changes: (account_id, kind, old, new, reason, actor), never updated
    changes: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)
    # account_totals: credits by (account_id, kind)
    totals: dict[tuple[str, str], int] = field(default_factory=dict)

    def copy(self) -> Tables:
        return Tables(*(
            {key: copy.copy(row) for key, row in table.items()}
            for table in (self.accounts, self.lots, self.reservations, self.draws)
        ), list(self.entries), {key: copy.copy(row) for key, row in self.keys.items()},
            list(self.changes), dict(self.totals))

    def lot(self, row: LotRow) -> Lot:
        """columns.lot: the row, with the id of its GRANT entry (a subquery)."""
        grant_entry_id = next((e.entry_id for e in self.entries
                               if e.lot_id == row.lot_id and e.entry_type is EntryType.GRANT),
                              None)
        return Lot(row.lot_id, row.account_id, row.grant_type, row.priority, row.expire_time,
                   row.amount, row.remaining, row.held, row.expired_time is not None,
                   grant_entry_id, row.create_time)

    def draws_of(self, reservation_id: str) -> tuple[LotDraw, ...]:
        """DRAWS_OF for one reservation: its draws in the consumption order of their lots."""
        found = [(self.lots[lot_id], draw) for (r, lot_id), draw in self.draws.items()
                 if r == reservation_id]
        found.sort(key=lambda pair: pair[0].order())
        return tuple(LotDraw(lot.lot_id, draw.held, draw.consumed) for lot, draw in found)

    def reservation(self, row: ReservationRow, with_draws: bool = True) -> Reservation:
        return Reservation(
            row.reservation_id, row.account_id, row.amount, row.status, row.committed_amount,
            row.create_time, row.expire_time, row.finish_time, dict(row.metadata),
            self.draws_of(row.reservation_id) if with_draws else (), row.release_reason,
            row.refunded_amount, row.price)


# --- the storage ----------------------------------------------------------------------------


class FakeStorage:
    """The committed tables, and `unit_of_work`, a UnitOfWorkFactory over them. Tests read
    the committed state (accounts, lots, reservations, entries, keys), inject failures
    (fail_next_commits) and check the ledger's invariants (assert_invariants)."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.tables = Tables()
        self.begun = 0  # transactions begun
        self.committed = 0  # transactions committed
        self._lock = asyncio.Lock()
        # Identity columns are sequences: not rolled back, so a rolled-back transaction
        # leaves a gap, as in PostgreSQL.
        self._lot_ids = itertools.count(1)
        self._entry_ids = itertools.count(1)
        self._commit_failures: list[type[StorageError]] = []

    def unit_of_work(
        self, *, grouped: bool = False, time_remaining_s: float | None = None,
        autocommit: bool = False,
    ) -> FakeUnitOfWork:
        """A new unit of work (UnitOfWorkFactory); `grouped` changes nothing here, nor does
        `autocommit` (its reads are one transaction, never committed: they write nothing)."""
        return FakeUnitOfWork(self, time_remaining_s)

    def fail_next_commits(self, error: type[StorageError], times: int = 1) -> None:
        """Make the next `times` commits raise `error`, their transactions not applied."""
        self._commit_failures.extend([error] * times)

    # Reads of the committed state, as domain values.

    @property
    def accounts(self) -> dict[str, BalanceSnapshot]:
        return {key: row.snapshot() for key, row in self.tables.accounts.items()}

    @property
    def lots(self) -> dict[int, Lot]:
        return {key: self.tables.lot(row) for key, row in self.tables.lots.items()}

    @property
    def reservations(self) -> dict[str, Reservation]:
        return {key: self.tables.reservation(row) for key, row in self.tables.reservations.items()}

    @property
    def entries(self) -> list[LedgerEntry]:
        return list(self.tables.entries)

    @property
    def keys(self) -> dict[tuple[str, str], StoredResponse]:
        return {key: StoredResponse(row.request_hash, row.response)
                for key, row in self.tables.keys.items()}

    def snapshot(self) -> tuple[Any, ...]:
        """Every committed row, to compare before and after a call that must write nothing."""
        return self.accounts, self.lots, self.reservations, self.entries, self.keys

    def assert_invariants(self) -> None:
        """Fail naming every ledger invariant (tests/ledger_checks.py) the committed state
        breaks."""
        broken = ledger_invariants_broken(self.tables)
        assert not broken, f"ledger invariants broken: {broken}"

    async def _begin(self) -> None:
        await self._lock.acquire()
        self.begun += 1

    def _end(self) -> None:
        self._lock.release()

    def _commit(self, tables: Tables) -> None:
        if self._commit_failures:
            raise self._commit_failures.pop(0)("injected at commit")
        self.tables = tables
        self.committed += 1


class FakeSubscriptions:
    """No subscriptions: the fake serves the rules of the other use cases; subscriptions are
    tested against the real database (tests/integration/test_subscriptions.py)."""

    async def active(self, account_id: str, *, lock: bool = False) -> None:
        return None

    async def latest(self, account_id: str) -> None:
        return None


class FakeOrganizations:
    """No organisations: tested against the real database (test_organizations.py)."""

    async def member(self, account_id: str) -> None:
        return None

    async def lock_members(self, account_ids: object) -> dict[str, object]:
        return {}


class FakeUnitOfWork:
    """One transaction on a copy of the committed tables: `commit()` makes it the committed
    state; leaving without it discards the copy. One transaction runs at a time."""

    accounts: FakeAccounts
    entries: FakeEntries
    lots: FakeLots
    reservations: FakeReservations
    idempotency: FakeIdempotency
    groups: FakeGroupStatements
    subscriptions: FakeSubscriptions
    organizations: FakeOrganizations

    def __init__(self, storage: FakeStorage, time_remaining_s: float | None) -> None:
        self._storage = storage
        self._time_remaining_s = time_remaining_s
        self._tx: Transaction | None = None
        self._after_commit: list[Callable[[], None]] = []

    async def __aenter__(self) -> FakeUnitOfWork:
        if self._time_remaining_s is not None and self._time_remaining_s <= 0:
            raise StorageTimeout("the call's deadline passed before its transaction began")
        # credits_now() is now(): the time the transaction began, not when it got its turn.
        now = self._storage.clock.now()
        await self._storage._begin()
        self._tx = tx = Transaction(
            self._storage.tables.copy(), now, self._storage._lot_ids, self._storage._entry_ids)
        self.accounts = FakeAccounts(tx)
        self.entries = FakeEntries(tx)
        self.lots = FakeLots(tx)
        self.reservations = FakeReservations(tx)
        self.idempotency = FakeIdempotency(tx)
        self.groups = FakeGroupStatements(tx)
        self.subscriptions = FakeSubscriptions()
        self.organizations = FakeOrganizations()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._tx is not None:
            self._tx = None
            self._storage._end()

    async def commit(self) -> None:
        tx = self._tx
        assert tx is not None and tx.open, "commit() of a unit of work with no open transaction"
        tx.open = False
        if tx.failed:  # PostgreSQL ends a failed transaction with ROLLBACK
            raise RuntimeError("COMMIT of a failed transaction ended as ROLLBACK")
        self._storage._commit(tx.tables)
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # as SqlUnitOfWork: committed is committed
                _log.exception("after-commit callback failed")

    async def now(self) -> datetime:
        tx = self._tx
        assert tx is not None, "now() outside a transaction"
        return await _run_statement(tx, lambda: tx.now)

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._after_commit.append(callback)


# --- one transaction ------------------------------------------------------------------------


@dataclass
class Transaction:
    """A transaction's tables, its clock, and the steps several statements share."""

    tables: Tables
    now: datetime
    lot_ids: Iterator[int]
    entry_ids: Iterator[int]
    open: bool = True
    failed: bool = False

    def account(self, account_id: str) -> AccountRow | None:
        return self.tables.accounts.get(account_id)

    def expire_due(self, account_ids: Iterable[str]) -> list[ExpiredLot]:
        """EXPIRE_DUE: the accounts' lots past expire_time and not expired keep only their
        held credits; ordered as LotRepository.expire_due sorts them."""
        wanted = set(account_ids)
        due = [lot for lot in self.tables.lots.values()
               if lot.account_id in wanted and lot.expired_time is None
               and lot.expire_time is not None and lot.expire_time <= self.now]
        due.sort(key=lambda lot: (lot.account_id, lot.expire_time, lot.lot_id))
        expired = []
        for lot in due:
            expired.append(ExpiredLot(lot.account_id, lot.lot_id, lot.remaining - lot.held))
            lot.remaining, lot.expired_time = lot.held, self.now
        return expired

    def free_lots(self, account_id: str, amount: int) -> list[FreeLot]:
        """FREE_LOTS: the account's unexpired lots with free credits in consumption order,
        while the credits before each are short of `amount`."""
        candidates = sorted(
            (lot for lot in self.tables.lots.values()
             if lot.account_id == account_id and lot.remaining > 0
             and lot.remaining > lot.held and lot.expired_time is None
             and (lot.expire_time is None or lot.expire_time > self.now)),
            key=LotRow.order)[:max(amount, 0)]
        free, running = [], 0
        for lot in candidates:
            if running >= amount:
                break
            free.append(FreeLot(lot.lot_id, lot.remaining - lot.held))
            running += lot.remaining - lot.held
        return free

    def change_lots(self, changes: Iterable[LotChange]) -> int:
        """_LOTS_CHANGED / _APPLY: move lots by their deltas; returns the rows updated. An
        UPDATE ... FROM updates a row once however often the FROM list names it (with one of
        its deltas: here the first)."""
        updated: set[int] = set()
        for change in changes:
            lot = self.tables.lots.get(change.lot_id)
            if lot is not None and lot.lot_id not in updated:
                lot.held += change.held_delta
                lot.remaining += change.remaining_delta
                updated.add(lot.lot_id)
        return len(updated)

    def unhold(self, held: Mapping[str, HeldTotals]) -> dict[str, BalanceSnapshot]:
        """_UNHOLD: existing accounts hold the credits and reservations no more."""
        balances = {}
        for account_id, totals in held.items():
            row = self.account(account_id)
            if row is not None:
                row.reserved -= totals.credits
                row.active_reservation_count -= totals.reservations
                balances[account_id] = row.snapshot()
        return balances

    def finish(self, reservation_ids: Iterable[str], status: ReservationStatus,
               committed_amount: int | None = None,
               release_reason: str = "", debt_amount: int = 0) -> list[ReservationRow]:
        """_FINISH: compare-and-set from ACTIVE; rows no longer ACTIVE are left out. A
        reservation named twice is updated once."""
        finished = []
        for reservation_id in dict.fromkeys(_uuid(r) for r in reservation_ids):
            row = self.tables.reservations.get(reservation_id)
            if row is None or row.status is not ACTIVE:
                continue
            row.status, row.committed_amount = status, committed_amount
            row.debt_amount = debt_amount
            row.release_reason, row.finish_time = release_reason, self.now
            finished.append(row)
        return finished

    def store_keys(self, method: str, keys: Sequence[KeyRecord]) -> int:
        """STORE_KEYS: a plain INSERT; a key stored already fails it (pk_idempotency_keys),
        which groups.py turns into TransientConflict."""
        pairs = [(k.scope, k.idempotency_key) for k in keys]
        if len(set(pairs)) != len(pairs) or any(p in self.tables.keys for p in pairs):
            raise TransientConflict(_KEY_TAKEN)
        for key in keys:
            self.tables.keys[(key.scope, key.idempotency_key)] = KeyRow(
                method, key.request_hash, key.response, self.now)
        return len(keys)

    def append(self, *, account_id: str, entry_type: EntryType, amount: int,
               balance_after: int, actor: str, grant_type: GrantType | None = None,
               reservation_id: str | None = None, reason: str = "",
               metadata: Mapping[str, str] | None = None,
               lot_id: int | None = None, transfer_id: str | None = None,
               feature: str | None = None, units: int | None = None,
               rate_card_version: str | None = None) -> LedgerEntry:
        """INSERT INTO ledger_entries: the next entry id, created at credits_now()."""
        entry = LedgerEntry(
            next(self.entry_ids), account_id, entry_type, grant_type, amount, balance_after,
            None if reservation_id is None else _uuid(reservation_id), reason,
            _jsonb(metadata or {}), actor, self.now, lot_id,
            None if transfer_id is None else _uuid(transfer_id), feature, units,
            rate_card_version)
        self.tables.entries.append(entry)
        kind = total_kind(entry_type, grant_type, amount)
        if kind is not None:
            key = (account_id, kind)
            self.tables.totals[key] = self.tables.totals.get(key, 0) + abs(amount)
        return entry


async def _run_statement(tx: Transaction, body: Callable[[], Any]) -> Any:
    """Run one statement: refused once the transaction failed; a failure (raised, or a
    constraint broken by what it wrote) aborts the transaction."""
    if tx.failed:
        raise AbortedTransaction("current transaction is aborted")
    # A round trip: calls arriving meanwhile queue up behind the transaction, as they would.
    await asyncio.sleep(0)
    try:
        result = body()
        broken = constraints_broken(tx.tables)
        if broken:
            raise ConstraintViolation(", ".join(broken))
    except BaseException:
        tx.failed = True
        raise
    return result


def statement(method: Callable[..., Any]) -> Callable[..., Any]:
    """A repository method body (synchronous, reading and writing `self._tx.tables`) as an
    asynchronous statement of the transaction (_run_statement)."""

    @functools.wraps(method)
    async def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await _run_statement(self._tx, lambda: method(self, *args, **kwargs))

    return run


class _Repository:
    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    @property
    def _tables(self) -> Tables:
        return self._tx.tables


# --- the repositories -----------------------------------------------------------------------


class FakeAccounts(_Repository):
    """persistence/accounts.py"""

    @statement
    def get(self, account_id: str) -> BalanceSnapshot | None:
        row = self._tx.account(account_id)
        return row.snapshot() if row else None

    @statement
    def summary(self, account_id: str) -> AccountSummary | None:
        """_SUMMARY"""
        row = self._tx.account(account_id)
        if row is None:
            return None
        totals = {kind: credits for (owner, kind), credits in self._tables.totals.items()
                  if owner == account_id}
        return AccountSummary(row.snapshot(),
                              Account(row.account_id, row.plan, row.create_time, row.status),
                              totals)

    @statement
    def balances(self, asked: Sequence[tuple[str, int | None]],
                 lots_max: int) -> list[BalanceListing | None]:
        """_BALANCES: _SUMMARY, then FakeLots.listing, of each account asked."""
        found: list[BalanceListing | None] = []
        for account_id, within_ms in asked:
            row = self._tx.account(account_id)
            if row is None:
                found.append(None)
                continue
            totals = {kind: credits for (owner, kind), credits in self._tables.totals.items()
                      if owner == account_id}
            summary = AccountSummary(
                row.snapshot(), Account(row.account_id, row.plan, row.create_time, row.status),
                totals)
            lots, expiring = _listing(self._tx, self._tables, account_id, lots_max, within_ms)
            found.append(BalanceListing(summary, lots, expiring))
        return found

    @statement
    def profile(self, account_id: str) -> Account | None:
        row = self._tx.account(account_id)
        return Account(row.account_id, row.plan, row.create_time, row.status) if row else None

    @statement
    def create(self, account_id: str, plan: str, credit_limit: int = 0) -> BalanceSnapshot | None:
        """_CREATE: ON CONFLICT DO NOTHING (transactions here run one at a time)."""
        if self._tx.account(account_id) is not None:
            return None
        row = self._tables.accounts[account_id] = AccountRow(
            account_id, plan=plan, create_time=self._tx.now, credit_limit=credit_limit)
        return row.snapshot()

    @statement
    def set_status(self, account_id: str, old: AccountStatus, new: AccountStatus, reason: str,
                   actor: str) -> Account | None:
        """_SET_STATUS: compare-and-set, with its account_changes row."""
        row = self._tx.account(account_id)
        if row is None or row.status is not old:
            return None
        row.status = new
        self._tables.changes.append((account_id, "STATUS", old.value, new.value, reason, actor))
        return Account(row.account_id, row.plan, row.create_time, row.status)

    @statement
    def set_plan(self, account_id: str, old: str, new: str, credit_limit: int, reason: str,
                 actor: str) -> Account | None:
        """_SET_PLAN: compare-and-set, with its account_changes row and the new limit."""
        row = self._tx.account(account_id)
        if row is None or row.plan != old:
            return None
        row.plan, row.credit_limit = new, credit_limit
        self._tables.changes.append((account_id, "PLAN", old, new, reason, actor))
        return Account(row.account_id, row.plan, row.create_time, row.status)

    @statement
    def sync_credit_limits(self, limits: Mapping[str, int]) -> int:
        """_SYNC_LIMITS"""
        changed = 0
        for row in self._tables.accounts.values():
            if row.plan in limits and row.credit_limit != limits[row.plan]:
                row.credit_limit = limits[row.plan]
                changed += 1
        return changed

    @statement
    def lock(self, account_ids: Iterable[str]) -> dict[str, BalanceSnapshot]:
        """_LOCK: existing accounts in account order."""
        return {account_id: row.snapshot() for account_id in sorted(set(account_ids))
                if (row := self._tx.account(account_id)) is not None}

    @statement
    def credit(self, account_id: str, amount: int, balance_max: int,
               granted: bool = True) -> BalanceSnapshot | None:
        """_CREDIT: an upsert whose WHERE guards only the update: a new account is inserted
        whatever the amount (its CHECK bounds it)."""
        row = self._tx.account(account_id)
        if row is None:
            row = self._tables.accounts[account_id] = AccountRow(
                account_id, create_time=self._tx.now)
        elif row.balance + amount > balance_max or row.status is AccountStatus.CLOSED:
            return None
        row.balance += amount
        row.lifetime_granted += amount if granted else 0
        return row.snapshot()

    @statement
    def debit(self, account_id: str, amount: int, into_debt: int = 0, *,
              allow_negative: bool = False, own_credits: bool = False) -> BalanceSnapshot | None:
        """_DEBIT: conditional on balance - amount + credit_limit (0 for own credits) >=
        reserved, unless allow_negative."""
        row = self._tx.account(account_id)
        limit = 0 if own_credits else (row.credit_limit if row else 0)
        if row is None or (not allow_negative and row.balance - amount + limit < row.reserved):
            return None
        row.balance -= amount
        row.debt += into_debt
        return row.snapshot()

    @statement
    def repay(self, account_id: str, credits: int) -> BalanceSnapshot | None:
        """_REPAY: conditional on debt >= credits."""
        row = self._tx.account(account_id)
        if row is None or row.debt < credits:
            return None
        row.debt -= credits
        return row.snapshot()

    @statement
    def capture(self, account_id: str, held: int, amount: int,
                into_debt: int = 0) -> BalanceSnapshot | None:
        """_CAPTURE: conditional on amount <= held or balance - amount + credit_limit >=
        reserved - held."""
        row = self._tx.account(account_id)
        if row is None or (amount > held
                           and row.balance - amount + row.credit_limit < row.reserved - held):
            return None
        row.debt += into_debt
        row.balance -= amount
        row.reserved -= held
        row.active_reservation_count -= 1
        row.lifetime_used += amount
        return row.snapshot()

    @statement
    def unhold(self, held: Mapping[str, HeldTotals]) -> dict[str, BalanceSnapshot]:
        balances = self._tx.unhold(held)
        assert len(balances) == len(held), "a reservation's account always exists"
        return balances


class FakeEntries(_Repository):
    """persistence/entries.py"""

    @statement
    def append(self, **fields: Any) -> LedgerEntry:
        return self._tx.append(**fields)

    @statement
    def get(self, entry_id: int) -> LedgerEntry | None:
        return next((e for e in self._tables.entries if e.entry_id == entry_id), None)

    @statement
    def refunded_to_lots(self, reservation_id: str) -> dict[int, int]:
        refunded: dict[int, int] = {}
        for e in self._tables.entries:
            if e.entry_type is EntryType.REFUND and e.reservation_id == reservation_id:
                assert e.lot_id is not None
                refunded[e.lot_id] = refunded.get(e.lot_id, 0) + e.amount
        return refunded

    @statement
    def write_off(self, write_offs: Sequence[WriteOff], actor: str) -> dict[str, BalanceSnapshot]:
        """_WRITE_OFF: each existing account loses its total; EXPIRY entries follow in the
        given order, balance_after running down from the balance before."""
        totals: dict[str, int] = {}
        for w in write_offs:
            totals[w.account_id] = totals.get(w.account_id, 0) + w.amount
        running: dict[str, int] = {}
        balances: dict[str, BalanceSnapshot] = {}
        for account_id, total in totals.items():
            row = self._tx.account(account_id)
            if row is None:
                continue
            running[account_id] = row.balance
            row.balance -= total
            row.lifetime_expired += total
            balances[account_id] = row.snapshot()
        for w in write_offs:
            if w.account_id not in running:  # the JOIN with the updated accounts
                continue
            running[w.account_id] -= w.amount
            self._tx.append(account_id=w.account_id, entry_type=EntryType.EXPIRY,
                            amount=-w.amount, balance_after=running[w.account_id], actor=actor,
                            reservation_id=w.reservation_id, lot_id=w.lot_id)
        return balances

    @statement
    def usage_of(self, reservation_id: str) -> LedgerEntry | None:
        reservation_id = _uuid(reservation_id)
        return next((e for e in self._tables.entries if e.reservation_id == reservation_id
                     and e.entry_type is EntryType.USAGE), None)

    @statement
    def page(self, *, account_id: str, before_entry_id: int | None,
             entry_types: Iterable[EntryType], start_time: datetime | None,
             end_time: datetime | None, limit: int,
             grant_types: Iterable[GrantType] = ()) -> list[LedgerEntry]:
        """_PAGE: newest first, every filter optional."""
        types = set(entry_types)
        grants = set(grant_types)
        found = [e for e in self._tables.entries
                 if e.account_id == account_id
                 and (before_entry_id is None or e.entry_id < before_entry_id)
                 and (not types or e.entry_type in types)
                 and (not grants or e.grant_type in grants)
                 and (start_time is None or e.create_time >= start_time)
                 and (end_time is None or e.create_time < end_time)]
        found.sort(key=lambda e: e.entry_id, reverse=True)
        return found[:limit]


class FakeLots(_Repository):
    """persistence/lots.py"""

    @statement
    def create(self, *, account_id: str, grant_type: GrantType | None, priority: int,
               expire_time: datetime | None, amount: int, remaining: int | None = None) -> Lot:
        remaining = amount if remaining is None else remaining
        row = LotRow(next(self._tx.lot_ids), account_id, grant_type, priority, expire_time,
                     amount, remaining=remaining, held=0, create_time=self._tx.now,
                     repaid=amount - remaining)
        self._tables.lots[row.lot_id] = row
        return self._tables.lot(row)

    @statement
    def of(self, lot_ids: Iterable[int]) -> dict[int, Lot]:
        return {lot_id: self._tables.lot(self._tables.lots[lot_id])
                for lot_id in set(lot_ids) if lot_id in self._tables.lots}

    @statement
    def expire_due(self, account_ids: Iterable[str]) -> list[ExpiredLot]:
        return self._tx.expire_due(account_ids)

    @statement
    def due_accounts(self, limit: int) -> list[str]:
        """_DUE_ACCOUNTS: accounts of the soonest `4 * limit` due lots, in account order."""
        due = sorted((lot for lot in self._tables.lots.values()
                      if lot.expired_time is None and lot.expire_time is not None
                      and lot.expire_time <= self._tx.now),
                     key=lambda lot: (lot.expire_time, lot.lot_id))[:limit * 4]
        return sorted({lot.account_id for lot in due} & set(self._tables.accounts))[:limit]

    @statement
    def free_in_order(self, wanted: Mapping[str, int]) -> dict[str, list[FreeLot]]:
        return {account_id: self._tx.free_lots(account_id, amount)
                for account_id, amount in wanted.items()}

    @statement
    def apply(self, changes: Iterable[LotChange]) -> None:
        changes = [c for c in changes if c.held_delta or c.remaining_delta]
        assert self._tx.change_lots(changes) == len(changes), "every lot changed exists"

    @statement
    def expired_among(self, lot_ids: Iterable[int]) -> set[int]:
        return {lot_id for lot_id in set(lot_ids)
                if (lot := self._tables.lots.get(lot_id)) is not None
                and lot.expired_time is not None}

    @statement
    def listing(self, account_id: str, limit: int,
                expiring_within_ms: int | None) -> tuple[list[Lot], int]:
        """_LISTING (lots with remaining credits, consumption order) and _EXPIRING (free
        credits of unexpired lots expiring by now + the window)."""
        return _listing(self._tx, self._tables, account_id, limit, expiring_within_ms)


def _listing(tx: Any, tables: Any, account_id: str, limit: int,
             expiring_within_ms: int | None) -> tuple[list[Lot], int]:
    lots = [lot for lot in tables.lots.values()
            if lot.account_id == account_id and lot.remaining > 0]
    listed = [tables.lot(lot) for lot in sorted(lots, key=LotRow.order)[:limit]]
    if expiring_within_ms is None:
        return listed, 0
    until = tx.now + timedelta(milliseconds=expiring_within_ms)
    return listed, sum(lot.remaining - lot.held for lot in tables.lots.values()
                       if lot.account_id == account_id and lot.expired_time is None
                       and lot.expire_time is not None and lot.expire_time <= until)


class FakeReservations(_Repository):
    """persistence/reservations.py"""

    @statement
    def add_refund(self, reservation_id: str, amount: int) -> int | None:
        """_ADD_REFUND: compare-and-set within the committed amount."""
        row = self._tables.reservations.get(reservation_id)
        if (row is None or row.status is not ReservationStatus.COMMITTED
                or row.refunded_amount + amount > (row.committed_amount or 0)):
            return None
        row.refunded_amount += amount
        return row.refunded_amount

    @statement
    def lock(self, reservation_id: str) -> LockedReservation | None:
        row = self._tables.reservations.get(_uuid(reservation_id))
        if row is None:
            return None
        return LockedReservation(self._tables.reservation(row), row.expire_time <= self._tx.now)

    @statement
    def draws_of(self, reservation_ids: list[str]) -> dict[str, tuple[LotDraw, ...]]:
        """DRAWS_OF: only reservations with draws appear, in id order."""
        ids = sorted({_uuid(r) for r in reservation_ids})
        return {r: draws for r in ids if (draws := self._tables.draws_of(r))}

    @statement
    def record_consumption(self, reservation_id: str, draws: tuple[LotDraw, ...],
                           consumed: Mapping[int, int]) -> tuple[LotDraw, ...]:
        """_RECORD_CONSUMPTION: an upsert; lots beyond the draws get a row holding nothing."""
        reservation_id = _uuid(reservation_id)
        held = {draw.lot_id: draw.held for draw in draws}
        for lot_id, part in consumed.items():
            row = self._tables.draws.get((reservation_id, lot_id))
            if row is None:
                self._tables.draws[(reservation_id, lot_id)] = DrawRow(held.get(lot_id, 0), part)
            else:
                row.consumed = part
        return self._tables.draws_of(reservation_id)

    @statement
    def finish(self, reservation_ids: list[str], status: ReservationStatus, *,
               committed_amount: int | None = None,
               release_reason: str = "", debt_amount: int = 0) -> dict[str, Reservation]:
        finished = self._tx.finish(reservation_ids, status, committed_amount, release_reason,
                                   debt_amount)
        return {row.reservation_id: self._tables.reservation(row, with_draws=False)
                for row in finished}

    @statement
    def extend(self, reservation_id: str, ttl_ms: int, lifetime_max_ms: int) -> Reservation:
        """_EXTEND: greatest(expire_time, least(now + ttl, create_time + lifetime max)), for
        an ACTIVE reservation only (the real one then fails reading no row)."""
        row = self._tables.reservations.get(_uuid(reservation_id))
        if row is None or row.status is not ACTIVE:
            raise TypeError("extend() of a reservation that is not ACTIVE: no row returned")
        row.expire_time = max(row.expire_time, min(
            self._tx.now + timedelta(milliseconds=ttl_ms),
            row.create_time + timedelta(milliseconds=lifetime_max_ms)))
        return self._tables.reservation(row, with_draws=False)

    @statement
    def lock_due(self, batch_size: int) -> list[Reservation]:
        """_LOCK_DUE: ACTIVE past expire_time, soonest first (ties by id: SQL leaves them in
        no set order)."""
        due = sorted((r for r in self._tables.reservations.values()
                      if r.status is ACTIVE and r.expire_time <= self._tx.now),
                     key=lambda r: (r.expire_time, r.reservation_id))
        return [self._tables.reservation(r) for r in due[:batch_size]]

    @statement
    def page(self, *, account_id: str, statuses: Iterable[ReservationStatus],
             before: tuple[datetime, str] | None, limit: int) -> list[Reservation]:
        """_PAGE: newest first by (create_time, reservation_id), strictly before `before`."""
        wanted = set(statuses)
        position = None if before is None else (before[0], _uuid(before[1]))
        found = sorted((r for r in self._tables.reservations.values()
                        if r.account_id == account_id and (not wanted or r.status in wanted)
                        and (position is None
                             or (r.create_time, r.reservation_id) < position)),
                       key=lambda r: (r.create_time, r.reservation_id), reverse=True)
        return [self._tables.reservation(r) for r in found[:limit]]


class FakeIdempotency(_Repository):
    """persistence/idempotency.py"""

    @statement
    def claim(self, scope: str, key: str, method: str, request_hash: bytes) -> bool:
        """_CLAIM: INSERT ... ON CONFLICT DO NOTHING (no concurrent holder to wait for)."""
        if (scope, key) in self._tables.keys:
            return False
        self._tables.keys[(scope, key)] = KeyRow(method, request_hash, None, self._tx.now)
        return True

    @statement
    def get(self, scope: str, key: str) -> StoredResponse | None:
        row = self._tables.keys.get((scope, key))
        return StoredResponse(row.request_hash, row.response) if row else None

    @statement
    def complete(self, scope: str, key: str, response: str) -> None:
        row = self._tables.keys.get((scope, key))
        if row is not None:
            row.response = response  # a text column (migration 0003)

    @statement
    def purge(self, older_than_s: float, batch_size: int) -> int:
        """_PURGE: up to `batch_size` keys created before now - older_than_s."""
        cutoff = self._tx.now - timedelta(seconds=older_than_s)
        old = [pair for pair, row in self._tables.keys.items() if row.create_time < cutoff]
        for pair in old[:batch_size]:
            del self._tables.keys[pair]
        return len(old[:batch_size])


class FakeGroupStatements(_Repository):
    """persistence/groups.py, running group_sql.py's statements: every CTE of a statement
    sees the tables as they were before it, so each step below reads before any writes."""

    @statement
    def find_and_lock(self, keys: Sequence[KeyedAccount]) -> FoundAndLocked:
        """FIND_AND_LOCK: stored keys; the existing accounts of the others, in order, and the
        status of those not ACTIVE."""
        stored = {}
        fresh = set()
        for k in keys:
            row = self._tables.keys.get((k.scope, k.idempotency_key))
            if row is None:
                fresh.add(k.account_id)
            else:
                stored[(k.scope, k.idempotency_key)] = StoredResponse(
                    row.request_hash, row.response)
        balances = {account_id: row.snapshot() for account_id in sorted(fresh)
                    if (row := self._tx.account(account_id)) is not None}
        inactive = {account_id: row.status for account_id in balances
                    if (row := self._tables.accounts[account_id]).status
                    is not AccountStatus.ACTIVE}
        plans = {account_id: self._tables.accounts[account_id].plan for account_id in balances}
        return FoundAndLocked(stored, balances, inactive, plans)

    @statement
    def expire_and_find(self, account_ids: Sequence[str],
                        wanted: Mapping[str, int]) -> ExpiredAndFree:
        """EXPIRE_AND_FIND: free lots read before the expiry (the statement's snapshot:
        lots due are excluded by expire_time > now alike), then EXPIRE_DUE."""
        free = {account_id: self._tx.free_lots(account_id, amount)
                for account_id, amount in wanted.items()}
        return ExpiredAndFree(self._tx.expire_due(account_ids), free, self._tx.now)

    @statement
    def place(self, lot_holds: Mapping[int, int], held: Mapping[str, HeldTotals],
              reservations: Sequence[Reservation], actors: Sequence[str], method: str,
              keys: Sequence[KeyRecord]) -> Placed:
        """PLACE: every part is written whatever the others did; only the account update is
        conditional (available covers what it newly holds), and an account it leaves out
        is missing from the balances. A key stored already fails it all."""
        created = reservations[0].create_time
        if any(r.create_time != created for r in reservations):
            raise ValueError("reservations placed together share one create_time")
        keys_written = self._tx.store_keys(method, keys)
        lots_held = self._tx.change_lots(LotChange(lot_id, part, 0)
                                         for lot_id, part in lot_holds.items())
        balances = {}
        for account_id, totals in held.items():
            row = self._tx.account(account_id)
            if row is not None and (row.balance - row.reserved + row.credit_limit
                                    >= totals.credits):
                row.reserved += totals.credits
                row.active_reservation_count += totals.reservations
                balances[account_id] = row.snapshot()
        draws = 0
        for reservation, actor in zip(reservations, actors, strict=True):
            draws += self._insert_reservation(reservation, created, actor)
        return Placed(balances, lots_held, len(reservations), draws, keys_written)

    def _insert_reservation(self, r: Reservation, created: datetime, actor: str) -> int:
        """INSERT INTO reservations and its reservation_lots; returns the draws inserted."""
        reservation_id = _uuid(r.reservation_id)
        if reservation_id in self._tables.reservations:
            raise ConstraintViolation("reservations_pkey")
        self._tables.reservations[reservation_id] = ReservationRow(
            reservation_id, r.account_id, r.amount, ACTIVE, None, created, r.expire_time, None,
            _jsonb(r.metadata), actor)
        for draw in r.draws:
            if (reservation_id, draw.lot_id) in self._tables.draws:
                raise ConstraintViolation("pk_reservation_lots")
            self._tables.draws[(reservation_id, draw.lot_id)] = DrawRow(draw.held)
        return len(r.draws)

    @statement
    def complete(self, method: str, keys: Sequence[KeyRecord]) -> None:
        self._tx.store_keys(method, keys)

    @statement
    def lock_for_settling(self, reservation_ids: Sequence[str]) -> LockedForSettling:
        """LOCK_FOR_SETTLING: the reservations in id order with their draws; the accounts of
        those ACTIVE and not due, in order; the clock, read only if a reservation was."""
        locked = {}
        for reservation_id in sorted({_uuid(r) for r in reservation_ids}):
            row = self._tables.reservations.get(reservation_id)
            if row is not None:
                locked[reservation_id] = LockedReservation(
                    self._tables.reservation(row), row.expire_time <= self._tx.now)
        settling = {r.reservation.account_id for r in locked.values()
                    if r.reservation.status is ACTIVE and not r.is_due}
        balances = {account_id: row.snapshot() for account_id in sorted(settling)
                    if (row := self._tx.account(account_id)) is not None}
        return LockedForSettling(locked, balances, self._tx.now if locked else datetime.min)

    @statement
    def expire_and_check(
        self, account_ids: Sequence[str], lot_ids: Sequence[int], owing: Sequence[str] = ()
    ) -> tuple[list[ExpiredLot], set[int], set[str]]:
        """EXPIRE_AND_CHECK: kind 1 (lots among `lot_ids` expired before the statement) and
        kind 2 (accounts among `owing` with free credits in lots not due, as the statement
        began) read first; groups.py adds the lots among them this statement expires."""
        wanted = set(lot_ids)
        expired_before = {lot_id for lot_id in wanted
                          if (lot := self._tables.lots.get(lot_id)) is not None
                          and lot.expired_time is not None}
        with_free = {account_id for account_id in owing
                     if any(lot.account_id == account_id and lot.remaining > lot.held
                            and lot.expired_time is None
                            and (lot.expire_time is None or lot.expire_time > self._tx.now)
                            for lot in self._tables.lots.values())}
        expired = self._tx.expire_due(account_ids)
        return (expired, expired_before | {lot.lot_id for lot in expired if lot.lot_id in wanted},
                with_free)

    @statement
    def capture(self, lot_changes: Sequence[LotChange], captures: Mapping[str, CaptureTotals],
                commits: Sequence[Capture], consumed: Sequence[Consumption],
                usages: Sequence[UsageEntry]) -> Captured:
        """CAPTURE: the lots change and the USAGE entries are inserted whatever else happens;
        an account's capture is conditional; reservations move by compare-and-set from
        ACTIVE, and only those record what they consumed (on draws that exist)."""
        lots = self._tx.change_lots(lot_changes)
        balances = {}
        for account_id, c in captures.items():
            row = self._tx.account(account_id)
            if row is not None and (c.used <= c.held or row.balance - c.used + row.credit_limit
                                    >= row.reserved - c.held):
                row.balance -= c.used
                row.reserved -= c.held
                row.active_reservation_count -= c.reservations
                row.lifetime_used += c.used
                row.debt += c.debt
                balances[account_id] = row.snapshot()
        finished: set[str] = set()
        for capture in commits:
            rows = self._tx.finish([capture.reservation_id], ReservationStatus.COMMITTED,
                                   capture.amount, debt_amount=capture.debt)
            finished.update(row.reservation_id for row in rows)
        recorded = self._record(consumed, finished)
        entry_ids = {}
        for u in usages:
            entry = self._tx.append(
                account_id=u.account_id, entry_type=EntryType.USAGE, amount=-u.amount,
                balance_after=u.balance_after, actor=u.actor, reservation_id=u.reservation_id,
                metadata=u.metadata, feature=u.feature, units=u.units,
                rate_card_version=u.rate_card_version)
            assert entry.reservation_id is not None
            entry_ids[entry.reservation_id] = entry.entry_id
        return Captured(balances, entry_ids, lots, len(finished), recorded)

    def _record(self, consumed: Sequence[Consumption], finished: set[str]) -> int:
        """CAPTURE's `recorded`: existing draws of finished reservations; rows updated."""
        recorded: set[tuple[str, int]] = set()
        for c in consumed:
            pair = (_uuid(c.reservation_id), c.lot_id)
            draw = self._tables.draws.get(pair)
            if draw is not None and pair[0] in finished and pair not in recorded:
                draw.consumed = c.credits
                recorded.add(pair)
        return len(recorded)

    @statement
    def release(self, lot_changes: Sequence[LotChange], held: Mapping[str, HeldTotals],
                releases: Sequence[ReleaseOf]) -> Released:
        """RELEASE: lots change, accounts unhold (unconditional), compare-and-set to
        RELEASED with the reason."""
        lots = self._tx.change_lots(lot_changes)
        balances = self._tx.unhold(held)
        finished = 0
        for release in releases:
            finished += len(self._tx.finish([release.reservation_id],
                                            ReservationStatus.RELEASED,
                                            release_reason=release.reason))
        return Released(balances, lots, finished)


# --- values as PostgreSQL stores them ------------------------------------------------------


def _uuid(text: str) -> str:
    """A `::uuid` cast read back as text: canonical lower case; malformed text is refused
    (PostgreSQL: invalid_text_representation, a DataError)."""
    return str(uuid.UUID(text))


def _jsonb(metadata: Mapping[str, str]) -> dict[str, str]:
    """Metadata through jsonb and back: keys ordered shorter first, then bytewise."""
    loaded = orjson.loads(orjson.dumps(dict(metadata)))
    return dict(sorted(loaded.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode())))


# --- the schema's constraints and the ledger's invariants ----------------------------------


def constraints_broken(tables: Tables) -> list[str]:
    """The names of the schema's constraints (migrations/versions/) the tables break."""
    broken = [name for row in tables.accounts.values() for name in _account_checks(row)]
    broken += [name for row in tables.lots.values() for name in _lot_checks(row, tables)]
    broken += [name for row in tables.reservations.values()
               for name in _reservation_checks(row, tables)]
    broken += [name for pair, row in tables.draws.items()
               for name in _draw_checks(pair, row, tables)]
    return broken + _entry_checks(tables)


def _account_checks(a: AccountRow) -> list[str]:
    checks = {
        "ck_accounts_account_id_length": 1 <= len(a.account_id) <= 128,
        "ck_accounts_reserved_nonnegative": a.reserved >= 0,
        "ck_accounts_balance_min": a.balance >= -_BALANCE_CHECK_MAX,
        "ck_accounts_credit_limit": 0 <= a.credit_limit <= _BALANCE_CHECK_MAX,
        "ck_accounts_debt": 0 <= a.debt <= 2 * _BALANCE_CHECK_MAX,
        "ck_accounts_balance_max": a.balance <= _BALANCE_CHECK_MAX,
        "ck_accounts_active_reservation_count_nonnegative": a.active_reservation_count >= 0,
        "ck_accounts_lifetime_nonnegative": a.lifetime_granted >= 0 and a.lifetime_used >= 0,
        "ck_accounts_lifetime_expired_nonnegative": a.lifetime_expired >= 0,
    }
    return [f"{name} ({a.account_id})" for name, ok in checks.items() if not ok]


def _lot_checks(lot: LotRow, tables: Tables) -> list[str]:
    checks = {
        "ck_credit_lots_amounts": (lot.amount > 0 and lot.held >= 0
                                   and lot.remaining >= lot.held and lot.remaining <= lot.amount),
        "ck_credit_lots_priority": 0 <= lot.priority <= 100,
        "ck_credit_lots_repaid": 0 <= lot.repaid <= lot.amount,
        "ck_credit_lots_expired": lot.expired_time is None or (
            lot.expire_time is not None and lot.remaining == lot.held),
        "credit_lots_account_id_fkey": lot.account_id in tables.accounts,
    }
    return [f"{name} (lot {lot.lot_id})" for name, ok in checks.items() if not ok]


def _reservation_checks(r: ReservationRow, tables: Tables) -> list[str]:
    committed = r.status is ReservationStatus.COMMITTED
    checks = {
        "ck_reservations_amount_positive": r.amount > 0,
        # (status = 'COMMITTED') = (committed_amount IS NOT NULL) AND committed_amount > 0,
        # where a NULL committed_amount makes the second part NULL, which passes
        "ck_reservations_committed_amount": committed == (r.committed_amount is not None)
        and (r.committed_amount is None or r.committed_amount > 0),
        "ck_reservations_finish_time": (r.status is ACTIVE) == (r.finish_time is None),
        "ck_reservations_expire_after_create": r.expire_time > r.create_time,
        "ck_reservations_debt_amount": 0 <= r.debt_amount <= (r.committed_amount or 0),
        "reservations_account_id_fkey": r.account_id in tables.accounts,
    }
    return [f"{name} ({r.reservation_id})" for name, ok in checks.items() if not ok]


def _draw_checks(pair: tuple[str, int], d: DrawRow, tables: Tables) -> list[str]:
    consumed = d.consumed or 0
    checks = {
        "ck_reservation_lots_amounts": d.held >= 0 and consumed >= 0
        and (d.held > 0 or consumed > 0),
        "reservation_lots_reservation_id_fkey": pair[0] in tables.reservations,
        "reservation_lots_lot_id_fkey": pair[1] in tables.lots,
    }
    return [f"{name} {pair}" for name, ok in checks.items() if not ok]


def _entry_checks(tables: Tables) -> list[str]:
    broken = []
    unique: set[tuple[Any, ...]] = set()
    for e in tables.entries:
        kind_ok = (
            (e.entry_type is EntryType.GRANT and e.amount > 0 and e.grant_type is not None)
            or (e.entry_type is EntryType.USAGE and e.amount < 0 and e.reservation_id is not None)
            or (e.entry_type is EntryType.EXPIRY and e.amount < 0 and e.lot_id is not None)
            or (e.entry_type is EntryType.ADJUSTMENT and e.amount != 0)
            or (e.entry_type is EntryType.TRANSFER_OUT and e.amount < 0
                and e.lot_id is not None and e.transfer_id is not None)
            or (e.entry_type is EntryType.TRANSFER_IN and e.amount > 0
                and e.lot_id is not None and e.transfer_id is not None)
            or (e.entry_type is EntryType.REFUND and e.amount > 0
                and e.reservation_id is not None and e.lot_id is not None))
        checks = {
            "ck_ledger_entries_kind": kind_ok,
            "ck_ledger_entries_balance_after_min": e.balance_after >= -_BALANCE_CHECK_MAX,
            "ledger_entries_account_id_fkey": e.account_id in tables.accounts,
            "ledger_entries_reservation_id_fkey": e.reservation_id is None
            or e.reservation_id in tables.reservations,
            "ledger_entries_lot_id_fkey": e.lot_id is None or e.lot_id in tables.lots,
        }
        broken += [f"{name} (entry {e.entry_id})" for name, ok in checks.items() if not ok]
        index = _unique_index_of(e)
        if index is not None:
            if index in unique:
                broken.append(f"{index[0]} (entry {e.entry_id})")
            unique.add(index)
    return broken


def _unique_index_of(e: LedgerEntry) -> tuple[Any, ...] | None:
    """The entry's key in the partial unique index that covers it, if one does."""
    if e.entry_type is EntryType.USAGE:
        return ("uq_ledger_entries_usage_reservation_id", e.reservation_id)
    if e.entry_type is EntryType.GRANT:
        return ("uq_ledger_entries_grant_lot_id", e.lot_id)
    if e.entry_type is not EntryType.EXPIRY:
        return None
    if e.reservation_id is None:
        return ("uq_ledger_entries_expiry_lot_id", e.lot_id)
    return ("uq_ledger_entries_expiry_lot_id_reservation_id", e.lot_id, e.reservation_id)


def ledger_invariants_broken(tables: Tables) -> dict[str, list[Any]]:
    """tests/ledger_checks.py's INVARIANTS over the tables, and the schema's constraints: the
    name of each one broken, with (a few of) the rows breaking it."""
    broken = {name: rows[:5] for name, check in _INVARIANTS.items()
              if (rows := check(tables))}
    constraints = constraints_broken(tables)
    if constraints:
        broken["schema constraints"] = constraints[:5]
    return broken


def _per_account(tables: Tables, value: Callable[[LedgerEntry], int | None]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for e in tables.entries:
        part = value(e)
        if part is not None:
            totals[e.account_id] = totals.get(e.account_id, 0) + part
    return totals


def _of_type(entry_type: EntryType, sign: int = 1) -> Callable[[LedgerEntry], int | None]:
    return lambda e: sign * e.amount if e.entry_type is entry_type else None


def _balance_is_the_ledger(tables: Tables) -> list[Any]:
    ledger = _per_account(tables, lambda e: e.amount)
    return [(a.account_id, a.balance, ledger.get(a.account_id, 0))
            for a in tables.accounts.values() if a.balance != ledger.get(a.account_id, 0)]


def _reserved_is_the_active_reservations(tables: Tables) -> list[Any]:
    reservations: dict[str, tuple[int, int]] = {}
    for r in tables.reservations.values():
        if r.status is ACTIVE:
            total, count = reservations.get(r.account_id, (0, 0))
            reservations[r.account_id] = (total + r.amount, count + 1)
    return [(a.account_id, a.reserved, a.active_reservation_count, reservations.get(a.account_id))
            for a in tables.accounts.values()
            if (a.reserved, a.active_reservation_count) != reservations.get(a.account_id, (0, 0))]


def _debt_is_what_was_taken_beyond_lots(tables: Tables) -> list[Any]:
    owed: dict[str, int] = {}
    for r in tables.reservations.values():
        owed[r.account_id] = owed.get(r.account_id, 0) + r.debt_amount
    for e in tables.entries:
        if e.entry_type is EntryType.ADJUSTMENT and e.lot_id is None:
            owed[e.account_id] = owed.get(e.account_id, 0) - e.amount
    for lot in tables.lots.values():
        owed[lot.account_id] = owed.get(lot.account_id, 0) - lot.repaid
    return [(a.account_id, a.debt) for a in tables.accounts.values()
            if a.debt != owed.get(a.account_id, 0)]


def _lifetimes_are_the_ledger(tables: Tables) -> list[Any]:
    granted = _per_account(tables, _of_type(EntryType.GRANT))
    used = _per_account(tables, _of_type(EntryType.USAGE, -1))
    expired = _per_account(tables, _of_type(EntryType.EXPIRY, -1))
    return [a.account_id for a in tables.accounts.values()
            if (a.lifetime_granted, a.lifetime_used, a.lifetime_expired)
            != (granted.get(a.account_id, 0), used.get(a.account_id, 0),
                expired.get(a.account_id, 0))]


def _balances_are_the_lots(tables: Tables) -> list[Any]:
    remaining: dict[str, int] = {}
    held: dict[str, int] = {}
    for lot in tables.lots.values():
        remaining[lot.account_id] = remaining.get(lot.account_id, 0) + lot.remaining
        held[lot.account_id] = held.get(lot.account_id, 0) + lot.held
    for r in tables.reservations.values():  # what active ones hold beyond their lots
        if r.status is ACTIVE:
            drawn = sum(d.held for (rid, _), d in tables.draws.items()
                        if rid == r.reservation_id)
            held[r.account_id] = held.get(r.account_id, 0) + r.amount - drawn
    return [(a.account_id, a.balance, a.reserved) for a in tables.accounts.values()
            if (a.balance, a.reserved)
            != (remaining.get(a.account_id, 0) - a.debt, held.get(a.account_id, 0))]


def _lot_held_is_the_active_draws(tables: Tables) -> list[Any]:
    drawn: dict[int, int] = {}
    for (reservation_id, lot_id), draw in tables.draws.items():
        if tables.reservations[reservation_id].status is ACTIVE:
            drawn[lot_id] = drawn.get(lot_id, 0) + draw.held
    return [(lot.lot_id, lot.held, drawn.get(lot.lot_id, 0)) for lot in tables.lots.values()
            if lot.held != drawn.get(lot.lot_id, 0)]


def _lot_remaining_covers_its_held(tables: Tables) -> list[Any]:
    return [(lot.lot_id, lot.remaining, lot.held) for lot in tables.lots.values()
            if lot.remaining < lot.held]


def _lot_spent_is_consumed_and_written_off(tables: Tables) -> list[Any]:
    gone: dict[int, int] = {}
    for (reservation_id, lot_id), draw in tables.draws.items():
        if tables.reservations[reservation_id].status is ReservationStatus.COMMITTED:
            gone[lot_id] = gone.get(lot_id, 0) + (draw.consumed or 0)
    for e in tables.entries:
        if e.lot_id is not None and (
                e.entry_type in (EntryType.EXPIRY, EntryType.TRANSFER_OUT)
                or (e.entry_type is EntryType.ADJUSTMENT and e.amount < 0)
                or (e.entry_type is EntryType.REFUND
                    and (e.reservation_id, e.lot_id) in tables.draws)):
            gone[e.lot_id] = gone.get(e.lot_id, 0) - e.amount
    return [lot.lot_id for lot in tables.lots.values()
            if lot.amount - lot.remaining != gone.get(lot.lot_id, 0) + lot.repaid]


def _totals_are_the_entries(tables: Tables) -> list[Any]:
    totals: dict[tuple[str, str], int] = {}
    for e in tables.entries:
        kind = total_kind(e.entry_type, e.grant_type, e.amount)
        if kind is not None:
            totals[(e.account_id, kind)] = totals.get((e.account_id, kind), 0) + abs(e.amount)
    return sorted(set(totals.items()) ^ set(tables.totals.items()))


def _refunded_is_the_refunds(tables: Tables) -> list[Any]:
    refunded: dict[str, int] = {}
    for e in tables.entries:
        if e.entry_type is EntryType.REFUND and e.reservation_id is not None:
            refunded[e.reservation_id] = refunded.get(e.reservation_id, 0) + e.amount
    return [r.reservation_id for r in tables.reservations.values()
            if r.refunded_amount != refunded.get(r.reservation_id, 0)]


def _reservations_drew_and_consumed_their_amounts(tables: Tables) -> list[Any]:
    broken = []
    for r in tables.reservations.values():
        draws = [d for (rid, _), d in tables.draws.items() if rid == r.reservation_id]
        held = sum(d.held for d in draws)
        consumed = [d.consumed for d in draws if d.consumed is not None]
        committed = r.status is ReservationStatus.COMMITTED
        if (held > r.amount
                or ((draws or r.debt_amount) and committed
                    and sum(consumed) + r.debt_amount != r.committed_amount)
                or (not committed and consumed)):
            broken.append(r.reservation_id)
    return broken


def _one_usage_per_committed_reservation(tables: Tables) -> list[Any]:
    usages: dict[str, list[int]] = {}
    for e in tables.entries:
        if e.entry_type is EntryType.USAGE and e.reservation_id is not None:
            usages.setdefault(e.reservation_id, []).append(-e.amount)
    return [r.reservation_id for r in tables.reservations.values()
            if (r.status is ReservationStatus.COMMITTED
                and usages.get(r.reservation_id) != [r.committed_amount])
            or (r.status is not ReservationStatus.COMMITTED and r.reservation_id in usages)]


def _newest_balance_after_is_the_balance(tables: Tables) -> list[Any]:
    newest: dict[str, LedgerEntry] = {}
    for e in tables.entries:
        if e.account_id not in newest or e.entry_id > newest[e.account_id].entry_id:
            newest[e.account_id] = e
    return [a.account_id for a in tables.accounts.values()
            if a.account_id in newest and newest[a.account_id].balance_after != a.balance]


_INVARIANTS: dict[str, Callable[[Tables], list[Any]]] = {
    "balance == sum(ledger amounts)": _balance_is_the_ledger,
    "reserved == sum(active reservations), count matches": _reserved_is_the_active_reservations,
    "debt == taken beyond lots - repaid - forgiven": _debt_is_what_was_taken_beyond_lots,
    "lifetime totals match the ledger": _lifetimes_are_the_ledger,
    "account_totals == the entries of each kind": _totals_are_the_entries,
    "refunded_amount == the REFUND entries of the reservation": _refunded_is_the_refunds,
    "balance == sum(lot remaining) - debt, reserved == sum(lot held) + held beyond lots":
        _balances_are_the_lots,
    "each lot's held == what active reservations drew from it": _lot_held_is_the_active_draws,
    "each lot's remaining >= held": _lot_remaining_covers_its_held,
    "each lot's amount - remaining == consumed + written off + deducted + given - refunded "
    "+ repaid": _lot_spent_is_consumed_and_written_off,
    "a reservation drew at most its amount; a committed one consumed its committed amount "
    "less what went into debt":
        _reservations_drew_and_consumed_their_amounts,
    "a committed reservation has exactly one USAGE entry of its amount, others none":
        _one_usage_per_committed_reservation,
    "balance_after of each account's newest entry is its balance":
        _newest_balance_after_is_the_balance,
}

