"""The grpc.aio server: our service beside the standard health and reflection services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from credits.v1 import credits_pb2, credits_pb2_grpc
from credits_service.settings import ServerSettings
from credits_service.transport.grpc.admission import CallGate
from credits_service.transport.grpc.interceptors import CallInterceptor
from credits_service.transport.grpc.servicer import CreditsServicer

_log = logging.getLogger(__name__)
_QUIET_BEFORE_CLOSE_S = 0.2
class Probe(Protocol):
    """Whether a primary database answers (persistence/probe.py)."""

    async def reachable(self, timeout_s: float) -> bool: ...

    async def close(self) -> None: ...


_PROBE_STOP_S = 2.0  # the most shutdown waits for the probe to end
SERVICE_NAME = credits_pb2.DESCRIPTOR.services_by_name["CreditsService"].full_name


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    gate: CallGate
    port: int
    probe: asyncio.Task[None] | None = None
    probe_stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def watch_database(self, probe: Probe, interval_s: float) -> None:
        """Keep health (overall and the credits service's) NOT_SERVING while no primary
        database answers within `interval_s`, so balancers and clients watching health send
        calls elsewhere; SERVING again once one does."""
        self.probe = asyncio.create_task(self._watch(probe, interval_s),
                                         name="credits-health-probe")

    async def _watch(self, probe: Probe, interval_s: float) -> None:
        try:
            await self._follow(probe, interval_s)
        finally:
            await probe.close()

    async def _follow(self, probe: Probe, interval_s: float) -> None:
        serving = True
        while not self.probe_stopping.is_set():
            started = time.monotonic()
            reachable = await probe.reachable(interval_s)
            if reachable != serving:
                serving = reachable
                status = (health_pb2.HealthCheckResponse.SERVING if serving
                          else health_pb2.HealthCheckResponse.NOT_SERVING)
                for name in ("", SERVICE_NAME):  # ignored once draining: NOT_SERVING for good
                    await self.health.set(name, status)
                if serving:
                    _log.warning("a primary database answers again: health SERVING")
                else:
                    _log.warning("no primary database answers: health NOT_SERVING")
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, interval_s - (time.monotonic() - started))):
                    await self.probe_stopping.wait()

    async def stop(self, grace_s: float) -> None:
        """Health NOT_SERVING and new calls refused (UNAVAILABLE) at once; calls in progress
        get up to `grace_s` to finish; then the transport closes, cancelling any left."""
        started = time.monotonic()
        if self.probe is not None:  # asked to stop, then cancelled: never waited for long
            self.probe_stopping.set()
            self.probe.cancel()
            await asyncio.wait({self.probe}, timeout=_PROBE_STOP_S)
        await self.health.enter_graceful_shutdown()
        self.gate.close()
        if not await self.gate.wait_idle(grace_s):
            _log.warning("%d calls still running after %.1fs: cancelling them",
                         self.gate.active, grace_s)

        def left_s() -> float:
            return max(grace_s - (time.monotonic() - started), 0.0)

        # Calls queued inside grpc when it shuts down are cancelled, not refused: keep
        # refusing until callers have stopped sending (or the grace is spent).
        await self.gate.wait_quiet(_QUIET_BEFORE_CLOSE_S, left_s())
        await self.server.stop(left_s())


def check_tls_files(settings: ServerSettings) -> None:
    """Raise ValueError, naming the setting, if a TLS file cannot serve: unreadable, not PEM,
    or a key that does not match its certificate. Checked before anything starts."""
    if not settings.tls_cert_file:
        return
    files = {"--tls-cert-file": settings.tls_cert_file, "--tls-key-file": settings.tls_key_file,
             "--tls-client-ca-file": settings.tls_client_ca_file}
    for flag, path in files.items():
        if path and not os.access(path, os.R_OK):
            raise ValueError(f"{flag} {path!r} cannot be read")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except ssl.SSLError as exc:
        raise ValueError(f"--tls-cert-file {settings.tls_cert_file!r} and --tls-key-file "
                         f"{settings.tls_key_file!r} are not a PEM certificate and its private "
                         f"key: {exc.reason or exc}") from None
    if settings.tls_client_ca_file:
        try:
            context.load_verify_locations(settings.tls_client_ca_file)
        except ssl.SSLError as exc:
            raise ValueError(f"--tls-client-ca-file {settings.tls_client_ca_file!r} holds no PEM "
                             f"certificate: {exc.reason or exc}") from None


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured files (mutual TLS with a client CA), or None."""
    if not settings.tls_cert_file:
        return None
    client_ca = Path(settings.tls_client_ca_file).read_bytes() if (
        settings.tls_client_ca_file) else None
    return grpc.ssl_server_credentials(
        [(Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


async def start_grpc_server(
    settings: ServerSettings, servicer: CreditsServicer, interceptor: CallInterceptor,
    gate: CallGate,
) -> GrpcServer:
    """Our service, health and reflection on one server, every call through `interceptor`."""
    server = grpc.aio.server(
        interceptors=[interceptor],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # A second server on a port in use must fail, not share the port silently.
            ("grpc.so_reuseport", 0),
            # Ping idle connections and drop peers that do not answer.
            ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )
    credits_pb2_grpc.add_CreditsServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
    try:
        credentials = server_credentials(settings)
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {settings.listen}: {exc}") from exc
    if port == 0:
        raise OSError(f"cannot listen on {settings.listen}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return GrpcServer(server=server, health=health_servicer, gate=gate, port=port)
