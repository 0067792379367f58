"""The Transfer RPC: its validation, its mapping and its servicer method."""

from __future__ import annotations

import grpc

from credits.v1 import credits_pb2 as pb
from credits_service.domain.commands import TransferCommand, TransferResult
from credits_service.service.ledger import Ledger
from credits_service.transport.grpc import messages
from credits_service.transport.grpc.auth import caller
from credits_service.transport.grpc.fields import REASON_LENGTH_MAX, FieldChecker


def transfer_command(request: pb.TransferRequest) -> TransferCommand:
    """The request's command, or InvalidArgument naming every broken field."""
    check = FieldChecker()
    command = TransferCommand(
        from_account_id=check.identifier("from_account_id", request.from_account_id),
        to_account_id=check.identifier("to_account_id", request.to_account_id),
        amount=check.amount("amount", request.amount),
        idempotency_key=check.identifier("idempotency_key", request.idempotency_key),
        reason=check.text("reason", request.reason, REASON_LENGTH_MAX),
        metadata=check.metadata("metadata", request.metadata),
    )
    if request.from_account_id and request.from_account_id == request.to_account_id:
        check.fail("to_account_id", "must be another account than from_account_id")
    check.done()
    return command


def transfer_response(result: TransferResult) -> pb.TransferResponse:
    return pb.TransferResponse(
        transfer_id=result.transfer_id,
        from_entries=[messages.ledger_entry(entry) for entry in result.from_entries],
        to_entries=[messages.ledger_entry(entry) for entry in result.to_entries],
        from_balance=messages.balance(result.from_balance),
        to_balance=messages.balance(result.to_balance),
    )


class TransfersApi:
    _ledger: Ledger

    async def Transfer(
        self, request: pb.TransferRequest, context: grpc.aio.ServicerContext
    ) -> pb.TransferResponse:
        result = await self._ledger.transfer(transfer_command(request), caller().name)
        return transfer_response(result)
