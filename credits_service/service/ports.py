"""What the use cases need from the world, as typed Protocols: a unit of work with its
repositories (storage); where they report what they did is reporting.py.

persistence/ implements the storage ports (SqlUnitOfWork) and telemetry.py the metrics port;
tests/support/fake_storage.py implements the storage ports in memory. A repository method
raises persistence.errors.StorageError subclasses when the database fails; the unit of work
rolls back unless committed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Protocol, Self

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
)
from credits_service.domain.organizations import Member, MemberCaps, Organization
from credits_service.domain.rows import (
    AccountSpend,
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
    MemberSpend,
    Placed,
    Released,
    ReleaseOf,
    StoredResponse,
    UsageEntry,
    UsageRow,
    WriteOff,
)
from credits_service.domain.subscriptions import Allocation, Rollover, Subscription
from credits_service.service.event_ports import (
    AlertRepository,
    EventRepository,
    WebhookRepository,
)


class AccountRepository(Protocol):
    """One fixed row per account; every change is a conditional write on it."""

    async def get(self, account_id: str) -> BalanceSnapshot | None: ...

    async def profile(self, account_id: str) -> Account | None:
        """The account's plan and creation time."""

    async def summary(self, account_id: str) -> AccountSummary | None:
        """The account's balance, terms and lifetime totals by kind (model.total_kind), read
        at once."""

    async def balances(
        self, asked: Sequence[tuple[str, int | None]], lots_max: int
    ) -> list[BalanceListing | None]:
        """For each (account, expiring window in ms or None) asked, in order, its summary,
        its lots holding credits in consumption order (at most `lots_max`) and the free
        credits expiring within the window; None for an unknown account. One statement."""

    async def create(
        self, account_id: str, plan: str, credit_limit: int = 0
    ) -> BalanceSnapshot | None:
        """Create the account, empty, on `plan`; None if it exists already (waiting for a
        transaction creating it concurrently to end)."""

    async def lock(self, account_ids: Iterable[str]) -> dict[str, BalanceSnapshot]:
        """Lock the accounts for the transaction, in account order; unknown ones left out."""

    async def set_status(
        self, account_id: str, old: AccountStatus, new: AccountStatus, reason: str, actor: str
    ) -> Account | None:
        """Change the status from `old` to `new`, recording the change; None if it was not
        `old`."""

    async def set_plan(
        self, account_id: str, old: str, new: str, credit_limit: int, reason: str, actor: str
    ) -> Account | None:
        """Move the account from plan `old` to `new` with its `credit_limit`, recording the
        change; None if it was not on `old`."""

    async def sync_credit_limits(self, limits: Mapping[str, int]) -> int:
        """Give every account on each plan its plan's credit limit; how many changed."""

    async def credit(
        self, account_id: str, amount: int, balance_max: int, granted: bool = True
    ) -> BalanceSnapshot | None:
        """Add `amount`, creating the account, counted in lifetime_granted when `granted`;
        None if the balance would pass `balance_max` or the account is closed."""

    async def debit(
        self, account_id: str, amount: int, into_debt: int = 0, *,
        allow_negative: bool = False, own_credits: bool = False,
    ) -> BalanceSnapshot | None:
        """Take `amount` off the balance, `into_debt` of it beyond the account's lots; None if
        available is less (without the credit limit when `own_credits`), unless
        `allow_negative`."""

    async def repay(self, account_id: str, credits: int) -> BalanceSnapshot | None:
        """Take `credits` just added to the balance off the account's debt; None if it owes
        less."""

    async def capture(
        self, account_id: str, held: int, amount: int, into_debt: int = 0
    ) -> BalanceSnapshot | None:
        """Turn a reservation of `held` into usage of `amount`, `into_debt` of it beyond the
        account's lots; None if available cannot cover it."""

    async def unhold(self, held: Mapping[str, HeldTotals]) -> dict[str, BalanceSnapshot]:
        """Give reservations' credits back to available, per account."""


class EntryRepository(Protocol):
    """The ledger: immutable entries, each with the balance right after it."""

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
        """Append the entry, counting it in the account's lifetime total of its kind."""

    async def refunded_to_lots(self, reservation_id: str) -> dict[int, int]:
        """What refunds of the reservation gave back so far, per lot."""

    async def write_off(
        self, write_offs: Sequence[WriteOff], actor: str
    ) -> dict[str, BalanceSnapshot]:
        """Take expired credits off the balances, one EXPIRY entry each, in order."""

    async def usage_of(self, reservation_id: str) -> LedgerEntry | None: ...

    async def get(self, entry_id: int) -> LedgerEntry | None: ...

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
        """Entries newest first, strictly older than `before_entry_id` when given; filters
        left empty keep everything."""


class LotRepository(Protocol):
    """Credit lots; every change to an account's lots runs under the account's lock."""

    async def create(
        self,
        *,
        account_id: str,
        grant_type: GrantType | None,
        priority: int,
        expire_time: datetime | None,
        amount: int,
        remaining: int | None = None,
    ) -> Lot: ...

    async def of(self, lot_ids: Iterable[int]) -> dict[int, Lot]:
        """These lots, by id."""

    async def expire_due(self, account_ids: Iterable[str]) -> list[ExpiredLot]:
        """Mark the locked accounts' lots past expire_time expired (compare-and-set)."""

    async def due_accounts(self, limit: int) -> list[str]:
        """Accounts with lots due to expire, locked, skipping accounts locked elsewhere."""

    async def free_in_order(self, wanted: Mapping[str, int]) -> dict[str, list[FreeLot]]:
        """Per account, free credits of unexpired lots in consumption order, enough to cover
        the credits wanted."""

    async def apply(self, changes: Iterable[LotChange]) -> None: ...

    async def expired_among(self, lot_ids: Iterable[int]) -> set[int]: ...

    async def listing(
        self, account_id: str, limit: int, expiring_within_ms: int | None
    ) -> tuple[list[Lot], int]:
        """Lots that still hold credits, in consumption order, and the credits expiring within
        the window."""


class ReservationRepository(Protocol):
    """Reservations and their draws; a reservation leaves ACTIVE once (compare-and-set)."""

    async def lock(self, reservation_id: str) -> LockedReservation | None: ...

    async def draws_of(self, reservation_ids: list[str]) -> dict[str, tuple[LotDraw, ...]]: ...

    async def record_consumption(
        self, reservation_id: str, draws: tuple[LotDraw, ...], consumed: Mapping[int, int]
    ) -> tuple[LotDraw, ...]: ...

    async def finish(
        self,
        reservation_ids: list[str],
        status: ReservationStatus,
        *,
        committed_amount: int | None = None,
        release_reason: str = "",
        debt_amount: int = 0,
    ) -> dict[str, Reservation]:
        """Compare-and-set ACTIVE -> `status`; those no longer ACTIVE are left out."""

    async def add_refund(self, reservation_id: str, amount: int) -> int | None:
        """Count `amount` more as refunded (compare-and-set); the refunded amount after, or
        None if that would pass the committed amount."""

    async def extend(
        self, reservation_id: str, ttl_ms: int, lifetime_max_ms: int
    ) -> Reservation: ...

    async def lock_due(self, batch_size: int) -> list[Reservation]:
        """ACTIVE reservations past expire_time, locked, skipping those locked elsewhere."""

    async def page(
        self,
        *,
        account_id: str,
        statuses: Iterable[ReservationStatus],
        before: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Reservation]: ...


class IdempotencyRepository(Protocol):
    async def claim(self, scope: str, key: str, method: str, request_hash: bytes) -> bool:
        """Take the key for this transaction; False if it is stored already (a concurrent
        holder is waited for, so False always sees a finished record)."""

    async def get(self, scope: str, key: str) -> StoredResponse | None: ...

    async def complete(self, scope: str, key: str, response: str) -> None: ...

    async def purge(self, older_than_s: float, batch_size: int) -> int: ...


class GroupStatements(Protocol):
    """The statements of group transactions, each spanning tables (persistence/groups.py
    says which one-table statements each stands for). A key another transaction stored
    meanwhile raises TransientConflict from place and complete."""

    async def find_and_lock(self, keys: Sequence[KeyedAccount]) -> FoundAndLocked: ...

    async def expire_and_find(
        self, account_ids: Sequence[str], wanted: Mapping[str, int]
    ) -> ExpiredAndFree: ...

    async def place(
        self,
        lot_holds: Mapping[int, int],
        held: Mapping[str, HeldTotals],
        reservations: Sequence[Reservation],
        actors: Sequence[str],
        method: str,
        keys: Sequence[KeyRecord],
    ) -> Placed: ...

    async def complete(self, method: str, keys: Sequence[KeyRecord]) -> None: ...

    async def lock_for_settling(self, reservation_ids: Sequence[str]) -> LockedForSettling: ...

    async def expire_and_check(
        self, account_ids: Sequence[str], lot_ids: Sequence[int], owing: Sequence[str] = ()
    ) -> tuple[list[ExpiredLot], set[int], set[str]]:
        """Expire the (locked) accounts' due lots; which of `lot_ids` are expired after; which
        of the accounts `owing` have free credits in unexpired lots."""

    async def capture(
        self,
        lot_changes: Sequence[LotChange],
        captures: Mapping[str, CaptureTotals],
        commits: Sequence[Capture],
        consumed: Sequence[Consumption],
        usages: Sequence[UsageEntry],
    ) -> Captured: ...

    async def release(
        self,
        lot_changes: Sequence[LotChange],
        held: Mapping[str, HeldTotals],
        releases: Sequence[ReleaseOf],
    ) -> Released: ...


class UsageRepository(Protocol):
    """The usage rollups (what the USAGE entries add up to), read for summaries."""

    async def buckets(
        self, *, bucket: str, start: datetime, end: datetime, features: Sequence[str],
        account_ids: Sequence[str], plan: str, limit: int,
    ) -> list[UsageRow]: ...

    async def top_accounts(
        self, *, start: datetime, end: datetime, days: tuple[datetime, datetime],
        months: tuple[datetime, datetime], features: Sequence[str], account_ids: Sequence[str],
        plan: str, limit: int,
    ) -> list[AccountSpend]: ...

    async def by_member(
        self, *, start: datetime, end: datetime, features: Sequence[str],
        pool_account_ids: Sequence[str], limit: int,
    ) -> list[MemberSpend]:
        """What each member spent of its pool in [start, end), by pool, most first."""

    async def compact_shards(self, older_than_s: float, batch_size: int) -> int:
        """Fold the shards of hours past into one row each; returns the rows folded."""


class SubscriptionRepository(Protocol):
    """Subscriptions and the allocations granted to them; a subscription's row is locked
    before its account's."""

    async def active(self, account_id: str, *, lock: bool = False) -> Subscription | None: ...

    async def latest(self, account_id: str) -> Subscription | None:
        """The account's subscription, ACTIVE or the last one CANCELED."""

    async def create(
        self, account_id: str, plan: str, allocation: Allocation, anchor: datetime
    ) -> Subscription:
        """A new ACTIVE subscription with no period granted yet (period 0 due at `anchor`)."""

    async def save(self, subscription: Subscription) -> Subscription: ...

    async def lock_due(self, limit: int) -> list[Subscription]:
        """ACTIVE subscriptions with a period due, locked, skipping those locked elsewhere."""

    async def record_grant(
        self, subscription_id: int, period: int, kind: str, plan: str, credits: int,
        carried: int, lot_id: int | None, rollover: Rollover,
    ) -> None:
        """Record an allocation granted, with the rule its credits carry by: once per
        subscription and period for PERIOD."""

    async def left_over(self, subscription_id: int, period: int) -> list[tuple[int, Rollover]]:
        """What each of the period's allocation lots had left when written off, with the
        rollover rule it was granted under."""

    async def granted_in(self, subscription_id: int, period: int) -> int: ...


class OrganizationRepository(Protocol):
    """Organisations and their members; a member's row is locked after its pool's account."""

    async def create(self, organization_id: str, pool_account_id: str) -> Organization | None:
        """A new organisation; None if one of that id exists."""

    async def get(self, organization_id: str) -> Organization | None: ...

    async def of_pool(self, account_id: str) -> Organization | None:
        """The organisation whose pool the account is, if any."""

    async def member(self, account_id: str) -> Member | None: ...

    async def lock_members(self, account_ids: Iterable[str]) -> dict[str, Member]:
        """The members among the accounts, their rows locked, in account order."""

    async def add_member(
        self, organization: Organization, account_id: str, caps: MemberCaps
    ) -> None: ...

    async def set_caps(self, account_id: str, caps: MemberCaps) -> None: ...

    async def remove_member(self, account_id: str) -> bool:
        """Remove a member holding nothing on the pool; False if it holds credits there."""

    async def members(
        self, organization_id: str, after_account_id: str, limit: int
    ) -> list[Member]: ...


class UnitOfWork(Protocol):
    """One transaction: `async with` opens it; leaving without commit() rolls it back."""

    accounts: AccountRepository
    entries: EntryRepository
    usage: UsageRepository
    lots: LotRepository
    reservations: ReservationRepository
    idempotency: IdempotencyRepository
    groups: GroupStatements
    subscriptions: SubscriptionRepository
    organizations: OrganizationRepository
    events: EventRepository
    alerts: AlertRepository
    webhooks: WebhookRepository

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def commit(self) -> None: ...

    async def now(self) -> datetime:
        """The service clock: the database's."""

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this transaction has committed (never if it does not)."""


class UnitOfWorkFactory(Protocol):
    def __call__(
        self, *, grouped: bool = False, time_remaining_s: float | None = None,
        snapshot: bool = False, autocommit: bool = False,
    ) -> UnitOfWork:
        """A new unit of work. `grouped`: a group commit's transaction, which runs the same
        few statements over and over (storage may keep their plans). `time_remaining_s`: the
        calling RPC's time left, below which storage bounds its statements. `snapshot`: a
        read-only transaction whose statements all read one snapshot (factories that serve
        no such reads need not take it). `autocommit`: no transaction around the statements,
        each its own (for reads of one statement; commit() does nothing)."""
