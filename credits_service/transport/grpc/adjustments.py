"""The Adjust RPC: its validation, its mapping and its servicer method."""

from __future__ import annotations

import grpc

from credits.v1 import credits_pb2 as pb
from credits_service.domain.commands import AdjustCommand, AdjustMode, AdjustResult
from credits_service.domain.model import BALANCE_MAX
from credits_service.service.ledger import Ledger
from credits_service.transport.grpc import messages
from credits_service.transport.grpc.accounts import required_reason
from credits_service.transport.grpc.auth import caller
from credits_service.transport.grpc.fields import FieldChecker

ADJUST_MODE_FROM_PROTO = {
    pb.ADJUST_MODE_ADD: AdjustMode.ADD,
    pb.ADJUST_MODE_DEDUCT: AdjustMode.DEDUCT,
    pb.ADJUST_MODE_SET: AdjustMode.SET,
}


def adjust_command(request: pb.AdjustRequest) -> AdjustCommand:
    """The request's command, or InvalidArgument naming every broken field."""
    check = FieldChecker()
    mode = ADJUST_MODE_FROM_PROTO.get(request.mode)
    if mode is None:
        check.fail("mode", "must be ADJUST_MODE_ADD, _DEDUCT or _SET")
    if mode is AdjustMode.SET:
        if not -BALANCE_MAX <= request.amount <= BALANCE_MAX:
            check.fail("amount", f"must be a balance between {-BALANCE_MAX} and {BALANCE_MAX}")
        amount = request.amount
    else:
        amount = check.amount("amount", request.amount)
    has_expected = request.HasField("expected_balance")
    if has_expected and mode is not AdjustMode.SET:
        check.fail("expected_balance", "is for ADJUST_MODE_SET only")
    if request.allow_negative and mode is AdjustMode.ADD:
        check.fail("allow_negative", "is for deductions (DEDUCT, or a SET that deducts)")
    if request.HasField("expire_time") and mode is AdjustMode.DEDUCT:
        check.fail("expire_time", "is for credits added (ADD, or a SET that adds)")
    command = AdjustCommand(
        account_id=check.identifier("account_id", request.account_id),
        mode=mode,  # type: ignore[arg-type]
        amount=amount,
        idempotency_key=check.identifier("idempotency_key", request.idempotency_key),
        reason=required_reason(check, "reason", request.reason),
        metadata=check.metadata("metadata", request.metadata),
        expected_balance=request.expected_balance if has_expected else None,
        expire_time=check.timestamp("expire_time", request.expire_time)
        if request.HasField("expire_time") else None,
        allow_negative=request.allow_negative,
    )
    check.done()
    return command


def adjust_response(result: AdjustResult) -> pb.AdjustResponse:
    response = pb.AdjustResponse(
        entries=[messages.ledger_entry(entry) for entry in result.entries],
        balance=messages.balance(result.balance),
    )
    if result.lot is not None:
        response.lot.CopyFrom(messages.lot(result.lot))
    return response


class AdjustmentsApi:
    _ledger: Ledger

    async def Adjust(
        self, request: pb.AdjustRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdjustResponse:
        return adjust_response(await self._ledger.adjust(adjust_command(request), caller().name))
