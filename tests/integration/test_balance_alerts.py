"""Balance alerts and expiring-soon notices (issue 30, part 3) against the real server: a
plan's or an account's low-balance threshold (credits, or a percentage of the last top-up);
LOW_BALANCE once per crossing below, DEPLETED at zero, BALANCE_RECOVERED back up, none
twice under concurrency and none for a new account's first credits; CREDITS_EXPIRING once
per lot; SetBalanceAlert's bad input refused with nothing changed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from credits_service.app import Application
from credits_service.domain.events import EventType
from tests.grpc_errors import expect_error
from tests.integration.test_subscriptions import subscribing
from tests.ledger_checks import row_counts
from tests.support.calls import commit, grant, release, reserve
from tests.support.serving import EXAMPLE_PLANS

ALERTS = ("LOW_BALANCE", "DEPLETED", "BALANCE_RECOVERED")


@pytest.fixture
async def served(test_settings: Any) -> AsyncIterator[tuple[Application, Any]]:
    async with subscribing(test_settings) as served:
        yield served


async def alerts_of(app: Application, account: str) -> list[tuple[str, dict]]:
    page = await app.ledger.events.page(
        "", event_types=[EventType(t) for t in ALERTS], account_ids=[account])
    return [(e.event_type.value, {k: e.data[k] for k in ("from", "to", "available")})
            for e in page.events]


async def test_a_plans_threshold_fires_once_per_crossing_and_rearms(served):
    app, stub = served
    await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="p", plan="pro"))  # 100
    assert await alerts_of(app, "p") == []  # the first credits are no recovery
    first = await reserve(stub, "p", 70)  # 30 left: above 20
    second = await reserve(stub, "p", 15)  # 15 left: low
    await reserve(stub, "p", 5)  # 10: still low, no second event
    await release(stub, second.reservation.reservation_id)  # 25: recovered
    await commit(stub, first.reservation.reservation_id)  # still 25: the hold was taken
    await reserve(stub, "p", 25)  # 0: below the threshold and depleted at once
    await grant(stub, "p", 5)  # 5: up, but still low
    assert await alerts_of(app, "p") == [
        ("LOW_BALANCE", {"from": "OK", "to": "LOW", "available": 15}),
        ("BALANCE_RECOVERED", {"from": "LOW", "to": "OK", "available": 25}),
        ("LOW_BALANCE", {"from": "OK", "to": "DEPLETED", "available": 0}),
        ("DEPLETED", {"from": "OK", "to": "DEPLETED", "available": 0}),
        ("BALANCE_RECOVERED", {"from": "DEPLETED", "to": "LOW", "available": 5}),
    ]


async def test_a_percentage_of_the_last_top_up_and_an_accounts_own_rule(served):
    app, stub = served
    await grant(stub, "q", 1000)  # the default plan (free): no rule
    alert = (await stub.SetBalanceAlert(pb.SetBalanceAlertRequest(
        account_id="q", low_balance_percent=20))).alert
    assert (alert.custom, alert.threshold, alert.last_top_up, alert.level) == (
        True, 200, 1000, pb.BALANCE_LEVEL_OK)
    await reserve(stub, "q", 850)  # 155 left (5 welcome credits): low
    await grant(stub, "q", 100)  # 255 left, threshold 20 % of 100: recovered
    assert [t for t, _ in await alerts_of(app, "q")] == ["LOW_BALANCE", "BALANCE_RECOVERED"]
    off = (await stub.SetBalanceAlert(pb.SetBalanceAlertRequest(
        account_id="q", no_low_balance=True))).alert
    assert (off.custom, off.threshold, off.low_balance_percent) == (True, 0, 0)
    await reserve(stub, "q", 250)  # 5 left: no threshold, no event
    back = (await stub.SetBalanceAlert(pb.SetBalanceAlertRequest(
        account_id="q", use_plan=True))).alert
    assert (back.custom, back.threshold) == (False, 0)  # free has no rule
    assert len(await alerts_of(app, "q")) == 2


async def test_a_grant_under_a_percentage_rule_is_judged_once_against_its_new_threshold(
        served):
    app, stub = served
    await grant(stub, "g", 995)  # 1,000 with the free plan's 5 welcome credits
    await stub.SetBalanceAlert(pb.SetBalanceAlertRequest(account_id="g", low_balance_percent=50))
    await reserve(stub, "g", 1000)  # 0 left: LOW_BALANCE and DEPLETED
    await grant(stub, "g", 100)  # 100 left; the threshold now 50 % of 100
    assert [(t, d["to"]) for t, d in await alerts_of(app, "g")] == [
        ("LOW_BALANCE", "DEPLETED"), ("DEPLETED", "DEPLETED"), ("BALANCE_RECOVERED", "OK")]


async def test_an_account_made_unlimited_loses_its_level_and_starts_afresh(served):
    app, stub = served
    await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="u", plan="pro"))  # 100
    await reserve(stub, "u", 90)  # 10 left: low
    await stub.ChangePlan(pb.ChangePlanRequest(account_id="u", plan="unlimited",
                                                reason="trial"))
    await reserve(stub, "u", 50)  # below zero, unlimited: nothing
    await stub.ChangePlan(pb.ChangePlanRequest(account_id="u", plan="pro", reason="back"))
    await grant(stub, "u", 100)  # 60 left: the first level since, no recovery
    await reserve(stub, "u", 45)  # 15 left: low again, a crossing
    assert [t for t, _ in await alerts_of(app, "u")] == ["LOW_BALANCE", "LOW_BALANCE"]


async def test_a_new_threshold_above_the_balance_is_a_crossing(served):
    app, stub = served
    await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="r", plan="pro"))  # 100
    alert = (await stub.SetBalanceAlert(pb.SetBalanceAlertRequest(
        account_id="r", low_balance_credits=500))).alert
    assert alert.level == pb.BALANCE_LEVEL_LOW
    assert [t for t, _ in await alerts_of(app, "r")] == ["LOW_BALANCE"]


async def test_racing_holds_cross_once(served, stubs):
    app, _ = served
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") for _ in range(4)]
    try:
        racing = [credits_pb2_grpc.CreditsServiceStub(c) for c in channels]
        await racing[0].EnsureAccount(pb.EnsureAccountRequest(account_id="s", plan="pro"))
        results = await asyncio.gather(*(
            reserve(racing[i % 4], "s", 1) for i in range(150)), return_exceptions=True)
        assert sum(not isinstance(r, Exception) for r in results) == 100
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    assert [t for t, _ in await alerts_of(app, "s")] == ["LOW_BALANCE", "DEPLETED"]


async def test_credits_expiring_are_told_once_per_lot(served, db):
    app, stub = served
    now = await db.fetchval("SELECT credits_now()")

    def expiring_in(days: float) -> Timestamp:
        stamp = Timestamp()
        stamp.FromSeconds(int(now.timestamp() + days * 86_400))
        return stamp

    await grant(stub, "x", 10, expire_time=expiring_in(2))
    await grant(stub, "x", 20, expire_time=expiring_in(10))
    await grant(stub, "x", 30)  # never expires
    await app.sweeper.sweep_once()
    await app.sweeper.sweep_once()
    page = await app.ledger.events.page("", event_types=[EventType.CREDITS_EXPIRING])
    assert [(e.account_id, e.data["remaining"]) for e in page.events] == [("x", 10)]
    app.clock.advance(8 * 86_400)
    await app.sweeper.sweep_once()
    page = await app.ledger.events.page("", event_types=[EventType.CREDITS_EXPIRING])
    assert [e.data["remaining"] for e in page.events] == [10, 20]


@pytest.mark.parametrize(("fields", "field"), [
    ({"account_id": "a"}, "rule"),
    ({"account_id": "a", "use_plan": False}, "rule"),
    ({"account_id": "a", "low_balance_percent": 0}, "low_balance_percent"),
    ({"account_id": "a", "low_balance_percent": 101}, "low_balance_percent"),
    ({"account_id": "a", "low_balance_credits": 0}, "low_balance_credits"),
    ({"account_id": "a", "low_balance_credits": 10**12 + 1}, "low_balance_credits"),
    ({"account_id": "bad id", "low_balance_credits": 5}, "account_id"),
])
async def test_bad_set_balance_alert_is_refused_and_changes_nothing(stub, db, fields, field):
    await grant(stub, "a", 10)
    before = await row_counts(db)
    error = await expect_error(stub.SetBalanceAlert(pb.SetBalanceAlertRequest(**fields)))
    assert (error.code, error.reason, error.metadata["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", field)
    assert await row_counts(db) == before
    assert await db.fetchval("SELECT alert_custom FROM accounts WHERE account_id = 'a'") is False


async def test_an_unknown_account_is_not_found(stub):
    error = await expect_error(stub.SetBalanceAlert(pb.SetBalanceAlertRequest(
        account_id="nobody", low_balance_credits=5)))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")


async def test_a_changed_plan_rule_reaches_its_accounts_at_start_up(test_settings, db, tmp_path):
    async with subscribing(test_settings) as (_, stub):
        await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="t", plan="pro"))
    edited = tmp_path / "plans.toml"
    edited.write_text(EXAMPLE_PLANS.read_text().replace(
        "low_balance_credits = 20", "low_balance_credits = 50"))
    app = await Application.start(test_settings.replace(plans_file=str(edited)))
    await app.stop()
    row = await db.fetchrow("SELECT low_balance_credits, alert_custom FROM accounts "
                            "WHERE account_id = 't'")
    assert (row["low_balance_credits"], row["alert_custom"]) == (50, False)
