"""Wake-ups for event streams: one LISTEN connection per server on the channel migration
0017's trigger notifies, once per committed transaction that wrote events, with the
transaction's id as payload (docs/events.md).

While the connection is down (the database restarting, a network fault), streams fall back to
polling at their poll interval; the connection is made again every `retry_s`, and every stream
is woken when it is, in case a notification was missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg

CHANNEL = "credits_events"
_LIVENESS_S = 10.0  # how often the idle connection is checked (a peer gone without a FIN)
# A notified transaction still behind a stream's horizon after this long is not waited for
# any more (a transaction that long is rare, and a bogus payload must not keep streams busy)
_PENDING_S = 5.0

_log = logging.getLogger(__name__)


class ListeningSignals:
    def __init__(self, url: str, *, connect_timeout_s: float, retry_s: float = 1.0) -> None:
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._retry_s = retry_s
        self._latest_xid = 0
        self._latest_at_s = float("-inf")
        self._woken = asyncio.Event()
        self._listening = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def latest_xid(self) -> int:
        """The highest transaction id notified in the last few seconds (0: none)."""
        if time.monotonic() - self._latest_at_s > _PENDING_S:
            return 0
        return self._latest_xid

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    async def wait_listening(self, timeout_s: float) -> bool:
        """Wait, at most `timeout_s`, until the LISTEN connection is up."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), timeout_s)
        return self.listening

    async def wait_beyond(self, xid: int, timeout_s: float) -> None:
        if self.latest_xid > xid:
            return
        woken = self._woken
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), max(timeout_s, 0.0))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="credits-event-signals")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _wake(self) -> None:
        woken, self._woken = self._woken, asyncio.Event()
        woken.set()

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            xid = int(payload)
        except ValueError:
            xid = 0
        self._latest_xid = max(self._latest_xid, xid)
        self._latest_at_s = time.monotonic()
        self._wake()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._listen()
            except (OSError, TimeoutError, asyncpg.PostgresError,
                    asyncpg.InterfaceError) as exc:
                _log.warning("listening for events failed, streams poll until it is back: "
                             "%s: %s", type(exc).__name__, exc)
            except Exception:
                _log.exception("listening for events failed unexpectedly, streams poll until "
                               "it is back")
            finally:
                self._listening.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._retry_s)

    async def _listen(self) -> None:
        connection = await asyncpg.connect(
            self._url, timeout=self._connect_timeout_s,
            server_settings={"application_name": "credits-service-listen"})
        try:
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _: lost.set())
            await connection.add_listener(CHANNEL, self._notified)
            self._listening.set()
            self._wake()  # anything committed while nobody listened is read now
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), _LIVENESS_S)
                if not lost.is_set():
                    await connection.fetchval("SELECT 1", timeout=self._connect_timeout_s)
            raise OSError("the connection was closed")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), self._connect_timeout_s)
