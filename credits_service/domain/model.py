"""The ledger's entities and values: accounts' balances, ledger entries, lots, reservations.

Amounts are whole credits as Python ints, stored as BIGINT. Times are timezone-aware datetimes
taken from the database clock. The words are those of docs/architecture.md's glossary.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rates.py builds on this module
    from credits_service.domain.rates import HeldPrice

# Account ids, idempotency keys and external ids: 1-128 of these characters
IDENTIFIER_PATTERN = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
AMOUNT_MIN = 1
AMOUNT_MAX = 10**12
# An account's balance never exceeds this; a grant that would pass it is declined.
BALANCE_MAX = 10**15
# A credit limit this high is an unlimited account: never declined for funds (its balance may
# fall to -CREDIT_LIMIT_UNLIMITED, which is 10^15 credits of usage beyond its lots).
CREDIT_LIMIT_UNLIMITED = BALANCE_MAX
# Lots are spent lowest priority number first; a grant without one gets the default.
PRIORITY_MIN = 0
PRIORITY_MAX = 100
PRIORITY_DEFAULT = 50
# GetBalance lists at most this many lots (the API promises it).
LOTS_LISTED_MAX = 100


class GrantType(enum.Enum):
    SIGNUP = "SIGNUP"
    PURCHASE = "PURCHASE"
    PROMO = "PROMO"
    REFERRAL = "REFERRAL"
    REFUND = "REFUND"
    ADMIN_GRANT = "ADMIN_GRANT"
    SUBSCRIPTION = "SUBSCRIPTION"


class EntryType(enum.Enum):
    GRANT = "GRANT"
    USAGE = "USAGE"
    EXPIRY = "EXPIRY"
    ADJUSTMENT = "ADJUSTMENT"
    TRANSFER_OUT = "TRANSFER_OUT"
    TRANSFER_IN = "TRANSFER_IN"
    REFUND = "REFUND"


class AccountStatus(enum.Enum):
    ACTIVE = "ACTIVE"
    FROZEN = "FROZEN"  # no new reservations or debits; commits, releases and grants go on
    CLOSED = "CLOSED"  # nothing changes any more; reads still answer


class ReservationStatus(enum.Enum):
    ACTIVE = "ACTIVE"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True, slots=True)
class BalanceSnapshot:
    """An account's balance row. `balance` is its lots' remaining credits minus `debt` (what it
    used beyond its lots), so it is negative when it owes; `credit_limit` is how far below
    zero its available may reach (CREDIT_LIMIT_UNLIMITED: unlimited)."""

    account_id: str
    balance: int
    reserved: int
    active_reservation_count: int
    lifetime_granted: int
    lifetime_used: int
    lifetime_expired: int = 0
    credit_limit: int = 0
    debt: int = 0

    @property
    def available(self) -> int:
        """What a new reservation or deduction may take: the credits not held, and the credit
        limit."""
        return self.balance - self.reserved + self.credit_limit

    @property
    def own_available(self) -> int:
        """The account's own credits not held (never its credit): what it may give away."""
        return self.balance - self.reserved

    @property
    def unlimited(self) -> bool:
        return self.credit_limit >= CREDIT_LIMIT_UNLIMITED

    def with_reservation(self, credits: int) -> BalanceSnapshot:
        """This balance with one more reservation of `credits` (dataclasses.replace, without
        its per-call field introspection: the batch path calls it once an item)."""
        return BalanceSnapshot(
            self.account_id, self.balance, self.reserved + credits,
            self.active_reservation_count + 1, self.lifetime_granted, self.lifetime_used,
            self.lifetime_expired, self.credit_limit, self.debt,
        )


@dataclass(frozen=True, slots=True)
class Account:
    """An account's terms: the plan it is on, its status, and when it was created."""

    account_id: str
    plan: str
    create_time: datetime
    status: AccountStatus = AccountStatus.ACTIVE


def total_kind(entry_type: EntryType, grant_type: GrantType | None, amount: int) -> str | None:
    """The lifetime total an entry counts in (account_totals), if any: grants by grant type,
    refunds, adjustments and transfers in and out. Usage and expiry are the account's own
    lifetime_used and lifetime_expired."""
    if entry_type is EntryType.GRANT:
        assert grant_type is not None
        return "GRANTED_" + grant_type.value
    if entry_type is EntryType.REFUND:
        return "REFUNDED"
    if entry_type is EntryType.ADJUSTMENT:
        return "ADJUSTED_IN" if amount > 0 else "ADJUSTED_OUT"
    if entry_type is EntryType.TRANSFER_IN:
        return "TRANSFERRED_IN"
    if entry_type is EntryType.TRANSFER_OUT:
        return "TRANSFERRED_OUT"
    return None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    entry_id: int
    account_id: str
    entry_type: EntryType
    grant_type: GrantType | None
    amount: int
    balance_after: int
    reservation_id: str | None
    reason: str
    metadata: Mapping[str, str]
    actor: str
    create_time: datetime
    lot_id: int | None = None
    transfer_id: str | None = None
    # USAGE of a hold of a feature: what it was, how many units, priced by which card
    feature: str | None = field(default=None, metadata={"hash_omit_none": True})
    units: int | None = field(default=None, metadata={"hash_omit_none": True})
    rate_card_version: str | None = field(default=None, metadata={"hash_omit_none": True})


@dataclass(frozen=True, slots=True)
class Lot:
    """The credits of one grant. `remaining` counts held credits too; `held` is what active
    reservations drew. Once `expired`, the lot keeps only held credits (remaining == held)."""

    lot_id: int
    account_id: str
    grant_type: GrantType | None  # None: the lot carrying a balance from before lots
    priority: int
    expire_time: datetime | None  # None: never expires
    amount: int
    remaining: int
    held: int
    expired: bool
    grant_entry_id: int | None
    create_time: datetime

    @property
    def free(self) -> int:
        return self.remaining - self.held


@dataclass(frozen=True, slots=True)
class LotDraw:
    """What one reservation drew from one lot, and what its Commit consumed there."""

    lot_id: int
    held: int
    consumed: int | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    reservation_id: str
    account_id: str
    amount: int
    status: ReservationStatus
    committed_amount: int | None
    create_time: datetime
    expire_time: datetime
    finish_time: datetime | None
    metadata: Mapping[str, str]
    draws: tuple[LotDraw, ...] = ()
    release_reason: str = ""
    refunded_amount: int = 0  # of the committed amount, given back by Refund
    # a hold of a feature: the price it was placed at (None: a hold of an amount)
    price: HeldPrice | None = field(default=None, metadata={"hash_omit_none": True})
    # a hold on an organisation's pool: the member who placed it (docs/organizations.md)
    member_account_id: str | None = field(default=None, metadata={"hash_omit_none": True})
