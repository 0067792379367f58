"""SetBalanceAlert: its validation, its mapping and its servicer method (docs/events.md)."""

from __future__ import annotations

import grpc

from credits.v1 import credits_pb2 as pb
from credits_service.domain.alerts import (
    LOW_BALANCE_PERCENT_MAX,
    BalanceAlert,
    BalanceLevel,
    LowBalanceRule,
    SetBalanceAlertCommand,
)
from credits_service.domain.model import AMOUNT_MAX
from credits_service.service.ledger import Ledger
from credits_service.transport.grpc.fields import FieldChecker

_LEVEL_TO_PROTO = {None: pb.BALANCE_LEVEL_UNSPECIFIED,
                   BalanceLevel.DEPLETED: pb.BALANCE_LEVEL_DEPLETED,
                   BalanceLevel.LOW: pb.BALANCE_LEVEL_LOW, BalanceLevel.OK: pb.BALANCE_LEVEL_OK}


def _to_command(request: pb.SetBalanceAlertRequest) -> SetBalanceAlertCommand:
    check = FieldChecker()
    account_id = check.identifier("account_id", request.account_id)
    chosen = request.WhichOneof("rule")
    rule = None
    if chosen == "low_balance_credits":
        if not 1 <= request.low_balance_credits <= AMOUNT_MAX:
            check.fail("low_balance_credits", f"must be between 1 and {AMOUNT_MAX}")
        else:
            rule = LowBalanceRule(credits=request.low_balance_credits)
    elif chosen == "low_balance_percent":
        if not 1 <= request.low_balance_percent <= LOW_BALANCE_PERCENT_MAX:
            check.fail("low_balance_percent",
                       f"must be between 1 and {LOW_BALANCE_PERCENT_MAX}")
        else:
            rule = LowBalanceRule(percent=request.low_balance_percent)
    elif chosen is None or not getattr(request, chosen):
        check.fail("rule", "one of low_balance_credits, low_balance_percent, "
                   "no_low_balance or use_plan (true) is required")
    check.done()
    return SetBalanceAlertCommand(account_id, rule, use_plan=chosen == "use_plan")


def to_alert(alert: BalanceAlert) -> pb.BalanceAlert:
    rule = alert.rule
    return pb.BalanceAlert(
        account_id=alert.account_id,
        low_balance_credits=(rule.credits or 0) if rule else 0,
        low_balance_percent=(rule.percent or 0) if rule else 0,
        custom=alert.custom, threshold=alert.threshold, last_top_up=alert.last_top_up,
        level=_LEVEL_TO_PROTO[alert.level])


class AlertsApi:
    _ledger: Ledger

    async def SetBalanceAlert(
        self, request: pb.SetBalanceAlertRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetBalanceAlertResponse:
        command = _to_command(request)
        alert = await self._ledger.alerts.set_balance_alert(command)
        return pb.SetBalanceAlertResponse(alert=to_alert(alert))
