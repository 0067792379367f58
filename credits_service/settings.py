"""One frozen settings object, built once at start-up from flags and the environment, and
passed down: each part of the service gets its section.

Every setting is a command-line flag (`--pool-size`) and an environment variable
(`CREDITS_POOL_SIZE`); the flag wins. Each declares its bounds here, and an invalid value fails
at start-up naming the setting, the value and the rule. Tests build settings with
`Settings.build(pool_size=3, ...)`. docs/operating.md's table is generated from this module
(scripts/generate_docs.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from credits_service.setting_rules import (
    ENV_PREFIX,
    Rule,
    Section,
    SettingsError,
    declared,
    external_name,
    number_text,
)
from credits_service.setting_sections import (
    EventSettings,
    TelemetrySettings,
    TracingSettings,
    WebhookSettings,
    WorkerSettings,
)

# Services that can be left open to callers without a token (auth_open_services).
OPEN_SERVICE_CHOICES = ("health", "reflection")


@dataclass(frozen=True, slots=True)
class ServerSettings(Section):
    title: ClassVar[str] = "gRPC server"

    listen: str = declared("127.0.0.1:50051", "host:port the gRPC server listens on")
    max_concurrent_rpcs: int = declared(
        512, "RPCs served at once; more get RESOURCE_EXHAUSTED", low=1, high=100_000)
    max_message_bytes: int = declared(
        256 * 1024, "largest request or response message", low=1024, high=4 * 1024 * 1024)
    shutdown_grace_s: float = declared(
        10.0, "time in-flight calls get to finish on SIGTERM", low=0, high=600)
    reflection: bool = declared(True, "serve gRPC server reflection (grpcurl, ghz)")
    health_probe_interval_s: float = declared(
        1.0, "how often health asks the database whether a primary answers: NOT_SERVING "
        "while none does (within the interval), SERVING again once one does", low=0.05,
        high=60)
    keepalive_time_s: float = declared(
        60.0, "ping idle connections this often to find dead peers", low=1, high=86_400)
    keepalive_timeout_s: float = declared(
        20.0, "drop a connection whose ping goes unanswered", low=1, high=3600)
    event_loop: str = declared(
        "uvloop", "the server's event loop: uvloop (faster, see bench/README.md) or asyncio "
        "(the standard library's)", choices=("uvloop", "asyncio"))
    tls_cert_file: str = declared("", "PEM server certificate (chain); enables TLS")
    tls_key_file: str = declared("", "PEM private key of the server certificate")
    tls_client_ca_file: str = declared(
        "", "PEM CA bundle: when set, clients must present a certificate it signed (mutual "
        "TLS)")

    def relations(self) -> list[Rule]:
        found = []
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            found.append(Rule("tls_cert_file", self.tls_cert_file,
                              "must be set together with tls_key_file"))
        if self.tls_client_ca_file and not self.tls_cert_file:
            found.append(Rule("tls_client_ca_file", self.tls_client_ca_file,
                              "needs tls_cert_file and tls_key_file (TLS) too"))
        return found


@dataclass(frozen=True, slots=True)
class DatabaseSettings(Section):
    title: ClassVar[str] = "database"

    url: str | None = declared(
        None, "PostgreSQL URL (postgresql://user:pass@host:port/db). Unset: start an embedded "
        "PostgreSQL in --data-dir", name="database_url")
    data_dir: str = declared(
        "", "directory of the embedded PostgreSQL's data (default: /var/lib/credits-service "
        "as root, else the user data dir); kept across restarts")
    migrate_on_start: bool = declared(True, "apply pending migrations when serve starts")
    pool_size: int = declared(10, "database connections kept open", low=1, high=200)
    pool_timeout_s: float = declared(
        5.0, "longest wait for a free database connection", low=0, high=600, low_open=True)
    connect_timeout_s: float = declared(
        5.0, "longest wait to open a database connection", low=0, high=600, low_open=True)
    statement_timeout_ms: int = declared(
        5000, "Postgres statement_timeout of our sessions", low=1, high=600_000)
    lock_timeout_ms: int = declared(
        2000, "Postgres lock_timeout of our sessions (at most statement_timeout_ms)",
        low=1, high=600_000)
    command_timeout_s: float = declared(
        10.0, "longest wait for the database to answer one statement, timed by the service "
        "(a stalled or unreachable database); above statement_timeout_ms", low=0, high=600,
        low_open=True)
    idle_in_transaction_timeout_ms: int = declared(
        10_000, "Postgres idle_in_transaction_session_timeout of our sessions",
        low=1, high=3_600_000)

    def relations(self) -> list[Rule]:
        found = []
        if self.lock_timeout_ms > self.statement_timeout_ms:
            found.append(Rule("lock_timeout_ms", self.lock_timeout_ms, "must be at most "
                              f"statement_timeout_ms ({self.statement_timeout_ms})"))
        if self.command_timeout_s <= self.statement_timeout_ms / 1000:
            found.append(Rule("command_timeout_s", self.command_timeout_s,
                              "must be above statement_timeout_ms "
                              f"({self.statement_timeout_ms} ms)"))
        return found

    @property
    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir or _default_data_dir()).expanduser()


@dataclass(frozen=True, slots=True)
class LedgerSettings(Section):
    title: ClassVar[str] = "ledger"

    reservation_ttl_default_s: float = declared(
        300.0, "TTL of a reservation when the caller gives none", low=1, high=30 * 86_400,
        aliases=("hold_ttl_default_s",))
    reservation_ttl_max_s: float = declared(
        86_400.0, "longest TTL a caller may ask for, in CheckAndReserve or ExtendReservation",
        low=1, high=30 * 86_400, aliases=("hold_ttl_max_s",))
    reservation_lifetime_max_s: float = declared(
        7 * 86_400.0, "longest a reservation can live from its creation, however often it is "
        "extended", low=1, high=365 * 86_400, aliases=("hold_lifetime_max_s",))
    refund_lot_lifetime_s: float = declared(
        30 * 86_400.0, "a refund whose credits cannot go back to their lots (expired since) "
        "puts them in a new lot expiring this long after the refund; 0: never",
        low=0, high=10 * 365 * 86_400)
    page_size_default: int = declared(
        50, "History and ListReservations page size when the caller gives none",
        low=1, high=10_000)
    page_size_max: int = declared(
        500, "largest History or ListReservations page; larger requests are capped",
        low=1, high=10_000)
    batch_size_max: int = declared(
        100, "items a BatchCheckAndReserve or BatchCommit call may carry, at most",
        low=1, high=1000)
    transaction_attempts_max: int = declared(
        5, "attempts of a transaction that hits a serialization failure or deadlock",
        low=1, high=20)
    group_size_max: int = declared(
        100, "concurrent CheckAndReserve, Commit or Release calls one transaction decides, "
        "at most (group commit)", low=1, high=10_000)
    group_concurrency: int = declared(
        1, "group transactions of each kind running at once", low=1, high=64)
    batch_commit_concurrency: int = declared(
        4, "transactions one BatchCommit runs at once", low=1, high=64)
    batch_reserve_shards: int = declared(
        4, "BatchCheckAndReserve shards: accounts are split over them, each deciding its "
        "items one transaction at a time", low=1, high=64)
    batch_reserve_group_items_max: int = declared(
        500, "batch items one shard's transaction decides, at most", low=1, high=10_000)
    batch_reserve_full_groups_max: int = declared(
        2, "transactions a shard runs at once while its queue fills whole groups",
        low=1, high=16)

    def relations(self) -> list[Rule]:
        found = []
        if self.reservation_ttl_default_s > self.reservation_ttl_max_s:
            found.append(Rule("reservation_ttl_default_s", self.reservation_ttl_default_s,
                              f"must be at most reservation_ttl_max_s "
                              f"({number_text(self.reservation_ttl_max_s)})"))
        if self.reservation_lifetime_max_s < self.reservation_ttl_max_s:
            found.append(Rule("reservation_lifetime_max_s", self.reservation_lifetime_max_s,
                              f"must be at least reservation_ttl_max_s "
                              f"({number_text(self.reservation_ttl_max_s)})"))
        if self.page_size_default > self.page_size_max:
            found.append(Rule("page_size_default", self.page_size_default,
                              f"must be at most page_size_max ({self.page_size_max})"))
        return found


@dataclass(frozen=True, slots=True)
class AccountSettings(Section):
    title: ClassVar[str] = "accounts and plans"

    plans_file: str = declared(
        "", "TOML file of plans (welcome credits and terms; docs/accounts.md); unset: the "
        "built-in plan 'default', without welcome credits")
    environment: str = declared(
        "production", "which [environments.<name>] table of the plans file applies",
        choices=("development", "staging", "production"))
    auto_create_accounts: bool = declared(
        True, "the first CheckAndReserve or GetBalance of an unknown account creates it on "
        "the default plan with its welcome credits, as Grant and EnsureAccount always do; "
        "off: they answer ACCOUNT_NOT_FOUND")
    rate_card_file: str = declared(
        "", "TOML file of the rate card (what each feature costs, per plan; docs/rates.md); "
        "unset: a card without features")
    subscription_catch_up: str = declared(
        "each", "what subscriptions get for periods that began while no scheduler ran "
        "(docs/subscriptions.md): each, every missed period's allocation (expiring as it would "
        "have, so only what rolls over is left); current, the current period's only",
        choices=("each", "current"))


@dataclass(frozen=True, slots=True)
class AuthSettings(Section):
    title: ClassVar[str] = "callers"

    disabled: bool = declared(
        False, "accept every call without a token, as an admin (development only: refused "
        "unless --listen is a loopback address)", name="auth_disabled")
    tokens: str = declared(
        "", "principals allowed in, as '<name> <role> <sha256 of token>' entries separated "
        "by ';' or newlines (see `credits-service token`)", name="auth_tokens")
    tokens_file: str = declared(
        "", "file of principals, one entry per line, as above", name="auth_tokens_file")
    open_services: str = declared(
        "health", "services callable without a token, comma-separated: health (load "
        "balancers' probes), reflection (grpcurl and ghz without a token); empty: none",
        name="auth_open_services", empty_is_a_value=True)
    service_transfers: bool = declared(
        False, "service principals may call Transfer too (users gifting credits); off: "
        "admins only")
    rate_limit_per_s: float = declared(
        5000.0, "calls per second each principal may make (token bucket); 0: no limit",
        low=0, high=1_000_000)
    rate_limit_burst: int = declared(
        10_000, "calls a principal may make at once above its rate", low=1, high=1_000_000)

    @property
    def open_service_names(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.open_services.split(",") if name.strip())

    def relations(self) -> list[Rule]:
        unknown = self.open_service_names - set(OPEN_SERVICE_CHOICES)
        if unknown:
            return [Rule("auth_open_services", self.open_services,
                         f"may name only {', '.join(OPEN_SERVICE_CHOICES)}")]
        return []


SECTIONS: dict[str, type[Section]] = {
    "server": ServerSettings,
    "database": DatabaseSettings,
    "ledger": LedgerSettings,
    "accounts": AccountSettings,
    "workers": WorkerSettings,
    "events": EventSettings,
    "webhooks": WebhookSettings,
    "auth": AuthSettings,
    "telemetry": TelemetrySettings,
    "tracing": TracingSettings,
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, by section. Invalid values raise SettingsError when built."""

    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    accounts: AccountSettings = field(default_factory=AccountSettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    events: EventSettings = field(default_factory=EventSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)

    def __post_init__(self) -> None:
        problems = [rule for section in SECTIONS for rule in getattr(self, section).problems()]
        if problems:
            raise SettingsError("\n".join(str(rule) for rule in problems))

    @classmethod
    def build(cls, **values: Any) -> Settings:
        """Settings from values by their flat names (`pool_size=3`), defaults for the rest."""
        by_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for name, value in values.items():
            section, field_name = _locate(name)
            by_section[section][field_name] = value
        return cls(**{name: SECTIONS[name](**fields) for name, fields in by_section.items()})

    def replace(self, **values: Any) -> Settings:
        """These settings with some changed, by their flat names."""
        changed = {_locate(name): value for name, value in values.items()}
        return Settings(**{
            section: dataclasses.replace(getattr(self, section), **{
                field_name: value for (s, field_name), value in changed.items() if s == section
            })
            for section in SECTIONS
        })

    @classmethod
    def add_arguments(
        cls, parser: argparse.ArgumentParser, names: Collection[str] | None = None
    ) -> None:
        """A flag for every setting named in `names` (all when None), grouped by section in
        --help."""
        groups: dict[str, Any] = {}
        for title, f in describe():
            name = external_name(f)
            if names is not None and name not in names:
                continue
            if title not in groups:
                groups[title] = parser.add_argument_group(title)
            flags = ["--" + n.replace("_", "-") for n in (name, *f.metadata["aliases"])]
            help_text = (f"{f.metadata['help']} (env {ENV_PREFIX}{name.upper()}; default "
                         f"{f.default!r})").replace("%", "%%")
            if f.type in ("bool", bool):
                groups[title].add_argument(*flags, dest=name, default=None, help=help_text,
                                           action=argparse.BooleanOptionalAction)
            else:
                groups[title].add_argument(*flags, dest=name, default=None, help=help_text)

    @classmethod
    def load(
        cls,
        args: argparse.Namespace | None = None,
        environ: Mapping[str, str] | None = None,
        names: Collection[str] | None = None,
    ) -> Settings:
        """The settings named in `names` (all when None) from flags, then CREDITS_*
        environment variables, then defaults; every other setting at its default."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[Rule] = []
        for _, f in describe():
            name = external_name(f)
            if names is not None and name not in names:
                continue
            raw = _raw_value(name, f.metadata, args, environ)
            if raw is None:
                continue
            try:
                values[name] = _parse(str(f.type), raw)
            except ValueError:
                kind = _TYPE_NAMES[str(f.type)]
                problems.append(Rule(name, raw, f"cannot be read as {kind}"))
        if problems:
            raise SettingsError("\n".join(str(rule) for rule in problems))
        return cls.build(**values)


def describe() -> Iterator[tuple[str, dataclasses.Field[Any]]]:
    """(section title, field) of every setting, in order: the documentation's table."""
    for section in SECTIONS.values():
        for f in dataclasses.fields(section):
            yield section.title, f


def _raw_value(
    name: str, meta: Mapping[str, Any], args: argparse.Namespace | None,
    environ: Mapping[str, str],
) -> Any:
    raw = getattr(args, name, None) if args is not None else None
    for env_name in (name, *meta["aliases"]):
        if raw is None:
            raw = environ.get(ENV_PREFIX + env_name.upper())
    # Empty means unset, except where empty is a value of its own (metrics off).
    if raw == "" and not meta["empty_is_a_value"]:
        return None
    return raw


_TYPE_NAMES = {"bool": "a boolean (true/false)", "int": "an integer", "float": "a number",
               "str": "text", "str | None": "text"}


def _parse(type_name: str, raw: Any) -> Any:
    if isinstance(raw, bool) or type_name not in ("bool", "int", "float"):
        return raw
    if type_name == "bool":
        lowered = raw.strip().lower()
        if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(raw)
        return lowered in ("1", "true", "yes", "on")
    if type_name == "int":
        return int(raw)
    return float(raw)


def _default_data_dir() -> str:
    if os.name == "posix" and os.geteuid() == 0:
        return "/var/lib/credits-service"
    import platformdirs

    return platformdirs.user_data_dir("credits-service")


def _names() -> dict[str, tuple[str, str]]:
    names = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            for name in (external_name(f), *f.metadata["aliases"]):
                names[name] = (section, f.name)
    return names


_NAMES = _names()


def _locate(name: str) -> tuple[str, str]:
    try:
        return _NAMES[name]
    except KeyError:
        raise TypeError(f"no setting named {name!r}") from None


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)
