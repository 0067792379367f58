"""The account RPCs (EnsureAccount, SetAccountStatus, ChangePlan): their validation, their
mapping and their servicer methods."""

from __future__ import annotations

import grpc

from credits.v1 import credits_pb2 as pb
from credits_service.domain.commands import (
    AccountChangeResult,
    ChangePlanCommand,
    EnsureAccountCommand,
    EnsureAccountResult,
    SetAccountStatusCommand,
)
from credits_service.domain.errors import PermissionDenied
from credits_service.domain.model import AccountStatus
from credits_service.domain.plans import PLAN_NAME_PATTERN
from credits_service.service.ledger import Ledger
from credits_service.transport.grpc import messages
from credits_service.transport.grpc.auth import Role, caller
from credits_service.transport.grpc.fields import REASON_LENGTH_MAX, FieldChecker


def plan_name(check: FieldChecker, field: str, value: str) -> str:
    """A plan name as the plans file allows it, or empty (the default plan)."""
    if value and not PLAN_NAME_PATTERN.fullmatch(value):
        check.fail(field, "must be empty (the default plan) or a plan name: 1-64 characters "
                          "from A-Z a-z 0-9 and '._-'")
    return value


def ensure_account_command(request: pb.EnsureAccountRequest) -> EnsureAccountCommand:
    check = FieldChecker()
    command = EnsureAccountCommand(
        account_id=check.identifier("account_id", request.account_id),
        plan=plan_name(check, "plan", request.plan),
    )
    check.done()
    return command


def required_reason(check: FieldChecker, field: str, value: str) -> str:
    if not value.strip():
        check.fail(field, "is required: say why, for the record")
    return check.text(field, value, REASON_LENGTH_MAX)


def set_account_status_command(request: pb.SetAccountStatusRequest) -> SetAccountStatusCommand:
    check = FieldChecker()
    status = messages.ACCOUNT_STATUS_FROM_PROTO.get(request.status)
    if status is None:
        check.fail("status", "must be ACCOUNT_STATUS_ACTIVE, _FROZEN or _CLOSED")
    command = SetAccountStatusCommand(
        account_id=check.identifier("account_id", request.account_id),
        status=status,  # type: ignore[arg-type]
        reason=required_reason(check, "reason", request.reason),
        write_off_balance=request.write_off_balance,
    )
    if request.write_off_balance and status is not AccountStatus.CLOSED:
        check.fail("write_off_balance", "is for ACCOUNT_STATUS_CLOSED only")
    check.done()
    return command


def change_plan_command(request: pb.ChangePlanRequest) -> ChangePlanCommand:
    check = FieldChecker()
    if not request.plan:
        check.fail("plan", "is required: the plan to move the account to")
    command = ChangePlanCommand(
        account_id=check.identifier("account_id", request.account_id),
        plan=plan_name(check, "plan", request.plan),
        reason=required_reason(check, "reason", request.reason),
    )
    check.done()
    return command


def ensure_account_response(result: EnsureAccountResult) -> pb.EnsureAccountResponse:
    response = pb.EnsureAccountResponse(
        account=messages.account(result.account),
        created=result.created,
        balance=messages.balance(result.balance),
    )
    if result.welcome is not None:
        response.welcome_entry.CopyFrom(messages.ledger_entry(result.welcome.entry))
    return response


class AccountsApi:
    _ledger: Ledger

    async def EnsureAccount(
        self, request: pb.EnsureAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.EnsureAccountResponse:
        principal = caller()
        if principal.role is Role.BILLING and request.plan:
            # A plan's welcome credits are money: a billing token grants purchases only.
            raise PermissionDenied(principal.name, principal.role.value, "EnsureAccount",
                                   " with a plan (the default plan only)")
        result = await self._ledger.ensure_account(
            ensure_account_command(request), principal.name)
        return ensure_account_response(result)

    async def SetAccountStatus(
        self, request: pb.SetAccountStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetAccountStatusResponse:
        result = await self._ledger.set_account_status(
            set_account_status_command(request), caller().name)
        return _status_change(result)

    async def ChangePlan(
        self, request: pb.ChangePlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.ChangePlanResponse:
        result = await self._ledger.change_plan(change_plan_command(request), caller().name)
        return pb.ChangePlanResponse(
            **_change(result),
            write_off_entries=[messages.ledger_entry(e) for e in result.write_off_entries])


def _change(result: AccountChangeResult) -> dict[str, object]:
    return {"account": messages.account(result.account), "changed": result.changed}


def _status_change(result: AccountChangeResult) -> pb.SetAccountStatusResponse:
    return pb.SetAccountStatusResponse(
        **_change(result),
        write_off_entries=[messages.ledger_entry(e) for e in result.write_off_entries])
