"""Quote and GetRateCard against the real server and database, on the example plans and rate
card: prices by plan, affordability from the real balance, nothing written, and every bad
request refused with its reason."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from credits_service.app import Application, StartupError
from tests.grpc_errors import assert_error, expect_error
from tests.ledger_checks import row_counts
from tests.support.calls import reserve
from tests.support.serving import EXAMPLE_PLANS, serving

EXAMPLE_CARD = Path(__file__).resolve().parents[2] / "docs" / "rates.example.toml"


@pytest.fixture
async def priced(test_settings) -> AsyncIterator[credits_pb2_grpc.CreditsServiceStub]:
    settings = test_settings.replace(plans_file=str(EXAMPLE_PLANS),
                                     rate_card_file=str(EXAMPLE_CARD), shutdown_grace_s=1)
    async with serving(settings) as stub:
        yield stub


async def test_a_quote_prices_at_the_account_s_plan_and_writes_nothing(priced, db):
    await priced.EnsureAccount(pb.EnsureAccountRequest(account_id="f1", plan="free"))
    await priced.EnsureAccount(pb.EnsureAccountRequest(account_id="p1", plan="pro"))
    before = await row_counts(db)
    free = await priced.Quote(pb.QuoteRequest(account_id="f1", feature="llm", units=1850))
    assert (free.cost, free.plan, free.rate_card_version, free.affordable) == (
        2, "free", "2026-12-01", True)
    assert free.balance.available == 5
    pro = await priced.Quote(pb.QuoteRequest(account_id="p1", feature="image"))
    assert (pro.cost, pro.plan) == (3, "pro")
    assert await row_counts(db) == before

    await reserve(priced, "f1", 4)
    short = await priced.Quote(pb.QuoteRequest(account_id="f1", feature="image"))
    assert (short.cost, short.affordable, short.balance.available) == (5, False, 1)


async def test_bad_quotes_are_refused_with_their_reason_and_write_nothing(priced, db):
    await priced.EnsureAccount(pb.EnsureAccountRequest(account_id="f1", plan="free"))
    before = await row_counts(db)
    error = await expect_error(priced.Quote(pb.QuoteRequest(account_id="f1", feature="audio")))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_FEATURE", feature="audio",
                 knownFeatures="image,llm,video")
    error = await expect_error(priced.Quote(pb.QuoteRequest(account_id="f1", feature="video",
                                                            units=10**15)))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "COST_TOO_LARGE", feature="video",
                 cost=str(10 + 10**15 // 2))
    error = await expect_error(priced.Quote(pb.QuoteRequest(account_id="nobody",
                                                            feature="image")))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    error = await expect_error(priced.Quote(pb.QuoteRequest(account_id="", feature="",
                                                            units=-1)))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(field for field, _ in error.field_violations) == [
        "account_id", "feature", "units"]
    assert await row_counts(db) == before  # no account created by a quote


async def test_the_rate_card_in_full_for_a_plan_and_for_an_account(priced, db):
    full = await priced.GetRateCard(pb.GetRateCardRequest())
    assert full.version == "2026-12-01" and full.plan == ""
    by_name = {f.feature: f for f in full.features}
    assert list(by_name) == ["image", "llm", "video"]
    assert by_name["image"].price.cost_per_call == 5
    assert by_name["image"].plan_prices["pro"].cost_per_call == 3
    assert (by_name["llm"].unit, by_name["llm"].price.units_per_credit,
            by_name["llm"].price.rounding) == ("token", 1000, pb.ROUNDING_UP)
    pro = await priced.GetRateCard(pb.GetRateCardRequest(plan="pro"))
    assert [f.price.cost_per_call for f in pro.features] == [3, 0, 10]
    assert not pro.features[0].plan_prices
    await priced.EnsureAccount(pb.EnsureAccountRequest(account_id="p1", plan="pro"))
    mine = await priced.GetRateCard(pb.GetRateCardRequest(account_id="p1"))
    assert mine == pro
    error = await expect_error(priced.GetRateCard(pb.GetRateCardRequest(plan="gold")))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "PLAN_NOT_FOUND", plan="gold")
    error = await expect_error(priced.GetRateCard(pb.GetRateCardRequest(account_id="nobody")))
    assert error.reason == "ACCOUNT_NOT_FOUND"
    error = await expect_error(priced.GetRateCard(pb.GetRateCardRequest(plan="pro",
                                                                        account_id="p1")))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_bad_card_stops_start_up_naming_every_problem(test_settings, tmp_path):
    card = tmp_path / "rates.toml"
    card.write_text('version = "v"\n[features.free]\ncost_per_call = 0\n'
                    '[plans.gold.features.free]\ncost_per_call = 1\n')
    with pytest.raises(StartupError) as stopped:
        await Application.start(test_settings.replace(rate_card_file=str(card)))
    message = str(stopped.value)
    assert "features.free: a call would cost nothing" in message
    assert "plans.gold: no plan is called 'gold'" in message


CARD_V1 = 'version = "v1"\n[features.image]\ncost_per_call = 5\n'
CARD_V2 = ('version = "v2"\n[features.image]\ncost_per_call = 7\n'
           '[features.audio]\ncost_per_call = 1\n')


@asynccontextmanager
async def app_with_card(settings, card: Path) -> AsyncIterator[tuple[Application, Any]]:
    app = await Application.start(settings.replace(rate_card_file=str(card),
                                                   shutdown_grace_s=1))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield app, credits_pb2_grpc.CreditsServiceStub(channel)
    finally:
        await app.stop()


def _reloads(app: Application, outcome: str) -> float:
    return app.metrics.registry.get_sample_value(
        "credits_rate_card_reloads_total", {"outcome": outcome}) or 0.0


async def test_a_reload_puts_a_good_card_in_force_and_refuses_a_bad_one(
        test_settings, db, tmp_path):
    card = tmp_path / "rates.toml"
    card.write_text(CARD_V1)
    async with app_with_card(test_settings, card) as (app, stub):
        assert app.metrics.registry.get_sample_value(
            "credits_rate_card_info", {"version": "v1"}) == 1.0  # from start-up on
        await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="a1"))
        assert (await stub.Quote(pb.QuoteRequest(account_id="a1", feature="image"))).cost == 5
        card.write_text(CARD_V2)
        reloaded = await stub.ReloadRateCard(pb.ReloadRateCardRequest())
        assert (reloaded.version, reloaded.previous_version, reloaded.feature_count,
                reloaded.file) == ("v2", "v1", 2, str(card))
        quote = await stub.Quote(pb.QuoteRequest(account_id="a1", feature="image"))
        assert (quote.cost, quote.rate_card_version) == (7, "v2")

        card.write_text('version = "v3"\n[features.image]\ncost_per_call = 0\n'
                        '[features.x]\nunits_per_credit = -1\n')
        error = await expect_error(stub.ReloadRateCard(pb.ReloadRateCardRequest()))
        assert_error(error, grpc.StatusCode.FAILED_PRECONDITION, "RATE_CARD_REFUSED",
                     file=str(card))
        assert "features.image: a call would cost nothing" in error.metadata["problems"]
        assert "features.x.units_per_credit: -1 must be" in error.metadata["problems"]
        card.write_text("not = [toml")
        error = await expect_error(stub.ReloadRateCard(pb.ReloadRateCardRequest()))
        assert "not TOML" in error.metadata["problems"]
        card.write_bytes(b'version = "caf\xe9"\n')  # Latin-1, not UTF-8
        error = await expect_error(stub.ReloadRateCard(pb.ReloadRateCardRequest()))
        assert "not TOML (UTF-8)" in error.metadata["problems"]
        quote = await stub.Quote(pb.QuoteRequest(account_id="a1", feature="image"))
        assert quote.rate_card_version == "v2"  # the card in force stayed
        assert (_reloads(app, "loaded"), _reloads(app, "refused")) == (1.0, 3.0)
        assert app.metrics.registry.get_sample_value(
            "credits_rate_card_info", {"version": "v2"}) == 1.0


async def test_a_reload_racing_quotes_prices_each_by_exactly_one_card(
        test_settings, db, tmp_path):
    card = tmp_path / "rates.toml"
    card.write_text(CARD_V1)
    async with app_with_card(test_settings, card) as (_, stub):
        await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="a1"))
        card.write_text(CARD_V2)

        async def quote() -> tuple[str, int]:
            answer = await stub.Quote(pb.QuoteRequest(account_id="a1", feature="image"))
            return answer.rate_card_version, answer.cost

        quotes = asyncio.gather(*(quote() for _ in range(300)))
        await stub.ReloadRateCard(pb.ReloadRateCardRequest())
        assert set(await quotes) <= {("v1", 5), ("v2", 7)}
        assert await quote() == ("v2", 7)
