"""Secrets every replica shares, kept in the database (table service_keys, migration 0004)."""

from __future__ import annotations

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from credits_service.persistence.errors import translate

PAGE_TOKENS = "page_tokens"


class DatabaseNotMigrated(RuntimeError):
    """The database lacks a table or row the service needs: its migrations were not run."""


async def page_token_key(engine: AsyncEngine) -> bytes:
    """The key that signs page tokens (service/page_tokens.py)."""
    try:
        async with engine.connect() as connection:
            driver = (await connection.get_raw_connection()).driver_connection
            key = await driver.fetchval(  # type: ignore[union-attr]
                "SELECT key FROM service_keys WHERE name = $1", PAGE_TOKENS)
    except asyncpg.UndefinedTableError:
        key = None
    except Exception as exc:
        storage_error = translate(exc)
        if storage_error is None:
            raise
        raise storage_error from exc
    if key is None:
        raise DatabaseNotMigrated(
            "the database is not at the latest migration (no page token key): run "
            "`credits-service migrate`, or start serve without --no-migrate-on-start")
    return bytes(key)
