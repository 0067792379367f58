"""Where the use cases report what they did: the metrics port (telemetry.py implements it),
and a reporter that reports nowhere."""

from __future__ import annotations

from typing import Protocol


class LedgerMetrics(Protocol):
    """What the ledger reports as it works. Reported only for committed work."""

    def granted(self, amount: int) -> None: ...
    def account_created(self, plan: str) -> None: ...
    def reserved(self, reservations: int) -> None: ...
    def committed(self, amount: int) -> None: ...
    def released(self) -> None: ...
    def expired(self, reservations: int) -> None: ...
    def written_off(self, credits: int) -> None: ...
    def replayed(self, method: str) -> None: ...
    def transaction_retried(self) -> None: ...
    def grouped(self, kind: str, size: int) -> None: ...
    def rate_card_reloaded(self, version: str, loaded: bool) -> None: ...
    def rate_card_in_force(self, version: str) -> None: ...


class NoMetrics:
    """Reports nowhere."""

    def granted(self, amount: int) -> None:
        pass

    def account_created(self, plan: str) -> None:
        pass

    def reserved(self, reservations: int) -> None:
        pass

    def committed(self, amount: int) -> None:
        pass

    def released(self) -> None:
        pass

    def expired(self, reservations: int) -> None:
        pass

    def written_off(self, credits: int) -> None:
        pass

    def replayed(self, method: str) -> None:
        pass

    def transaction_retried(self) -> None:
        pass

    def grouped(self, kind: str, size: int) -> None:
        pass

    def rate_card_reloaded(self, version: str, loaded: bool) -> None:
        pass

    def rate_card_in_force(self, version: str) -> None:
        pass
