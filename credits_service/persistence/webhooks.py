"""Webhook endpoints' positions and leases, and their dead letters (migration 0019)."""

from __future__ import annotations

from typing import Any

from credits_service.domain.events import Position
from credits_service.domain.webhooks import DeadLetter

_START = """
    INSERT INTO webhook_endpoints (name, xid, event_id) VALUES ($1, $2, $3)
    ON CONFLICT (name) DO NOTHING"""
# The lease is $2's if it holds it or nobody does; $3 seconds long
_CLAIM = """
    UPDATE webhook_endpoints
       SET lease_owner = $2, lease_until = credits_now() + make_interval(secs => $3)
     WHERE name = $1 AND (lease_owner = $2 OR lease_until < credits_now())
    RETURNING xid, event_id"""
_ADVANCE = """
    UPDATE webhook_endpoints
       SET xid = $3, event_id = $4, lease_until = credits_now() + make_interval(secs => $5),
           update_time = credits_now()
     WHERE name = $1 AND lease_owner = $2 AND lease_until >= credits_now()
    RETURNING 1"""
_BURY = """
    INSERT INTO webhook_dead_letters
           (endpoint, event_id, event_type, account_id, body, attempts, last_error)
    VALUES ($1, $2, $3, $4, $5, $6, $7)"""
_COLUMNS = """dead_letter_id, endpoint, event_id, event_type, account_id, body, attempts,
              last_error, status, create_time, update_time"""
_LIST = f"""
    SELECT {_COLUMNS} FROM webhook_dead_letters
     WHERE ($1::text IS NULL OR endpoint = $1) AND dead_letter_id > $2
       AND ($3 OR status = 'DEAD')
     ORDER BY dead_letter_id LIMIT $4"""
_ONE = f"SELECT {_COLUMNS} FROM webhook_dead_letters WHERE dead_letter_id = $1"
_DELIVERED = f"""
    UPDATE webhook_dead_letters
       SET status = 'REDELIVERED', attempts = attempts + 1, update_time = credits_now()
     WHERE dead_letter_id = $1 AND status = 'DEAD'
    RETURNING {_COLUMNS}"""
_FAILED = f"""
    UPDATE webhook_dead_letters
       SET attempts = attempts + 1, last_error = $2, update_time = credits_now()
     WHERE dead_letter_id = $1 AND status = 'DEAD'
    RETURNING {_COLUMNS}"""


def _dead_letter(row: Any) -> DeadLetter:
    return DeadLetter(
        row["dead_letter_id"], row["endpoint"], row["event_id"], row["event_type"],
        row["account_id"], bytes(row["body"]), row["attempts"], row["last_error"],
        row["status"], row["create_time"], row["update_time"])


class WebhookRepository:
    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def start(self, name: str, position: Position) -> None:
        """Record the endpoint at `position` unless it is recorded already."""
        await self._connection.execute(_START, name, position.xid, position.event_id)

    async def claim(self, name: str, owner: str, lease_s: float) -> Position | None:
        """Take or renew the endpoint's lease for `owner`: its position, or None while
        another owner holds it."""
        row = await self._connection.fetchrow(_CLAIM, name, owner, lease_s)
        return None if row is None else Position(row["xid"], row["event_id"])

    async def advance(self, name: str, owner: str, position: Position, lease_s: float) -> bool:
        """Move the endpoint to `position`, renewing the lease; False if `owner` lost it."""
        row = await self._connection.fetchrow(
            _ADVANCE, name, owner, position.xid, position.event_id, lease_s)
        return row is not None

    async def bury(self, endpoint: str, event_id: int, event_type: str, account_id: str,
                   body: bytes, attempts: int, last_error: str) -> None:
        await self._connection.execute(
            _BURY, endpoint, event_id, event_type, account_id, body, attempts, last_error)

    async def dead_letters(self, endpoint: str | None, after_id: int, include_redelivered: bool,
                           limit: int) -> list[DeadLetter]:
        rows = await self._connection.fetch(_LIST, endpoint, after_id, include_redelivered,
                                            limit)
        return [_dead_letter(row) for row in rows]

    async def dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        row = await self._connection.fetchrow(_ONE, dead_letter_id)
        return None if row is None else _dead_letter(row)

    async def redelivered(self, dead_letter_id: int, error: str | None) -> DeadLetter | None:
        """Record a redelivery: delivered (`error` None) or failed again; None if the dead
        letter was redelivered meanwhile."""
        row = (await self._connection.fetchrow(_DELIVERED, dead_letter_id) if error is None
               else await self._connection.fetchrow(_FAILED, dead_letter_id, error[:1000]))
        return None if row is None else _dead_letter(row)
