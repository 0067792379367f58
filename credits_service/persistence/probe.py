"""Health's probe of the database: whether a primary (a server that takes writes) answers.

It keeps a connection of its own, outside the pool: a pool busy with calls is no outage, and
must not turn health NOT_SERVING. A failed or timed-out probe drops the connection; the next
one connects again (to whichever host of a multi-host URL is writable now)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg


class PrimaryProbe:
    def __init__(self, url: str, connect_timeout_s: float) -> None:
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._connection: Any = None

    async def reachable(self, timeout_s: float) -> bool:
        """Whether a primary answers within `timeout_s`. Never raises."""
        try:  # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
            async with asyncio.timeout(timeout_s):
                return await self._ask()
        except Exception:  # refused, unreachable, timed out, a standby's error: not serving
            await self.close()
            return False

    async def _ask(self) -> bool:
        if self._connection is None or self._connection.is_closed():
            self._connection = await asyncpg.connect(
                self._url, timeout=self._connect_timeout_s,
                server_settings={"application_name": "credits-service health"})
        writable: bool = await self._connection.fetchval("SELECT NOT pg_is_in_recovery()")
        return writable

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.terminate()
