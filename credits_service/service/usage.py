"""UsageSummary: credits, units and calls by feature and bucket over a range of whole UTC
hours, and the accounts that spent most, read from the usage rollups that the transactions
writing USAGE entries keep (persistence/usage.py). Per-plan counters for the current period
("tokens used this month") are the same summary, for a plan, with the default range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from credits_service.domain import errors
from credits_service.domain.commands import (
    BUCKETS_MAX,
    FeatureUsage,
    UsageBucket,
    UsageQuery,
    UsageSummary,
)
from credits_service.service.ports import UnitOfWork
from credits_service.service.transactions import Transactions

ROWS_MAX = 10_000  # bucket rows one summary answers
_HOUR = timedelta(hours=1)


class Usage:
    def __init__(self, transactions: Transactions) -> None:
        self._transactions = transactions

    async def summary(self, query: UsageQuery) -> UsageSummary:
        """The usage of the query's accounts (all, or a plan's) in its range, by bucket and
        feature, with totals by feature and the top accounts. Raises InvalidArgument for a
        range that is empty or spans too many buckets, SummaryTooLarge past ROWS_MAX rows."""

        async def work(uow: UnitOfWork) -> UsageSummary:
            now = (await uow.now()).astimezone(UTC)
            start = query.start_time or now.replace(day=1, hour=0, minute=0, second=0,
                                                    microsecond=0)
            horizon = now.replace(minute=0, second=0, microsecond=0) + _HOUR
            end = query.end_time or horizon
            _check_range(start, end, query.bucket)
            rows = await uow.usage.buckets(
                bucket=query.bucket.value, start=start, end=end, features=query.features,
                account_ids=query.account_ids, plan=query.plan, limit=ROWS_MAX + 1)
            if len(rows) > ROWS_MAX:
                raise errors.SummaryTooLarge(ROWS_MAX)
            top = []
            if query.top_accounts:
                # No usage lies past the current hour: a range reaching it may read the day
                # and the month it ends in whole (this month so far is one month's rows)
                open_end = end >= horizon
                reached = min(end, horizon)  # the same whole days and months, within 9999
                top = await uow.usage.top_accounts(
                    start=start, end=end, days=whole_days(start, reached, open_end),
                    months=whole_months(start, reached, open_end), features=query.features,
                    account_ids=query.account_ids, plan=query.plan, limit=query.top_accounts)
            members = []
            if query.by_member:
                members = await uow.usage.by_member(
                    start=start, end=end, features=query.features,
                    pool_account_ids=query.account_ids, limit=ROWS_MAX + 1)
                if len(members) > ROWS_MAX:
                    raise errors.SummaryTooLarge(ROWS_MAX)
            totals: dict[str, list[int]] = {}
            for row in rows:
                total = totals.setdefault(row.feature, [0, 0, 0])
                total[0] += row.credits
                total[1] += row.units
                total[2] += row.calls
            return UsageSummary(
                start, end, query.bucket, tuple(rows),
                tuple(FeatureUsage(feature, *totals[feature]) for feature in sorted(totals)),
                tuple(top), tuple(members))

        # One snapshot: the buckets and the top accounts count the same usage
        return await self._transactions.run(work, snapshot=True)


def whole_days(
    start: datetime, end: datetime, open_end: bool = False
) -> tuple[datetime, datetime]:
    """The whole UTC days within [start, end), as [first, last) midnights; an empty pair (one
    midnight twice) when there is none. With `open_end` (nothing lies past `end`), the day
    `end` falls in counts as whole."""
    if end <= start:  # nothing (a range in the future, read to the present)
        return _empty(end)
    first = start.replace(hour=0, minute=0, second=0, microsecond=0)
    if first < start:
        first += timedelta(days=1)
    last = end.replace(hour=0, minute=0, second=0, microsecond=0)
    if open_end and last < end:
        last += timedelta(days=1)
    return (first, last) if first < last else (first, first)


def whole_months(
    start: datetime, end: datetime, open_end: bool = False
) -> tuple[datetime, datetime]:
    """The whole UTC months within [start, end), as [first, last) month starts; an empty pair
    when there is none. With `open_end`, the month `end` falls in counts as whole."""
    if end <= start:
        return _empty(end)
    first = start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if first < start:
        first = _next_month(first)
    last = end.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if open_end and last < end:
        last = _next_month(last)
    return (first, last) if first < last else (first, first)


def _empty(moment: datetime) -> tuple[datetime, datetime]:
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight, midnight


def _next_month(month: datetime) -> datetime:
    return (month + timedelta(days=32)).replace(day=1)


def buckets_spanned(start: datetime, end: datetime, bucket: UsageBucket) -> int:
    """How many buckets of this size [start, end) touches."""
    if bucket is UsageBucket.HOUR:
        return -(-(end - start) // _HOUR)
    if bucket is UsageBucket.DAY:
        last = end - timedelta(microseconds=1)
        return (last.date() - start.date()).days + 1
    last = end - timedelta(microseconds=1)
    return (last.year - start.year) * 12 + last.month - start.month + 1


def _check_range(start: datetime, end: datetime, bucket: UsageBucket) -> None:
    if end <= start:
        raise errors.InvalidArgument([errors.FieldViolation(
            "end_time", f"must be after start_time ({start.isoformat()})")])
    spanned = buckets_spanned(start, end, bucket)
    if spanned > BUCKETS_MAX[bucket]:
        raise errors.InvalidArgument([errors.FieldViolation(
            "end_time", f"the range spans {spanned} {bucket.value} buckets, at most "
                        f"{BUCKETS_MAX[bucket]}: shorten it or ask for larger buckets")])
