"""Shared fixtures: one embedded PostgreSQL and one real gRPC server on a loopback port for the
whole session; every test starts from empty tables and ends with the ledger invariants checked.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import credits_service  # noqa: F401  (first: it turns off grpc's fork handlers, see there)

# isort: split
import asyncpg
import grpc
import pytest
from hypothesis import HealthCheck, settings

from credits.v1 import credits_pb2_grpc
from credits_service.app import Application, migrate
from credits_service.persistence.embedded import EmbeddedPostgres
from credits_service.settings import Settings

# Fixtures shared by test packages: `launcher` runs the real `credits-service` command.
pytest_plugins = ["tests.serve_launcher"]

TEST_DATABASE = "credits_test"
SWEEP_INTERVAL_S = 0.2
CHANNELS = 8


@pytest.fixture(scope="session")
def embedded_postgres() -> Iterator[EmbeddedPostgres]:
    with tempfile.TemporaryDirectory(prefix="credits-test-") as directory:
        server = EmbeddedPostgres.start(Path(directory) / "pgdata")
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
async def database_url(embedded_postgres: EmbeddedPostgres) -> str:
    await embedded_postgres.ensure_database(TEST_DATABASE)
    url = embedded_postgres.url(TEST_DATABASE)
    await migrate(url)
    return url


@pytest.fixture(scope="session")
def test_settings(database_url: str) -> Settings:
    return Settings.build(
        listen="127.0.0.1:0",
        database_url=database_url,
        migrate_on_start=False,
        sweep_interval_s=SWEEP_INTERVAL_S,
        pool_size=10,
        shutdown_grace_s=5,
        metrics_listen="127.0.0.1:0",
        auth_disabled=True,  # on loopback; tests/integration/test_auth.py turns it on
        # Unknown accounts stay unknown; tests/integration/test_accounts.py runs a server
        # that creates them.
        auto_create_accounts=False,
    )


@pytest.fixture(scope="session")
async def app(test_settings: Settings) -> AsyncIterator[Application]:
    application = await Application.start(test_settings)
    try:
        yield application
    finally:
        await application.stop()


@pytest.fixture(scope="session")
async def channels(app: Application) -> AsyncIterator[list[grpc.aio.Channel]]:
    # Separate channels are separate HTTP/2 connections: concurrency tests spread over them.
    opened = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{app.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(CHANNELS)
    ]
    try:
        yield opened
    finally:
        await asyncio.gather(*(channel.close() for channel in opened))


@pytest.fixture(scope="session")
def stubs(channels: list[grpc.aio.Channel]) -> list[credits_pb2_grpc.CreditsServiceStub]:
    return [credits_pb2_grpc.CreditsServiceStub(channel) for channel in channels]


@pytest.fixture
def stub(stubs: list[credits_pb2_grpc.CreditsServiceStub]) -> credits_pb2_grpc.CreditsServiceStub:
    return stubs[0]


@pytest.fixture(scope="session")
async def db_pool(
    embedded_postgres: EmbeddedPostgres, database_url: str
) -> AsyncIterator[asyncpg.Pool]:
    """The tests' own connections, for inspecting what the service wrote."""
    pool = await asyncpg.create_pool(
        host=str(embedded_postgres.socket_dir), user="postgres", database=TEST_DATABASE,
        min_size=1, max_size=4,
    )
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def db(db_pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with db_pool.acquire() as connection:
        yield connection


# Hypothesis: short and deterministic by default; HYPOTHESIS_PROFILE=soak for long runs.
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("soak", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
