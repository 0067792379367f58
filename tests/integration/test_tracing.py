"""Tracing (issue 33): a `serve` process with --otlp-endpoint exports a SERVER span per RPC
and its database statements as CLIENT spans under it, over OTLP/HTTP to a local collector
(a plain HTTP server that decodes what it is sent); off, nothing is installed."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from credits.v1 import credits_pb2 as pb
from credits_service.setting_sections import TracingSettings
from credits_service.tracing import TracingUnavailable, start_tracing
from tests.serve_launcher import Launcher, credits_stub
from tests.support.calls import grant_request


class Collector:
    """An OTLP/HTTP trace endpoint on loopback, keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        collector.spans.extend(scope.spans)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    thread = threading.Thread(target=running.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.server.shutdown()
        running.server.server_close()


async def test_each_rpc_is_a_span_with_its_statements_under_it(
        launcher: Launcher, database_url: str, collector: Collector):
    server = launcher.serve(launcher.data_dir(), "--database-url", database_url,
                            "--otlp-endpoint", collector.url)
    await server.wait_serving()
    async with credits_stub(server.address) as stub:
        await stub.Grant(grant_request("traced", 10, key="traced-1"), timeout=10)
        await stub.History(pb.HistoryRequest(account_id="traced"), timeout=10)
    assert await server.stop() == 0, server.describe()  # the last spans flushed on the way out

    by_name: dict[str, list[Any]] = {}
    for span in collector.spans:
        by_name.setdefault(span.name, []).append(span)
    (grant,) = by_name["/credits.v1.CreditsService/Grant"]
    assert grant.kind == trace_pb2.Span.SPAN_KIND_SERVER
    children = [s for s in collector.spans
                if s.trace_id == grant.trace_id and s.parent_span_id == grant.span_id]
    names = [s.name for s in children]
    assert names[0] == "BEGIN" and names[-1] == "COMMIT" and len(names) >= 4, names
    assert all(s.kind == trace_pb2.Span.SPAN_KIND_CLIENT for s in children)
    systems = {a.value.string_value for s in children for a in s.attributes
               if a.key == "db.system" or a.key == "db.system.name"}
    assert systems == {"postgresql"}
    (history,) = by_name["/credits.v1.CreditsService/History"]
    assert history.trace_id != grant.trace_id  # each call its own trace


def test_tracing_off_installs_nothing():
    assert start_tracing(TracingSettings()) is None


def test_an_endpoint_without_the_packages_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(TracingUnavailable, match=r"credits-service\[tracing\]"):
        start_tracing(TracingSettings(otlp_endpoint="http://127.0.0.1:4318/v1/traces"))
