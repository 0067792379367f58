"""Subscriptions against the real server and database (docs/subscriptions.md): the first
period granted at once, each later one by the scheduler exactly once (three schedulers racing
over 1,000 subscriptions), rollover, catch-up after downtime, upgrades prorated at once,
downgrades and cancellations at the period's end, and every bad request refused with nothing
written. Time moves with the service clock (the database clock plus an offset), never by
sleeping."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits_service.app import Application, build_ledger
from credits_service.domain.subscriptions import CatchUp, Period, PeriodKind
from credits_service.persistence.database import create_engine
from credits_service.persistence.unit_of_work import DatabaseClock
from credits_service.telemetry import Metrics
from credits_service.workers.scheduler import Scheduler
from tests.grpc_errors import assert_error, expect_error
from tests.ledger_checks import row_counts
from tests.support.calls import commit, reserve
from tests.support.serving import EXAMPLE_PLANS, serving_app

DAY_S = 86_400
WEEK_S = 7 * DAY_S


def subscribing(settings: Any, **overrides: Any):
    """A server on the example plans whose own scheduler stays out of the way (tests run
    `app.scheduler.grant_once()` when they mean to)."""
    return serving_app(settings, **{"plans_file": str(EXAMPLE_PLANS),
                                    "scheduler_interval_s": 3600, "shutdown_grace_s": 1,
                                    **overrides})


@pytest.fixture
async def served(test_settings: Any) -> AsyncIterator[tuple[Application, Any]]:
    async with subscribing(test_settings) as served:
        yield served


async def subscribe(stub: Any, account: str, plan: str, key: str | None = None):
    return await stub.Subscribe(pb.SubscribeRequest(
        account_id=account, plan=plan, idempotency_key=key or str(uuid.uuid4())))


async def change(stub: Any, account: str, plan: str):
    return await stub.ChangeSubscription(pb.ChangeSubscriptionRequest(
        account_id=account, plan=plan, idempotency_key=str(uuid.uuid4())))


async def cancel(stub: Any, account: str, immediately: bool = False):
    return await stub.CancelSubscription(pb.CancelSubscriptionRequest(
        account_id=account, immediately=immediately, idempotency_key=str(uuid.uuid4())))


async def available(stub: Any, account: str) -> int:
    return (await stub.GetBalance(pb.GetBalanceRequest(account_id=account))).balance.available


async def spend(stub: Any, account: str, amount: int) -> None:
    await commit(stub, (await reserve(stub, account, amount)).reservation.reservation_id)


async def advance(app: Application, seconds: float) -> int:
    """Move the service clock on and run the scheduler once."""
    app.clock.advance(seconds)
    return await app.scheduler.grant_once()


async def period_grants(db: Any, account: str) -> list[tuple[int, int, int]]:
    """(period, credits, carried) of the account's PERIOD grants, in period order."""
    rows = await db.fetch("""
        SELECT g.period, g.credits, g.carried FROM subscription_grants g
          JOIN subscriptions s USING (subscription_id)
         WHERE s.account_id = $1 AND g.kind = 'PERIOD' ORDER BY g.period""", account)
    return [tuple(row) for row in rows]


async def test_subscribing_grants_the_first_period_at_once_expiring_at_its_end(served, db):
    app, stub = served
    await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="s1"))  # on the free plan
    subscribed = await subscribe(stub, "s1", "starter", key="sub-1")
    s = subscribed.subscription
    assert (s.plan, s.status, s.last_period) == ("starter", pb.SUBSCRIPTION_STATUS_ACTIVE, 0)
    assert (s.allocation.credits, s.allocation.period, s.allocation.rollover,
            s.allocation.rollover_cap) == (1000, pb.ALLOCATION_PERIOD_MONTH,
                                          pb.ROLLOVER_RULE_CAPPED, 500)
    start = s.start_time.ToDatetime()
    assert s.next_grant_time.ToDatetime() == Period(PeriodKind.MONTH).start(start, 1)
    [granted] = subscribed.entries
    assert (granted.type, granted.grant_type, granted.amount) == (
        pb.ENTRY_TYPE_GRANT, pb.GRANT_TYPE_SUBSCRIPTION, 1000)
    assert dict(granted.metadata) == {"subscription_id": s.subscription_id, "period": "0",
                                      "plan": "starter"}
    assert subscribed.balance.balance == 1005  # the free plan's 5 welcome credits too
    lot = await db.fetchrow("SELECT expire_time, grant_type FROM credit_lots WHERE lot_id = "
                            "(SELECT lot_id FROM ledger_entries WHERE entry_id = $1)",
                            int(granted.entry_id))
    assert lot["expire_time"] == s.next_grant_time.ToDatetime().replace(
        tzinfo=lot["expire_time"].tzinfo)
    account = await db.fetchrow("SELECT plan FROM accounts WHERE account_id = 's1'")
    assert account["plan"] == "starter"

    replayed = await subscribe(stub, "s1", "starter", key="sub-1")
    assert replayed == subscribed
    error = await expect_error(subscribe(stub, "s1", "growth"))
    assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "ALREADY_SUBSCRIBED",
                 accountId="s1", plan="starter")
    got = await stub.GetSubscription(pb.GetSubscriptionRequest(account_id="s1"))
    assert got.subscription == s and got.period_granted_credits == 1000
    assert got.period_end_time == s.next_grant_time
    assert await advance(app, 0) == 0  # nothing is due yet
    page = await app.ledger.events.page("", account_ids=["s1"])
    assert [e.event_type.value for e in page.events] == [
        "ACCOUNT_CREATED", "GRANTED", "PLAN_CHANGED", "ALLOCATION_GRANTED"]
    assert page.events[2].data["to"] == "starter" and page.events[3].data["amount"] == 1000


async def test_a_new_account_is_created_on_the_plan_with_its_welcome_credits(served, db):
    _, stub = served
    subscribed = await subscribe(stub, "new", "growth")
    assert subscribed.balance.balance == 5000
    assert await db.fetchval("SELECT plan FROM accounts WHERE account_id = 'new'") == "growth"


@pytest.mark.parametrize(("plan", "used", "carried"), [
    ("starter", 100, 500),  # capped: 900 unused, 500 carry
    ("starter", 800, 200),
    ("growth", 1000, 4000),  # full
    ("scale", 0, 0),  # none
])
async def test_each_period_is_granted_once_with_what_the_rollover_rule_carries(
        served, db, plan, used, carried):
    app, stub = served
    credits = (await subscribe(stub, "r1", plan)).subscription.allocation.credits
    if used:
        await spend(stub, "r1", used)
    assert await advance(app, 31 * DAY_S) == 1
    assert await period_grants(db, "r1") == [(0, credits, 0), (1, credits, carried)]
    assert await available(stub, "r1") == credits + carried
    expired = await db.fetchval("SELECT -sum(amount) FROM ledger_entries WHERE account_id = "
                                "'r1' AND entry_type = 'EXPIRY'")
    assert expired == credits - used  # the unused lot is written off, what carries regranted
    assert await advance(app, 0) == 0  # granted once, however often the scheduler runs
    assert len(await period_grants(db, "r1")) == 2


async def test_a_scheduler_back_after_three_weeks_grants_each_missed_period(served, db):
    app, stub = served
    await subscribe(stub, "w1", "weekly")
    await stub.Subscribe(pb.SubscribeRequest(account_id="w2", plan="weekly",
                                             idempotency_key="w2"))
    assert await advance(app, 3 * WEEK_S + 60) == 2
    assert await period_grants(db, "w1") == [(p, 300, 0) for p in range(4)]
    # Each missed period's lot expired as it would have: only the current one is left.
    assert await available(stub, "w1") == 300
    got = await stub.GetSubscription(pb.GetSubscriptionRequest(account_id="w1"))
    assert got.subscription.last_period == 3 and got.period_granted_credits == 300


async def test_with_the_current_rule_a_scheduler_back_grants_the_current_period_only(
        test_settings, db):
    async with subscribing(test_settings, subscription_catch_up="current") as (app, stub):
        await subscribe(stub, "c1", "weekly")
        assert await advance(app, 3 * WEEK_S + 60) == 1
        assert await period_grants(db, "c1") == [(0, 300, 0), (3, 300, 0)]
        assert await available(stub, "c1") == 300


async def test_missed_periods_carry_their_full_rollover_when_each_is_granted(served, db):
    app, stub = served
    await subscribe(stub, "g1", "growth")
    assert await advance(app, 2 * 31 * DAY_S + 60) == 1
    assert await period_grants(db, "g1") == [(0, 5000, 0), (1, 5000, 5000), (2, 5000, 10000)]
    assert await available(stub, "g1") == 15000


async def test_an_upgrade_grants_the_rest_of_the_period_at_once(served, db):
    app, stub = served
    await subscribe(stub, "u1", "weekly")
    app.clock.advance(WEEK_S / 2)
    # weekly (300) -> no other 7-day plan: a change of period is refused, nothing written
    before = await row_counts(db)
    error = await expect_error(change(stub, "u1", "scale"))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "SUBSCRIPTION_PERIOD_MISMATCH",
                 plan="scale", period="month", currentPeriod="7 days")
    assert await row_counts(db) == before

    m = (await subscribe(stub, "u2", "starter")).subscription
    start, end = m.start_time.ToDatetime(), m.next_grant_time.ToDatetime()
    app.clock.advance((end - start).total_seconds() / 2)
    upgraded = await change(stub, "u2", "growth")
    assert upgraded.changed and upgraded.subscription.plan == "growth"
    assert upgraded.subscription.allocation.credits == 5000
    [moved] = [e for e in upgraded.entries if e.type == pb.ENTRY_TYPE_GRANT]
    # (5000 - 1000) for the half of the period left, rounded down (a few ms have passed)
    assert 1990 <= moved.amount <= 2000
    assert moved.metadata["plan"] == "growth" and moved.metadata["period"] == "0"
    assert await db.fetchval("SELECT plan FROM accounts WHERE account_id = 'u2'") == "growth"
    assert await available(stub, "u2") == 1000 + moved.amount
    # The next period is the new plan's. What carries in goes by the rule each lot was
    # granted under: starter's period lot capped at 500, growth's share in full.
    assert await advance(app, (end - start).total_seconds() / 2 + 60) == 2
    grants = await period_grants(db, "u2")
    assert grants == [(0, 1000, 0), (1, 5000, 500 + moved.amount)]


async def test_a_late_upgrade_does_not_change_the_rule_of_credits_granted_before_it(
        served, db):
    """Up to a full-rollover plan a minute before the period ends (its share rounds to 0),
    then back down: the period's own lot still carries by starter's cap, not growth's rule."""
    app, stub = served
    s = (await subscribe(stub, "late", "starter")).subscription
    length_s = (s.next_grant_time.ToDatetime() - s.start_time.ToDatetime()).total_seconds()
    app.clock.advance(length_s - 60)
    upgraded = await change(stub, "late", "growth")
    assert upgraded.subscription.plan == "growth"
    assert not [e for e in upgraded.entries if e.type == pb.ENTRY_TYPE_GRANT]
    assert (await change(stub, "late", "starter")).subscription.next_plan == "starter"
    assert await advance(app, 120) == 1
    assert await period_grants(db, "late") == [(0, 1000, 0), (1, 1000, 500)]


async def test_a_downgrade_waits_for_the_next_period_and_can_be_undone(served, db):
    app, stub = served
    await subscribe(stub, "d1", "scale")
    downgraded = await change(stub, "d1", "starter")
    assert downgraded.changed and downgraded.subscription.plan == "scale"
    assert downgraded.subscription.next_plan == "starter" and not downgraded.entries
    assert await db.fetchval("SELECT plan FROM accounts WHERE account_id = 'd1'") == "scale"
    undone = await change(stub, "d1", "scale")
    assert undone.changed and undone.subscription.next_plan == ""
    again = await change(stub, "d1", "scale")
    assert not again.changed
    await change(stub, "d1", "starter")
    assert await advance(app, 31 * DAY_S) == 1
    # scale's rule (none) decides what carries out of its period: nothing
    assert await period_grants(db, "d1") == [(0, 20000, 0), (1, 1000, 0)]
    got = await stub.GetSubscription(pb.GetSubscriptionRequest(account_id="d1"))
    assert (got.subscription.plan, got.subscription.next_plan) == ("starter", "")
    assert await db.fetchval("SELECT plan FROM accounts WHERE account_id = 'd1'") == "starter"


async def test_a_cancellation_at_the_period_end_stops_the_grants_then(served, db):
    app, stub = served
    s = (await subscribe(stub, "x1", "weekly")).subscription
    canceled = await cancel(stub, "x1")
    assert canceled.changed and canceled.subscription.cancel_time == s.next_grant_time
    assert canceled.subscription.status == pb.SUBSCRIPTION_STATUS_ACTIVE
    assert not (await cancel(stub, "x1")).changed
    assert await advance(app, WEEK_S + 60) == 1
    got = (await stub.GetSubscription(pb.GetSubscriptionRequest(account_id="x1"))).subscription
    assert got.status == pb.SUBSCRIPTION_STATUS_CANCELED and not got.HasField("next_grant_time")
    assert await period_grants(db, "x1") == [(0, 300, 0)]
    assert await db.fetchval("SELECT plan FROM accounts WHERE account_id = 'x1'") == "free"
    error = await expect_error(cancel(stub, "x1"))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "SUBSCRIPTION_NOT_FOUND", accountId="x1")
    # Subscribed again: a new subscription, anchored now
    again = await subscribe(stub, "x1", "weekly")
    assert again.subscription.subscription_id != s.subscription_id


async def test_a_cancellation_that_has_come_ends_before_any_call_whether_or_not_a_scheduler_ran(
        served, db):
    app, stub = served
    await subscribe(stub, "x3", "weekly")
    await cancel(stub, "x3")
    app.clock.advance(WEEK_S + 60)  # no scheduler runs
    moved = await stub.ChangePlan(pb.ChangePlanRequest(account_id="x3", plan="pro",
                                                       reason="left the subscription"))
    assert moved.changed and moved.account.plan == "pro"
    again = await subscribe(stub, "x3", "weekly")
    assert again.subscription.status == pb.SUBSCRIPTION_STATUS_ACTIVE
    assert await period_grants(db, "x3") == [(0, 300, 0), (0, 300, 0)]


async def test_any_change_undoes_a_pending_cancellation(served, db):
    app, stub = served
    await subscribe(stub, "x4", "starter")
    await cancel(stub, "x4")
    upgraded = await change(stub, "x4", "growth")
    assert not upgraded.subscription.HasField("cancel_time")
    assert await advance(app, 31 * DAY_S) == 1
    assert [p for p, _, _ in await period_grants(db, "x4")] == [0, 1]


async def test_a_subscription_that_cannot_be_granted_holds_up_no_other(served, db, caplog):
    app, stub = served
    for account in ("h1", "h2", "h3"):
        await subscribe(stub, account, "weekly")
    # A grant row already there for h2's next period: granting it violates the unique index
    await db.execute("""
        INSERT INTO subscription_grants (subscription_id, period, kind, plan, credits, lot_id,
                                         rollover, rollover_cap)
        SELECT subscription_id, 1, 'PERIOD', plan, 1, NULL, 'none', 0 FROM subscriptions
         WHERE account_id = 'h2'""")
    assert await advance(app, WEEK_S + 60) == 3
    assert [p for p, _, _ in await period_grants(db, "h1")] == [0, 1]
    assert [p for p, _, _ in await period_grants(db, "h3")] == [0, 1]
    assert "granting the subscription of account 'h2' failed" in caplog.text
    await db.execute("DELETE FROM subscription_grants WHERE credits = 1")
    assert await app.scheduler.grant_once() == 1
    assert [p for p, _, _ in await period_grants(db, "h2")] == [0, 1]


async def test_a_cancellation_at_once_ends_it_now_and_keeps_the_credits_granted(served, db):
    app, stub = served
    await subscribe(stub, "x2", "starter")
    ended = await cancel(stub, "x2", immediately=True)
    assert ended.subscription.status == pb.SUBSCRIPTION_STATUS_CANCELED
    assert ended.balance.balance == 1000
    assert await db.fetchval("SELECT plan FROM accounts WHERE account_id = 'x2'") == "free"
    assert await advance(app, 62 * DAY_S) == 0
    assert await period_grants(db, "x2") == [(0, 1000, 0)]


async def test_changing_a_subscribed_accounts_plan_directly_is_refused(served, db):
    _, stub = served
    await subscribe(stub, "p1", "starter")
    error = await expect_error(stub.ChangePlan(pb.ChangePlanRequest(
        account_id="p1", plan="pro", reason="move")))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "SUBSCRIPTION_ACTIVE",
                 accountId="p1", plan="starter")


async def test_a_closed_account_s_subscription_ends_at_its_next_period(served, db):
    app, stub = served
    await subscribe(stub, "z1", "weekly")
    await stub.SetAccountStatus(pb.SetAccountStatusRequest(
        account_id="z1", status=pb.ACCOUNT_STATUS_CLOSED, reason="gone",
        write_off_balance=True))
    error = await expect_error(change(stub, "z1", "weekly"))
    assert error.reason == "ACCOUNT_CLOSED"
    assert await advance(app, WEEK_S + 60) == 1
    got = (await stub.GetSubscription(pb.GetSubscriptionRequest(account_id="z1"))).subscription
    assert got.status == pb.SUBSCRIPTION_STATUS_CANCELED
    assert await period_grants(db, "z1") == [(0, 300, 0)]


@pytest.mark.parametrize(("call", "code", "reason", "metadata"), [
    (lambda stub: subscribe(stub, "b1", "gold"), grpc.StatusCode.NOT_FOUND, "PLAN_NOT_FOUND",
     {"plan": "gold"}),
    (lambda stub: subscribe(stub, "b1", "pro"), grpc.StatusCode.FAILED_PRECONDITION,
     "PLAN_WITHOUT_ALLOCATION",
     {"plan": "pro", "plansWithAllocation": "growth,scale,starter,weekly"}),
    (lambda stub: subscribe(stub, "b1", ""), grpc.StatusCode.INVALID_ARGUMENT,
     "INVALID_ARGUMENT", {}),
    (lambda stub: stub.Subscribe(pb.SubscribeRequest(account_id="b1", plan="starter")),
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", {}),
    (lambda stub: subscribe(stub, "b 1", "starter"), grpc.StatusCode.INVALID_ARGUMENT,
     "INVALID_ARGUMENT", {}),
    (lambda stub: change(stub, "b1", "starter"), grpc.StatusCode.NOT_FOUND,
     "SUBSCRIPTION_NOT_FOUND", {"accountId": "b1"}),
    (lambda stub: change(stub, "b1", "pro"), grpc.StatusCode.FAILED_PRECONDITION,
     "PLAN_WITHOUT_ALLOCATION", {}),
    (lambda stub: cancel(stub, "b1"), grpc.StatusCode.NOT_FOUND, "SUBSCRIPTION_NOT_FOUND", {}),
    (lambda stub: stub.GetSubscription(pb.GetSubscriptionRequest(account_id="b1")),
     grpc.StatusCode.NOT_FOUND, "SUBSCRIPTION_NOT_FOUND", {"accountId": "b1"}),
])
async def test_bad_subscription_requests_are_refused_with_nothing_written(
        served, db, call, code, reason, metadata):
    _, stub = served
    before = await row_counts(db)
    error = await expect_error(call(stub))
    assert_error(error, code, reason, **metadata)
    assert await row_counts(db) == before


async def test_three_schedulers_racing_grant_each_of_1000_subscriptions_once(
        served, test_settings, database_url, db):
    """Three replicas' schedulers, each with its own engine and clock, run at once over
    1,000 subscriptions three weeks behind: every period of every subscription is granted
    exactly once (and the ledger's invariants hold, checked after the test)."""
    app, stub = served
    accounts = [f"race-{i:04d}" for i in range(1000)]
    for start in range(0, len(accounts), 100):
        await asyncio.gather(*(subscribe(stub, a, "weekly")
                               for a in accounts[start:start + 100]))
    offset_s = 3 * WEEK_S + 60
    replicas = []
    for _ in range(3):
        engine = create_engine(test_settings.database, database_url)
        clock = DatabaseClock()
        clock.advance(app.clock.offset_ms / 1000 + offset_s)
        ledger = build_ledger(test_settings, engine, Metrics(), clock, b"k" * 32,
                              app.ledger.opening.plans)
        assert ledger.subscriptions._catch_up is CatchUp.EACH
        replicas.append((engine, Scheduler(ledger.subscriptions, interval_s=1, batch_size=25)))
    try:
        settled = await asyncio.gather(*(scheduler.grant_once() for _, scheduler in replicas))
    finally:
        for engine, _ in replicas:
            await engine.dispose()
    assert sum(settled) == 1000
    assert all(settled), f"each scheduler took a share: {settled}"
    counts = await db.fetch("""
        SELECT s.account_id, count(*) AS periods, count(DISTINCT g.period) AS distinct_periods,
               min(g.period) AS first, max(g.period) AS last
          FROM subscriptions s JOIN subscription_grants g USING (subscription_id)
         WHERE g.kind = 'PERIOD' GROUP BY s.account_id""")
    assert len(counts) == 1000
    assert {tuple(row)[1:] for row in counts} == {(4, 4, 0, 3)}
    entries = await db.fetchval("""
        SELECT count(*) FROM ledger_entries
         WHERE entry_type = 'GRANT' AND grant_type = 'SUBSCRIPTION'""")
    assert entries == 4000
    assert await db.fetchval("SELECT count(*) FROM subscriptions WHERE last_period = 3") == 1000
