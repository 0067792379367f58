"""Driver failures become the storage errors the service answers with (never INTERNAL)."""

from __future__ import annotations

import asyncpg
import pytest

from credits_service.persistence.errors import (
    StatementTimedOut,
    StorageTimeout,
    StorageUnavailable,
    TransientConflict,
    translate,
)


def _postgres_error(sqlstate: str) -> asyncpg.PostgresError:
    return asyncpg.PostgresError.new({"C": sqlstate, "M": "test", "S": "ERROR"})


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_postgres_error("40001"), TransientConflict),
        (_postgres_error("40P01"), TransientConflict),
        (_postgres_error("57014"), StatementTimedOut),
        (_postgres_error("55P03"), StatementTimedOut),
        (_postgres_error("57P01"), StorageUnavailable),
        (_postgres_error("08006"), StorageUnavailable),
        (TimeoutError(), StorageTimeout),
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed"), StorageUnavailable),
        # A connection the driver finds mid-operation (a failed statement's error not yet
        # consumed) is unusable, not a bug of the caller's: UNAVAILABLE, retriable.
        (asyncpg.exceptions._base.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"),
         StorageUnavailable),
    ],
)
def test_driver_failures_become_storage_errors(exc: BaseException, expected: type) -> None:
    assert isinstance(translate(exc), expected)


def test_a_bug_is_not_a_storage_error() -> None:
    assert translate(ValueError("bug")) is None
    assert translate(_postgres_error("23505")) is None  # unique violation: ours to handle
