"""Subscriptions' rules: a plan's per-period allocation, the periods of a subscription, what
rolls over, what an upgrade grants for the rest of a period, which periods a scheduler that
was down owes, and a subscription's state.

Pure: times come in as arguments (the database clock, read by the caller), so tests never wait
for a month. plans.read_allocation reads an allocation from a plan's table;
service/subscriptions.py and workers/scheduler.py grant it (docs/subscriptions.md).

Periods: a subscription started at `anchor` has periods 0, 1, 2, ... A monthly period starts
on the anchor's calendar day and time of day, clamped to the month's last day (anchored on the
31st: 28 or 29 February, then 31 March, never drifting); a period of N days starts N days
after the one before.
"""

from __future__ import annotations

import calendar
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

PERIOD_DAYS_MAX = 366
CATCH_UP_PERIODS_MAX = 1000  # periods one catch-up may owe, whatever the rule
_MICROSECOND = timedelta(microseconds=1)


class PeriodKind(enum.Enum):
    MONTH = "month"  # on the anchor's calendar day
    DAYS = "days"  # a fixed number of days


class RolloverKind(enum.Enum):
    NONE = "none"  # what a period leaves unused expires with it
    CAPPED = "capped"  # up to rollover_cap credits carry into the next period
    FULL = "full"  # all of it carries


class CatchUp(enum.Enum):
    """What a scheduler that was down grants for the periods that began meanwhile."""

    CURRENT = "current"  # the current period's allocation only: missed periods are gone
    EACH = "each"  # each missed period's allocation, every one expiring as it would have


@dataclass(frozen=True, slots=True)
class Period:
    kind: PeriodKind
    days: int = 0  # DAYS only

    def __post_init__(self) -> None:
        if (self.kind is PeriodKind.DAYS) != (1 <= self.days <= PERIOD_DAYS_MAX):
            raise ValueError("a period of days has 1..366 of them; a month has none")

    def start(self, anchor: datetime, index: int) -> datetime:
        """When period `index` (0: the first) of a subscription anchored at `anchor` starts."""
        if index < 0:
            raise ValueError("periods are numbered from 0")
        if self.kind is PeriodKind.DAYS:
            return anchor + timedelta(days=self.days * index)
        months = anchor.month - 1 + index
        year, month = anchor.year + months // 12, months % 12 + 1
        day = min(anchor.day, calendar.monthrange(year, month)[1])
        return anchor.replace(year=year, month=month, day=day)

    def index_at(self, anchor: datetime, moment: datetime) -> int:
        """The period that `moment` falls in (-1 before the anchor)."""
        if moment < anchor:
            return -1
        if self.kind is PeriodKind.DAYS:
            return (moment - anchor) // timedelta(days=self.days)
        guess = (moment.year - anchor.year) * 12 + moment.month - anchor.month
        while guess > 0 and self.start(anchor, guess) > moment:
            guess -= 1
        while self.start(anchor, guess + 1) <= moment:
            guess += 1
        return guess


@dataclass(frozen=True, slots=True)
class Rollover:
    kind: RolloverKind = RolloverKind.NONE
    cap: int = 0  # CAPPED only

    def carried(self, unused: int) -> int:
        """What of a period's unused allocation carries into the next."""
        if unused <= 0 or self.kind is RolloverKind.NONE:
            return 0
        return unused if self.kind is RolloverKind.FULL else min(unused, self.cap)


@dataclass(frozen=True, slots=True)
class Allocation:
    """The credits a subscription gets each period: a lot that expires at the period's end
    (with what the rollover rule carries from the period before)."""

    credits: int
    period: Period
    rollover: Rollover = Rollover()

    def stored(self) -> dict[str, object]:
        """The allocation as the plans file's keys (how a subscription stores its terms)."""
        stored: dict[str, object] = {"credits": self.credits, "period": self.period.kind.value,
                                     "rollover": self.rollover.kind.value}
        if self.period.days:
            stored["period_days"] = self.period.days
        if self.rollover.cap:
            stored["rollover_cap"] = self.rollover.cap
        return stored

    @classmethod
    def restore(cls, stored: Mapping[str, Any]) -> Allocation:
        return cls(stored["credits"],
                   Period(PeriodKind(stored["period"]), stored.get("period_days", 0)),
                   Rollover(RolloverKind(stored["rollover"]), stored.get("rollover_cap", 0)))


def prorated_upgrade(
    old_credits: int, new_credits: int, period_start: datetime, period_end: datetime,
    now: datetime,
) -> int:
    """What an upgrade grants at once for the rest of the current period: the new allocation's
    credits beyond the old one's, for the share of the period still to run, rounded down to
    whole credits (never negative: a downgrade waits for the next period)."""
    if new_credits <= old_credits or now >= period_end:
        return 0
    # In whole microseconds, so no float rounds a credit away (or adds one)
    left_us = (period_end - max(now, period_start)) // _MICROSECOND
    whole_us = (period_end - period_start) // _MICROSECOND
    return (new_credits - old_credits) * left_us // whole_us


def periods_due(
    anchor: datetime, period: Period, last_granted: int, now: datetime, catch_up: CatchUp
) -> list[int]:
    """The periods a scheduler grants at `now` for a subscription whose period `last_granted`
    (-1: none) was the last granted: none when the current one was; else the current one only
    (CatchUp.CURRENT), or every one since (CatchUp.EACH, at most CATCH_UP_PERIODS_MAX, the
    latest ones)."""
    current = period.index_at(anchor, now)
    if current <= last_granted:
        return []
    if catch_up is CatchUp.CURRENT:
        return [current]
    first = max(last_granted + 1, current - CATCH_UP_PERIODS_MAX + 1)
    return list(range(first, current + 1))


class SubscriptionStatus(enum.Enum):
    ACTIVE = "ACTIVE"  # granted each period (until cancel_time, if set)
    CANCELED = "CANCELED"  # no more grants; the account is back on the default plan


@dataclass(frozen=True, slots=True)
class Subscription:
    """An account's subscription to a plan's allocation: the terms it runs on are the
    allocation of `plan` as it was when subscribed or changed to (a plans file edited later
    changes them at the next ChangeSubscription only)."""

    subscription_id: int
    account_id: str
    plan: str
    allocation: Allocation
    anchor: datetime  # period 0 starts here
    status: SubscriptionStatus
    last_period: int  # the last period granted
    next_plan: str | None = None  # a downgrade, taking effect at the next period
    next_allocation: Allocation | None = None
    cancel_time: datetime | None = None  # ACTIVE: when it ends; CANCELED: when it ended
    create_time: datetime | None = None

    def period_start(self, index: int) -> datetime:
        return self.allocation.period.start(self.anchor, index)

    @property
    def next_grant_time(self) -> datetime | None:
        """When the next period's allocation is due; None once no more are."""
        if self.status is not SubscriptionStatus.ACTIVE:
            return None
        return self.period_start(self.last_period + 1)
