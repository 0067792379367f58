"""The plans file: what it may say, what each environment gets, and the error that names the
key at fault (the service refuses to start on it)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from credits_service.app import StartupError, load_plans
from credits_service.domain.model import GrantType
from credits_service.domain.plans import BUILT_IN, PlansError, WelcomeGrant, read_plans
from credits_service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "plans.example.toml"


def _read(text: str, environment: str = "production"):
    return read_plans(tomllib.loads(text), environment, "test.toml")


def test_the_example_file_reads_for_every_environment():
    document = tomllib.loads(EXAMPLE.read_text())
    production = read_plans(document, "production", str(EXAMPLE))
    assert production.default_plan == "free"
    assert production.default.welcome == WelcomeGrant(5, GrantType.SIGNUP, 2_592_000, 50)
    assert production.get("team").welcome is None
    assert production.get("dev") is None
    development = read_plans(document, "development", str(EXAMPLE))
    assert development.default_plan == "dev"
    assert development.default.welcome.amount == 1_000_000
    assert development.get("free") == production.get("free")


def test_without_a_file_the_built_in_plan_has_no_welcome_credits():
    assert load_plans(Settings.build().accounts) is BUILT_IN
    assert BUILT_IN.default.name == "default" and BUILT_IN.default.welcome is None
    assert BUILT_IN.get("") is BUILT_IN.default and BUILT_IN.get("other") is None


def test_an_environment_merges_key_by_key_over_a_plan():
    plans = _read("""
        [plans.default]
        welcome_credits = 5
        welcome_priority = 10
        [environments.staging.plans.default]
        welcome_credits = 50
    """, "staging")
    assert plans.default.welcome == WelcomeGrant(50, GrantType.SIGNUP, None, 10)
    assert _read("[plans.default]\nwelcome_credits = 5").default.welcome.amount == 5


@pytest.mark.parametrize(("text", "message"), [
    ("", "plans: define at least one plan"),
    ("[plans.a]\n", "default_plan: name the plan new accounts get"),
    ("default_plan = 'b'\n[plans.a]\n", "default_plan: 'b' is not one of the plans (a)"),
    ("[plans.default]\nwelcom_credits = 5", "plans.default.welcom_credits: unknown key"),
    ("colour = 1\n[plans.default]", "colour: unknown key"),
    ("[plans.default]\nwelcome_credits = -1", "plans.default.welcome_credits: -1 must be a "
                                              "whole number from 0 to 1_000_000_000_000"),
    ("[plans.default]\nwelcome_credits = 1.5", "plans.default.welcome_credits: 1.5 must be"),
    ("[plans.default]\nwelcome_credits = true", "plans.default.welcome_credits: True must be"),
    ("[plans.default]\nwelcome_credits = 1\nwelcome_grant_type = 'GIFT'",
     "plans.default.welcome_grant_type: 'GIFT' is not one of SIGNUP, PURCHASE"),
    ("[plans.default]\nwelcome_credits = 1\nwelcome_expire_after_s = 0",
     "plans.default.welcome_expire_after_s: 0 must be a whole number from 1"),
    ("[plans.default]\nwelcome_credits = 1\nwelcome_priority = 101",
     "plans.default.welcome_priority: 101 must be a whole number from 0 to 100"),
    ("[plans.default]\nwelcome_priority = 1",
     "plans.default: welcome_* settings need welcome_credits above 0"),
    ("[plans.'a b']\ndefault_plan = 'x'", "plans.a b: a plan name is 1-64 characters"),
    ("[plans.default]\nallocation = 5", "plans.default.allocation: must be a table"),
    ("[plans.default.allocation]\ncredits = 5\nperiod = 'fortnight'",
     "plans.default.allocation.period: 'fortnight' is not one of"),
    ("[plans.default]\nunlimited = true\ncredit_limit = 5",
     "plans.default: an unlimited plan has no credit_limit"),
    ("[plans.default]\ncredit_limit = -1", "plans.default.credit_limit: -1 must be a whole number"),
    ("[plans.default]\nunlimited = 1", "plans.default.unlimited: must be true or false"),
    ("[plans.default]\nlow_balance_percent = 0",
     "plans.default.low_balance_percent: 0 must be a whole number from 1 to 100"),
    ("[plans.default]\nlow_balance_credits = 0",
     "plans.default.low_balance_credits: 0 must be a whole number from 1"),
    ("[plans.default]\nlow_balance_credits = 5\nlow_balance_percent = 5",
     "plans.default: low_balance_credits or low_balance_percent, not both"),
    ("[plans.default]\nunlimited = true\nlow_balance_credits = 5",
     "plans.default: an unlimited plan has no low-balance threshold"),
    ("plans = 3", "plans: must be a table"),
    ("[plans.default]\n[environments.development]\nwelcome_credits = 1",
     "environments.development.welcome_credits: unknown key"),
    ("[plans.default]\n[environments.development.plans.default]\nwelcome_credits = 'x'",
     "plans.default.welcome_credits: 'x' must be"),
])
def test_a_broken_file_is_refused_naming_the_key_and_the_rule(text, message):
    environment = "development" if "environments.development" in text else "production"
    with pytest.raises(PlansError) as refused:
        _read(text, environment)
    assert str(refused.value).startswith(message), str(refused.value)


def test_low_balance_rules_are_read_per_plan():
    book = _read("[plans.default]\nlow_balance_percent = 20\n[plans.big]\n"
                 "low_balance_credits = 500\n[plans.none]\n", "production")
    rules = book.low_balance_rules()
    assert set(rules) == {"default", "big"}
    assert (rules["default"].threshold(1000), rules["big"].threshold(1000)) == (200, 500)


def test_the_service_refuses_to_start_on_a_file_it_cannot_use(tmp_path):
    def start_with(text: str | None) -> str:
        path = tmp_path / "plans.toml"
        if text is not None:
            path.write_text(text)
        with pytest.raises(StartupError) as refused:
            load_plans(Settings.build(plans_file=str(path)).accounts)
        assert refused.value.exit_code == 2
        return str(refused.value)

    assert "cannot read --plans-file" in start_with(None)
    assert "is not TOML" in start_with("[plans")
    assert "plans.default.welcome_credits: -5" in start_with(
        "[plans.default]\nwelcome_credits = -5")
    good = tmp_path / "good.toml"
    good.write_text("[plans.default]\nwelcome_credits = 3\n")
    assert load_plans(Settings.build(plans_file=str(good)).accounts).default.welcome.amount == 3
