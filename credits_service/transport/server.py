"""The grpc.aio server: our service beside the standard health and reflection services."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from credits.v1 import credits_pb2, credits_pb2_grpc
from credits_service.settings import Settings
from credits_service.transport.servicer import CreditsServicer

SERVICE_NAME = credits_pb2.DESCRIPTOR.services_by_name["CreditsService"].full_name


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int

    async def stop(self, grace_s: float) -> None:
        """Health NOT_SERVING at once, refuse new calls, give in-flight calls `grace_s`."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


async def start_grpc_server(settings: Settings, servicer: CreditsServicer) -> GrpcServer:
    server = grpc.aio.server(
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # A second server on a port in use must fail, not share the port silently.
            ("grpc.so_reuseport", 0),
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
        port = server.add_insecure_port(settings.listen)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {settings.listen}: {exc}") from exc
    if port == 0:
        raise OSError(f"cannot listen on {settings.listen}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return GrpcServer(server=server, health=health_servicer, port=port)
