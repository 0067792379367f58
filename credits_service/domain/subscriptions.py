"""Subscriptions' rules (issue 29, part 1): a plan's per-period allocation, the periods of a
subscription, what rolls over, what an upgrade grants for the rest of a period, and which
periods a scheduler that was down owes.

Pure: times come in as arguments (the database clock, read by the caller), so tests never wait
for a month. The plans file does not take allocations yet (plans.py refuses the key): the
Subscribe RPCs and the scheduler that grant them come next, on these rules.

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

from credits_service.domain.model import AMOUNT_MAX

PERIOD_DAYS_MAX = 366
CATCH_UP_PERIODS_MAX = 1000  # periods one catch-up may owe, whatever the rule
_KEYS = {"credits", "period", "period_days", "rollover", "rollover_cap"}


class AllocationError(ValueError):
    """An allocation breaks a rule; the message names the key."""


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


def read_allocation(table: Mapping[str, Any], where: str) -> Allocation:
    """The allocation a plan's `[plans.<name>.allocation]` table describes, or AllocationError
    naming the key: `credits` (1..10^12), `period` ("month", or "days" with `period_days`
    1..366), `rollover` ("none", the default; "full"; "capped" with `rollover_cap`
    1..10^12)."""
    if not isinstance(table, dict):
        raise AllocationError(f"{where}: must be a table")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise AllocationError(f"{where}.{unknown[0]}: unknown key (allowed: "
                              f"{', '.join(sorted(_KEYS))})")
    credits = _integer(table, "credits", where, 1, AMOUNT_MAX, None)
    if credits is None:
        raise AllocationError(f"{where}.credits: required, the credits of each period")
    kind = _choice(table, "period", where, PeriodKind, None)
    if kind is None:
        raise AllocationError(f"{where}.period: required, \"month\" or \"days\"")
    days = _integer(table, "period_days", where, 1, PERIOD_DAYS_MAX, None)
    if kind is PeriodKind.DAYS and days is None:
        raise AllocationError(f"{where}.period_days: required with period = \"days\"")
    if kind is PeriodKind.MONTH and days is not None:
        raise AllocationError(f"{where}.period_days: only with period = \"days\"")
    rollover = _choice(table, "rollover", where, RolloverKind, RolloverKind.NONE)
    cap = _integer(table, "rollover_cap", where, 1, AMOUNT_MAX, None)
    if rollover is RolloverKind.CAPPED and cap is None:
        raise AllocationError(f"{where}.rollover_cap: required with rollover = \"capped\"")
    if rollover is not RolloverKind.CAPPED and cap is not None:
        raise AllocationError(f"{where}.rollover_cap: only with rollover = \"capped\"")
    return Allocation(credits, Period(kind, days or 0), Rollover(rollover, cap or 0))


def _integer(table: Mapping[str, Any], key: str, where: str, low: int, high: int,
             default: int | None) -> Any:
    value = table.get(key, default)
    if value is default:
        return value
    if type(value) is not int or not low <= value <= high:
        raise AllocationError(f"{where}.{key}: {value!r} must be a whole number from {low:_} "
                              f"to {high:_}")
    return value


def _choice(table: Mapping[str, Any], key: str, where: str, kind: type[enum.Enum],
            default: Any) -> Any:
    value = table.get(key)
    if value is None:
        return default
    try:
        return kind(value)
    except ValueError:
        raise AllocationError(f"{where}.{key}: {value!r} is not one of "
                              f"{', '.join(repr(k.value) for k in kind)}") from None
