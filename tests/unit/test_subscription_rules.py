"""The rules subscriptions will run on (domain/subscriptions.py): periods that never drift,
rollover, the proration of an upgrade, what a scheduler that was down owes, and allocations
read from a plan's table with every bad one refused by name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credits_service.domain.plans import PlansError, read_allocation, read_plans
from credits_service.domain.subscriptions import (
    CATCH_UP_PERIODS_MAX,
    Allocation,
    CatchUp,
    Period,
    PeriodKind,
    Rollover,
    RolloverKind,
    periods_due,
    prorated_upgrade,
)

MONTH = Period(PeriodKind.MONTH)


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_a_month_anchored_on_the_31st_clamps_to_short_months_without_drifting():
    anchor = _t("2026-01-31T10:30")
    assert [MONTH.start(anchor, i) for i in range(5)] == [
        _t("2026-01-31T10:30"), _t("2026-02-28T10:30"), _t("2026-03-31T10:30"),
        _t("2026-04-30T10:30"), _t("2026-05-31T10:30")]
    assert MONTH.start(_t("2027-12-29T00:00"), 2) == _t("2028-02-29T00:00")  # a leap year
    assert MONTH.start(anchor, 12) == _t("2027-01-31T10:30")


def test_the_period_a_moment_falls_in():
    anchor = _t("2026-01-31T10:30")
    assert MONTH.index_at(anchor, _t("2026-01-31T10:29")) == -1
    assert MONTH.index_at(anchor, anchor) == 0
    assert MONTH.index_at(anchor, _t("2026-02-28T10:29")) == 0
    assert MONTH.index_at(anchor, _t("2026-02-28T10:30")) == 1
    assert MONTH.index_at(anchor, _t("2026-03-30T00:00")) == 1
    days = Period(PeriodKind.DAYS, 7)
    assert days.index_at(anchor, anchor + timedelta(days=20)) == 2
    with pytest.raises(ValueError):
        Period(PeriodKind.DAYS, 0)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1)),
       st.integers(min_value=0, max_value=240), st.integers(min_value=0, max_value=10**6))
def test_every_moment_falls_in_the_period_that_starts_before_it_and_ends_after(
        anchor, index, seconds):
    anchor = anchor.replace(tzinfo=UTC)
    for period in (MONTH, Period(PeriodKind.DAYS, 30)):
        start, end = period.start(anchor, index), period.start(anchor, index + 1)
        moment = min(start + timedelta(seconds=seconds), end - timedelta(microseconds=1))
        assert start < end
        assert period.index_at(anchor, moment) == index


def test_rollover_carries_nothing_all_or_up_to_its_cap():
    assert Rollover().carried(40) == 0
    assert Rollover(RolloverKind.FULL).carried(40) == 40
    assert Rollover(RolloverKind.CAPPED, 25).carried(40) == 25
    assert Rollover(RolloverKind.CAPPED, 25).carried(10) == 10
    assert Rollover(RolloverKind.FULL).carried(-5) == 0


def test_an_upgrade_grants_the_difference_for_the_rest_of_the_period_rounded_down():
    start, end = _t("2026-12-01T00:00"), _t("2027-01-01T00:00")
    halfway = start + (end - start) / 2
    assert prorated_upgrade(100, 1100, start, end, halfway) == 500
    assert prorated_upgrade(100, 1100, start, end, start) == 1000
    assert prorated_upgrade(100, 101, start, end, halfway) == 0  # half a credit: none
    assert prorated_upgrade(1100, 100, start, end, halfway) == 0  # a downgrade: next period
    assert prorated_upgrade(100, 1100, start, end, end) == 0


def test_a_scheduler_that_was_down_owes_the_current_period_or_each_missed_one():
    anchor = _t("2026-12-01T00:00")
    days = Period(PeriodKind.DAYS, 1)
    three_days_later = _t("2026-12-04T12:00")
    assert periods_due(anchor, days, 0, three_days_later, CatchUp.CURRENT) == [3]
    assert periods_due(anchor, days, 0, three_days_later, CatchUp.EACH) == [1, 2, 3]
    assert periods_due(anchor, days, 3, three_days_later, CatchUp.EACH) == []
    assert periods_due(anchor, days, -1, anchor, CatchUp.CURRENT) == [0]
    years = periods_due(anchor, days, -1, anchor + timedelta(days=5000), CatchUp.EACH)
    assert len(years) == CATCH_UP_PERIODS_MAX and years[-1] == 5000


def test_an_allocation_is_read_from_its_table():
    assert read_allocation({"credits": 1000, "period": "month"}, "a") == Allocation(
        1000, MONTH)
    assert read_allocation({"credits": 50, "period": "days", "period_days": 7,
                            "rollover": "capped", "rollover_cap": 100}, "a") == Allocation(
        50, Period(PeriodKind.DAYS, 7), Rollover(RolloverKind.CAPPED, 100))


@pytest.mark.parametrize(("table", "message"), [
    ([], "plans.pro.allocation: must be a table"),
    ({"credits": 1, "period": "month", "every": 2}, "plans.pro.allocation.every: unknown key"),
    ({"period": "month"}, "plans.pro.allocation.credits: required"),
    ({"credits": 0, "period": "month"}, "plans.pro.allocation.credits: 0 must be"),
    ({"credits": 10**13, "period": "month"}, "plans.pro.allocation.credits: "),
    ({"credits": "5", "period": "month"}, "plans.pro.allocation.credits: '5' must be"),
    ({"credits": 5}, "plans.pro.allocation.period: required"),
    ({"credits": 5, "period": "week"}, "plans.pro.allocation.period: 'week' is not one of"),
    ({"credits": 5, "period": "days"}, "plans.pro.allocation.period_days: required"),
    ({"credits": 5, "period": "days", "period_days": 400}, "period_days: 400 must be"),
    ({"credits": 5, "period": "month", "period_days": 3}, "period_days: only with"),
    ({"credits": 5, "period": "month", "rollover": "some"}, "rollover: 'some' is not one"),
    ({"credits": 5, "period": "month", "rollover": "capped"}, "rollover_cap: required"),
    ({"credits": 5, "period": "month", "rollover_cap": 3}, "rollover_cap: only with"),
    ({"credits": 5, "period": "month", "rollover": "capped", "rollover_cap": -1},
     "rollover_cap: -1 must be"),
])
def test_a_bad_allocation_is_refused_naming_its_key(table, message):
    with pytest.raises(PlansError) as refused:
        read_allocation(table, "plans.pro.allocation")
    assert message in str(refused.value)


def test_a_plan_carries_its_allocation():
    book = read_plans({"plans": {"default": {}, "pro": {"allocation": {
        "credits": 1000, "period": "month", "rollover": "capped", "rollover_cap": 500}}}},
        "production", "test")
    assert book.plans["default"].allocation is None
    assert book.plans["pro"].allocation == Allocation(
        1000, MONTH, Rollover(RolloverKind.CAPPED, 500))


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=10**12),
       st.integers(min_value=0, max_value=31 * 86_400 * 10**6))
def test_an_upgrade_never_grants_more_than_the_difference_nor_rounds_a_credit_up(
        old, new, elapsed_us):
    start = _t("2026-01-31T00:00")
    end = start + timedelta(days=31)
    now = start + timedelta(microseconds=elapsed_us)
    granted = prorated_upgrade(old, new, start, end, now)
    assert 0 <= granted <= max(0, new - old)
    if new > old and now < end:
        exact_numerator = (new - old) * ((end - now) // timedelta(microseconds=1))
        assert granted == exact_numerator // (31 * 86_400 * 10**6)
