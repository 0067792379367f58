"""Balance alerts (docs/events.md): when an account's own available credits (balance less
what holds take) fall below its low-balance threshold, reach zero, or rise back, an event
says so, once per crossing.

An account's threshold is its plan's rule unless one was set for the account (SetBalanceAlert):
a number of credits, or a percentage of the account's last top-up (the amount of its last
GRANT). Migration 0018's triggers keep the state, in the account's row, and write the events.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from credits_service.domain.model import AMOUNT_MAX

LOW_BALANCE_PERCENT_MAX = 100


class BalanceLevel(enum.Enum):
    """Where an account's own available credits stand against its threshold."""

    DEPLETED = "DEPLETED"  # zero or below
    LOW = "LOW"  # above zero, below the threshold
    OK = "OK"  # at or above the threshold


@dataclass(frozen=True, slots=True)
class LowBalanceRule:
    """`credits`, or `percent` of the last top-up: exactly one is set."""

    credits: int | None = None
    percent: int | None = None

    def __post_init__(self) -> None:
        assert (self.credits is None) != (self.percent is None), "credits or percent"
        assert self.credits is None or 1 <= self.credits <= AMOUNT_MAX
        assert self.percent is None or 1 <= self.percent <= LOW_BALANCE_PERCENT_MAX

    def threshold(self, last_top_up: int) -> int:
        """The threshold in credits, given the amount of the last top-up."""
        if self.credits is not None:
            return self.credits
        assert self.percent is not None
        return last_top_up * self.percent // 100


@dataclass(frozen=True, slots=True)
class SetBalanceAlertCommand:
    """Give an account its own low-balance rule (`rule`; None: no alerts), or, with
    `use_plan`, its plan's again."""

    account_id: str
    rule: LowBalanceRule | None
    use_plan: bool = False


@dataclass(frozen=True, slots=True)
class BalanceAlert:
    """An account's low-balance rule, its threshold in credits now, and where its own
    available credits stand (None: never yet at OK, or unlimited)."""

    account_id: str
    rule: LowBalanceRule | None
    custom: bool
    threshold: int
    last_top_up: int
    level: BalanceLevel | None
