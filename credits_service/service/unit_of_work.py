"""What the use cases need from storage: a unit of work with its repositories."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, Self


class UnitOfWork(Protocol):
    accounts: Any
    ledger: Any
    lots: Any
    reservations: Any
    idempotency: Any
    holds: Any  # the group transactions' statements (CheckAndReserve, Commit, Release)

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def commit(self) -> None: ...

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this transaction has committed (never if it does not)."""


class UnitOfWorkFactory(Protocol):
    def __call__(self, *, grouped: bool = False) -> UnitOfWork:
        """A new unit of work; `grouped` for a group commit's transaction, which runs the same
        few statements over and over (storage may keep their plans)."""
