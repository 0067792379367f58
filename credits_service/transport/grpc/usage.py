"""UsageSummary: its validation, its mapping and its servicer method."""

from __future__ import annotations

import grpc

from credits.v1 import credits_pb2 as pb
from credits_service.domain.commands import (
    SUMMARY_ACCOUNTS_MAX,
    TOP_ACCOUNTS_MAX,
    UsageBucket,
    UsageQuery,
    UsageSummary,
)
from credits_service.domain.rates import FEATURE_NAME_PATTERN
from credits_service.service.ledger import Ledger
from credits_service.transport.grpc import messages
from credits_service.transport.grpc.accounts import plan_name
from credits_service.transport.grpc.fields import FieldChecker

FEATURES_MAX = 100
TOP_ACCOUNTS_DEFAULT = 10
BUCKET_FROM_PROTO = {
    pb.USAGE_BUCKET_SIZE_UNSPECIFIED: UsageBucket.DAY,
    pb.USAGE_BUCKET_SIZE_HOUR: UsageBucket.HOUR,
    pb.USAGE_BUCKET_SIZE_DAY: UsageBucket.DAY,
    pb.USAGE_BUCKET_SIZE_MONTH: UsageBucket.MONTH,
}
BUCKET_TO_PROTO = {
    UsageBucket.HOUR: pb.USAGE_BUCKET_SIZE_HOUR,
    UsageBucket.DAY: pb.USAGE_BUCKET_SIZE_DAY,
    UsageBucket.MONTH: pb.USAGE_BUCKET_SIZE_MONTH,
}


def usage_query(request: pb.UsageSummaryRequest) -> UsageQuery:
    check = FieldChecker()
    if len(request.account_ids) > SUMMARY_ACCOUNTS_MAX:
        check.fail("account_ids", f"must name at most {SUMMARY_ACCOUNTS_MAX} accounts")
    for i, account_id in enumerate(request.account_ids[:SUMMARY_ACCOUNTS_MAX]):
        check.identifier(f"account_ids[{i}]", account_id)
    plan = plan_name(check, "plan", request.plan)
    if plan and request.account_ids:
        check.fail("plan", "must be empty with account_ids: a summary is of some accounts, "
                           "or of a plan's")
    times = []
    for field in ("start_time", "end_time"):
        value = None
        if request.HasField(field):
            value = check.timestamp(field, getattr(request, field))
            if value is not None and (value.minute or value.second or value.microsecond
                                      or getattr(request, field).nanos):
                check.fail(field, "must be a whole UTC hour (usage is kept by the hour)")
        times.append(value)
    if request.bucket_size not in BUCKET_FROM_PROTO:
        check.fail("bucket_size", "must be HOUR, DAY or MONTH")
    if len(request.features) > FEATURES_MAX:
        check.fail("features", f"must name at most {FEATURES_MAX} features")
    for i, feature in enumerate(request.features[:FEATURES_MAX]):
        if feature and not FEATURE_NAME_PATTERN.fullmatch(feature):
            check.fail(f"features[{i}]", "must be a feature name (1-64 characters from "
                                         "A-Z a-z 0-9 and '._-'), or '' for usage by amount")
    top = request.top_accounts if request.HasField("top_accounts") else TOP_ACCOUNTS_DEFAULT
    if not 0 <= top <= TOP_ACCOUNTS_MAX:
        check.fail("top_accounts", f"must be between 0 and {TOP_ACCOUNTS_MAX}")
    check.done()
    return UsageQuery(
        start_time=times[0], end_time=times[1],
        bucket=BUCKET_FROM_PROTO.get(request.bucket_size, UsageBucket.DAY),
        account_ids=tuple(dict.fromkeys(request.account_ids)), plan=plan,
        features=tuple(dict.fromkeys(request.features)), top_accounts=top,
        by_member=request.by_member)


def usage_response(summary: UsageSummary) -> pb.UsageSummaryResponse:
    response = pb.UsageSummaryResponse(
        start_time=messages.timestamp(summary.start_time),
        end_time=messages.timestamp(summary.end_time),
        bucket_size=BUCKET_TO_PROTO[summary.bucket])
    for row in summary.buckets:
        bucket = response.buckets.add(start_time=messages.timestamp(row.bucket_start))
        bucket.usage.feature = row.feature
        bucket.usage.credits = row.credits
        bucket.usage.units = _int64(row.units)
        bucket.usage.calls = row.calls
    for total in summary.features:
        response.features.add(feature=total.feature, credits=total.credits,
                              units=_int64(total.units), calls=total.calls)
    for spend in summary.top_accounts:
        response.top_accounts.add(account_id=spend.account_id, credits=spend.credits,
                                  calls=spend.calls)
    for spent in summary.members:
        response.members.add(pool_account_id=spent.pool_account_id,
                             member_account_id=spent.member_account_id,
                             credits=spent.credits, calls=spent.calls)
    return response


def _int64(units: int) -> int:
    """Units summed may pass int64 (each call up to 10^15): the largest int64 then."""
    return min(units, 2**63 - 1)


class UsageApi:
    _ledger: Ledger

    async def UsageSummary(
        self, request: pb.UsageSummaryRequest, context: grpc.aio.ServicerContext
    ) -> pb.UsageSummaryResponse:
        return usage_response(await self._ledger.usage_summary(usage_query(request)))
