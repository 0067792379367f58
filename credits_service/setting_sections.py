"""The settings sections of the work beside the calls (background workers, events, webhooks)
and of observability (logs, metrics, tracing); settings.py gathers them with the others."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from credits_service.setting_rules import Section, declared


@dataclass(frozen=True, slots=True)
class WorkerSettings(Section):
    title: ClassVar[str] = "background workers"

    sweep_interval_s: float = declared(
        1.0, "how often expired reservations and lots are swept", low=0, high=3600,
        low_open=True)
    sweep_batch_size: int = declared(
        1000, "reservations (or accounts with expired lots) handled per sweeper transaction, "
        "at most", low=1, high=100_000)
    idempotency_retention_s: float = declared(
        86_400.0, "how long idempotency keys are kept before they are purged",
        low=3600, high=365 * 86_400)
    purge_interval_s: float = declared(
        60.0, "how often old idempotency keys are purged", low=0, high=86_400, low_open=True)
    scheduler_interval_s: float = declared(
        5.0, "how often the scheduler grants subscriptions' allocations that fell due",
        low=0, high=3600, low_open=True)
    scheduler_batch_size: int = declared(
        200, "subscriptions granted per scheduler transaction, at most", low=1, high=10_000)


@dataclass(frozen=True, slots=True)
class EventSettings(Section):
    title: ClassVar[str] = "events"

    retention_s: float = declared(
        7 * 86_400.0, "how long events are kept for WatchEvents before they are purged; a "
        "cursor older than that is OUT_OF_RANGE", low=3600, high=3650 * 86_400,
        name="events_retention_s")
    poll_interval_s: float = declared(
        1.0, "how often a caught-up event stream reads again with no notification (the "
        "fallback while LISTEN is down, and a safety net)", low=0.01, high=60,
        name="events_poll_interval_s")
    heartbeat_s: float = declared(
        15.0, "how often an event stream with nothing to send sends its cursor",
        low=0.1, high=3600, name="events_heartbeat_s")
    watchers_max: int = declared(
        64, "event streams served at once; more are RESOURCE_EXHAUSTED", low=1, high=10_000,
        name="events_watchers_max")
    stall_limit_s: float = declared(
        60.0, "how long an event stream waits for a consumer that reads nothing before "
        "ending it (UNAVAILABLE, CONSUMER_STALLED)", low=0.1, high=3600,
        name="events_stall_limit_s")
    expiring_notice_s: float = declared(
        3 * 86_400.0, "how long before a lot of credits expires its CREDITS_EXPIRING event is "
        "written (once per lot, by the sweeper); 0: never", low=0, high=365 * 86_400,
        name="events_expiring_notice_s")


@dataclass(frozen=True, slots=True)
class WebhookSettings(Section):
    title: ClassVar[str] = "webhooks"

    file: str = declared(
        "", "TOML file of webhook endpoints (docs/webhooks.md); unset: no webhooks",
        name="webhooks_file")
    timeout_s: float = declared(
        10.0, "how long one delivery attempt may take", low=0.1, high=300,
        name="webhook_timeout_s")
    retry_for_s: float = declared(
        3600.0, "how long an event's delivery is retried before it is kept as a dead letter",
        low=0, high=7 * 86_400, name="webhook_retry_for_s")
    backoff_initial_s: float = declared(
        1.0, "the wait before the first retry; each next one waits about twice as long",
        low=0.01, high=3600, name="webhook_backoff_initial_s")
    backoff_max_s: float = declared(
        300.0, "the longest wait between retries", low=0.01, high=86_400,
        name="webhook_backoff_max_s")
    lease_s: float = declared(
        30.0, "how long a replica keeps an endpoint's deliveries when it stops renewing (it "
        "died): another takes over after that", low=1, high=3600, name="webhook_lease_s")


@dataclass(frozen=True, slots=True)
class TelemetrySettings(Section):
    title: ClassVar[str] = "logs and metrics"

    log_level: str = declared(
        "INFO", "DEBUG, INFO (one line per RPC), WARNING or ERROR",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = declared(
        "text", "text (for people) or json (one object per line)", choices=("text", "json"))
    metrics_listen: str = declared(
        "127.0.0.1:9464", "host:port of the Prometheus /metrics HTTP endpoint; empty: off",
        empty_is_a_value=True)


@dataclass(frozen=True, slots=True)
class TracingSettings(Section):
    title: ClassVar[str] = "tracing"

    otlp_endpoint: str = declared(
        "", "OTLP/HTTP URL spans are exported to (OpenTelemetry: a span per RPC, its database "
        "statements as children), e.g. http://127.0.0.1:4318/v1/traces; empty: tracing off "
        "(needs the tracing extra: pip install credits-service[tracing])")
    trace_sample_ratio: float = declared(
        1.0, "share of calls traced, 0 to 1 (a call's spans are kept or dropped together)",
        low=0, high=1)
    trace_service_name: str = declared(
        "credits-service", "service.name of the spans (tell replicas apart with "
        "OTEL_RESOURCE_ATTRIBUTES)")
