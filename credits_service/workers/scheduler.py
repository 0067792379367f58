"""The scheduler: grants subscriptions' allocations as their periods begin (docs/
subscriptions.md).

Every replica runs one; they share the work without coordinating: each transaction locks the
due subscriptions no other holds (SKIP LOCKED), and a period is granted once, whoever grants
it (service/subscriptions.py). Periods fall due by the database clock, so replicas with
skewed clocks agree, and one that was down catches up by the catch-up rule when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from credits_service.domain.errors import DatabaseUnavailable
from credits_service.service.subscriptions import Subscriptions

_log = logging.getLogger(__name__)
_BACKLOG_ROUNDS_MAX = 100  # batches run back to back while full ones keep coming


class Scheduler:
    def __init__(
        self, subscriptions: Subscriptions, *, interval_s: float, batch_size: int
    ) -> None:
        self._subscriptions = subscriptions
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="credits-scheduler")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def grant_once(self) -> int:
        """Grant what has fallen due, batch after batch while full ones come (bounded);
        returns how many subscriptions were settled."""
        total = 0
        for _ in range(_BACKLOG_ROUNDS_MAX):
            settled = await self._subscriptions.grant_due(self._batch_size)
            total += settled
            if settled < self._batch_size:
                break
        return total

    async def _run(self) -> None:
        while not self._stopping.is_set():
            started_s = time.monotonic()
            try:
                settled = await self.grant_once()
                if settled:
                    _log.info("granted the allocations due to %d subscriptions", settled)
            except DatabaseUnavailable as exc:
                _log.warning("granting allocations failed, will retry: %s", exc)
            except Exception:
                _log.exception("granting allocations failed unexpectedly, will retry")
            pause_s = max(0.0, self._interval_s - (time.monotonic() - started_s))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause_s)
