"""A second server for a test of its own settings (a plans file, auto-creation), beside the
session's shared one, on the same database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from credits.v1 import credits_pb2_grpc
from credits_service.app import Application

EXAMPLE_PLANS = Path(__file__).resolve().parents[2] / "docs" / "plans.example.toml"


@asynccontextmanager
async def serving_app(
    settings: Any, **overrides: Any
) -> AsyncIterator[tuple[Application, credits_pb2_grpc.CreditsServiceStub]]:
    """The server of `settings` with `overrides` (flat names), and a stub on it."""
    app = await Application.start(settings.replace(**overrides) if overrides else settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield app, credits_pb2_grpc.CreditsServiceStub(channel)
    finally:
        await app.stop()


@asynccontextmanager
async def serving(settings: Any) -> AsyncIterator[credits_pb2_grpc.CreditsServiceStub]:
    async with serving_app(settings) as (_, stub):
        yield stub
