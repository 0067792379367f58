"""The ranges of usage summaries: how many buckets a range spans, and its whole days (where
the top spenders are read from usage_days instead of usage_hours)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from credits_service.domain.commands import UsageBucket
from credits_service.service.usage import buckets_spanned, whole_days, whole_months


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("start", "end", "bucket", "spanned"), [
    ("2026-12-01T00:00", "2026-12-01T01:00", UsageBucket.HOUR, 1),
    ("2026-12-01T00:00", "2027-01-01T00:00", UsageBucket.HOUR, 744),
    ("2026-12-01T00:00", "2026-12-02T00:00", UsageBucket.DAY, 1),
    ("2026-12-01T23:00", "2026-12-02T01:00", UsageBucket.DAY, 2),
    ("2026-01-01T00:00", "2027-01-01T00:00", UsageBucket.DAY, 365),
    ("2026-12-01T00:00", "2027-01-01T00:00", UsageBucket.MONTH, 1),
    ("2026-11-30T23:00", "2027-01-01T01:00", UsageBucket.MONTH, 3),
    ("2020-01-01T00:00", "2030-01-01T00:00", UsageBucket.MONTH, 120),
])
def test_a_range_spans_every_bucket_it_touches(start, end, bucket, spanned):
    assert buckets_spanned(_t(start), _t(end), bucket) == spanned


@pytest.mark.parametrize(("start", "end", "days"), [
    ("2026-12-01T00:00", "2026-12-03T00:00", ("2026-12-01T00:00", "2026-12-03T00:00")),
    ("2026-12-01T05:00", "2026-12-03T07:00", ("2026-12-02T00:00", "2026-12-03T00:00")),
    ("2026-12-01T05:00", "2026-12-02T07:00", ("2026-12-02T00:00", "2026-12-02T00:00")),
    ("2026-12-01T05:00", "2026-12-01T07:00", ("2026-12-02T00:00", "2026-12-02T00:00")),
])
def test_the_whole_days_of_a_range(start, end, days):
    assert whole_days(_t(start), _t(end)) == (_t(days[0]), _t(days[1]))


@pytest.mark.parametrize(("start", "end", "months"), [
    ("2026-11-01T00:00", "2027-01-01T00:00", ("2026-11-01T00:00", "2027-01-01T00:00")),
    ("2026-11-03T00:00", "2027-01-01T05:00", ("2026-12-01T00:00", "2027-01-01T00:00")),
    ("2026-12-31T23:00", "2027-02-01T00:00", ("2027-01-01T00:00", "2027-02-01T00:00")),
    ("2026-12-02T00:00", "2026-12-30T00:00", ("2027-01-01T00:00", "2027-01-01T00:00")),
])
def test_the_whole_months_of_a_range(start, end, months):
    assert whole_months(_t(start), _t(end)) == (_t(months[0]), _t(months[1]))


def test_a_range_that_reaches_the_present_reads_its_last_day_and_month_whole():
    """Nothing lies past the current hour: this month so far is one row per account of
    usage_months, and today so far one of usage_days."""
    start, end = _t("2026-12-01T00:00"), _t("2026-12-07T20:00")
    assert whole_months(start, end) == (_t("2026-12-01T00:00"), _t("2026-12-01T00:00"))
    assert whole_months(start, end, open_end=True) == (
        _t("2026-12-01T00:00"), _t("2027-01-01T00:00"))
    assert whole_days(start, end, open_end=True) == (
        _t("2026-12-01T00:00"), _t("2026-12-08T00:00"))
    assert whole_days(start, _t("2026-12-08T00:00"), open_end=True) == (
        _t("2026-12-01T00:00"), _t("2026-12-08T00:00"))
