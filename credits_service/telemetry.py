"""What the service is doing, for operators: Prometheus metrics on their own HTTP port and
structured (JSON) logs.

Each Application has its own registry, so several can run in one process (the tests do).
The service layer reports through its `LedgerMetrics` port and never imports this module.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256,
                      0.512, 1.024, 2.048, 5.0)


class Metrics:
    """The service's metrics; implements the service layer's LedgerMetrics port."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpc_requests = Counter("credits_rpc_requests", "RPCs served, by method and status",
                                    ["method", "code"], registry=r)
        self.rpc_duration = Histogram("credits_rpc_duration_seconds", "RPC latency by method",
                                      ["method"], buckets=_LATENCY_BUCKETS_S, registry=r)
        self.reservations = Counter("credits_reservations",
                                    "reservations by what happened to them",
                                    ["event"], registry=r)
        self.credits = Counter("credits_credits", "credits granted, consumed and expired", ["kind"],
                               registry=r)
        self.accounts_created = Counter("credits_accounts_created",
                                        "accounts created, by plan", ["plan"], registry=r)
        self.replays = Counter("credits_idempotent_replays",
                               "calls answered from a stored idempotent response", ["method"],
                               registry=r)
        self.retries = Counter("credits_transaction_retries",
                               "transactions retried after a serialization failure or deadlock",
                               registry=r)
        self.group_size = Histogram("credits_group_size",
                                    "calls decided together in one transaction (group commit)",
                                    ["method"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 100, 250, 500, 1000),
                                    registry=r)
        self.pool_wait = Histogram("credits_db_pool_wait_seconds",
                                   "time to get a database connection from the pool",
                                   buckets=_LATENCY_BUCKETS_S, registry=r)
        self.pool_in_use = Gauge("credits_db_pool_connections_in_use",
                                 "database connections checked out of the pool", registry=r)
        self.rate_card_reloads = Counter("credits_rate_card_reloads",
                                         "rate card reloads, by outcome (loaded, refused)",
                                         ["outcome"], registry=r)
        self.rate_card = Info("credits_rate_card", "the rate card in force", registry=r)
        self.sweeper_lag = Gauge("credits_sweeper_lag_seconds",
                                 "seconds since the sweeper last completed a sweep",
                                 registry=r)
        self._server: Any = None

    # --- LedgerMetrics --------------------------------------------------------------------

    def rate_card_reloaded(self, version: str, loaded: bool) -> None:
        self.rate_card_reloads.labels("loaded" if loaded else "refused").inc()
        if loaded:
            self.rate_card_in_force(version)

    def rate_card_in_force(self, version: str) -> None:
        self.rate_card.info({"version": version})

    def granted(self, amount: int) -> None:
        self.credits.labels("granted").inc(amount)

    def account_created(self, plan: str) -> None:
        self.accounts_created.labels(plan).inc()

    def reserved(self, reservations: int) -> None:
        self.reservations.labels("placed").inc(reservations)

    def committed(self, amount: int) -> None:
        self.reservations.labels("committed").inc()
        self.credits.labels("consumed").inc(amount)

    def released(self) -> None:
        self.reservations.labels("released").inc()

    def expired(self, reservations: int) -> None:
        self.reservations.labels("expired").inc(reservations)

    def written_off(self, credits: int) -> None:
        self.credits.labels("expired").inc(credits)

    def replayed(self, method: str) -> None:
        self.replays.labels(method).inc()

    def transaction_retried(self) -> None:
        self.retries.inc()

    def grouped(self, kind: str, size: int) -> None:
        self.group_size.labels(kind).observe(size)

    def pool_waited(self, seconds: float) -> None:
        self.pool_wait.observe(seconds)

    # --- wiring ---------------------------------------------------------------------------

    def watch(self, pool_in_use: Callable[[], float], seconds_since_sweep: Callable[[], float],
              ) -> None:
        self.pool_in_use.set_function(pool_in_use)
        self.sweeper_lag.set_function(seconds_since_sweep)

    def serve(self, listen: str) -> int:
        """Expose /metrics over HTTP on `listen` (host:port, port 0 for any); returns the port."""
        host, _, port = listen.rpartition(":")
        try:
            self._server, _ = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1",
                                                registry=self.registry)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {listen} (--metrics-listen): {exc}") from exc
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


_STANDARD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime"}


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call gave in `extra` (an RPC's request_id, method, code...)."""
    return {key: value for key, value in vars(record).items() if key not in _STANDARD_FIELDS}


class TextFormatter(logging.Formatter):
    """For people: time, level, logger and message, then any `extra` fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _extra_fields(record)
        if not extra:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays below the fields
        fields = " ".join(f"{key}={value}" for key, value in extra.items())
        return f"{head} {fields}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extra_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
