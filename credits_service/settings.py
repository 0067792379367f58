"""One frozen settings object, built once from flags and the environment and passed down.

Every field is a command-line flag (`--hold-ttl-default-s`) and an environment variable
(`CREDITS_HOLD_TTL_DEFAULT_S`); the flag wins. Tests build `Settings(...)` directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "CREDITS_"
_EMPTY_IS_A_VALUE = frozenset({"metrics_listen"})


def _default_data_dir() -> str:
    if os.name == "posix" and os.geteuid() == 0:
        return "/var/lib/credits-service"
    import platformdirs

    return platformdirs.user_data_dir("credits-service")


def _setting(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = _setting("127.0.0.1:50051", "host:port the gRPC server listens on")
    database_url: str | None = _setting(
        None,
        "PostgreSQL URL (postgresql://user:pass@host:port/db). Unset: start an embedded "
        "PostgreSQL in --data-dir",
    )
    data_dir: str = _setting(
        "",
        "directory of the embedded PostgreSQL's data (default: /var/lib/credits-service as "
        "root, else the user data dir); kept across restarts",
    )
    migrate_on_start: bool = _setting(True, "apply pending migrations when serve starts")
    hold_ttl_default_s: float = _setting(300.0, "TTL of a hold when the caller gives none")
    hold_ttl_max_s: float = _setting(
        86400.0, "longest TTL a caller may ask for, in CheckAndReserve or ExtendReservation"
    )
    hold_lifetime_max_s: float = _setting(
        7 * 86400.0, "longest a hold can live from its creation, however often it is extended"
    )
    sweep_interval_s: float = _setting(1.0, "how often expired holds and lots are swept")
    sweep_batch_size: int = _setting(
        1000, "holds (or accounts with expired lots) handled per sweeper transaction, at most"
    )
    idempotency_retention_s: float = _setting(
        86400.0, "how long idempotency keys are kept before they are purged"
    )
    purge_interval_s: float = _setting(60.0, "how often old idempotency keys are purged")
    batch_size_max: int = _setting(
        100, "items a BatchCheckAndReserve or BatchCommit call may carry, at most"
    )
    page_size_default: int = _setting(50, "History page size when the caller gives none")
    page_size_max: int = _setting(500, "largest History page; larger requests are capped")
    pool_size: int = _setting(10, "database connections kept open")
    pool_timeout_s: float = _setting(5.0, "longest wait for a free database connection")
    connect_timeout_s: float = _setting(5.0, "longest wait to open a database connection")
    statement_timeout_ms: int = _setting(5000, "Postgres statement_timeout of our sessions")
    lock_timeout_ms: int = _setting(2000, "Postgres lock_timeout of our sessions")
    command_timeout_s: float = _setting(
        10.0, "longest wait for the database to answer one statement, timed by the service "
        "(a stalled or unreachable database); keep it above statement_timeout_ms"
    )
    idle_in_transaction_timeout_ms: int = _setting(
        10000, "Postgres idle_in_transaction_session_timeout of our sessions"
    )
    transaction_attempts_max: int = _setting(
        5, "attempts of a transaction that hits a serialization failure or deadlock"
    )
    max_concurrent_rpcs: int = _setting(512, "RPCs served at once; more get RESOURCE_EXHAUSTED")
    max_message_bytes: int = _setting(256 * 1024, "largest request or response message")
    shutdown_grace_s: float = _setting(10.0, "time in-flight calls get to finish on SIGTERM")
    reflection: bool = _setting(True, "serve gRPC server reflection (grpcurl, ghz)")
    auth_disabled: bool = _setting(
        False, "accept every call without a token, as an admin (development only: refused "
        "unless --listen is a loopback address)"
    )
    auth_tokens: str = _setting(
        "", "principals allowed in, as '<name> <role> <sha256 of token>' entries separated by "
        "';' or newlines (see `credits-service token`)"
    )
    auth_tokens_file: str = _setting("", "file of principals, one entry per line, as above")
    rate_limit_per_s: float = _setting(
        5000.0, "calls per second each principal may make (token bucket); 0: no limit"
    )
    rate_limit_burst: int = _setting(10000, "calls a principal may make at once above its rate")
    tls_cert_file: str = _setting("", "PEM server certificate (chain); enables TLS")
    tls_key_file: str = _setting("", "PEM private key of the server certificate")
    tls_client_ca_file: str = _setting(
        "", "PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS)"
    )
    keepalive_time_s: float = _setting(
        60.0, "ping idle connections this often to find dead peers"
    )
    keepalive_timeout_s: float = _setting(20.0, "drop a connection whose ping goes unanswered")
    log_level: str = _setting("INFO", "DEBUG, INFO (one line per RPC), WARNING or ERROR")
    log_format: str = _setting("text", "text (for people) or json (one object per line)")
    event_loop: str = _setting(
        "uvloop", "the server's event loop: uvloop (faster: +20%% CheckAndReserve, see "
        "bench/README.md) or asyncio (the standard library's)"
    )
    metrics_listen: str = _setting(
        "127.0.0.1:9464", "host:port of the Prometheus /metrics HTTP endpoint; empty: off"
    )

    def __post_init__(self) -> None:
        checks = {
            "hold_ttl_default_s": 1 <= self.hold_ttl_default_s <= self.hold_ttl_max_s,
            "sweep_interval_s": 0 < self.sweep_interval_s <= 3600,
            "sweep_batch_size": 1 <= self.sweep_batch_size <= 100_000,
            "batch_size_max": 1 <= self.batch_size_max <= 1000,
            "page_size_default": 1 <= self.page_size_default <= self.page_size_max <= 10_000,
            "pool_size": 1 <= self.pool_size <= 200,
            "transaction_attempts_max": 1 <= self.transaction_attempts_max <= 20,
            "max_concurrent_rpcs": 1 <= self.max_concurrent_rpcs <= 100_000,
            "max_message_bytes": 1024 <= self.max_message_bytes <= 4 * 1024 * 1024,
            "shutdown_grace_s": 0 <= self.shutdown_grace_s <= 600,
            "hold_ttl_max_s": 1 <= self.hold_ttl_max_s <= 30 * 86400,
            "hold_lifetime_max_s": self.hold_ttl_max_s <= self.hold_lifetime_max_s
            <= 365 * 86400,
            "idempotency_retention_s": 3600 <= self.idempotency_retention_s <= 365 * 86400,
            "purge_interval_s": 0 < self.purge_interval_s <= 86400,
            "pool_timeout_s": 0 < self.pool_timeout_s <= 600,
            "connect_timeout_s": 0 < self.connect_timeout_s <= 600,
            "statement_timeout_ms": 1 <= self.statement_timeout_ms <= 600_000,
            "lock_timeout_ms": 1 <= self.lock_timeout_ms <= self.statement_timeout_ms,
            "command_timeout_s": self.statement_timeout_ms / 1000 < self.command_timeout_s <= 600,
            "idle_in_transaction_timeout_ms": 1 <= self.idle_in_transaction_timeout_ms
            <= 3_600_000,
            "log_format": self.log_format in ("text", "json"),
            "event_loop": self.event_loop in ("uvloop", "asyncio"),
            "log_level": self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
            "rate_limit_per_s": 0 <= self.rate_limit_per_s <= 1_000_000,
            "rate_limit_burst": 1 <= self.rate_limit_burst <= 1_000_000,
            "keepalive_time_s": 1 <= self.keepalive_time_s <= 86400,
            "keepalive_timeout_s": 1 <= self.keepalive_timeout_s <= 3600,
            "tls_cert_file": bool(self.tls_cert_file) == bool(self.tls_key_file),
            "tls_client_ca_file": not self.tls_client_ca_file or bool(self.tls_cert_file),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"settings out of range: {', '.join(bad)}")

    @property
    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir or _default_data_dir()).expanduser()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            env = ENV_PREFIX + f.name.upper()
            help_text = f"{f.metadata['help']} (env {env}; default {f.default!r})"
            if f.type in ("bool", bool):
                parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                    default=None, help=help_text)
            else:
                parser.add_argument(flag, dest=f.name, default=None, help=help_text)

    @classmethod
    def load(
        cls, args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Settings from flags, then CREDITS_* environment variables, then defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = getattr(args, f.name, None) if args is not None else None
            if raw is None:
                raw = environ.get(ENV_PREFIX + f.name.upper())
            # Empty means unset, except where empty is a value of its own (metrics off).
            if raw is None or (raw == "" and f.name not in _EMPTY_IS_A_VALUE):
                continue
            values[f.name] = _parse(f.name, str(f.type), raw)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _parse(name: str, type_name: str, raw: Any) -> Any:
    if isinstance(raw, bool):
        return raw
    try:
        if type_name == "bool":
            lowered = raw.strip().lower()
            if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            return lowered in ("1", "true", "yes", "on")
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
    except ValueError as exc:
        raise ValueError(f"setting {name}: cannot parse {raw!r} as {type_name}") from exc
    return raw


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


__all__: Sequence[str] = ["Settings", "parse_listen"]
