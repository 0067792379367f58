"""Engine construction and translation of database failures into domain storage errors."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from credits_service.domain.errors import (
    StatementTimedOut,
    StorageError,
    StorageTimeout,
    StorageUnavailable,
    TransientConflict,
)
from credits_service.settings import Settings

_CONFLICT_STATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
_TIMEOUT_STATES = {"57014", "55P03"}  # query_canceled (statement_timeout), lock_not_available
# connection_exception class, admin/crash shutdown, cannot_connect_now, too many connections,
# idle-in-transaction timeout (the server closed the session).
_UNAVAILABLE_PREFIXES = ("08", "57P0", "53", "25P03")


def asyncpg_url(url: str) -> str:
    """Turn a postgresql:// URL into the SQLAlchemy asyncpg form."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"database URL must start with postgresql://, got {parts.scheme}://")
    return urlunsplit(("postgresql+asyncpg", *parts[1:]))


def create_engine(settings: Settings, url: str) -> AsyncEngine:
    """The service's one engine: a bounded pool whose sessions carry our timeouts."""
    return create_async_engine(
        asyncpg_url(url),
        pool_size=settings.pool_size,
        max_overflow=0,
        pool_timeout=settings.pool_timeout_s,
        # The unit of work begins and ends each transaction itself on the asyncpg connection
        # (unit_of_work.py); SQLAlchemy adds no BEGIN or reset ROLLBACK round trips of its own.
        isolation_level="AUTOCOMMIT",
        connect_args={
            "timeout": settings.connect_timeout_s,
            # Client-side bound on each statement (COMMIT included): a database that stops
            # answering cannot hold a transaction, or its pool connection, for longer.
            "command_timeout": settings.command_timeout_s,
            "server_settings": {
                "application_name": "credits-service",
                "statement_timeout": str(settings.statement_timeout_ms),
                "lock_timeout": str(settings.lock_timeout_ms),
                "idle_in_transaction_session_timeout": str(
                    settings.idle_in_transaction_timeout_ms
                ),
            },
        },
    )


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE carried by a driver error or anything it wraps, if any."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        state = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(state, str) and len(state) == 5:
            return state
        pending.extend([getattr(current, "orig", None), current.__cause__, current.__context__])
    return None


def translate(exc: BaseException) -> StorageError | None:
    """A storage error for a database failure, or None when `exc` is not one (a bug)."""
    if isinstance(exc, StorageError):
        return exc
    state = sqlstate_of(exc)
    if state in _CONFLICT_STATES:
        return TransientConflict(f"transaction conflict (SQLSTATE {state})")
    if state in _TIMEOUT_STATES:
        return StatementTimedOut(f"database timeout (SQLSTATE {state})")
    if state is not None and state.startswith(_UNAVAILABLE_PREFIXES):
        return StorageUnavailable(f"database unavailable (SQLSTATE {state})")
    if isinstance(exc, sqlalchemy.exc.TimeoutError | asyncio.TimeoutError | TimeoutError):
        return StorageTimeout("timed out waiting for the database")
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return StorageUnavailable("database connection lost")
    if isinstance(exc, OSError | ConnectionError | sqlalchemy.exc.InterfaceError):
        return StorageUnavailable(f"database connection failed: {type(exc).__name__}")
    if _is_asyncpg_connection_error(exc):
        return StorageUnavailable(f"database connection failed: {type(exc).__name__}")
    return None


def _is_asyncpg_connection_error(exc: BaseException) -> bool:
    import asyncpg

    chain = [exc, getattr(exc, "orig", None), exc.__cause__]
    return any(
        isinstance(
            e,
            # InternalClientError: the driver found the connection mid-operation (a failed
            # statement's error not yet consumed); the unit of work then discards it.
            asyncpg.exceptions.InterfaceError | asyncpg.exceptions.ConnectionDoesNotExistError
            | asyncpg.exceptions._base.InternalClientError,
        )
        for e in chain
        if e is not None
    )
