"""Plans: what an account gets when it is created (its welcome grant) and the terms it runs on.

Plans are configuration, not data: a TOML file named by the `plans_file` setting, read and
checked once at start-up (docs/accounts.md documents the format). Without a file the built-in
book has one plan, `default`, with no welcome credits. An `[environments.<name>]` table
overrides the top level for the environment the `environment` setting names, so development
and production defaults live in the same file.

This module is pure: it checks a parsed TOML document and answers questions about it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from credits_service.domain.alerts import LOW_BALANCE_PERCENT_MAX, LowBalanceRule
from credits_service.domain.model import (
    AMOUNT_MAX,
    CREDIT_LIMIT_UNLIMITED,
    PRIORITY_DEFAULT,
    PRIORITY_MAX,
    GrantType,
)
from credits_service.domain.subscriptions import (
    PERIOD_DAYS_MAX,
    Allocation,
    Period,
    PeriodKind,
    Rollover,
    RolloverKind,
)

PLAN_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
PLANS_MAX = 1000
WELCOME_EXPIRE_AFTER_S_MAX = 10 * 365 * 86_400
BUILT_IN_PLAN = "default"

_TOP_KEYS = {"default_plan", "plans", "environments"}
_PLAN_KEYS = {
    "welcome_credits", "welcome_grant_type", "welcome_expire_after_s", "welcome_priority",
    "unlimited", "credit_limit", "allocation", "description", "low_balance_credits",
    "low_balance_percent",
}
_DESCRIPTION_LENGTH_MAX = 256
_ALLOCATION_KEYS = {"credits", "period", "period_days", "rollover", "rollover_cap"}


class PlansError(ValueError):
    """The plans file is not a valid book of plans; the message names the key and the rule."""


@dataclass(frozen=True, slots=True)
class WelcomeGrant:
    """The credits an account gets once, when it is created."""

    amount: int
    grant_type: GrantType = GrantType.SIGNUP
    expire_after_s: int | None = None  # None: the credits never expire
    priority: int = PRIORITY_DEFAULT


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    welcome: WelcomeGrant | None = None  # None: no welcome credits
    unlimited: bool = False
    credit_limit: int = 0  # how far below zero an account on it may go
    description: str = ""
    allocation: Allocation | None = None  # what a subscription to it grants each period
    low_balance: LowBalanceRule | None = None  # when its accounts' LOW_BALANCE event fires

    @property
    def account_credit_limit(self) -> int:
        """The credit limit its accounts' rows carry: CREDIT_LIMIT_UNLIMITED when unlimited."""
        return CREDIT_LIMIT_UNLIMITED if self.unlimited else self.credit_limit


@dataclass(frozen=True, slots=True)
class PlanBook:
    """Every plan by name, and the one new accounts get when the caller names none."""

    plans: Mapping[str, Plan]
    default_plan: str
    environment: str = ""
    source: str = "built-in"

    def __post_init__(self) -> None:
        assert self.default_plan in self.plans, "the default plan is one of the plans"

    def low_balance_rules(self) -> dict[str, LowBalanceRule]:
        """The plans' low-balance rules, by plan name (plans without one left out)."""
        return {name: plan.low_balance for name, plan in self.plans.items()
                if plan.low_balance is not None}

    def credit_limits(self) -> dict[str, int]:
        """Each plan's accounts' credit limit, by plan name."""
        return {name: plan.account_credit_limit for name, plan in self.plans.items()}

    def get(self, name: str) -> Plan | None:
        """The plan called `name`, or the default plan when `name` is empty."""
        return self.plans.get(name or self.default_plan)

    @property
    def default(self) -> Plan:
        return self.plans[self.default_plan]


BUILT_IN = PlanBook(MappingProxyType({BUILT_IN_PLAN: Plan(BUILT_IN_PLAN)}), BUILT_IN_PLAN)


def read_plans(document: Mapping[str, Any], environment: str, source: str) -> PlanBook:
    """The book of plans a parsed TOML document describes for `environment` (its
    `[environments.<environment>]` table merged over the top level). Raises PlansError naming
    the first key that breaks a rule."""
    _only(document, _TOP_KEYS, "")
    environments = document.get("environments", {})
    _table(environments, "environments")
    chosen = environments.get(environment, {})
    _table(chosen, f"environments.{environment}")
    _only(chosen, _TOP_KEYS - {"environments"}, f"environments.{environment}.")
    for name, overrides in environments.items():
        _table(overrides, f"environments.{name}")
    merged = _merged(document, chosen)
    plans_table = merged.get("plans", {})
    _table(plans_table, "plans")
    if not plans_table:
        raise PlansError("plans: define at least one plan ([plans.<name>])")
    if len(plans_table) > PLANS_MAX:
        raise PlansError(f"plans: at most {PLANS_MAX} plans")
    plans = {name: _plan(name, table) for name, table in plans_table.items()}
    default_plan = merged.get("default_plan", BUILT_IN_PLAN if BUILT_IN_PLAN in plans else None)
    if default_plan is None:
        raise PlansError("default_plan: name the plan new accounts get (no plan is called "
                         f"{BUILT_IN_PLAN!r})")
    if not isinstance(default_plan, str) or default_plan not in plans:
        raise PlansError(f"default_plan: {default_plan!r} is not one of the plans "
                         f"({', '.join(sorted(plans))})")
    return PlanBook(MappingProxyType(plans), default_plan, environment, source)


def _merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` without its environments, with `overrides` merged in: a plan the environment
    names is merged key by key over the top level's plan of that name."""
    merged = {key: value for key, value in base.items() if key != "environments"}
    if "default_plan" in overrides:
        merged["default_plan"] = overrides["default_plan"]
    plans = base.get("plans", {})
    _table(plans, "plans")
    plans = dict(plans)
    extra = overrides.get("plans", {})
    _table(extra, "plans")
    for name, table in extra.items():
        _table(table, f"plans.{name}")
        _table(plans.get(name, {}), f"plans.{name}")
        plans[name] = {**plans.get(name, {}), **table}
    merged["plans"] = plans
    return merged


def _plan(name: str, table: Any) -> Plan:
    where = f"plans.{name}"
    _table(table, where)
    if not PLAN_NAME_PATTERN.fullmatch(name):
        raise PlansError(f"{where}: a plan name is 1-64 characters from A-Z a-z 0-9 and '._-'")
    _only(table, _PLAN_KEYS, where + ".")
    amount = _integer(table, "welcome_credits", where, 0, AMOUNT_MAX, 0)
    grant_type_name = table.get("welcome_grant_type", GrantType.SIGNUP.value)
    if grant_type_name not in GrantType.__members__:
        raise PlansError(f"{where}.welcome_grant_type: {grant_type_name!r} is not one of "
                         f"{', '.join(GrantType.__members__)}")
    expire_after_s = _integer(table, "welcome_expire_after_s", where, 1,
                              WELCOME_EXPIRE_AFTER_S_MAX, None)
    priority = _integer(table, "welcome_priority", where, 0, PRIORITY_MAX, PRIORITY_DEFAULT)
    welcome = None
    if amount:
        welcome = WelcomeGrant(amount, GrantType[grant_type_name], expire_after_s, priority)
    elif {"welcome_grant_type", "welcome_expire_after_s", "welcome_priority"} & table.keys():
        raise PlansError(f"{where}: welcome_* settings need welcome_credits above 0")
    unlimited = table.get("unlimited", False)
    if not isinstance(unlimited, bool):
        raise PlansError(f"{where}.unlimited: must be true or false")
    credit_limit = _integer(table, "credit_limit", where, 0, AMOUNT_MAX, 0)
    if unlimited and credit_limit:
        raise PlansError(f"{where}: an unlimited plan has no credit_limit")
    description = table.get("description", "")
    if not isinstance(description, str) or len(description) > _DESCRIPTION_LENGTH_MAX:
        raise PlansError(f"{where}.description: text of at most {_DESCRIPTION_LENGTH_MAX} "
                         "characters")
    allocation = None
    if "allocation" in table:
        allocation = read_allocation(table["allocation"], where + ".allocation")
    return Plan(name, welcome, unlimited, credit_limit, description, allocation,
                _low_balance(table, where, unlimited))


def _low_balance(table: Mapping[str, Any], where: str, unlimited: bool) -> LowBalanceRule | None:
    credits = _integer(table, "low_balance_credits", where, 1, AMOUNT_MAX, None)
    percent = _integer(table, "low_balance_percent", where, 1, LOW_BALANCE_PERCENT_MAX, None)
    if credits is None and percent is None:
        return None
    if credits is not None and percent is not None:
        raise PlansError(f"{where}: low_balance_credits or low_balance_percent, not both")
    if unlimited:
        raise PlansError(f"{where}: an unlimited plan has no low-balance threshold")
    return LowBalanceRule(credits, percent)


def read_allocation(table: Any, where: str) -> Allocation:
    """The per-period allocation a plan's `[plans.<name>.allocation]` table describes, or
    PlansError naming the key: `credits` (1..10^12), `period` ("month", or "days" with
    `period_days` 1..366), `rollover` ("none", the default; "full"; "capped" with
    `rollover_cap` 1..10^12)."""
    _table(table, where)
    _only(table, _ALLOCATION_KEYS, where + ".")
    credits = _integer(table, "credits", where, 1, AMOUNT_MAX, None)
    if credits is None:
        raise PlansError(f"{where}.credits: required, the credits of each period")
    kind = _choice(table, "period", where, PeriodKind, None)
    if kind is None:
        raise PlansError(f"{where}.period: required, \"month\" or \"days\"")
    days = _integer(table, "period_days", where, 1, PERIOD_DAYS_MAX, None)
    if (kind is PeriodKind.DAYS) != (days is not None):
        raise PlansError(f"{where}.period_days: " + (
            "required with period = \"days\"" if days is None
            else "only with period = \"days\""))
    rollover = _choice(table, "rollover", where, RolloverKind, RolloverKind.NONE)
    cap = _integer(table, "rollover_cap", where, 1, AMOUNT_MAX, None)
    if (rollover is RolloverKind.CAPPED) != (cap is not None):
        raise PlansError(f"{where}.rollover_cap: " + (
            "required with rollover = \"capped\"" if cap is None
            else "only with rollover = \"capped\""))
    return Allocation(credits, Period(kind, days or 0), Rollover(rollover, cap or 0))


def _choice(table: Mapping[str, Any], key: str, where: str, kind: type[enum.Enum],
            default: Any) -> Any:
    value = table.get(key)
    if value is None:
        return default
    try:
        return kind(value)
    except ValueError:
        raise PlansError(f"{where}.{key}: {value!r} is not one of "
                         f"{', '.join(repr(k.value) for k in kind)}") from None


def _integer(
    table: Mapping[str, Any], key: str, where: str, low: int, high: int, default: int | None
) -> Any:
    value = table.get(key, default)
    if value is default:
        return value
    if type(value) is not int or not low <= value <= high:
        raise PlansError(f"{where}.{key}: {value!r} must be a whole number from {low:_} to "
                         f"{high:_}")
    return value


def _table(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise PlansError(f"{where}: must be a table")


def _only(table: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise PlansError(f"{prefix}{unknown[0]}: unknown key (allowed: "
                         f"{', '.join(sorted(allowed))})")

