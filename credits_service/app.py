"""Composition root: builds the database, the ledger, the sweeper and the gRPC server once,
and shuts them down in order."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from credits_service.persistence.database import create_engine
from credits_service.persistence.embedded import EmbeddedPostgres
from credits_service.persistence.migrations import upgrade_to_head
from credits_service.persistence.unit_of_work import DatabaseClock, SqlUnitOfWork
from credits_service.service.ledger import Ledger, LedgerLimits
from credits_service.service.sweeper import Sweeper
from credits_service.settings import Settings, parse_listen
from credits_service.telemetry import Metrics
from credits_service.transport.admission import CallGate
from credits_service.transport.auth import Gatekeeper, parse_token_lines
from credits_service.transport.server import GrpcServer, start_grpc_server
from credits_service.transport.servicer import CreditsServicer
from credits_service.transport.validation import RequestLimits, Validator

_log = logging.getLogger(__name__)


async def resolve_database(
    settings: Settings, *, borrow_if_in_use: bool = False
) -> tuple[str, EmbeddedPostgres | None]:
    """The database URL to use, starting the embedded PostgreSQL when none is configured.
    If another live process owns the embedded database, borrow it or raise DataDirInUse."""
    if settings.database_url:
        return settings.database_url, None
    data_dir = settings.resolved_data_dir / "pgdata"
    _log.info("no database URL set: starting embedded PostgreSQL, data in %s", data_dir)
    embedded = await asyncio.to_thread(
        functools.partial(EmbeddedPostgres.start, data_dir, borrow_if_in_use=borrow_if_in_use)
    )
    try:
        await embedded.ensure_database()
    except BaseException:
        await asyncio.to_thread(embedded.stop)
        raise
    if embedded.owned:
        _log.info("embedded PostgreSQL is up (socket in %s)", embedded.socket_dir)
    else:
        _log.info("embedded PostgreSQL is owned by a running server: using it as is")
    return embedded.url(), embedded


async def migrate(database_url: str) -> None:
    # Alembic's async env.py runs its own event loop: give it a thread.
    await asyncio.to_thread(upgrade_to_head, database_url)


def build_ledger(
    settings: Settings, engine: AsyncEngine, metrics: Metrics, clock: DatabaseClock
) -> Ledger:
    return Ledger(
        lambda grouped=False: SqlUnitOfWork(
            engine, settings.statement_timeout_ms, metrics.pool_waited, clock, grouped=grouped
        ),
        LedgerLimits(
            hold_ttl_default_ms=int(settings.hold_ttl_default_s * 1000),
            hold_lifetime_max_ms=int(settings.hold_lifetime_max_s * 1000),
            page_size_default=settings.page_size_default,
            page_size_max=settings.page_size_max,
            transaction_attempts_max=settings.transaction_attempts_max,
        ),
        metrics,
    )


def build_servicer(
    settings: Settings, ledger: Ledger, gatekeeper: Gatekeeper, metrics: Metrics
) -> CreditsServicer:
    """The gRPC servicer over `ledger`, with the request limits of the settings."""
    validator = Validator(
        RequestLimits(
            hold_ttl_max_ms=int(settings.hold_ttl_max_s * 1000),
            page_size_max=settings.page_size_max,
            batch_size_max=settings.batch_size_max,
        )
    )
    return CreditsServicer(ledger, validator, gatekeeper, CallGate(), metrics)


def build_gatekeeper(settings: Settings) -> Gatekeeper:
    """Who may call, from the settings; raises ValueError on an unsafe or empty setup."""
    if settings.auth_disabled:
        host, _ = parse_listen(settings.listen)
        if not _is_loopback(host):
            raise ValueError(
                f"auth_disabled is allowed only on a loopback address, not {settings.listen}: "
                "configure tokens (see `credits-service token`)"
            )
        _log.warning("AUTHENTICATION IS DISABLED: every caller acts as an admin. Use this for "
                     "local development only.")
        return Gatekeeper({}, enabled=False, rate_limit_per_s=settings.rate_limit_per_s,
                          rate_limit_burst=settings.rate_limit_burst)
    text = settings.auth_tokens
    if settings.auth_tokens_file:
        text += "\n" + Path(settings.auth_tokens_file).read_text()
    principals = parse_token_lines(text)
    if not principals:
        raise ValueError(
            "authentication is on but no principal is configured: mint a token with "
            "`credits-service token --name NAME --role admin` and put the printed line in "
            "CREDITS_AUTH_TOKENS or --auth-tokens-file (or set CREDITS_AUTH_DISABLED=1 for "
            "local development)"
        )
    _log.info("authentication on: %d principals configured", len(principals))
    return Gatekeeper(principals, rate_limit_per_s=settings.rate_limit_per_s,
                      rate_limit_burst=settings.rate_limit_burst)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Application:
    settings: Settings
    engine: AsyncEngine
    ledger: Ledger
    sweeper: Sweeper
    grpc_server: GrpcServer
    embedded: EmbeddedPostgres | None
    metrics: Metrics
    metrics_port: int | None
    clock: DatabaseClock

    @property
    def port(self) -> int:
        return self.grpc_server.port

    @classmethod
    async def start(cls, settings: Settings) -> Application:
        gatekeeper = build_gatekeeper(settings)  # a bad setup fails before anything starts
        database_url, embedded = await resolve_database(settings)
        try:
            return await cls._start_on(settings, gatekeeper, database_url, embedded)
        except BaseException:
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)
            raise

    @classmethod
    async def _start_on(
        cls,
        settings: Settings,
        gatekeeper: Gatekeeper,
        database_url: str,
        embedded: EmbeddedPostgres | None,
    ) -> Application:
        if settings.migrate_on_start:
            await migrate(database_url)
        engine = create_engine(settings, database_url)
        metrics = Metrics()
        clock = DatabaseClock()
        ledger = build_ledger(settings, engine, metrics, clock)
        sweeper = Sweeper(
            ledger,
            interval_s=settings.sweep_interval_s,
            batch_size=settings.sweep_batch_size,
            idempotency_retention_s=settings.idempotency_retention_s,
            purge_interval_s=settings.purge_interval_s,
        )
        metrics.watch(engine.pool.checkedout, sweeper.seconds_since_sweep)  # type: ignore[attr-defined]
        metrics_port = metrics.serve(settings.metrics_listen) if settings.metrics_listen else None
        try:
            servicer = build_servicer(settings, ledger, gatekeeper, metrics)
            grpc_server = await start_grpc_server(settings, servicer)
        except BaseException:
            metrics.stop()
            raise
        sweeper.start()
        _log.info("credits-service listening on %s (port %d)", settings.listen, grpc_server.port)
        if metrics_port is not None:
            _log.info("metrics on http://%s:%d/metrics",
                      parse_listen(settings.metrics_listen)[0], metrics_port)
        return cls(settings, engine, ledger, sweeper, grpc_server, embedded, metrics,
                   metrics_port, clock)

    async def stop(self) -> None:
        """Drain in order: health NOT_SERVING and refuse new calls, let in-flight calls finish
        within the grace period, then stop background work, the pool and the database."""
        grace_s = self.settings.shutdown_grace_s
        _log.info("shutting down: draining calls for up to %.1fs", grace_s)
        await self.grpc_server.stop(grace_s)
        await self.ledger.drain(grace_s)
        await self.sweeper.stop()
        self.metrics.stop()
        await self.engine.dispose()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
        _log.info("shut down cleanly")
