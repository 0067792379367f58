"""OpenTelemetry tracing, off unless --otlp-endpoint names a collector (docs/operating.md,
"Tracing"). On, every RPC is a SERVER span (the grpc instrumentation's interceptor, ahead of
ours) and each database statement a CLIENT span (the asyncpg instrumentation, named by the
statement's first word, without its parameters), the child of the call it runs for. A group
commit's statements serve many calls at once, so they are a trace of their own.

Off, nothing is imported or installed: the calls run exactly as without this module. Spans are
exported over OTLP/HTTP (protobuf) in batches by a background thread, with bounds: at most
2,048 spans queued (more are dropped, never waited for), 512 a batch, every 5 s, each export
within 10 s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from credits_service.setting_sections import TracingSettings

_log = logging.getLogger(__name__)
SPANS_QUEUED_MAX = 2048
SPANS_PER_EXPORT_MAX = 512
EXPORT_INTERVAL_MS = 5000
EXPORT_TIMEOUT_S = 10


class TracingUnavailable(RuntimeError):
    """--otlp-endpoint is set, and the OpenTelemetry packages are not installed."""


def start_tracing(settings: TracingSettings) -> Callable[[], None] | None:
    """Install the tracer provider and both instrumentations, before the gRPC server is made;
    the function that stops them (flushing what is queued). None when tracing is off."""
    if not settings.otlp_endpoint:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise TracingUnavailable(
            f"--otlp-endpoint is set but OpenTelemetry is not installed ({exc.name}): "
            "pip install 'credits-service[tracing]'") from None
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.trace_service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=settings.otlp_endpoint, timeout=EXPORT_TIMEOUT_S),
        max_queue_size=SPANS_QUEUED_MAX, max_export_batch_size=SPANS_PER_EXPORT_MAX,
        schedule_delay_millis=EXPORT_INTERVAL_MS))
    trace.set_tracer_provider(provider)
    grpc_server = GrpcAioInstrumentorServer()
    grpc_server.instrument(tracer_provider=provider)
    database = AsyncPGInstrumentor()
    database.instrument(tracer_provider=provider)
    _log.info("tracing: spans to %s (%s of calls)", settings.otlp_endpoint,
              f"{settings.trace_sample_ratio:.0%}")

    def stop() -> None:
        database.uninstrument()
        grpc_server.uninstrument()
        provider.shutdown()  # exports what is queued, within the export timeout

    return stop
