"""The subscription RPCs (Subscribe, ChangeSubscription, CancelSubscription,
GetSubscription): their validation, their mapping and their servicer methods."""

from __future__ import annotations

from typing import Any

import grpc

from credits.v1 import credits_pb2 as pb
from credits_service.domain.commands import (
    CancelSubscriptionCommand,
    ChangeSubscriptionCommand,
    SubscribeCommand,
    SubscriptionResult,
)
from credits_service.domain.subscriptions import (
    Allocation,
    PeriodKind,
    RolloverKind,
    Subscription,
    SubscriptionStatus,
)
from credits_service.service.ledger import Ledger
from credits_service.transport.grpc import messages
from credits_service.transport.grpc.accounts import plan_name
from credits_service.transport.grpc.auth import caller
from credits_service.transport.grpc.fields import REASON_LENGTH_MAX, FieldChecker

_PERIOD_TO_PROTO = {PeriodKind.MONTH: pb.ALLOCATION_PERIOD_MONTH,
                    PeriodKind.DAYS: pb.ALLOCATION_PERIOD_DAYS}
_ROLLOVER_TO_PROTO = {RolloverKind.NONE: pb.ROLLOVER_RULE_NONE,
                      RolloverKind.CAPPED: pb.ROLLOVER_RULE_CAPPED,
                      RolloverKind.FULL: pb.ROLLOVER_RULE_FULL}
_STATUS_TO_PROTO = {SubscriptionStatus.ACTIVE: pb.SUBSCRIPTION_STATUS_ACTIVE,
                    SubscriptionStatus.CANCELED: pb.SUBSCRIPTION_STATUS_CANCELED}


def _plan(check: FieldChecker, value: str) -> str:
    if not value:
        check.fail("plan", "is required: a plan with an allocation")
    return plan_name(check, "plan", value)


def _to_plan(
    request: pb.SubscribeRequest | pb.ChangeSubscriptionRequest,
    command_type: type[SubscribeCommand | ChangeSubscriptionCommand],
) -> Any:
    """Subscribe's or ChangeSubscription's command: the same fields, the same rules."""
    check = FieldChecker()
    command = command_type(
        account_id=check.identifier("account_id", request.account_id),
        plan=_plan(check, request.plan),
        idempotency_key=check.identifier("idempotency_key", request.idempotency_key),
        reason=check.text("reason", request.reason, REASON_LENGTH_MAX),
    )
    check.done()
    return command


def subscribe_command(request: pb.SubscribeRequest) -> SubscribeCommand:
    command: SubscribeCommand = _to_plan(request, SubscribeCommand)
    return command


def change_subscription_command(
    request: pb.ChangeSubscriptionRequest
) -> ChangeSubscriptionCommand:
    command: ChangeSubscriptionCommand = _to_plan(request, ChangeSubscriptionCommand)
    return command


def cancel_subscription_command(
    request: pb.CancelSubscriptionRequest
) -> CancelSubscriptionCommand:
    check = FieldChecker()
    command = CancelSubscriptionCommand(
        account_id=check.identifier("account_id", request.account_id),
        idempotency_key=check.identifier("idempotency_key", request.idempotency_key),
        immediately=request.immediately,
        reason=check.text("reason", request.reason, REASON_LENGTH_MAX),
    )
    check.done()
    return command


def allocation(value: Allocation) -> pb.Allocation:
    return pb.Allocation(
        credits=value.credits, period=_PERIOD_TO_PROTO[value.period.kind],
        period_days=value.period.days, rollover=_ROLLOVER_TO_PROTO[value.rollover.kind],
        rollover_cap=value.rollover.cap)


def subscription(value: Subscription) -> pb.Subscription:
    message = pb.Subscription(
        subscription_id=str(value.subscription_id), account_id=value.account_id,
        plan=value.plan, allocation=allocation(value.allocation),
        status=_STATUS_TO_PROTO[value.status], start_time=messages.timestamp(value.anchor),
        last_period=value.last_period, next_plan=value.next_plan or "")
    if value.next_grant_time is not None:
        message.next_grant_time.CopyFrom(messages.timestamp(value.next_grant_time))
    if value.cancel_time is not None:
        message.cancel_time.CopyFrom(messages.timestamp(value.cancel_time))
    if value.create_time is not None:
        message.create_time.CopyFrom(messages.timestamp(value.create_time))
    return message


def _fields(result: SubscriptionResult) -> dict[str, object]:
    return {"subscription": subscription(result.subscription),
            "entries": [messages.ledger_entry(e) for e in result.entries],
            "balance": messages.balance(result.balance)}


class SubscriptionsApi:
    _ledger: Ledger

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubscribeResponse:
        result = await self._ledger.subscribe(subscribe_command(request), caller().name)
        return pb.SubscribeResponse(**_fields(result))

    async def ChangeSubscription(
        self, request: pb.ChangeSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.ChangeSubscriptionResponse:
        result = await self._ledger.change_subscription(
            change_subscription_command(request), caller().name)
        return pb.ChangeSubscriptionResponse(changed=result.changed, **_fields(result))

    async def CancelSubscription(
        self, request: pb.CancelSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelSubscriptionResponse:
        result = await self._ledger.cancel_subscription(
            cancel_subscription_command(request), caller().name)
        return pb.CancelSubscriptionResponse(changed=result.changed, **_fields(result))

    async def GetSubscription(
        self, request: pb.GetSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSubscriptionResponse:
        check = FieldChecker()
        account_id = check.identifier("account_id", request.account_id)
        check.done()
        report = await self._ledger.get_subscription(account_id)
        return pb.GetSubscriptionResponse(
            subscription=subscription(report.subscription),
            period_start_time=messages.timestamp(report.period_start),
            period_end_time=messages.timestamp(report.period_end),
            period_granted_credits=report.period_granted)
