"""The transaction and retry policy: every use case's work runs through Transactions.run.

One committed transaction per run; serialization failures and deadlocks (TransientConflict)
retry the whole transaction, a bounded number of times with jittered backoff; nothing else
is retried. Storage failures leave here as the domain's Database* errors, the only form in
which callers see them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from credits_service.domain import errors
from credits_service.persistence.errors import (
    StatementTimedOut,
    StorageError,
    StorageTimeout,
    TransientConflict,
)
from credits_service.service.deadline import time_remaining_s
from credits_service.service.ports import UnitOfWork, UnitOfWorkFactory
from credits_service.service.reporting import LedgerMetrics

_log = logging.getLogger(__name__)
T = TypeVar("T")
Work = Callable[[UnitOfWork], Awaitable[Any]]


class Transactions:
    """Runs work in transactions; safe to share between concurrent calls."""

    def __init__(
        self, uow_factory: UnitOfWorkFactory, *, attempts_max: int, metrics: LedgerMetrics
    ) -> None:
        self._uow_factory = uow_factory
        self._attempts_max = attempts_max
        self._metrics = metrics
        self._in_flight: set[asyncio.Task[Any]] = set()

    async def run(self, work: Callable[[UnitOfWork], Awaitable[T | errors.Declined]],
                  *, grouped: bool = False, snapshot: bool = False) -> T:
        """Run `work` in one committed transaction and return its result, raising a decline
        it returns only after committing (a decline may still have written: an expiry, an
        idempotency record). Once begun, the transaction runs to its end even if the caller
        is cancelled, so it never stops half way on the client side: it is bounded instead by
        the database timeouts, lowered to the caller's deadline when that is nearer, and by
        the client-side command timeout. `grouped`: a group commit's transaction; `snapshot`:
        a read-only one whose statements read one snapshot."""
        task = asyncio.ensure_future(self._with_retries(work, grouped, snapshot))
        self._in_flight.add(task)
        task.add_done_callback(self._forget)
        outcome = await asyncio.shield(task)
        if isinstance(outcome, errors.Declined):
            raise outcome
        return outcome  # type: ignore[no-any-return]

    async def read(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """Run `work`, reads only, each statement its own transaction (no BEGIN or COMMIT
        round trip): for a read of one statement, whose snapshot is its own. Not retried (a
        read conflicts with nothing); shielded from the caller's cancellation as `run` is."""
        task = asyncio.ensure_future(self._read_once(work))
        self._in_flight.add(task)
        task.add_done_callback(self._forget)
        return await asyncio.shield(task)

    async def _read_once(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        try:
            async with self._uow_factory(autocommit=True) as uow:
                return await work(uow)
        except StorageError as exc:
            raise for_caller(exc) from exc

    async def drain(self, timeout_s: float) -> None:
        """Wait, at most `timeout_s`, for transactions still running after their callers left."""
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=timeout_s)

    async def _with_retries(self, work: Work, grouped: bool, snapshot: bool = False) -> Any:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientConflict),
            stop=stop_after_attempt(self._attempts_max),
            wait=wait_random_exponential(multiplier=0.005, max=0.1),
            before_sleep=lambda _: self._metrics.transaction_retried(),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with self._uow_factory(
                        grouped=grouped, time_remaining_s=time_remaining_s(),
                        **({"snapshot": True} if snapshot else {}),
                    ) as uow:
                        outcome = await work(uow)
                        await uow.commit()
        except StorageError as exc:
            raise for_caller(exc) from exc
        return outcome

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here so an abandoned call's failure is logged once, not lost.
            _log.debug("transaction failed: %r", task.exception())


def for_caller(exc: StorageError) -> errors.DatabaseUnavailable:
    """The error a caller gets for a storage failure."""
    if isinstance(exc, TransientConflict):
        return errors.ConcurrencyConflict(str(exc))
    if isinstance(exc, StatementTimedOut):
        return errors.DatabaseStatementTimeout(str(exc))
    if isinstance(exc, StorageTimeout):
        return errors.DatabaseTimeout(str(exc))
    return errors.DatabaseUnavailable(str(exc))
