"""Storage failures, and the translation of driver errors into them.

These never reach a caller as they are: the service layer retries TransientConflict and turns
the rest into the domain's Database* errors (service/transactions.py).
"""

from __future__ import annotations

import asyncio

import asyncpg
import sqlalchemy.exc


class StorageError(Exception):
    """The database could not give a definite answer; the operation may be retried."""


class StorageUnavailable(StorageError):
    """Connection lost, refused, or the database is shutting down or starting."""


class StorageTimeout(StorageError):
    """A statement, lock or connection wait hit its bound."""


class StatementTimedOut(StorageTimeout):
    """The database itself ended a statement at its statement or lock timeout (it answered;
    nothing is stalled): usually a lock held elsewhere."""


class TransientConflict(StorageError):
    """Serialization failure or deadlock: the whole transaction may be run again."""


_CONFLICT_STATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
_TIMEOUT_STATES = {"57014", "55P03"}  # query_canceled (statement_timeout), lock_not_available
# connection_exception class, admin/crash shutdown, cannot_connect_now, too many connections,
# idle-in-transaction timeout (the server closed the session).
_UNAVAILABLE_PREFIXES = ("08", "57P0", "53", "25P03")
# InternalClientError: the driver found the connection mid-operation (a failed statement's
# error not yet consumed); the unit of work then discards the connection.
_ASYNCPG_CONNECTION_ERRORS = (
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions._base.InternalClientError,
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
    chain = (exc, getattr(exc, "orig", None), exc.__cause__)
    if any(isinstance(e, _ASYNCPG_CONNECTION_ERRORS) for e in chain if e is not None):
        return StorageUnavailable(f"database connection failed: {type(exc).__name__}")
    return None
