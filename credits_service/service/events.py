"""What the ledger reports as it works, for metrics. Reported only for committed work."""

from __future__ import annotations

from typing import Protocol


class LedgerEvents(Protocol):
    def granted(self, amount: int) -> None: ...
    def reserved(self, holds: int) -> None: ...
    def committed(self, amount: int) -> None: ...
    def released(self) -> None: ...
    def expired(self, holds: int) -> None: ...
    def written_off(self, credits: int) -> None: ...
    def replayed(self, method: str) -> None: ...
    def transaction_retried(self) -> None: ...
    def grouped(self, kind: str, size: int) -> None: ...


class NoEvents:
    """Reports nowhere."""

    def granted(self, amount: int) -> None:
        pass

    def reserved(self, holds: int) -> None:
        pass

    def committed(self, amount: int) -> None:
        pass

    def released(self) -> None:
        pass

    def expired(self, holds: int) -> None:
        pass

    def written_off(self, credits: int) -> None:
        pass

    def replayed(self, method: str) -> None:
        pass

    def transaction_retried(self) -> None:
        pass

    def grouped(self, kind: str, size: int) -> None:
        pass
