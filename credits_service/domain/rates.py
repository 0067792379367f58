"""The rate card: what each metered feature costs, in credits, so that callers name a feature
and its units instead of computing amounts themselves.

A card is configuration: a TOML file named by the `rate_card_file` setting, read and checked
at start-up (docs/rates.md documents the format). Without a file the built-in card has no
features. Each feature costs `cost_per_call` credits per call plus, with `units_per_credit`,
one credit per that many units (1,000 tokens per credit), rounded up unless the card says
otherwise, and at least `minimum_charge`. A plan may pay other prices for a feature
(`[plans.<plan>.features.<feature>]`, merged key by key over the feature's own). Every card
has a version, which a quote names.

This module is pure: it checks a parsed TOML document and prices calls against it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from credits_service.domain import errors
from credits_service.domain.model import AMOUNT_MAX

FEATURE_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
VERSION_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
FEATURES_MAX = 1000
UNITS_MAX = 10**15  # estimated or actual units of one call
UNITS_PER_CREDIT_MAX = 10**12
BUILT_IN_VERSION = "built-in"
_DESCRIPTION_LENGTH_MAX = 256
_UNIT_NAME_PATTERN = re.compile(r"[A-Za-z0-9 ._-]{1,32}")

_TOP_KEYS = {"version", "features", "plans"}
_PRICE_KEYS = {"cost_per_call", "units_per_credit", "rounding", "minimum_charge"}
_FEATURE_KEYS = _PRICE_KEYS | {"description", "unit"}


class Rounding(enum.Enum):
    """How units that are not a whole number of credits are charged."""

    UP = "up"  # 1,001 tokens at 1,000 per credit: 2 credits
    DOWN = "down"  # 1 credit
    NEAREST = "nearest"  # 1 credit; 1,500 tokens: 2 (halves round up)


class RateCardError(ValueError):
    """The rate card is not valid: `problems` names every key that breaks a rule."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Price:
    cost_per_call: int = 0
    units_per_credit: int | None = None  # None: units do not change the cost
    rounding: Rounding = Rounding.UP
    minimum_charge: int = 0

    def cost(self, units: int) -> int:
        """The credits a call with `units` costs."""
        cost = self.cost_per_call
        if self.units_per_credit is not None and units:
            whole, rest = divmod(units, self.units_per_credit)
            if rest and (self.rounding is Rounding.UP or (
                    self.rounding is Rounding.NEAREST and 2 * rest >= self.units_per_credit)):
                whole += 1
            cost += whole
        return max(cost, self.minimum_charge)


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    price: Price
    plan_prices: Mapping[str, Price] = field(default_factory=dict)
    description: str = ""
    unit: str = ""  # what units count ("token", "second"), for people

    def price_for(self, plan: str) -> Price:
        """The price an account on `plan` pays."""
        return self.plan_prices.get(plan, self.price)


@dataclass(frozen=True, slots=True)
class Quote:
    """What a call of a feature costs an account on a plan, by the card of `version`."""

    feature: str
    units: int
    cost: int
    version: str
    plan: str


@dataclass(frozen=True, slots=True)
class HeldPrice:
    """The price a hold of a feature was placed at, by the card of `version` for `plan`: a
    Commit with actual units pays it, whatever card is in force by then. `units` and `cost`
    are the hold's estimate and what it held."""

    feature: str
    units: int
    cost: int
    version: str
    plan: str
    price: Price

    def cost_of(self, units: int) -> int:
        """What `units` cost at this price; CostTooLarge past the largest amount of a call."""
        cost = self.price.cost(units)
        if cost > AMOUNT_MAX:
            raise errors.CostTooLarge(self.feature, units, cost, AMOUNT_MAX)
        return cost

    def stored(self) -> dict[str, Any]:
        """Its stored form (reservations.price, and replayed responses)."""
        return {"feature": self.feature, "units": self.units, "cost": self.cost,
                "version": self.version, "plan": self.plan,
                "cost_per_call": self.price.cost_per_call,
                "units_per_credit": self.price.units_per_credit,
                "rounding": self.price.rounding.value,
                "minimum_charge": self.price.minimum_charge}

    @classmethod
    def restore(cls, stored: Mapping[str, Any]) -> HeldPrice:
        return cls(stored["feature"], stored["units"], stored["cost"], stored["version"],
                   stored["plan"], Price(stored["cost_per_call"], stored["units_per_credit"],
                                         Rounding(stored["rounding"]),
                                         stored["minimum_charge"]))


@dataclass(frozen=True, slots=True)
class RateCard:
    version: str
    features: Mapping[str, Feature]
    source: str = "built-in"

    def feature(self, name: str) -> Feature:
        """The feature called `name`, or UnknownFeature naming the card's."""
        found = self.features.get(name)
        if found is None:
            raise errors.UnknownFeature(name, sorted(self.features))
        return found

    def quote(self, feature: str, units: int, plan: str) -> Quote:
        """The cost of `units` of `feature` on `plan`. Raises UnknownFeature, and
        CostTooLarge when it would pass the largest amount a call may take."""
        cost = self.feature(feature).price_for(plan).cost(units)
        if cost > AMOUNT_MAX:
            raise errors.CostTooLarge(feature, units, cost, AMOUNT_MAX)
        return Quote(feature, units, cost, self.version, plan)

    def hold_price(self, feature: str, units: int, plan: str) -> HeldPrice:
        """The price a hold of `units` of `feature` on `plan` is placed at (as quote())."""
        price = self.feature(feature).price_for(plan)
        cost = price.cost(units)
        if cost > AMOUNT_MAX:
            raise errors.CostTooLarge(feature, units, cost, AMOUNT_MAX)
        return HeldPrice(feature, units, cost, self.version, plan, price)


BUILT_IN = RateCard(BUILT_IN_VERSION, MappingProxyType({}))


def read_rate_card(document: Mapping[str, Any], source: str, plans: Collection[str]) -> RateCard:
    """The card a parsed TOML document describes, its plan overrides checked against `plans`
    (the plans file's names). Raises RateCardError listing every problem."""
    problems: list[str] = []
    _only(document, _TOP_KEYS, "", problems)
    version = document.get("version")
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        problems.append(f"version: {version!r} must name this card: 1-64 characters from "
                        "A-Z a-z 0-9 and '._:-' (a date, say), quoted")
    features_table = document.get("features", {})
    features: dict[str, Feature] = {}
    if not _is_table(features_table, "features", problems):
        features_table = {}
    if len(features_table) > FEATURES_MAX:
        problems.append(f"features: at most {FEATURES_MAX}")
    for name, table in features_table.items():
        where = f"features.{name}"
        if not FEATURE_NAME_PATTERN.fullmatch(name):
            problems.append(f"{where}: a feature name is 1-64 characters from A-Z a-z 0-9 "
                            "and '._-'")
            continue
        if not _is_table(table, where, problems):
            continue
        _only(table, _FEATURE_KEYS, where + ".", problems)
        price = _price(table, Price(), where, problems)
        description = table.get("description", "")
        if not isinstance(description, str) or len(description) > _DESCRIPTION_LENGTH_MAX:
            problems.append(f"{where}.description: text of at most {_DESCRIPTION_LENGTH_MAX} "
                            "characters")
            description = ""
        unit = table.get("unit", "")
        if "unit" in table and (not isinstance(unit, str)
                                or not _UNIT_NAME_PATTERN.fullmatch(unit)):
            problems.append(f"{where}.unit: 1-32 characters from A-Z a-z 0-9, space and '._-'")
            unit = ""
        if price is not None:
            features[name] = Feature(name, price, {}, description, unit)
    plans_table = document.get("plans", {})
    if not _is_table(plans_table, "plans", problems):
        plans_table = {}
    for plan, table in plans_table.items():
        where = f"plans.{plan}"
        if plan not in plans:
            problems.append(f"{where}: no plan is called {plan!r} (the plans file has "
                            f"{', '.join(sorted(plans))})")
            continue
        if not _is_table(table, where, problems):
            continue
        _only(table, {"features"}, where + ".", problems)
        overrides = table.get("features", {})
        if not _is_table(overrides, where + ".features", problems):
            continue
        for name, override in overrides.items():
            here = f"{where}.features.{name}"
            if name not in features_table:
                problems.append(f"{here}: no feature is called {name!r}")
                continue
            if not _is_table(override, here, problems):
                continue
            _only(override, _PRICE_KEYS, here + ".", problems)
            base = features.get(name)
            if base is None:
                continue  # its own problem is listed already
            price = _price(override, base.price, here, problems)
            if price is not None:
                features[name] = Feature(
                    name, base.price, {**base.plan_prices, plan: price}, base.description,
                    base.unit)
    if problems:
        raise RateCardError(problems)
    return RateCard(version, MappingProxyType(features), source)  # type: ignore[arg-type]


def _price(table: Mapping[str, Any], base: Price, where: str, problems: list[str]) -> Price | None:
    """The price `table` sets, key by key over `base`; None (and problems) if it is broken."""
    found = len(problems)
    cost_per_call = _integer(table, "cost_per_call", where, 0, AMOUNT_MAX, base.cost_per_call,
                             problems)
    units_per_credit = _integer(table, "units_per_credit", where, 1, UNITS_PER_CREDIT_MAX,
                                base.units_per_credit, problems)
    minimum_charge = _integer(table, "minimum_charge", where, 0, AMOUNT_MAX,
                              base.minimum_charge, problems)
    rounding = base.rounding
    if "rounding" in table:
        try:
            rounding = Rounding(table["rounding"])
        except ValueError:
            problems.append(f"{where}.rounding: {table['rounding']!r} is not one of "
                            f"{', '.join(r.value for r in Rounding)}")
    if len(problems) > found:
        return None
    if not cost_per_call and not minimum_charge:
        problems.append(f"{where}: a call would cost nothing: set cost_per_call or "
                        "minimum_charge above 0")
        return None
    if cost_per_call == 0 and units_per_credit is None:
        problems.append(f"{where}: set cost_per_call, units_per_credit or both")
        return None
    return Price(cost_per_call, units_per_credit, rounding, minimum_charge)


def _integer(table: Mapping[str, Any], key: str, where: str, low: int, high: int,
             default: Any, problems: list[str]) -> Any:
    if key not in table:
        return default
    value = table[key]
    if type(value) is not int or not low <= value <= high:
        problems.append(f"{where}.{key}: {value!r} must be a whole number from {low:_} to "
                        f"{high:_}")
        return default
    return value


def _is_table(value: Any, where: str, problems: list[str]) -> bool:
    if isinstance(value, dict):
        return True
    problems.append(f"{where}: must be a table")
    return False


def _only(table: Mapping[str, Any], allowed: set[str], prefix: str, problems: list[str]) -> None:
    problems.extend(f"{prefix}{key}: unknown key (allowed: {', '.join(sorted(allowed))})"
                    for key in sorted(set(table) - allowed))
