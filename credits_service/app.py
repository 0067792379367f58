"""Composition root: checks what can be checked before starting anything, then builds the
database, the ledger, the sweeper and the gRPC server once, and shuts them down in order."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import tomllib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from credits_service.domain.errors import RateCardRefused
from credits_service.domain.plans import BUILT_IN, PlanBook, PlansError, read_plans
from credits_service.domain.rates import BUILT_IN as BUILT_IN_RATE_CARD
from credits_service.domain.rates import RateCard, RateCardError, read_rate_card
from credits_service.domain.subscriptions import CatchUp
from credits_service.domain.webhooks import Endpoint, WebhooksError, read_webhooks
from credits_service.persistence.database import create_engine, redacted
from credits_service.persistence.embedded import EmbeddedPostgres
from credits_service.persistence.event_signals import ListeningSignals
from credits_service.persistence.keys import page_token_key
from credits_service.persistence.migrations import upgrade_to_head
from credits_service.persistence.probe import PrimaryProbe
from credits_service.persistence.unit_of_work import DatabaseClock, SqlUnitOfWork
from credits_service.service.event_ports import EventSignals
from credits_service.service.events import WatchPolicy
from credits_service.service.ledger import Ledger
from credits_service.service.page_tokens import PageTokens
from credits_service.service.webhooks import WebhookPolicy, Webhooks
from credits_service.setting_rules import is_loopback
from credits_service.settings import (
    AccountSettings,
    AuthSettings,
    DatabaseSettings,
    Settings,
    WebhookSettings,
    parse_listen,
)
from credits_service.telemetry import Metrics
from credits_service.transport.grpc.admission import CallGate
from credits_service.transport.grpc.auth import (
    OPEN_SERVICES,
    SERVICE_METHODS,
    Gatekeeper,
    parse_token_lines,
)
from credits_service.transport.grpc.call_log import CallLog
from credits_service.transport.grpc.events import Watching
from credits_service.transport.grpc.fields import RequestLimits
from credits_service.transport.grpc.interceptors import CallInterceptor
from credits_service.transport.grpc.server import (
    GrpcServer,
    check_tls_files,
    start_grpc_server,
)
from credits_service.transport.grpc.servicer import CreditsServicer
from credits_service.workers.scheduler import Scheduler
from credits_service.workers.sweeper import Sweeper
from credits_service.workers.webhook_sender import HttpSender
from credits_service.workers.webhooks import WebhookWorker

_log = logging.getLogger(__name__)


class StartupError(Exception):
    """The service cannot start as configured; the message says why and what to do.
    `exit_code`: 2 for settings that cannot work, 1 for the world not being as they expect
    (an address in use, a database out of reach)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_listen_addresses(settings: Settings) -> None:
    """Fail, naming the setting, if an address we are to listen on is taken or unusable:
    before the database is started or migrated, not after."""
    for name, address in (("listen", settings.server.listen),
                          ("metrics_listen", settings.telemetry.metrics_listen)):
        if not address:
            continue
        flag, env = "--" + name.replace("_", "-"), "CREDITS_" + name.upper()
        try:
            host, port = parse_listen(address)
        except ValueError:
            raise StartupError(f"{flag} / {env} {address!r} is not host:port") from None
        if port == 0:
            continue  # any free port
        try:
            _probe_bind(host, port)
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {address} ({flag} / {env}): {exc.strerror or exc}. Another "
                f"process (another credits-service?) may be using it: stop it, or choose "
                f"another address with {flag} or {env}", exit_code=1) from None


def _probe_bind(host: str, port: int) -> None:
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, kind, proto) as probe:
        # As the servers bind: a port left in TIME_WAIT is free, a listening one is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(sockaddr)


async def resolve_database(
    settings: DatabaseSettings, *, borrow_if_in_use: bool = False
) -> tuple[str, EmbeddedPostgres | None]:
    """The database URL to use, starting the embedded PostgreSQL when none is configured.
    If another live process owns the embedded database, borrow it or raise DataDirInUse."""
    if settings.url:
        await check_database(settings)
        return settings.url, None
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


async def check_database(settings: DatabaseSettings) -> None:
    """Connect once to the configured database, so a wrong URL or an unreachable server is
    told plainly (the URL without its password, the setting, what to do) before anything
    else starts."""
    assert settings.url is not None
    try:
        connection = await asyncpg.connect(settings.url, timeout=settings.connect_timeout_s)
    except (TimeoutError, OSError, asyncpg.PostgresError, ValueError) as exc:
        raise StartupError(
            f"cannot connect to the database at {redacted(settings.url)} (--database-url / "
            f"CREDITS_DATABASE_URL): {type(exc).__name__}: {exc}. Check that PostgreSQL is "
            "running and reachable from here, and that the URL's host, port, user, password "
            "and database are right (--connect-timeout-s bounds the wait)", exit_code=1) from None
    await connection.close()


async def migrate(database_url: str) -> None:
    """Apply pending migrations; a failure is a StartupError saying what to check."""
    try:
        # Alembic's async env.py runs its own event loop: give it a thread.
        await asyncio.to_thread(upgrade_to_head, database_url)
    except Exception as exc:
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StartupError(
            f"migrating the database at {redacted(database_url)} failed: "
            f"{type(exc).__name__}: {cause}. The role of the URL must own the schema (create "
            "tables and functions in it); or run `credits-service migrate` as the owner and "
            "start serve with --no-migrate-on-start (docs/operating.md)", exit_code=1) from exc


def load_plans(settings: AccountSettings) -> PlanBook:
    """The plans of the plans file for the environment, or the built-in plan without a file;
    a StartupError naming the file and the broken key when it cannot be used."""
    if not settings.plans_file:
        return BUILT_IN
    path = settings.plans_file
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise StartupError(f"cannot read --plans-file {path!r}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise StartupError(f"--plans-file {path!r} is not TOML: {exc}") from None
    try:
        plans = read_plans(document, settings.environment, path)
    except PlansError as exc:
        raise StartupError(f"--plans-file {path!r}: {exc}") from None
    _log.info("plans from %s (environment %s): %s; default plan %s", path,
              settings.environment, ", ".join(sorted(plans.plans)), plans.default_plan)
    return plans


def load_webhooks(settings: WebhookSettings) -> tuple[Endpoint, ...]:
    """The endpoints of the webhooks file (none without one); a StartupError naming the file
    and the broken key when it cannot be used."""
    if not settings.file:
        return ()
    path = settings.file
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise StartupError(f"cannot read --webhooks-file {path!r}: {exc.strerror or exc}") \
            from None
    except tomllib.TOMLDecodeError as exc:
        raise StartupError(f"--webhooks-file {path!r} is not TOML: {exc}") from None
    try:
        endpoints = read_webhooks(document)
    except WebhooksError as exc:
        raise StartupError(f"--webhooks-file {path!r}: {exc}") from None
    _log.info("webhooks from %s: %s", path, ", ".join(e.name for e in endpoints) or "none")
    return endpoints


def build_webhooks(settings: Settings, ledger: Ledger, endpoints: Sequence[Endpoint],
                   page_tokens_key: bytes) -> tuple[Webhooks, HttpSender]:
    hooks = settings.webhooks
    sender = HttpSender(hooks.timeout_s)
    policy = WebhookPolicy(retry_for_s=hooks.retry_for_s,
                           backoff_initial_s=hooks.backoff_initial_s,
                           backoff_max_s=hooks.backoff_max_s, lease_s=hooks.lease_s,
                           attempt_timeout_s=hooks.timeout_s)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return Webhooks(ledger.transactions, ledger.events, endpoints, sender, policy,
                    PageTokens(page_tokens_key), owner), sender


def read_rate_card_file(path: str, plans: PlanBook) -> RateCard:
    """The rate card of the file, its plan prices checked against `plans`; RateCardRefused
    listing every problem (the file unreadable or not TOML being one) otherwise."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise RateCardRefused(path, [f"cannot read it: {exc.strerror or exc}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RateCardRefused(path, [f"not TOML (UTF-8): {exc}"]) from None
    try:
        return read_rate_card(document, path, plans.plans.keys())
    except RateCardError as exc:
        raise RateCardRefused(path, exc.problems) from None


def load_rate_card(settings: AccountSettings, plans: PlanBook) -> RateCard:
    """The rate card of the file, or the built-in card without features; a StartupError
    naming the file and every problem otherwise."""
    if not settings.rate_card_file:
        return BUILT_IN_RATE_CARD
    path = settings.rate_card_file
    try:
        card = read_rate_card_file(path, plans)
    except RateCardRefused as exc:
        raise StartupError(f"--rate-card-file {path!r}: " + "; ".join(exc.problems)) from None
    _log.info("rate card %s from %s: %d features", card.version, path, len(card.features))
    return card


def build_ledger(
    settings: Settings, engine: AsyncEngine, metrics: Metrics, clock: DatabaseClock,
    page_tokens_key: bytes, plans: PlanBook = BUILT_IN,
    rate_card: RateCard = BUILT_IN_RATE_CARD,
) -> Ledger:
    statement_timeout_ms = settings.database.statement_timeout_ms
    return Ledger(
        lambda grouped=False, time_remaining_s=None, snapshot=False, autocommit=False:
        SqlUnitOfWork(
            engine, statement_timeout_ms, metrics.pool_waited, clock, grouped=grouped,
            time_remaining_s=time_remaining_s, snapshot=snapshot, autocommit=autocommit,
        ),
        settings.ledger,
        page_tokens_key,
        metrics,
        plans=plans,
        auto_create_accounts=settings.accounts.auto_create_accounts,
        rate_card=rate_card,
        rate_card_loader=(
            functools.partial(read_rate_card_file, settings.accounts.rate_card_file, plans)
            if settings.accounts.rate_card_file else None),
        catch_up=CatchUp(settings.accounts.subscription_catch_up),
    )


def build_gatekeeper(settings: AuthSettings, listen: str) -> Gatekeeper:
    """Who may call, from the settings; raises StartupError on an unsafe or empty setup."""
    open_services = frozenset().union(*(OPEN_SERVICES[name]
                                        for name in settings.open_service_names))
    service_methods = SERVICE_METHODS | ({"Transfer"} if settings.service_transfers else set())
    if settings.disabled:
        host, _ = parse_listen(listen)
        if not is_loopback(host):
            raise StartupError(
                f"auth_disabled is allowed only on a loopback address, not {listen}: "
                "configure tokens (see `credits-service token`)"
            )
        _log.warning("AUTHENTICATION IS DISABLED: every caller acts as an admin. Use this for "
                     "local development only.")
        return Gatekeeper({}, enabled=False, rate_limit_per_s=settings.rate_limit_per_s,
                          rate_limit_burst=settings.rate_limit_burst,
                          open_services=open_services, service_methods=service_methods)
    text = settings.tokens
    if settings.tokens_file:
        try:
            text += "\n" + Path(settings.tokens_file).read_text()
        except OSError as exc:
            raise StartupError(f"cannot read --auth-tokens-file {settings.tokens_file!r}: "
                               f"{exc.strerror or exc}") from None
    try:
        principals = parse_token_lines(text)
    except ValueError as exc:
        raise StartupError(f"--auth-tokens / --auth-tokens-file: {exc}") from None
    if not principals:
        raise StartupError(
            "authentication is on but no principal is configured: mint a token with "
            "`credits-service token --name NAME --role admin` and put the printed line in "
            "CREDITS_AUTH_TOKENS or --auth-tokens-file (or set CREDITS_AUTH_DISABLED=1 for "
            "local development)"
        )
    _log.info("authentication on: %d principals configured", len(principals))
    return Gatekeeper(principals, rate_limit_per_s=settings.rate_limit_per_s,
                      rate_limit_burst=settings.rate_limit_burst, open_services=open_services,
                      service_methods=service_methods)


async def serve_grpc(
    settings: Settings, ledger: Ledger, gatekeeper: Gatekeeper, metrics: Metrics,
    signals: EventSignals | None = None, webhooks: Webhooks | None = None,
) -> GrpcServer:
    """The gRPC server over `ledger`, started: servicer, interceptor and request limits from
    the settings; event streams woken by `signals` (None: a server without WatchEvents)."""
    limits = RequestLimits(
        reservation_ttl_max_ms=int(settings.ledger.reservation_ttl_max_s * 1000),
        page_size_max=settings.ledger.page_size_max,
        batch_size_max=settings.ledger.batch_size_max,
    )
    events = settings.events
    watching = None if signals is None else Watching(
        signals, WatchPolicy(poll_interval_s=events.poll_interval_s,
                             heartbeat_s=events.heartbeat_s, watchers_max=events.watchers_max),
        stall_limit_s=events.stall_limit_s)
    gate = CallGate()
    interceptor = CallInterceptor(gatekeeper, gate, CallLog(metrics))
    server = await start_grpc_server(
        settings.server, CreditsServicer(ledger, limits, watching, webhooks), interceptor, gate)
    return server


@dataclass
class Application:
    settings: Settings
    engine: AsyncEngine
    ledger: Ledger
    sweeper: Sweeper
    scheduler: Scheduler
    signals: ListeningSignals
    webhooks: Webhooks
    webhook_sender: HttpSender
    webhook_worker: WebhookWorker | None
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
        # A bad setup fails before anything starts.
        check_listen_addresses(settings)
        try:
            check_tls_files(settings.server)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        gatekeeper = build_gatekeeper(settings.auth, settings.server.listen)
        plans = load_plans(settings.accounts)
        rate_card = load_rate_card(settings.accounts, plans)
        endpoints = load_webhooks(settings.webhooks)
        database_url, embedded = await resolve_database(settings.database)
        try:
            return await cls._start_on(settings, gatekeeper, plans, rate_card, endpoints,
                                       database_url, embedded)
        except BaseException:
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)
            raise

    @classmethod
    async def _start_on(
        cls,
        settings: Settings,
        gatekeeper: Gatekeeper,
        plans: PlanBook,
        rate_card: RateCard,
        endpoints: Sequence[Endpoint],
        database_url: str,
        embedded: EmbeddedPostgres | None,
    ) -> Application:
        if settings.database.migrate_on_start:
            await migrate(database_url)
        engine = create_engine(settings.database, database_url)
        try:
            key = await page_token_key(engine)
        except BaseException:
            await engine.dispose()
            raise
        metrics = Metrics()
        clock = DatabaseClock()
        ledger = build_ledger(settings, engine, metrics, clock, key, plans, rate_card)
        try:
            synced = await ledger.sync_credit_limits()
            alerted = await ledger.alerts.sync_plan_rules()
        except BaseException:
            await engine.dispose()
            raise
        if synced:
            _log.info("%d accounts took their plan's credit limit from %s", synced, plans.source)
        if alerted:
            _log.info("%d accounts took their plan's low-balance rule from %s", alerted,
                      plans.source)
        workers = settings.workers
        sweeper = Sweeper(
            ledger.maintenance,
            interval_s=workers.sweep_interval_s,
            batch_size=workers.sweep_batch_size,
            idempotency_retention_s=workers.idempotency_retention_s,
            purge_interval_s=workers.purge_interval_s,
            events=ledger.events,
            events_retention_s=settings.events.retention_s,
            alerts=ledger.alerts,
            expiring_notice_s=settings.events.expiring_notice_s,
        )
        scheduler = Scheduler(ledger.subscriptions, interval_s=workers.scheduler_interval_s,
                              batch_size=workers.scheduler_batch_size)
        metrics.watch(engine.pool.checkedout, sweeper.seconds_since_sweep)  # type: ignore[attr-defined]
        metrics_listen = settings.telemetry.metrics_listen
        metrics_port = metrics.serve(metrics_listen) if metrics_listen else None
        signals = ListeningSignals(database_url,
                                   connect_timeout_s=settings.database.connect_timeout_s)
        signals.start()
        webhooks, sender = build_webhooks(settings, ledger, endpoints, key)
        try:
            grpc_server = await serve_grpc(settings, ledger, gatekeeper, metrics, signals,
                                           webhooks)
        except BaseException:
            await signals.stop()
            await sender.close()
            metrics.stop()
            await engine.dispose()
            raise
        grpc_server.watch_database(
            PrimaryProbe(database_url, settings.database.connect_timeout_s),
            settings.server.health_probe_interval_s)
        webhook_worker = None
        if endpoints:
            webhook_worker = WebhookWorker(
                webhooks, signals, poll_interval_s=settings.events.poll_interval_s)
            webhook_worker.start()
        sweeper.start()
        scheduler.start()
        _log.info("credits-service listening on %s (port %d)", settings.server.listen,
                  grpc_server.port)
        if metrics_port is not None:
            _log.info("metrics on http://%s:%d/metrics", parse_listen(metrics_listen)[0],
                      metrics_port)
        return cls(settings, engine, ledger, sweeper, scheduler, signals, webhooks, sender,
                   webhook_worker, grpc_server, embedded, metrics, metrics_port, clock)

    def reload_rate_card(self) -> None:
        """Read the rate card's file again (SIGHUP); a refused file is logged and counted,
        and the card in force stays."""
        try:
            self.ledger.reload_rate_card()
        except RateCardRefused:
            pass  # logged and counted by the ledger

    async def stop(self) -> None:
        """Drain in order: health NOT_SERVING and refuse new calls, let in-flight calls finish
        within the grace period, then stop background work, the pool and the database."""
        grace_s = self.settings.server.shutdown_grace_s
        _log.info("shutting down: draining calls for up to %.1fs", grace_s)
        await self.grpc_server.stop(grace_s)
        await self.ledger.drain(grace_s)
        await self.sweeper.stop()
        await self.scheduler.stop()
        if self.webhook_worker is not None:
            await self.webhook_worker.stop()
        await self.webhook_sender.close()
        await self.signals.stop()
        self.metrics.stop()
        await self.engine.dispose()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
        _log.info("shut down cleanly")
