"""Alembic environment: async engine on asyncpg, one transaction, serialised by an advisory lock
so that several replicas starting at once apply each migration exactly once."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from credits_service.persistence.database import asyncpg_url
from credits_service.persistence.schema import metadata

MIGRATION_LOCK_ID = 7_243_010_001


def _database_url() -> str:
    url = context.config.attributes.get("database_url") or os.environ.get("CREDITS_DATABASE_URL")
    if not url:
        raise RuntimeError(
            "no database URL: pass it from credits-service or set CREDITS_DATABASE_URL"
        )
    return url


def _run(connection: Connection) -> None:
    # The declared schema: `alembic revision --autogenerate` drafts a migration from it.
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(asyncpg_url(_database_url()), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported")
asyncio.run(_run_async())
