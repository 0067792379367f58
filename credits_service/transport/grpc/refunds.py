"""The Refund RPC: its validation, its mapping and its servicer method."""

from __future__ import annotations

import grpc

from credits.v1 import credits_pb2 as pb
from credits_service.domain.commands import RefundCommand, RefundResult
from credits_service.service.ledger import Ledger
from credits_service.transport.grpc import messages
from credits_service.transport.grpc.auth import caller
from credits_service.transport.grpc.fields import REASON_LENGTH_MAX, FieldChecker

_ENTRY_ID_MAX = 2**63 - 1


def refund_command(request: pb.RefundRequest) -> RefundCommand:
    """The request's command, or InvalidArgument naming every broken field."""
    check = FieldChecker()
    target = request.WhichOneof("target")
    reservation_id = usage_entry_id = None
    if target == "reservation_id":
        reservation_id = check.reservation_id("reservation_id", request.reservation_id)
    elif target == "usage_entry_id":
        text = request.usage_entry_id
        if text.isdigit() and text.isascii() and 1 <= int(text) <= _ENTRY_ID_MAX:
            usage_entry_id = int(text)
        else:
            check.fail("usage_entry_id", "must be a ledger entry id (digits)")
    else:
        check.fail("target", "set reservation_id or usage_entry_id")
    command = RefundCommand(
        idempotency_key=check.identifier("idempotency_key", request.idempotency_key),
        reservation_id=reservation_id,
        usage_entry_id=usage_entry_id,
        amount=check.amount("amount", request.amount) if request.HasField("amount") else None,
        reason=check.text("reason", request.reason, REASON_LENGTH_MAX),
        metadata=check.metadata("metadata", request.metadata),
    )
    check.done()
    return command


def refund_response(result: RefundResult) -> pb.RefundResponse:
    response = pb.RefundResponse(
        entries=[messages.ledger_entry(entry) for entry in result.entries],
        balance=messages.balance(result.balance),
        reservation=messages.reservation(result.reservation),
    )
    if result.lot is not None:
        response.lot.CopyFrom(messages.lot(result.lot))
    return response


class RefundsApi:
    _ledger: Ledger

    async def Refund(
        self, request: pb.RefundRequest, context: grpc.aio.ServicerContext
    ) -> pb.RefundResponse:
        return refund_response(await self._ledger.refund(refund_command(request), caller().name))
