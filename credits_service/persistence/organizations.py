"""Organisations and their members (migration 0014). A member's row is locked after its
pool's account, by every transaction that changes it (a hold on the pool, its end through
the reservations' triggers, the admin calls), so they never deadlock on the pair."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from credits_service.domain.organizations import Member, MemberCaps, Organization

_MEMBER = """m.account_id, m.organization_id, o.pool_account_id, m.period_cap, m.total_cap,
             m.held, m.period_start, m.period_used, m.total_used, m.create_time"""

_ORGANIZATION = """o.organization_id, o.pool_account_id, o.create_time,
    (SELECT count(*) FROM organization_members c
      WHERE c.organization_id = o.organization_id) AS member_count"""

_CREATE = """
    WITH created AS (
        INSERT INTO organizations (organization_id, pool_account_id) VALUES ($1, $2)
        ON CONFLICT (organization_id) DO NOTHING
        RETURNING *
    )
    SELECT o.organization_id, o.pool_account_id, o.create_time, 0::bigint AS member_count
      FROM created o"""

_GET = f"SELECT {_ORGANIZATION} FROM organizations o WHERE o.organization_id = $1"
_OF_POOL = f"SELECT {_ORGANIZATION} FROM organizations o WHERE o.pool_account_id = $1"

_MEMBER_OF = f"""
    SELECT {_MEMBER} FROM organization_members m
      JOIN organizations o USING (organization_id)
     WHERE m.account_id = $1"""

# In account order, so two transactions locking several never deadlock on them
_LOCK_MEMBERS = f"""
    SELECT {_MEMBER} FROM organization_members m
      JOIN organizations o USING (organization_id)
     WHERE m.account_id = ANY($1::text[])
     ORDER BY m.account_id FOR UPDATE OF m"""

# The member row and the account's pool, at once
_ADD = """
    WITH added AS (
        INSERT INTO organization_members (account_id, organization_id, period_cap, total_cap)
        VALUES ($1, $2, $3, $4)
        RETURNING account_id
    ), marked AS (
        UPDATE accounts SET pool_account_id = $5, update_time = credits_now()
         WHERE account_id IN (SELECT account_id FROM added)
        RETURNING 1
    )
    SELECT count(*) FROM marked"""

_SET_CAPS = """
    UPDATE organization_members SET period_cap = $2, total_cap = $3, update_time = credits_now()
     WHERE account_id = $1"""

_REMOVE = """
    WITH removed AS (
        DELETE FROM organization_members WHERE account_id = $1 AND held = 0
        RETURNING account_id
    ), unmarked AS (
        UPDATE accounts SET pool_account_id = NULL, update_time = credits_now()
         WHERE account_id IN (SELECT account_id FROM removed)
        RETURNING 1
    )
    SELECT count(*) FROM unmarked"""

_MEMBERS = f"""
    SELECT {_MEMBER} FROM organization_members m
      JOIN organizations o USING (organization_id)
     WHERE m.organization_id = $1 AND m.account_id > $2
     ORDER BY m.account_id LIMIT $3"""


class OrganizationRepository:
    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def create(self, organization_id: str, pool_account_id: str) -> Organization | None:
        """A new organisation; None if one of that id exists (waiting for a transaction
        creating it concurrently to end)."""
        row = await self._connection.fetchrow(_CREATE, organization_id, pool_account_id)
        return _organization(row) if row is not None else None

    async def get(self, organization_id: str) -> Organization | None:
        row = await self._connection.fetchrow(_GET, organization_id)
        return _organization(row) if row is not None else None

    async def of_pool(self, account_id: str) -> Organization | None:
        """The organisation whose pool the account is, if any."""
        row = await self._connection.fetchrow(_OF_POOL, account_id)
        return _organization(row) if row is not None else None

    async def member(self, account_id: str) -> Member | None:
        row = await self._connection.fetchrow(_MEMBER_OF, account_id)
        return _member(row) if row is not None else None

    async def lock_members(self, account_ids: Iterable[str]) -> dict[str, Member]:
        """The members among the accounts, their rows locked, in account order."""
        rows = await self._connection.fetch(_LOCK_MEMBERS, sorted(set(account_ids)))
        return {row["account_id"]: _member(row) for row in rows}

    async def add_member(
        self, organization: Organization, account_id: str, caps: MemberCaps
    ) -> None:
        """Make the account a member (it is in no organisation: the primary key refuses a
        second), its account row marked with the pool."""
        marked = await self._connection.fetchval(
            _ADD, account_id, organization.organization_id, caps.period_cap, caps.total_cap,
            organization.pool_account_id)
        assert marked == 1, "a member's account exists"

    async def set_caps(self, account_id: str, caps: MemberCaps) -> None:
        await self._connection.execute(_SET_CAPS, account_id, caps.period_cap, caps.total_cap)

    async def remove_member(self, account_id: str) -> bool:
        """Remove a member holding nothing on the pool; False if it holds credits there."""
        return bool(await self._connection.fetchval(_REMOVE, account_id))

    async def members(
        self, organization_id: str, after_account_id: str, limit: int
    ) -> list[Member]:
        """Members in account order, after `after_account_id`."""
        rows = await self._connection.fetch(_MEMBERS, organization_id, after_account_id, limit)
        return [_member(row) for row in rows]


def _organization(row: Any) -> Organization:
    return Organization(row["organization_id"], row["pool_account_id"], row["create_time"],
                        row["member_count"])


def _member(row: Any) -> Member:
    return Member(
        account_id=row["account_id"], organization_id=row["organization_id"],
        pool_account_id=row["pool_account_id"],
        caps=MemberCaps(row["period_cap"], row["total_cap"]), held=row["held"],
        period_start=row["period_start"], period_used=row["period_used"],
        total_used=row["total_used"], create_time=row["create_time"])
