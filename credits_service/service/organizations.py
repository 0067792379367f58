"""Organisations: create one with its pool account, add members with caps, change caps,
remove members, and read them (docs/organizations.md). Members draw from the pool through
CheckAndReserve (service/reservations/reserve.py)."""

from __future__ import annotations

from credits_service.domain import errors
from credits_service.domain.commands import (
    AddMemberCommand,
    CreateOrganizationCommand,
    MemberPage,
    MemberResult,
    OrganizationResult,
    RemoveMemberCommand,
    SetMemberCapsCommand,
)
from credits_service.domain.organizations import (
    MEMBERS_MAX,
    MEMBERS_PAGE_SIZE_DEFAULT,
    MEMBERS_PAGE_SIZE_MAX,
    Organization,
)
from credits_service.service.accounts import AccountOpening
from credits_service.service.page_tokens import PageTokens, filters_digest
from credits_service.service.ports import UnitOfWork
from credits_service.service.transactions import Transactions


class Organizations:
    def __init__(
        self, transactions: Transactions, opening: AccountOpening, tokens: PageTokens
    ) -> None:
        self._transactions = transactions
        self._opening = opening
        self._tokens = tokens

    async def create(self, command: CreateOrganizationCommand, actor: str) -> OrganizationResult:
        """The organisation, created first with its pool account (created on `plan` if it
        does not exist) if there is none of that id; safe to repeat. Raises
        OrganizationExists for an id taken by an organisation with another pool, and
        AccountInOrganization for a pool account that is a member or another's pool."""
        self._opening.plan(command.plan)

        async def work(uow: UnitOfWork) -> OrganizationResult:
            pool = command.pool_account_id
            existing = await uow.organizations.get(command.organization_id)
            if existing is not None:
                return _same_pool(existing, pool)
            await self._opening.open(uow, pool, command.plan, actor)
            await uow.accounts.lock([pool])
            await _not_in_organization(uow, pool)
            created = await uow.organizations.create(command.organization_id, pool)
            if created is None:  # created meanwhile by another transaction
                existing = await uow.organizations.get(command.organization_id)
                assert existing is not None
                return _same_pool(existing, pool)
            return OrganizationResult(created, True)

        return await self._transactions.run(work)

    async def add_member(self, command: AddMemberCommand, actor: str) -> MemberResult:
        """Make the account (created on the default plan if it does not exist) a member with
        its caps; safe to repeat with the same caps. Raises OrganizationNotFound,
        AccountInOrganization (a member of another, or a pool), MemberExists (a member
        already, with other caps) or OrganizationFull."""

        async def work(uow: UnitOfWork) -> MemberResult:
            organization = await _organization(uow, command.organization_id)
            await self._opening.open(uow, command.account_id, "", actor)
            await uow.accounts.lock([organization.pool_account_id, command.account_id])
            member = await uow.organizations.member(command.account_id)
            if member is not None and member.organization_id == command.organization_id:
                if member.caps != command.caps:
                    raise errors.MemberExists(command.account_id, command.organization_id)
                return MemberResult(member, False, await uow.now())
            await _not_in_organization(uow, command.account_id)
            organization = await _organization(uow, command.organization_id)
            if organization.member_count >= MEMBERS_MAX:
                raise errors.OrganizationFull(command.organization_id, MEMBERS_MAX)
            await uow.organizations.add_member(organization, command.account_id, command.caps)
            added = await uow.organizations.member(command.account_id)
            assert added is not None
            return MemberResult(added, True, await uow.now())

        return await self._transactions.run(work)

    async def set_caps(self, command: SetMemberCapsCommand, actor: str) -> MemberResult:
        """Give the member new caps, in force at once for new holds (holds placed already
        stay); MemberNotFound if it is no member of the organisation."""

        async def work(uow: UnitOfWork) -> MemberResult:
            organization = await _organization(uow, command.organization_id)
            await uow.accounts.lock([organization.pool_account_id])
            member = (await uow.organizations.lock_members([command.account_id])).get(
                command.account_id)
            if member is None or member.organization_id != command.organization_id:
                raise errors.MemberNotFound(command.account_id, command.organization_id)
            if member.caps == command.caps:
                return MemberResult(member, False, await uow.now())
            await uow.organizations.set_caps(command.account_id, command.caps)
            changed = await uow.organizations.member(command.account_id)
            assert changed is not None
            return MemberResult(changed, True, await uow.now())

        return await self._transactions.run(work)

    async def remove_member(self, command: RemoveMemberCommand, actor: str) -> MemberResult:
        """Remove the member: its holds on the pool must have ended first (MemberHasHolds);
        what it used stays on the pool's ledger."""

        async def work(uow: UnitOfWork) -> MemberResult:
            organization = await _organization(uow, command.organization_id)
            await uow.accounts.lock([organization.pool_account_id, command.account_id])
            member = (await uow.organizations.lock_members([command.account_id])).get(
                command.account_id)
            if member is None or member.organization_id != command.organization_id:
                raise errors.MemberNotFound(command.account_id, command.organization_id)
            if not await uow.organizations.remove_member(command.account_id):
                raise errors.MemberHasHolds(command.account_id, member.held)
            return MemberResult(member, True, await uow.now())

        return await self._transactions.run(work)

    async def get(self, organization_id: str, page_size: int, page_token: str) -> MemberPage:
        """The organisation, its pool's balance and a page of its members in account order;
        OrganizationNotFound, or InvalidPageToken for a token not made for it."""
        filters = filters_digest(["members", organization_id])
        after = self._tokens.decode(page_token, filters, str) if page_token else ""
        size = min(page_size or MEMBERS_PAGE_SIZE_DEFAULT, MEMBERS_PAGE_SIZE_MAX)

        async def work(uow: UnitOfWork) -> MemberPage:
            organization = await _organization(uow, organization_id)
            members = await uow.organizations.members(organization_id, after, size + 1)
            pool = await uow.accounts.get(organization.pool_account_id)
            assert pool is not None, "a pool account exists"
            listed = members[:size]
            next_token = (self._tokens.encode(listed[-1].account_id, filters)
                          if len(members) > size else "")
            return MemberPage(organization, pool, listed, next_token,
                              (await uow.now()).date())

        return await self._transactions.run(work)


async def _organization(uow: UnitOfWork, organization_id: str) -> Organization:
    organization = await uow.organizations.get(organization_id)
    if organization is None:
        raise errors.OrganizationNotFound(organization_id)
    return organization


async def _not_in_organization(uow: UnitOfWork, account_id: str) -> None:
    """AccountInOrganization if the account is a member, or an organisation's pool."""
    member = await uow.organizations.member(account_id)
    if member is not None:
        raise errors.AccountInOrganization(account_id, member.organization_id, "member")
    pool_of = await uow.organizations.of_pool(account_id)
    if pool_of is not None:
        raise errors.AccountInOrganization(account_id, pool_of.organization_id, "pool")


def _same_pool(existing: Organization, pool_account_id: str) -> OrganizationResult:
    if existing.pool_account_id != pool_account_id:
        raise errors.OrganizationExists(existing.organization_id, existing.pool_account_id)
    return OrganizationResult(existing, False)
