"""Health follows the database (issue 33): while no primary database answers (the cluster
frozen with SIGSTOP, as a dead or partitioned primary looks), the server's health is
NOT_SERVING, overall and for the credits service, so balancers and clients watching it send
calls elsewhere; once the database answers again it is SERVING, without a restart."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from credits_service.transport.grpc.server import SERVICE_NAME
from tests.reliability.pg_faults import (
    PostgresController,
    fault_postgres,  # noqa: F401 (fixture)
    running_service,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _until(health: health_pb2_grpc.HealthStub, status: int, timeout_s: float) -> float:
    began = time.monotonic()
    while True:
        answers = [(await health.Check(health_pb2.HealthCheckRequest(service=name),
                                       timeout=2)).status for name in ("", SERVICE_NAME)]
        if answers == [status, status]:
            return time.monotonic() - began
        assert time.monotonic() - began < timeout_s, f"health {answers}, not {status}"
        await asyncio.sleep(0.05)


async def test_health_is_not_serving_while_no_primary_answers(
        fault_postgres: PostgresController) -> None:  # noqa: F811 (fixture)
    async with running_service(fault_postgres.url, health_probe_interval_s=0.2) as service:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.app.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await _until(health, SERVING, 5)
            async with fault_postgres.paused():
                assert await _until(health, NOT_SERVING, 5) < 2
            assert await _until(health, SERVING, 10) < 5
