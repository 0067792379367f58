"""Admission of calls while the server drains.

grpc's own shutdown cancels calls that reached the server but were not yet started, so their
callers see CANCELLED. We refuse first instead: once draining, every new call is answered
UNAVAILABLE (SERVER_SHUTTING_DOWN) without touching the ledger, the calls already running
finish, and only then is the transport shut down.
"""

from __future__ import annotations

import asyncio
import time

from credits_service.domain.errors import ShuttingDown


class CallGate:
    """Counts the calls in progress and refuses new ones once closed."""

    def __init__(self) -> None:
        self._open = True
        self._last_refusal = float("-inf")  # time.monotonic() of the last refused call
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = asyncio.Event()

    @property
    def active(self) -> int:
        return self._active

    def enter(self) -> None:
        """Admit a call (pair with leave()), or raise ShuttingDown."""
        if not self._open:
            self._last_refusal = time.monotonic()
            raise ShuttingDown()
        self._active += 1
        self._idle.clear()

    def leave(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    def close(self) -> None:
        self._open = False
        self._closed.set()

    async def wait_closed(self) -> None:
        """Return once the gate is closed: streams end then, not at the grace's end."""
        await self._closed.wait()

    async def wait_quiet(self, quiet_s: float, timeout_s: float) -> None:
        """Wait, at most `timeout_s`, until no call has been refused for `quiet_s`: calls that
        reached the transport before the close have been answered, not left for grpc to
        cancel."""
        deadline = time.monotonic() + timeout_s
        while (now := time.monotonic()) < deadline:
            quiet_at = self._last_refusal + quiet_s
            if now >= quiet_at:
                return
            await asyncio.sleep(min(quiet_at, deadline) - now)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait, at most `timeout_s`, until no admitted call is in progress."""
        try:
            await asyncio.wait_for(self._idle.wait(), max(timeout_s, 0.0))
        except TimeoutError:
            return False
        return True
