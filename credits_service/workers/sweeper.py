"""The sweeper: expires due reservations and lots, writes the notices of lots about to
expire, purges old idempotency keys and events, and folds the usage shards of hours past."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from credits_service.domain.errors import DatabaseUnavailable
from credits_service.service.alerts import Alerts
from credits_service.service.events import Events
from credits_service.service.maintenance import Maintenance

_log = logging.getLogger(__name__)
_BACKLOG_ROUNDS_MAX = 100  # sweeps run back to back while full batches keep coming
# An hour's usage shards are folded once it ended this long ago: past the longest transaction
# that could still add to it (statement and call deadlines are far shorter)
USAGE_SHARDS_SETTLED_S = 3600.0


class Sweeper:
    """Expires ACTIVE reservations and writes off lots past expire_time within one
    `interval_s`; several sweepers (one per replica) may run at once: each reservation and
    each account is locked by one of them (SKIP LOCKED), and a lot is written off once
    (compare-and-set)."""

    def __init__(
        self,
        maintenance: Maintenance,
        *,
        interval_s: float,
        batch_size: int,
        idempotency_retention_s: float,
        purge_interval_s: float,
        events: Events | None = None,
        events_retention_s: float = 7 * 86_400.0,
        alerts: Alerts | None = None,
        expiring_notice_s: float = 0.0,
    ) -> None:
        self._maintenance = maintenance
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._retention_s = idempotency_retention_s
        self._purge_interval_s = purge_interval_s
        self._events = events
        self._events_retention_s = events_retention_s
        self._alerts = alerts
        self._expiring_notice_s = expiring_notice_s
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_sweep_s = time.monotonic()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="credits-sweeper")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def sweep_once(self) -> int:
        """Expire due reservations, write the notices of lots about to expire, then write off
        due lots, until none are left (bounded); returns how many reservations expired."""
        expired = await self._in_batches(
            self._maintenance.expire_due_reservations, self._batch_size)
        await self.warn_expiring_once()
        accounts = await self._in_batches(self._maintenance.expire_due_lots, self._batch_size)
        if accounts:
            _log.info("wrote off expired lots of %d accounts", accounts)
        self._last_sweep_s = time.monotonic()
        return expired

    def seconds_since_sweep(self) -> float:
        """How long ago the last sweep completed: about `interval_s` when all is well."""
        return time.monotonic() - self._last_sweep_s

    async def purge_once(self) -> int:
        """Delete idempotency keys older than the retention period; returns how many."""

        async def purge(batch_size: int) -> int:
            return await self._maintenance.purge_idempotency_keys(self._retention_s, batch_size)

        return await self._in_batches(purge, self._batch_size)

    async def purge_events_once(self) -> int:
        """Delete events older than their retention, oldest first; returns how many."""
        events = self._events
        if events is None:
            return 0

        async def purge(batch_size: int) -> int:
            return await events.purge(self._events_retention_s, batch_size)

        return await self._in_batches(purge, self._batch_size)

    async def warn_expiring_once(self) -> int:
        """Write the CREDITS_EXPIRING event of each lot that expires within the notice and
        has not had it; returns how many lots were handled."""
        alerts, notice_s = self._alerts, self._expiring_notice_s
        if alerts is None or notice_s <= 0:
            return 0

        async def warn(batch_size: int) -> int:
            return await alerts.warn_expiring(notice_s, batch_size)

        return await self._in_batches(warn, self._batch_size)

    async def compact_once(self) -> int:
        """Fold the usage shards of hours that ended USAGE_SHARDS_SETTLED_S ago or more;
        returns how many rows it folded."""

        async def compact(batch_size: int) -> int:
            return await self._maintenance.compact_usage_shards(
                USAGE_SHARDS_SETTLED_S, batch_size)

        return await self._in_batches(compact, self._batch_size)

    @staticmethod
    async def _in_batches(step: Callable[[int], Awaitable[int]], batch_size: int) -> int:
        total = 0
        for _ in range(_BACKLOG_ROUNDS_MAX):
            done = await step(batch_size)
            total += done
            if done < batch_size:
                break
        return total

    async def _run(self) -> None:
        next_purge = time.monotonic()
        while not self._stopping.is_set():
            started_s = time.monotonic()
            try:
                expired = await self.sweep_once()
                if expired:
                    _log.info("expired %d reservations", expired)
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + self._purge_interval_s
                    purged = await self.purge_once()
                    if purged:
                        _log.info("purged %d idempotency keys", purged)
                    purged = await self.purge_events_once()
                    if purged:
                        _log.info("purged %d events past their retention", purged)
                    await self.compact_once()
            except DatabaseUnavailable as exc:
                _log.warning("sweep failed, will retry: %s", exc)
            except Exception:
                _log.exception("sweep failed unexpectedly, will retry")
            # Start to start: a reservation due just after a sweep began waits one interval, at
            # most.
            pause_s = max(0.0, self._interval_s - (time.monotonic() - started_s))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause_s)
