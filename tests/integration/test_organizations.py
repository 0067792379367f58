"""Organisations against the real server and database (docs/organizations.md): members draw
from the pool when their own credits do not cover a call, within their caps; the pool's
available credits and a member's remaining cap are checked and changed in one transaction
(members racing never overdraw the pool, a member racing itself never passes its cap); a
release, a smaller commit or an expiry gives back to both; every bad request is refused with
nothing written. The ledger's invariants, member rows included, are checked after each test."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits_service.persistence.invariants import INVARIANTS
from tests.grpc_errors import assert_error, expect_error
from tests.ledger_checks import row_counts
from tests.support.calls import commit, grant, release, reserve, reserve_request

POOL = "acme-pool"


async def organization(stub, pool_credits: int = 1000, **members: dict) -> None:
    await stub.CreateOrganization(pb.CreateOrganizationRequest(
        organization_id="acme", pool_account_id=POOL))
    if pool_credits:
        await grant(stub, POOL, pool_credits)
    for account, caps in members.items():
        await stub.AddMember(pb.AddMemberRequest(organization_id="acme", account_id=account,
                                                 **caps))


async def _raise(error: Exception):
    raise error


async def member_of(stub, account: str) -> tuple[pb.Member, pb.Balance]:
    got = await stub.GetBalance(pb.GetBalanceRequest(account_id=account))
    assert got.HasField("member")
    return got.member, got.pool_balance


async def test_a_member_without_credits_of_its_own_draws_from_the_pool(stub, db):
    await organization(stub, m1={"period_cap": 100})
    held = await reserve(stub, "m1", 30, key="k1")
    assert (held.reservation.account_id, held.reservation.member_account_id) == (POOL, "m1")
    assert held.balance.account_id == POOL and held.balance.available == 970
    member, pool = await member_of(stub, "m1")
    assert (member.held, member.remaining, member.period_cap) == (30, 70, 100)
    assert not member.HasField("total_cap") and pool.available == 970
    own = (await stub.GetBalance(pb.GetBalanceRequest(account_id="m1"))).balance
    assert (own.balance, own.reserved) == (0, 0)
    assert await reserve(stub, "m1", 30, key="k1") == held  # a retry replays
    used = await commit(stub, held.reservation.reservation_id, 20)  # less: the rest back
    assert used.entry.account_id == POOL and used.balance.balance == 980
    member, pool = await member_of(stub, "m1")
    assert (member.held, member.period_used, member.total_used, member.remaining) == (
        0, 20, 20, 80)
    assert pool.available == 980


async def test_own_credits_are_drawn_first_when_they_cover_the_call_whole(stub, db):
    await organization(stub, m3={})
    await grant(stub, "m3", 20)
    own = await reserve(stub, "m3", 15)
    assert own.reservation.account_id == "m3" and not own.reservation.member_account_id
    pooled = await reserve(stub, "m3", 10)  # 5 of its own left: not split, all from the pool
    assert pooled.reservation.account_id == POOL
    assert pooled.reservation.member_account_id == "m3"
    member, _ = await member_of(stub, "m3")
    assert member.held == 10 and not member.HasField("remaining")


async def test_a_hold_past_the_members_cap_is_declined_and_replayed(stub, db):
    await organization(stub, m1={"period_cap": 100, "total_cap": 150})
    await reserve(stub, "m1", 30)
    error = await expect_error(reserve(stub, "m1", 80, key="over"))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_CAP_EXCEEDED",
                 accountId="m1", poolAccountId=POOL, remaining="70", requested="80")
    again = await expect_error(reserve(stub, "m1", 80, key="over"))
    assert again.reason == "MEMBER_CAP_EXCEEDED"  # stored with the key, as any decline
    assert (await reserve(stub, "m1", 70)).reservation.account_id == POOL


async def test_release_and_expiry_give_back_to_the_pool_and_the_member(stub, db, clock, app):
    await organization(stub, m1={"total_cap": 100})
    first = await reserve(stub, "m1", 60)
    await release(stub, first.reservation.reservation_id)
    member, pool = await member_of(stub, "m1")
    assert (member.held, member.total_used, member.remaining, pool.available) == (
        0, 0, 100, 1000)
    await reserve(stub, "m1", 100, ttl_s=1)
    clock.advance(2)
    await app.sweeper.sweep_once()
    member, pool = await member_of(stub, "m1")
    assert (member.held, member.remaining, pool.available) == (0, 100, 1000)


async def test_a_commit_above_the_hold_must_fit_the_members_cap(stub, db):
    await organization(stub, m2={"total_cap": 50})
    held = await reserve(stub, "m2", 40)
    error = await expect_error(commit(stub, held.reservation.reservation_id, 60))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_CAP_EXCEEDED",
                 accountId="m2", remaining="10", requested="20")
    used = await commit(stub, held.reservation.reservation_id, 50)
    assert used.balance.balance == 950
    member, _ = await member_of(stub, "m2")
    assert (member.total_used, member.remaining) == (50, 0)


async def test_members_racing_never_overdraw_the_pool(stubs, db):
    stub = stubs[0]
    await organization(stub, pool_credits=100, **{f"r{i}": {} for i in range(10)})
    calls = [reserve(stubs[n % len(stubs)], f"r{n % 10}", 10) for n in range(50)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    placed = [o for o in outcomes if not isinstance(o, Exception)]
    declined = [await expect_error(_raise(o)) for o in outcomes if isinstance(o, Exception)]
    assert len(placed) == 10
    assert {e.reason for e in declined} == {"INSUFFICIENT_CREDITS"}
    pool = (await stub.GetBalance(pb.GetBalanceRequest(account_id=POOL))).balance
    assert (pool.reserved, pool.available) == (100, 0)


async def test_a_member_racing_itself_never_passes_its_cap(stubs, db):
    stub = stubs[0]
    await organization(stub, m1={"period_cap": 100})
    calls = [reserve(stubs[n % len(stubs)], "m1", 10) for n in range(40)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    placed = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(placed) == 10
    declined = [await expect_error(_raise(o)) for o in outcomes if isinstance(o, Exception)]
    assert {e.reason for e in declined} == {"MEMBER_CAP_EXCEEDED"}
    member, pool = await member_of(stub, "m1")
    assert (member.held, member.remaining, pool.available) == (100, 0, 900)


async def test_a_frozen_pool_declines_its_members(stub, db):
    await organization(stub, m1={})
    await stub.SetAccountStatus(pb.SetAccountStatusRequest(
        account_id=POOL, status=pb.ACCOUNT_STATUS_FROZEN, reason="unpaid"))
    error = await expect_error(reserve(stub, "m1", 5))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_FROZEN", accountId=POOL)


async def test_usage_of_the_pool_is_broken_down_by_member(stub, db):
    await organization(stub, m1={}, m2={})
    for account, amount in (("m1", 30), ("m2", 5), ("m1", 7)):
        await commit(stub, (await reserve(stub, account, amount)).reservation.reservation_id)
    summary = await stub.UsageSummary(pb.UsageSummaryRequest(
        account_ids=[POOL], by_member=True, top_accounts=0))
    assert [(m.pool_account_id, m.member_account_id, m.credits, m.calls)
            for m in summary.members] == [(POOL, "m1", 37, 2), (POOL, "m2", 5, 1)]
    everyone = await stub.UsageSummary(pb.UsageSummaryRequest(by_member=True))
    assert everyone.members == summary.members
    assert sum(t.credits for t in summary.features) == 42  # the pool's usage, as ever


async def test_an_organisation_lists_its_members_page_by_page(stub, db):
    await organization(stub, **{f"p{i}": {"period_cap": 10 + i} for i in range(5)})
    await reserve(stub, "p1", 3)
    seen, token = [], ""
    while True:
        page = await stub.GetOrganization(pb.GetOrganizationRequest(
            organization_id="acme", page_size=2, page_token=token))
        assert page.organization.member_count == 5 and page.pool_balance.available == 997
        seen += [(m.account_id, m.remaining) for m in page.members]
        token = page.next_page_token
        if not token:
            break
    assert seen == [("p0", 10), ("p1", 8), ("p2", 12), ("p3", 13), ("p4", 14)]
    first = await stub.GetOrganization(pb.GetOrganizationRequest(
        organization_id="acme", page_size=2))
    await stub.CreateOrganization(pb.CreateOrganizationRequest(organization_id="other"))
    error = await expect_error(stub.GetOrganization(pb.GetOrganizationRequest(
        organization_id="other", page_token=first.next_page_token)))
    assert error.reason == "INVALID_PAGE_TOKEN"  # a token of another organisation's listing


async def test_creating_and_adding_again_are_safe_to_repeat(stub, db):
    await organization(stub, m1={"period_cap": 5})
    again = await stub.CreateOrganization(pb.CreateOrganizationRequest(
        organization_id="acme", pool_account_id=POOL))
    assert not again.created and again.organization.member_count == 1
    added = await stub.AddMember(pb.AddMemberRequest(
        organization_id="acme", account_id="m1", period_cap=5))
    assert not added.changed
    changed = await stub.SetMemberCaps(pb.SetMemberCapsRequest(
        organization_id="acme", account_id="m1", total_cap=9))
    assert changed.changed and not changed.member.HasField("period_cap")
    assert changed.member.total_cap == 9
    removed = await stub.RemoveMember(pb.RemoveMemberRequest(
        organization_id="acme", account_id="m1"))
    assert removed.member.account_id == "m1"
    got = await stub.GetBalance(pb.GetBalanceRequest(account_id="m1"))
    assert not got.HasField("member")
    error = await expect_error(reserve(stub, "m1", 1))
    assert error.reason == "INSUFFICIENT_CREDITS"  # no pool any more


async def _with_holds(stub):
    await organization(stub, m1={}, other={})
    await stub.CreateOrganization(pb.CreateOrganizationRequest(organization_id="beta"))
    await reserve(stub, "m1", 1)


@pytest.mark.parametrize(("call", "code", "reason", "metadata"), [
    (lambda s: s.AddMember(pb.AddMemberRequest(organization_id="beta", account_id="m1")),
     grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_IN_ORGANIZATION",
     {"accountId": "m1", "organizationId": "acme", "role": "member"}),
    (lambda s: s.AddMember(pb.AddMemberRequest(organization_id="beta", account_id=POOL)),
     grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_IN_ORGANIZATION",
     {"accountId": POOL, "role": "pool"}),
    (lambda s: s.CreateOrganization(pb.CreateOrganizationRequest(
        organization_id="gamma", pool_account_id="m1")),
     grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_IN_ORGANIZATION", {"role": "member"}),
    (lambda s: s.CreateOrganization(pb.CreateOrganizationRequest(
        organization_id="acme", pool_account_id="elsewhere")),
     grpc.StatusCode.ALREADY_EXISTS, "ORGANIZATION_EXISTS", {"poolAccountId": POOL}),
    (lambda s: s.CreateOrganization(pb.CreateOrganizationRequest(
        organization_id="delta", plan="gold")),
     grpc.StatusCode.NOT_FOUND, "PLAN_NOT_FOUND", {"plan": "gold"}),
    (lambda s: s.AddMember(pb.AddMemberRequest(organization_id="nope", account_id="x")),
     grpc.StatusCode.NOT_FOUND, "ORGANIZATION_NOT_FOUND", {"organizationId": "nope"}),
    (lambda s: s.AddMember(pb.AddMemberRequest(organization_id="acme", account_id="m1",
                                               period_cap=9)),
     grpc.StatusCode.ALREADY_EXISTS, "MEMBER_EXISTS", {}),
    (lambda s: s.AddMember(pb.AddMemberRequest(organization_id="acme", account_id="x",
                                               period_cap=10, total_cap=5)),
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", {"field": "period_cap"}),
    (lambda s: s.AddMember(pb.AddMemberRequest(organization_id="acme", account_id="x",
                                               total_cap=0)),
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", {"field": "total_cap"}),
    (lambda s: s.AddMember(pb.AddMemberRequest(organization_id="acme", account_id="x",
                                               period_cap=10**16)),
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", {"field": "period_cap"}),
    (lambda s: s.SetMemberCaps(pb.SetMemberCapsRequest(organization_id="beta",
                                                       account_id="m1")),
     grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND", {"accountId": "m1"}),
    (lambda s: s.RemoveMember(pb.RemoveMemberRequest(organization_id="acme",
                                                     account_id="m1")),
     grpc.StatusCode.FAILED_PRECONDITION, "MEMBER_HAS_HOLDS", {"held": "1"}),
    (lambda s: s.GetOrganization(pb.GetOrganizationRequest(organization_id="nope")),
     grpc.StatusCode.NOT_FOUND, "ORGANIZATION_NOT_FOUND", {}),
])
async def test_bad_organisation_requests_are_refused_with_nothing_written(
        stub, db, call, code, reason, metadata):
    await _with_holds(stub)
    before = await row_counts(db)
    error = await expect_error(call(stub))
    assert_error(error, code, reason, **metadata)
    assert await row_counts(db) == before


async def test_verify_finds_member_books_that_disagree_with_the_holds(stub, db):
    await organization(stub, m1={})
    await commit(stub, (await reserve(stub, "m1", 4)).reservation.reservation_id)
    await reserve(stub, "m1", 3)
    names = [name for name in INVARIANTS if "member" in name]
    assert len(names) == 3
    assert not [name for name in names if await db.fetch(INVARIANTS[name])]
    for table, column, name in (
            ("organization_members", "held", "a member's held == its active holds on the pool, "
                                             "total_used == its commits there"),
            ("usage_members", "credits", "usage_members == the commits of members' holds on "
                                         "pools")):
        await db.execute(f"UPDATE {table} SET {column} = {column} + 1")
        broken = [name for name in names if await db.fetch(INVARIANTS[name])]
        await db.execute(f"UPDATE {table} SET {column} = {column} - 1")
        assert broken == [name]
    await db.execute("UPDATE accounts SET pool_account_id = NULL WHERE account_id = 'm1'")
    broken = [name for name in names if await db.fetch(INVARIANTS[name])]
    assert broken == ["a member's account names its pool, and only a member's"]
    await db.execute(f"UPDATE accounts SET pool_account_id = '{POOL}' WHERE account_id = 'm1'")


async def test_a_batch_draws_each_members_item_from_its_own_credits_or_the_pool(stub, db):
    await organization(stub, pool_credits=100, m1={"period_cap": 50}, m2={})
    await grant(stub, "m2", 5)
    batch = await stub.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(items=[
        reserve_request("m1", 40), reserve_request("m2", 5), reserve_request("m2", 30),
        reserve_request("m1", 20), reserve_request("solo", 1)]))
    answers = [(r.response.reservation.account_id, r.response.reservation.member_account_id)
               if r.HasField("response") else r.error.reason for r in batch.results]
    assert answers == [(POOL, "m1"), ("m2", ""), (POOL, "m2"), "MEMBER_CAP_EXCEEDED",
                       "ACCOUNT_NOT_FOUND"]
    member, pool = await member_of(stub, "m1")
    assert (member.held, member.remaining, pool.available) == (40, 10, 30)
