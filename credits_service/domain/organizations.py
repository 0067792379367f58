"""Organisations: a pool account whose credits its members draw, each member within its caps
(docs/organizations.md).

Pure: the rules of caps and of what a member may still draw. A member's hold is placed on its
own account when its own available credits cover it whole; otherwise on its organisation's
pool, where the pool's available credits and the member's remaining cap must both cover it
(service/reservations/reserve.py); a hold is never split between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from credits_service.domain.model import BALANCE_MAX

CAP_MAX = BALANCE_MAX  # a cap above what any pool can ever hold is no cap
MEMBERS_MAX = 10_000  # members of one organisation
MEMBERS_PAGE_SIZE_DEFAULT = 100
MEMBERS_PAGE_SIZE_MAX = 1000


@dataclass(frozen=True, slots=True)
class MemberCaps:
    """What a member may draw from its pool: per calendar month (UTC), and in all; None is
    no cap."""

    period_cap: int | None = None
    total_cap: int | None = None


@dataclass(frozen=True, slots=True)
class Member:
    """A member's standing in its organisation: its caps, the credits its active holds on
    the pool hold, and what it used this month (`period_start`, the month's first day) and
    since it joined."""

    account_id: str
    organization_id: str
    pool_account_id: str
    caps: MemberCaps
    held: int = 0
    period_start: date | None = None
    period_used: int = 0
    total_used: int = 0
    create_time: datetime | None = None

    def used_this_month(self, today: date) -> int:
        """What the member used in the calendar month of `today` (0 once a new one began)."""
        month = today.replace(day=1)
        return self.period_used if self.period_start is not None and (
            self.period_start >= month) else 0

    def remaining(self, today: date) -> int | None:
        """What the member may still hold on the pool now: the least that its caps leave
        after what it used and holds; None without caps."""
        left = [cap - used - self.held for cap, used in (
            (self.caps.period_cap, self.used_this_month(today)),
            (self.caps.total_cap, self.total_used)) if cap is not None]
        return max(0, min(left)) if left else None

    def may_hold(self, amount: int, today: date) -> bool:
        remaining = self.remaining(today)
        return remaining is None or amount <= remaining

    def holding(self, amount: int) -> Member:
        """The member after placing a hold of `amount` on the pool."""
        return Member(self.account_id, self.organization_id, self.pool_account_id, self.caps,
                      self.held + amount, self.period_start, self.period_used,
                      self.total_used, self.create_time)


@dataclass(frozen=True, slots=True)
class Organization:
    organization_id: str
    pool_account_id: str
    create_time: datetime
    member_count: int = 0
