"""The Grant RPC: its validation, its mapping and its servicer method."""

from __future__ import annotations

import grpc

from credits.v1 import credits_pb2 as pb
from credits_service.domain.commands import GrantCommand, GrantResult
from credits_service.domain.errors import PermissionDenied
from credits_service.domain.model import PRIORITY_MAX, PRIORITY_MIN
from credits_service.service.ledger import Ledger
from credits_service.transport.grpc import messages
from credits_service.transport.grpc.auth import Role, caller
from credits_service.transport.grpc.fields import REASON_LENGTH_MAX, FieldChecker


def grant_command(request: pb.GrantRequest) -> GrantCommand:
    """The request's command, or InvalidArgument naming every broken field."""
    check = FieldChecker()
    command = GrantCommand(
        account_id=check.identifier("account_id", request.account_id),
        amount=check.amount("amount", request.amount),
        grant_type=messages.GRANT_TYPE_FROM_PROTO.get(request.type),  # type: ignore[arg-type]
        idempotency_key=check.identifier("idempotency_key", request.idempotency_key),
        reason=check.text("reason", request.reason, REASON_LENGTH_MAX),
        metadata=check.metadata("metadata", request.metadata),
        expire_time=check.timestamp("expire_time", request.expire_time)
        if request.HasField("expire_time") else None,
        priority=request.priority if request.HasField("priority") else None,
    )
    if command.priority is not None and not PRIORITY_MIN <= command.priority <= PRIORITY_MAX:
        check.fail("priority", f"must be between {PRIORITY_MIN} and {PRIORITY_MAX}")
    if command.grant_type is None:
        check.fail("type", "must be one of the GrantType values other than UNSPECIFIED")
    check.done()
    return command


def grant_response(result: GrantResult) -> pb.GrantResponse:
    response = pb.GrantResponse(
        entry=messages.ledger_entry(result.entry), balance=messages.balance(result.balance))
    if result.lot is not None:
        response.lot.CopyFrom(messages.lot(result.lot))
    return response


class GrantsApi:
    _ledger: Ledger

    async def Grant(
        self, request: pb.GrantRequest, context: grpc.aio.ServicerContext
    ) -> pb.GrantResponse:
        principal = caller()
        if principal.role is Role.BILLING and request.type != pb.GRANT_TYPE_PURCHASE:
            raise PermissionDenied(principal.name, principal.role.value, "Grant",
                                   " with a type other than GRANT_TYPE_PURCHASE")
        return grant_response(await self._ledger.grant(grant_command(request), principal.name))
