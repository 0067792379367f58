"""A second server for a test of its own settings (a plans file, auto-creation), beside the
session's shared one, on the same database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from credits.v1 import credits_pb2_grpc
from credits_service.app import Application

EXAMPLE_PLANS = Path(__file__).resolve().parents[2] / "docs" / "plans.example.toml"


@asynccontextmanager
async def serving(settings) -> AsyncIterator[credits_pb2_grpc.CreditsServiceStub]:
    app = await Application.start(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield credits_pb2_grpc.CreditsServiceStub(channel)
    finally:
        await app.stop()
