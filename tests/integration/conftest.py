"""Every test here runs against the real server and database: it starts from empty tables and
ends with the ledger invariants checked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from credits.v1 import credits_pb2_grpc
from tests import ledger_checks
from tests.support.serving import EXAMPLE_PLANS, serving


@pytest.fixture(autouse=True)
async def clean_ledger(db_pool: asyncpg.Pool, app: object) -> AsyncIterator[None]:
    async with db_pool.acquire() as connection:
        await ledger_checks.empty_ledger(connection)
    yield
    async with db_pool.acquire() as connection:
        await ledger_checks.assert_invariants(connection)


@pytest.fixture
def clock(app: Any) -> Iterator[Any]:
    """The service clock (database clock + offset); tests move it forward with
    `clock.advance(seconds)`. Set back after the test: the next one starts from empty tables."""
    yield app.clock
    app.clock.offset_ms = 0


@pytest.fixture
async def planned(test_settings: Any) -> AsyncIterator[credits_pb2_grpc.CreditsServiceStub]:
    """A server on the example plans (docs/plans.example.toml) that creates unknown accounts
    on first use."""
    settings = test_settings.replace(plans_file=str(EXAMPLE_PLANS), auto_create_accounts=True,
                                     shutdown_grace_s=1)
    async with serving(settings) as stub:
        yield stub
