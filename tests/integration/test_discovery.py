"""The server answers grpc.health.v1 health checks and server reflection beside
credits.v1.CreditsService, so that load balancers and grpcurl can find it."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


async def test_health_reports_serving_for_the_server_and_the_service(app):
    """grpc.health.v1 Check is SERVING for "" and for credits.v1.CreditsService."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "credits.v1.CreditsService"):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_credits_service(app):
    """Server reflection lists credits.v1.CreditsService and serves its file descriptor."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="credits.v1.CreditsService"),
        ]
        responses = [r async for r in reflection.ServerReflectionInfo(iter(requests))]

    names = {s.name for s in responses[0].list_services_response.service}
    assert {"credits.v1.CreditsService", "grpc.health.v1.Health"} <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto
