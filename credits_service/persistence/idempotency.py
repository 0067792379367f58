"""Idempotency records: per (scope, key), the hash of the request and the stored response,
written in the same transaction as the effect."""

from __future__ import annotations

from typing import Any

from credits_service.domain.rows import StoredResponse

# A concurrent holder of the same key is waited for (primary key), so a conflict always sees
# a finished record.
_CLAIM = """
    INSERT INTO idempotency_keys (scope, idempotency_key, method, request_hash)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (scope, idempotency_key) DO NOTHING
    RETURNING 1"""

_GET = """
    SELECT request_hash, response FROM idempotency_keys WHERE scope = $1 AND idempotency_key = $2"""

_COMPLETE = """
    UPDATE idempotency_keys SET response = $3 WHERE scope = $1 AND idempotency_key = $2"""

_PURGE = """
    DELETE FROM idempotency_keys WHERE ctid IN (
        SELECT ctid FROM idempotency_keys
         WHERE create_time < credits_now() - $1 * interval '1 second'
         LIMIT $2)
    RETURNING 1"""


class IdempotencyRepository:
    def __init__(self, connection: Any) -> None:
        self._connection = connection  # asyncpg, in the unit of work's transaction

    async def claim(self, scope: str, key: str, method: str, request_hash: bytes) -> bool:
        """Insert the key for this transaction; False if it exists already."""
        return await self._connection.fetchval(_CLAIM, scope, key, method, request_hash) == 1

    async def get(self, scope: str, key: str) -> StoredResponse | None:
        row = await self._connection.fetchrow(_GET, scope, key)
        return StoredResponse(bytes(row["request_hash"]), row["response"]) if row else None

    async def complete(self, scope: str, key: str, response: str) -> None:
        """Store the response (JSON text) of a claimed key."""
        await self._connection.execute(_COMPLETE, scope, key, response)

    async def purge(self, older_than_s: float, batch_size: int) -> int:
        """Delete up to `batch_size` keys stored more than `older_than_s` ago."""
        return len(await self._connection.fetch(_PURGE, older_than_s, batch_size))
