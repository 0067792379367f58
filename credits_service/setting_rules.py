"""How a setting is declared and checked (settings.py declares them): its flag and
environment names, its bounds or choices, and the rule an invalid value breaks."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

ENV_PREFIX = "CREDITS_"


class SettingsError(ValueError):
    """One or more settings are invalid; the message names each, its value and its rule."""


def declared(
    default: Any,
    help: str,
    *,
    name: str | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    choices: Sequence[str] | None = None,
    aliases: Sequence[str] = (),
    empty_is_a_value: bool = False,
) -> Any:
    """A setting: `name` is its flag and environment name when it differs from the field's;
    [low, high] its bounds (low excluded when `low_open`); `aliases` older names still
    accepted."""
    return field(default=default, metadata={
        "help": help, "name": name, "low": low, "high": high, "low_open": low_open,
        "choices": choices, "aliases": tuple(aliases), "empty_is_a_value": empty_is_a_value,
    })


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule one setting breaks: the message names the setting, its value and the rule."""

    setting: str
    value: Any
    rule: str

    def __str__(self) -> str:
        flag = "--" + self.setting.replace("_", "-")
        return (f"setting {self.setting}={self.value!r} ({flag}, {ENV_PREFIX}"
                f"{self.setting.upper()}) {self.rule}")


class Section:
    """A group of settings; subclasses are frozen dataclasses of declared fields."""

    title: ClassVar[str]

    def problems(self) -> list[Rule]:
        """Each field outside its declared bounds, then the section's own cross-field rules."""
        found = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            meta = f.metadata
            low, high, choices = meta["low"], meta["high"], meta["choices"]
            if choices is not None and value not in choices:
                found.append(Rule(external_name(f), value, f"must be one of {', '.join(choices)}"))
            elif low is not None and high is not None and not (
                    (low < value if meta["low_open"] else low <= value) and value <= high):
                bound = (f"above {number_text(low)}" if meta["low_open"]
                         else f"at least {number_text(low)}")
                found.append(Rule(external_name(f), value, f"is out of range: must be {bound} "
                                                           f"and at most {number_text(high)}"))
        return found + self.relations()

    def relations(self) -> list[Rule]:
        return []


def external_name(f: dataclasses.Field[Any]) -> str:
    """The setting's name as flags and the environment spell it."""
    return f.metadata["name"] or f.name


def number_text(value: float) -> str:
    return f"{value:,.0f}".replace(",", "_") if float(value).is_integer() else str(value)


def is_loopback(host: str) -> bool:
    """Whether a listen address's host is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
