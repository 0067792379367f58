"""Named values the service layer and storage exchange through the ports
(service/ports.py): what a statement reads back, or is given to write. Plain tuples with
names, so the pure rules (lots.py) take them as they are."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import NamedTuple

from credits_service.domain.model import (
    Account,
    AccountStatus,
    BalanceSnapshot,
    Lot,
    Reservation,
)


class ExpiredLot(NamedTuple):
    """A lot just marked expired, and its unheld credits, to be written off."""

    account_id: str
    lot_id: int
    unheld: int


class FreeLot(NamedTuple):
    """An unexpired lot's credits that no reservation holds."""

    lot_id: int
    free: int


class WriteOff(NamedTuple):
    """Expired credits taken off an account, with one EXPIRY entry: a lot's unheld remainder
    (reservation_id None), or what a reservation gave back to a lot that had expired."""

    account_id: str
    lot_id: int
    amount: int
    reservation_id: str | None


class StoredResponse(NamedTuple):
    """An idempotency key's record: the hash of the request it was first used for, and the
    response stored for it (JSON text; None only inside the transaction that claimed it)."""

    request_hash: bytes
    response: str | None


class KeyedAccount(NamedTuple):
    """A keyed call's idempotency key, in its scope (the caller), and its account."""

    scope: str
    idempotency_key: str
    account_id: str


class AccountSummary(NamedTuple):
    """An account's balance, terms and lifetime totals by kind (model.total_kind), read at
    once."""

    balance: BalanceSnapshot
    account: Account
    totals: dict[str, int]
    pool_account_id: str | None = None  # a member's: its organisation's pool


class BalanceListing(NamedTuple):
    """GetBalance's read of an account: its summary, its lots that still hold credits in
    consumption order (at most the limit asked), and the free credits of unexpired lots
    expiring within the window asked (0 without one)."""

    summary: AccountSummary
    lots: list[Lot]
    expiring: int


class FoundAndLocked(NamedTuple):
    """A reserving group's first read: the keys stored already, by (scope, key); the accounts
    of the others, locked; the status of those of them that are not ACTIVE; their plans; the
    pools of those that are members of an organisation."""

    stored: dict[tuple[str, str], StoredResponse]
    balances: dict[str, BalanceSnapshot]
    inactive: dict[str, AccountStatus]
    plans: dict[str, str] = {}
    pools: dict[str, str] = {}


class KeyRecord(NamedTuple):
    """An idempotency key to store with the response it answered."""

    scope: str
    idempotency_key: str
    request_hash: bytes
    response: str


class HeldTotals(NamedTuple):
    """Per account: the credits some reservations hold, and how many reservations."""

    credits: int
    reservations: int


class CaptureTotals(NamedTuple):
    """Per account, for a group of Commits: credits held, credits used, reservations, and
    credits used beyond the lots (into debt)."""

    held: int
    used: int
    reservations: int
    debt: int = 0


class Capture(NamedTuple):
    reservation_id: str
    amount: int
    debt: int = 0  # what the commit took beyond the lots, into debt


class Consumption(NamedTuple):
    """What a Commit consumed from one lot."""

    reservation_id: str
    lot_id: int
    credits: int


class UsageEntry(NamedTuple):
    """A Commit's USAGE ledger entry (amount positive: the entry stores it negated)."""

    account_id: str
    amount: int
    balance_after: int
    reservation_id: str
    metadata: Mapping[str, str]
    actor: str
    feature: str | None = None  # a hold of a feature: what, how many units, by which card
    units: int | None = None
    rate_card_version: str | None = None


class ReleaseOf(NamedTuple):
    reservation_id: str
    reason: str


class LockedReservation(NamedTuple):
    """A reservation locked for this transaction, and whether its expire_time has passed."""

    reservation: Reservation
    is_due: bool


class LockedForSettling(NamedTuple):
    """A group of Commits or Releases, locked: the reservations by id, the balances of the
    accounts of those ACTIVE and not due, and the service clock."""

    reservations: dict[str, LockedReservation]
    balances: dict[str, BalanceSnapshot]
    now: datetime


class ExpiredAndFree(NamedTuple):
    """Lots a group just expired; per account, free lots in consumption order that cover what
    it wants; and the service clock."""

    expired: list[ExpiredLot]
    free: dict[str, list[FreeLot]]
    now: datetime


class Placed(NamedTuple):
    """What a group of CheckAndReserve calls wrote: the accounts' new balances and the rows."""

    balances: dict[str, BalanceSnapshot]
    lots: int
    reservations: int
    draws: int
    keys: int


class Captured(NamedTuple):
    """What a group of Commits wrote: new balances, USAGE entry ids by reservation, rows."""

    balances: dict[str, BalanceSnapshot]
    entry_ids: dict[str, int]
    lots: int
    reservations: int
    draws: int


class Released(NamedTuple):
    """What a group of Releases wrote: new balances and the rows."""

    balances: dict[str, BalanceSnapshot]
    lots: int
    reservations: int


class ImportRow(NamedTuple):
    """A checked row of a balances file (service/imports.py): credits for an account, once
    per import key."""

    line: int
    account_id: str
    amount: int
    plan: str
    expire_time: datetime | None
    import_key: str
    external_id: str
    credit_limit: int = 0  # the plan's, for an account the row creates


class UsageRow(NamedTuple):
    """Usage of one feature in one bucket of a summary ('' the feature of usage of an
    amount)."""

    bucket_start: datetime
    feature: str
    credits: int
    units: int
    calls: int


class AccountSpend(NamedTuple):
    """What an account spent over a summary's range."""

    account_id: str
    credits: int
    calls: int


class MemberSpend(NamedTuple):
    """What a member of an organisation spent of its pool over a summary's range."""

    pool_account_id: str
    member_account_id: str
    credits: int
    calls: int
