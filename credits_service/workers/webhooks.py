"""The webhooks worker (off unless a webhooks file is set; docs/webhooks.md): a task per
endpoint that follows the events outbox from the endpoint's position and delivers the events
it wants, in order (service/webhooks.py). Every replica runs one; the lease in each
endpoint's row has one of them deliver it at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from credits_service.domain.errors import DatabaseUnavailable
from credits_service.domain.webhooks import Endpoint, wants
from credits_service.service.event_ports import EventSignals
from credits_service.service.webhooks import Webhooks

_log = logging.getLogger(__name__)
_BEHIND_HORIZON_S = 0.01


class WebhookWorker:
    def __init__(self, webhooks: Webhooks, signals: EventSignals, *,
                 poll_interval_s: float) -> None:
        self._webhooks = webhooks
        self._signals = signals
        self._poll_interval_s = poll_interval_s
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for endpoint in self._webhooks.endpoints.values():
            self._tasks.append(asyncio.create_task(
                self._run(endpoint), name=f"credits-webhooks-{endpoint.name}"))

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, endpoint: Endpoint) -> None:
        while not self._stopping.is_set():
            try:
                await self._deliver(endpoint)
            except DatabaseUnavailable as exc:
                _log.warning("webhook endpoint %s: %s; will retry", endpoint.name, exc)
            except Exception:
                _log.exception("webhook endpoint %s failed unexpectedly; will retry",
                               endpoint.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._poll_interval_s)

    async def _deliver(self, endpoint: Endpoint) -> None:
        """Deliver while this replica holds the endpoint's lease."""
        webhooks = self._webhooks
        position = await webhooks.claim(endpoint)
        renewed_s = time.monotonic()
        while position is not None and not self._stopping.is_set():
            page = await webhooks.next_page(endpoint, position)
            handled = position
            for event in page.events:
                if wants(endpoint, event):
                    if not await webhooks.handle(endpoint, event):
                        return  # another replica has it now
                    handled = event.position
                    renewed_s = time.monotonic()
            if (page.events and handled < page.position) or (
                    time.monotonic() - renewed_s >= webhooks.policy.lease_s / 3):
                # Quiet: keep the lease, and the position past others' events
                if not await webhooks.advance(endpoint, page.position):
                    return
                renewed_s = time.monotonic()
            position = page.position
            if page.events:
                continue
            if self._signals.latest_xid > position.xid:
                await asyncio.sleep(_BEHIND_HORIZON_S)  # an older transaction still open
            else:
                await self._signals.wait_beyond(position.xid, self._poll_interval_s)
