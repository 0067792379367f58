"""The rate card: prices by feature, units and plan; every problem of a bad card listed."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from credits_service.domain import errors
from credits_service.domain.model import AMOUNT_MAX
from credits_service.domain.rates import Price, RateCardError, Rounding, read_rate_card

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "rates.example.toml"
PLANS = {"free", "pro", "team", "postpaid", "unlimited", "default"}


def card(text: str, plans=PLANS):
    return read_rate_card(tomllib.loads(text), "test", plans)


def test_the_example_card_prices_by_feature_units_and_plan():
    example = read_rate_card(tomllib.loads(EXAMPLE.read_text()), str(EXAMPLE), PLANS)
    assert example.version == "2026-12-01"
    assert example.quote("image", 0, "free").cost == 5
    assert example.quote("image", 0, "pro").cost == 3
    assert example.quote("llm", 1850, "free").cost == 2  # rounded up
    assert example.quote("llm", 1850, "pro").cost == 1
    assert example.quote("llm", 0, "free").cost == 1  # the minimum charge
    assert example.quote("video", 7, "team").cost == 10 + 4
    assert example.quote("llm", 1, "x").version == "2026-12-01"


@pytest.mark.parametrize(("rounding", "units", "cost"), [
    (Rounding.UP, 1000, 1), (Rounding.UP, 1001, 2), (Rounding.DOWN, 1999, 1),
    (Rounding.NEAREST, 1499, 1), (Rounding.NEAREST, 1500, 2), (Rounding.UP, 0, 0),
])
def test_units_round_as_the_price_says(rounding, units, cost):
    assert Price(units_per_credit=1000, rounding=rounding).cost(units) == cost


def test_an_unknown_feature_names_the_known_ones_and_a_huge_cost_is_refused():
    example = card('version = "v"\n[features.a]\ncost_per_call = 1\n'
                   '[features.b]\nunits_per_credit = 1\nminimum_charge = 1')
    with pytest.raises(errors.UnknownFeature) as unknown:
        example.quote("c", 1, "free")
    assert unknown.value.metadata == {"feature": "c", "knownFeatures": "a,b"}
    with pytest.raises(errors.CostTooLarge):
        example.quote("b", AMOUNT_MAX + 1, "free")
    many = errors.UnknownFeature("x", [f"feature-{n:04}" for n in range(1000)])
    assert len(many.metadata["knownFeatures"]) <= 505
    assert many.metadata["knownFeatures"].endswith(",...")


def test_a_bad_card_lists_every_problem_by_key():
    with pytest.raises(RateCardError) as refused:
        card("""
            colour = 1
            [features.free]
            cost_per_call = 0
            [features.neg]
            cost_per_call = -1
            [features."a b"]
            cost_per_call = 1
            [features.round]
            units_per_credit = 10
            minimum_charge = 1
            rounding = "sideways"
            [plans.gold.features.free]
            cost_per_call = 1
            [plans.pro.features.nothing]
            cost_per_call = 1
            [plans.pro.features.neg]
            cost_per_call = 2
        """)
    problems = refused.value.problems
    assert problems[0] == "colour: unknown key (allowed: features, plans, version)"
    assert any(p.startswith("version: None must name this card") for p in problems)
    assert "features.free: a call would cost nothing: set cost_per_call or minimum_charge " \
           "above 0" in problems
    assert any(p.startswith("features.neg.cost_per_call: -1 must be") for p in problems)
    assert any(p.startswith("features.a b: a feature name is") for p in problems)
    assert any(p.startswith("features.round.rounding: 'sideways' is not one of up")
               for p in problems)
    assert any(p.startswith("plans.gold: no plan is called 'gold'") for p in problems)
    assert "plans.pro.features.nothing: no feature is called 'nothing'" in problems
    assert len(problems) == 8


@pytest.mark.parametrize("unit", ["0", "false", "[]", '""'])
def test_a_unit_that_is_no_name_is_refused(unit):
    with pytest.raises(RateCardError) as refused:
        card(f'version = "v"\n[features.a]\ncost_per_call = 1\nunit = {unit}')
    assert refused.value.problems == [
        "features.a.unit: 1-32 characters from A-Z a-z 0-9, space and '._-'"]


def test_a_plan_price_is_merged_over_the_feature_s_own():
    merged = card('version = "v"\n[features.llm]\nunits_per_credit = 1000\n'
                  'minimum_charge = 2\nrounding = "down"\n'
                  '[plans.pro.features.llm]\nunits_per_credit = 500')
    pro = merged.features["llm"].price_for("pro")
    assert pro == Price(0, 500, Rounding.DOWN, 2)
    assert merged.features["llm"].price_for("free") == Price(0, 1000, Rounding.DOWN, 2)
