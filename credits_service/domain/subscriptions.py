"""Subscriptions' rules (issue 29, part 1): a plan's per-period allocation, the periods of a
subscription, what rolls over, what an upgrade grants for the rest of a period, and which
periods a scheduler that was down owes.

Pure: times come in as arguments (the database clock, read by the caller), so tests never wait
for a month. plans.read_allocation reads an allocation from a plan's table; the plans file
does not take one yet (it refuses the key): the Subscribe RPCs and the scheduler that grant
them come next, on these rules.

Periods: a subscription started at `anchor` has periods 0, 1, 2, ... A monthly period starts
on the anchor's calendar day and time of day, clamped to the month's last day (anchored on the
31st: 28 or 29 February, then 31 March, never drifting); a period of N days starts N days
after the one before.
"""

from __future__ import annotations

import calendar
import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

PERIOD_DAYS_MAX = 366
CATCH_UP_PERIODS_MAX = 1000  # periods one catch-up may owe, whatever the rule


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


def prorated_upgrade(
    old_credits: int, new_credits: int, period_start: datetime, period_end: datetime,
    now: datetime,
) -> int:
    """What an upgrade grants at once for the rest of the current period: the new allocation's
    credits beyond the old one's, for the share of the period still to run, rounded down to
    whole credits (never negative: a downgrade waits for the next period)."""
    if new_credits <= old_credits or now >= period_end:
        return 0
    left = (period_end - max(now, period_start)) / (period_end - period_start)
    return int((new_credits - old_credits) * left)


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
