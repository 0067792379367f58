"""Accounts on plans against the real server and database: EnsureAccount's contract, the
welcome grant written once however many calls race to create an account, creation on first
use, and an unknown account's decline left unstored when auto-creation is off (the shared
server's setting)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from credits_service.app import Application
from tests.grpc_errors import assert_error, expect_error
from tests.ledger_checks import row_counts
from tests.support.calls import grant, grant_request, reserve, reserve_request

EXAMPLE_PLANS = Path(__file__).resolve().parents[2] / "docs" / "plans.example.toml"


@asynccontextmanager
async def serving(settings) -> AsyncIterator[credits_pb2_grpc.CreditsServiceStub]:
    app = await Application.start(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield credits_pb2_grpc.CreditsServiceStub(channel)
    finally:
        await app.stop()


@pytest.fixture
async def planned(test_settings) -> AsyncIterator[credits_pb2_grpc.CreditsServiceStub]:
    """A server on the example plans that creates unknown accounts on first use."""
    settings = test_settings.replace(plans_file=str(EXAMPLE_PLANS), auto_create_accounts=True,
                                     shutdown_grace_s=1)
    async with serving(settings) as stub:
        yield stub


async def welcome_entries(db, account_id: str) -> list:
    return await db.fetch(
        "SELECT * FROM ledger_entries WHERE account_id = $1 AND entry_type = 'GRANT' "
        "AND reason LIKE 'welcome credits%'", account_id)


async def test_ensure_account_creates_on_the_plan_once_and_returns_it_after(planned, db):
    created = await planned.EnsureAccount(pb.EnsureAccountRequest(account_id="u1", plan="pro"))
    again = await planned.EnsureAccount(pb.EnsureAccountRequest(account_id="u1", plan="free"))

    assert (created.created, again.created) == (True, False)
    assert created.account.plan == again.account.plan == "pro"
    assert created.account.create_time == again.account.create_time
    entry = created.welcome_entry
    assert (entry.type, entry.grant_type, entry.amount, entry.balance_after, entry.reason,
            dict(entry.metadata)) == (pb.ENTRY_TYPE_GRANT, pb.GRANT_TYPE_SIGNUP, 100, 100,
                                      "welcome credits of plan pro", {"plan": "pro"})
    assert not again.HasField("welcome_entry")
    assert created.balance == again.balance and again.balance.available == 100
    assert len(await welcome_entries(db, "u1")) == 1
    row = await db.fetchrow("SELECT plan FROM accounts WHERE account_id = 'u1'")
    assert row["plan"] == "pro"


async def test_the_default_plan_s_welcome_credits_expire_as_the_plan_says(planned, db):
    created = await planned.EnsureAccount(pb.EnsureAccountRequest(account_id="u1"))
    assert created.account.plan == "free" and created.balance.balance == 5
    lot = (await planned.GetBalance(pb.GetBalanceRequest(account_id="u1"))).lots[0]
    lifetime_s = lot.expire_time.seconds - lot.create_time.seconds
    assert abs(lifetime_s - 30 * 86_400) <= 1


@pytest.mark.parametrize(("plan", "code", "reason"), [
    ("platinum", grpc.StatusCode.NOT_FOUND, "PLAN_NOT_FOUND"),
    ("no spaces", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
])
async def test_a_plan_that_is_not_there_writes_nothing(planned, db, plan, code, reason):
    before = await row_counts(db)
    error = await expect_error(
        planned.EnsureAccount(pb.EnsureAccountRequest(account_id="u1", plan=plan)))
    assert error.code is code and error.reason == reason, error
    if reason == "PLAN_NOT_FOUND":
        assert_error(error, code, reason, plan=plan)
    assert await row_counts(db) == before


async def test_a_bad_account_id_is_refused(planned, db):
    error = await expect_error(planned.EnsureAccount(pb.EnsureAccountRequest(account_id="")))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error.field_violations] == ["account_id"]


async def test_every_call_racing_to_create_an_account_finds_one_welcome_grant(planned, db):
    """EnsureAccount, Grant, CheckAndReserve, a batch item and GetBalance, many of each, all
    at once on accounts that do not exist yet: each account gets its welcome credits once."""
    accounts = [f"race-{n}" for n in range(8)]

    def calls_for(account: str) -> list:
        return [
            planned.EnsureAccount(pb.EnsureAccountRequest(account_id=account)),
            planned.Grant(grant_request(account, 7)),
            planned.CheckAndReserve(reserve_request(account, 1)),
            planned.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(
                items=[reserve_request(account, 1)])),
            planned.GetBalance(pb.GetBalanceRequest(account_id=account)),
        ]

    answers = await asyncio.gather(
        *(call for _ in range(4) for account in accounts for call in calls_for(account)))

    assert sum(isinstance(a, pb.EnsureAccountResponse) and a.created for a in answers) <= 8
    for account in accounts:
        assert len(await welcome_entries(db, account)) == 1, account
        balance = (await planned.GetBalance(pb.GetBalanceRequest(account_id=account))).balance
        assert balance.lifetime_granted == 5 + 4 * 7
        assert balance.reserved == 8 and balance.active_reservation_count == 8


async def test_a_first_reservation_and_a_first_read_create_the_account(planned, db):
    placed = await reserve(planned, "u1", 2)
    assert placed.balance.balance == 5 and placed.balance.available == 3
    read = await planned.GetBalance(pb.GetBalanceRequest(account_id="u2"))
    assert read.balance.balance == 5 and [lot.amount for lot in read.lots] == [5]
    batch = await planned.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(
        items=[reserve_request("u3", 5), reserve_request("u3", 1)]))
    assert batch.results[0].response.balance.available == 0
    assert batch.results[1].error.reason == "INSUFFICIENT_CREDITS"
    for account in ("u1", "u2", "u3"):
        assert len(await welcome_entries(db, account)) == 1


async def test_history_never_creates_an_account(planned, db):
    error = await expect_error(planned.History(pb.HistoryRequest(account_id="u1")))
    assert error.reason == "ACCOUNT_NOT_FOUND"
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0


async def test_an_unknown_account_s_decline_is_not_stored_so_its_key_succeeds_later(stub, db):
    """The shared server does not create accounts on first use."""
    key = f"k-{uuid.uuid4()}"
    error = await expect_error(reserve(stub, "later", 3, key=key))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND", accountId="later")
    batch_key = f"b-{uuid.uuid4()}"
    item = (await stub.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(
        items=[reserve_request("later", 2, key=batch_key)]))).results[0]
    assert item.error.reason == "ACCOUNT_NOT_FOUND"
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0

    await grant(stub, "later", 10)

    placed = await reserve(stub, "later", 3, key=key)
    assert placed.balance.available == 7
    assert (await reserve(stub, "later", 3, key=key)) == placed
    item = (await stub.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(
        items=[reserve_request("later", 2, key=batch_key)]))).results[0]
    assert item.response.balance.available == 5
