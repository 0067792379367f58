"""Holds of a feature against the real server and database: CheckAndReserve prices a feature's
units by the rate card (the account's plan's price), the hold keeps that price, and Commit with
actual units pays it even after a reload; bad input is refused and writes nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from tests.grpc_errors import assert_error, expect_error
from tests.integration.test_rates import app_with_card
from tests.ledger_checks import assert_invariants, row_counts
from tests.support.calls import commit, commit_request, grant, reserve, reserve_request
from tests.support.serving import EXAMPLE_PLANS, serving

EXAMPLE_CARD = Path(__file__).resolve().parents[2] / "docs" / "rates.example.toml"
# llm: 10 units a credit, then 5; image: 5 a call, then 7
CARD_V1 = ('version = "v1"\n[features.llm]\nunits_per_credit = 10\nminimum_charge = 1\n'
           '[features.image]\ncost_per_call = 5\n')
CARD_V2 = ('version = "v2"\n[features.llm]\nunits_per_credit = 5\nminimum_charge = 1\n'
           '[features.image]\ncost_per_call = 7\n')


@pytest.fixture
async def priced(test_settings):
    settings = test_settings.replace(plans_file=str(EXAMPLE_PLANS),
                                     rate_card_file=str(EXAMPLE_CARD), shutdown_grace_s=1)
    async with serving(settings) as stub:
        yield stub


def feature_request(account: str, feature: str, units: int = 0, **fields):
    return reserve_request(account, 0, feature=feature, units=units, **fields)


async def test_a_hold_of_a_feature_costs_its_plan_s_price_and_commit_charges_units_at_it(
        priced, db):
    await priced.EnsureAccount(pb.EnsureAccountRequest(account_id="p1", plan="pro"))
    await grant(priced, "p1", 100)
    held = await priced.CheckAndReserve(feature_request("p1", "llm", 5000, metadata={"j": "1"}))
    price = held.reservation.price
    # pro: 2,000 tokens a credit (the example card), rounded up
    assert (held.reservation.amount, price.feature, price.units, price.cost,
            price.rate_card_version, price.plan) == (3, "llm", 5000, 3, "2026-12-01", "pro")
    assert (price.price.units_per_credit, price.price.minimum_charge) == (2000, 1)
    assert held.balance.reserved == 3
    stored = json.loads(await db.fetchval(
        "SELECT price::text FROM reservations WHERE reservation_id = $1::uuid",
        held.reservation.reservation_id))
    assert (stored["feature"], stored["version"], stored["units_per_credit"]) == (
        "llm", "2026-12-01", 2000)
    listed = await priced.ListReservations(pb.ListReservationsRequest(
        account_id="p1", page_size=10))
    assert [r.price for r in listed.reservations] == [price]

    done = await commit(priced, held.reservation.reservation_id, units=9000)  # more than held
    assert (done.reservation.committed_amount, done.entry.amount) == (5, -5)
    assert (done.entry.feature, done.entry.units, done.entry.rate_card_version) == (
        "llm", 9000, "2026-12-01")
    assert done.entry.metadata == {"j": "1"}
    assert done.balance.balance == 195  # 100 welcome credits of pro, 100 granted
    again = await commit(priced, held.reservation.reservation_id, units=9000)  # a replay
    assert again.entry.entry_id == done.entry.entry_id
    for units in (1, 8001):  # 8,001 tokens cost 5 credits too, but are not this Commit
        error = await expect_error(commit(priced, held.reservation.reservation_id, units=units))
        assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_ALREADY_COMMITTED")

    # Without units, a hold of a feature commits what it held, and its estimate stays its units
    plain = await priced.CheckAndReserve(feature_request("p1", "image"))
    assert plain.reservation.amount == 3
    done = await commit(priced, plain.reservation.reservation_id)
    assert (done.entry.amount, done.entry.feature, done.entry.units) == (-3, "image", 0)
    history = await priced.History(pb.HistoryRequest(account_id="p1", page_size=10))
    assert [e.feature for e in history.entries if e.type == pb.ENTRY_TYPE_USAGE] == [
        "image", "llm"]
    await assert_invariants(db)


async def test_commit_with_units_pays_the_price_of_the_hold_not_today_s(
        test_settings, db, tmp_path):
    card = tmp_path / "rates.toml"
    card.write_text(CARD_V1)
    async with app_with_card(test_settings, card) as (_, stub):
        await grant(stub, "a1", 1000)
        old = await stub.CheckAndReserve(feature_request("a1", "llm", 100))
        assert (old.reservation.amount, old.reservation.price.rate_card_version) == (10, "v1")
        card.write_text(CARD_V2)
        await stub.ReloadRateCard(pb.ReloadRateCardRequest())
        new = await stub.CheckAndReserve(feature_request("a1", "llm", 100))
        assert (new.reservation.amount, new.reservation.price.rate_card_version) == (20, "v2")
        # 55 units: 6 credits at v1's 10 a credit (rounded up), 11 at v2's 5
        old_done = await commit(stub, old.reservation.reservation_id, units=55)
        new_done = await commit(stub, new.reservation.reservation_id, units=55)
        assert (old_done.entry.amount, old_done.entry.rate_card_version) == (-6, "v1")
        assert (new_done.entry.amount, new_done.entry.rate_card_version) == (-11, "v2")
        # A replayed CheckAndReserve answers the price it was placed at
        replay = await stub.CheckAndReserve(reserve_request("a1", 0, key="same", feature="image"))
        card.write_text(CARD_V1)
        await stub.ReloadRateCard(pb.ReloadRateCardRequest())
        again = await stub.CheckAndReserve(reserve_request("a1", 0, key="same", feature="image"))
        assert again == replay
        assert (again.reservation.amount, again.reservation.price.rate_card_version) == (7, "v2")
        error = await expect_error(stub.CheckAndReserve(reserve_request(
            "a1", 0, key="same", feature="image", units=1)))
        assert_error(error, grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
        await assert_invariants(db)


async def test_bad_holds_and_commits_of_features_are_refused_and_write_nothing(priced, db):
    await grant(priced, "a1", 50)
    amount_hold = await reserve(priced, "a1", 5)
    feature_hold = await priced.CheckAndReserve(feature_request("a1", "video", 2))
    before = await row_counts(db)

    error = await expect_error(priced.CheckAndReserve(feature_request("new", "audio")))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_FEATURE", feature="audio",
                 knownFeatures="image,llm,video")
    for request, field in [
        (reserve_request("a1", 5, feature="image"), "amount"),
        (reserve_request("a1", 5, units=3), "units"),
        (feature_request("a1", "llm", -1), "units"),
        (feature_request("a1", "llm", 10**15 + 1), "units"),
        (feature_request("a1", "no such!"), "feature"),
    ]:
        error = await expect_error(priced.CheckAndReserve(request))
        assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
        assert field in error.message, (field, error.message)
    error = await expect_error(priced.CheckAndReserve(feature_request("a1", "video", 10**15)))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "COST_TOO_LARGE", feature="video")

    error = await expect_error(commit(priced, amount_hold.reservation.reservation_id, units=3))
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_NOT_PRICED")
    error = await expect_error(priced.Commit(commit_request(
        feature_hold.reservation.reservation_id, 2, units=3)))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    error = await expect_error(commit(priced, feature_hold.reservation.reservation_id,
                                      units=10**15))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "COST_TOO_LARGE", feature="video")
    assert await row_counts(db) == before
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE account_id = 'new'") == 0
    statuses = await db.fetch("SELECT status FROM reservations")
    assert {row["status"] for row in statuses} == {"ACTIVE"}


async def test_a_batch_mixes_amounts_and_features_and_a_bad_feature_fails_alone(priced, db):
    await priced.EnsureAccount(pb.EnsureAccountRequest(account_id="p1", plan="pro"))
    await grant(priced, "p1", 100)
    answer = await priced.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(items=[
        reserve_request("p1", 4), feature_request("p1", "image"),
        feature_request("p1", "audio"), feature_request("p1", "video", 7)]))
    results = answer.results
    assert results[0].response.reservation.amount == 4
    assert not results[0].response.reservation.HasField("price")
    assert (results[1].response.reservation.amount,
            results[1].response.reservation.price.plan) == (3, "pro")
    assert results[2].error.reason == "UNKNOWN_FEATURE"
    assert results[3].response.reservation.amount == 14  # 10 a render + 2 seconds a credit
    assert results[3].response.balance.reserved == 21
    await assert_invariants(db)


async def test_a_reload_racing_a_thousand_reserves_prices_each_by_one_card_and_commit_uses_it(
        test_settings, db, tmp_path):
    """Every hold is priced by exactly one card, all of it: its amount, its stored price and its
    answer agree; and Commit with units pays that card's price, whichever is in force."""
    card = tmp_path / "rates.toml"
    card.write_text(CARD_V1)
    costs = {"v1": (10, 5), "v2": (20, 10)}  # 100 units held, then 50 used
    async with app_with_card(test_settings, card) as (_, stub):
        accounts = [f"r{i}" for i in range(20)]
        for account in accounts:
            await grant(stub, account, 5000)
        card.write_text(CARD_V2)

        in_flight = asyncio.Semaphore(200)  # below the server's max_concurrent_rpcs (512)

        async def hold(i: int) -> pb.CheckAndReserveResponse:
            async with in_flight:
                return await stub.CheckAndReserve(feature_request(accounts[i % 20], "llm", 100))

        async def commit_units(reservation_id: str) -> Any:
            async with in_flight:
                return await commit(stub, reservation_id, units=50)

        holds = asyncio.gather(*(hold(i) for i in range(1000)))
        await asyncio.sleep(0.2)
        await stub.ReloadRateCard(pb.ReloadRateCardRequest())
        placed = await holds
        versions = [h.reservation.price.rate_card_version for h in placed]
        assert set(versions) <= {"v1", "v2"} and "v2" in versions
        for h in placed:
            assert h.reservation.amount == costs[h.reservation.price.rate_card_version][0]
        stored = {row["reservation_id"]: (row["version"], row["amount"]) for row in await db.fetch(
            "SELECT reservation_id::text, price->>'version' AS version, amount FROM reservations")}
        assert stored == {h.reservation.reservation_id: (h.reservation.price.rate_card_version,
                                                         h.reservation.amount) for h in placed}
        card.write_text(CARD_V1)  # a third card in force while they commit
        await stub.ReloadRateCard(pb.ReloadRateCardRequest())
        done = await asyncio.gather(*(commit_units(h.reservation.reservation_id)
                                      for h in placed))
        for h, d in zip(placed, done, strict=True):
            version = h.reservation.price.rate_card_version
            assert (d.reservation.committed_amount, d.entry.rate_card_version) == (
                costs[version][1], version)
        print(f"v1 {versions.count('v1')}, v2 {versions.count('v2')}")
        await assert_invariants(db)


async def test_an_account_created_on_another_plan_while_a_hold_waits_is_priced_at_it(
        test_settings, db_pool):
    """The hold finds no account and would open one on the default plan; another transaction
    creates it on pro first: the hold is priced at pro's price, not the default one."""
    settings = test_settings.replace(plans_file=str(EXAMPLE_PLANS), auto_create_accounts=True,
                                     rate_card_file=str(EXAMPLE_CARD), shutdown_grace_s=1)
    async with serving(settings) as priced, db_pool.acquire() as connection:
        creating = connection.transaction()
        await creating.start()
        await connection.execute(
            "INSERT INTO accounts (account_id, plan) VALUES ('raced', 'pro')")
        hold = asyncio.ensure_future(priced.CheckAndReserve(feature_request("raced", "image")))
        await asyncio.sleep(0.5)  # the hold waits on the account row being inserted
        assert not hold.done()
        await creating.commit()
        error = await expect_error(hold)
    # Nothing to hold it with; what it asked for is pro's price of an image, 3 (default: 5)
    assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS",
                 requested="3")
