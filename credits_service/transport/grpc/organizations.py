"""The organisation RPCs (CreateOrganization, AddMember, SetMemberCaps, RemoveMember,
GetOrganization): their validation, their mapping and their servicer methods."""

from __future__ import annotations

from datetime import date
from typing import Any

import grpc

from credits.v1 import credits_pb2 as pb
from credits_service.domain.commands import (
    AddMemberCommand,
    CreateOrganizationCommand,
    RemoveMemberCommand,
    SetMemberCapsCommand,
)
from credits_service.domain.organizations import CAP_MAX, Member, MemberCaps, Organization
from credits_service.service.ledger import Ledger
from credits_service.transport.grpc import messages
from credits_service.transport.grpc.accounts import plan_name
from credits_service.transport.grpc.auth import caller
from credits_service.transport.grpc.fields import FieldChecker


def _caps(check: FieldChecker, request: pb.AddMemberRequest | pb.SetMemberCapsRequest
          ) -> MemberCaps:
    caps = []
    for field in ("period_cap", "total_cap"):
        value = getattr(request, field) if request.HasField(field) else None
        if value is not None and not 1 <= value <= CAP_MAX:
            check.fail(field, f"must be 1..{CAP_MAX:_} credits, or unset for no cap")
        caps.append(value)
    period_cap, total_cap = caps
    if period_cap is not None and total_cap is not None and period_cap > total_cap:
        check.fail("period_cap", "must not be above total_cap: the month could never use it")
    return MemberCaps(period_cap, total_cap)


def create_organization_command(
    request: pb.CreateOrganizationRequest
) -> CreateOrganizationCommand:
    check = FieldChecker()
    organization_id = check.identifier("organization_id", request.organization_id)
    command = CreateOrganizationCommand(
        organization_id=organization_id,
        pool_account_id=(check.identifier("pool_account_id", request.pool_account_id)
                         if request.pool_account_id else organization_id),
        plan=plan_name(check, "plan", request.plan),
    )
    check.done()
    return command


def _with_caps(
    request: pb.AddMemberRequest | pb.SetMemberCapsRequest,
    command_type: type[AddMemberCommand | SetMemberCapsCommand],
) -> Any:
    """AddMember's or SetMemberCaps's command: the same fields, the same rules."""
    check = FieldChecker()
    command = command_type(
        organization_id=check.identifier("organization_id", request.organization_id),
        account_id=check.identifier("account_id", request.account_id),
        caps=_caps(check, request))
    check.done()
    return command


def add_member_command(request: pb.AddMemberRequest) -> AddMemberCommand:
    command: AddMemberCommand = _with_caps(request, AddMemberCommand)
    return command


def set_member_caps_command(request: pb.SetMemberCapsRequest) -> SetMemberCapsCommand:
    command: SetMemberCapsCommand = _with_caps(request, SetMemberCapsCommand)
    return command


def remove_member_command(request: pb.RemoveMemberRequest) -> RemoveMemberCommand:
    check = FieldChecker()
    command = RemoveMemberCommand(
        organization_id=check.identifier("organization_id", request.organization_id),
        account_id=check.identifier("account_id", request.account_id))
    check.done()
    return command


def organization(value: Organization) -> pb.Organization:
    return pb.Organization(
        organization_id=value.organization_id, pool_account_id=value.pool_account_id,
        create_time=messages.timestamp(value.create_time), member_count=value.member_count)


def member(value: Member, today: date) -> pb.Member:
    message = pb.Member(
        account_id=value.account_id, organization_id=value.organization_id,
        pool_account_id=value.pool_account_id, held=value.held,
        period_used=value.used_this_month(today), total_used=value.total_used)
    if value.caps.period_cap is not None:
        message.period_cap = value.caps.period_cap
    if value.caps.total_cap is not None:
        message.total_cap = value.caps.total_cap
    remaining = value.remaining(today)
    if remaining is not None:
        message.remaining = remaining
    if value.create_time is not None:
        message.create_time.CopyFrom(messages.timestamp(value.create_time))
    return message


class OrganizationsApi:
    _ledger: Ledger

    async def CreateOrganization(
        self, request: pb.CreateOrganizationRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateOrganizationResponse:
        result = await self._ledger.create_organization(
            create_organization_command(request), caller().name)
        return pb.CreateOrganizationResponse(
            organization=organization(result.organization), created=result.created)

    async def AddMember(
        self, request: pb.AddMemberRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddMemberResponse:
        result = await self._ledger.add_member(add_member_command(request), caller().name)
        return pb.AddMemberResponse(member=member(result.member, result.now.date()),
                                    changed=result.changed)

    async def SetMemberCaps(
        self, request: pb.SetMemberCapsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetMemberCapsResponse:
        result = await self._ledger.set_member_caps(
            set_member_caps_command(request), caller().name)
        return pb.SetMemberCapsResponse(member=member(result.member, result.now.date()),
                                        changed=result.changed)

    async def RemoveMember(
        self, request: pb.RemoveMemberRequest, context: grpc.aio.ServicerContext
    ) -> pb.RemoveMemberResponse:
        result = await self._ledger.remove_member(remove_member_command(request), caller().name)
        return pb.RemoveMemberResponse(member=member(result.member, result.now.date()))

    async def GetOrganization(
        self, request: pb.GetOrganizationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetOrganizationResponse:
        check = FieldChecker()
        organization_id = check.identifier("organization_id", request.organization_id)
        check.page(request.page_size, request.page_token)
        check.done()
        page = await self._ledger.get_organization(
            organization_id, request.page_size, request.page_token)
        return pb.GetOrganizationResponse(
            organization=organization(page.organization),
            pool_balance=messages.balance(page.pool),
            members=[member(m, page.today) for m in page.members],
            next_page_token=page.next_page_token)
