#!/usr/bin/env python3
"""Our gRPC server with a ledger that answers from memory: the ceiling of a unary call.

    .venv/bin/python bench/load.py --no-database --scenarios health,reserve,cycle,release

load.py starts this instead of `credits-service serve` when given --no-database. Everything
a call goes through in the real server runs: the grpc.aio server with its options and
event loop, the health service, our interceptor (authentication, admission, metrics, the
error table) and servicer (validation, mapping to and from protobuf). Only the Ledger is
replaced: Grant, CheckAndReserve, Commit and Release each answer with one result built at
start-up, and no PostgreSQL runs. So what the driver measures here is the most a call of ours
can reach on this machine before any database work, against the health-Check floor of the
same server (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from credits_service.app import build_gatekeeper, serve_grpc
from credits_service.cli import freeze_startup_heap, run_loop
from credits_service.domain.commands import CommitResult, GrantResult, ReleaseResult, ReserveResult
from credits_service.domain.model import (
    BalanceSnapshot,
    EntryType,
    GrantType,
    LedgerEntry,
    Lot,
    LotDraw,
    Reservation,
    ReservationStatus,
)
from credits_service.settings import Settings
from credits_service.telemetry import Metrics


class MemoryLedger:
    """The Ledger calls of the driver's health, reserve, cycle, release and grant scenarios,
    each answered with the same result, shaped like the real one (a reservation of one credit
    drawn from one lot). Any other call fails, as an unexpected error would."""

    def __init__(self) -> None:
        now = datetime.now(UTC)
        balance = BalanceSnapshot("bench-0", 10**12, 1, 1, 10**12, 0)
        reserved = Reservation(
            reservation_id=str(uuid.uuid4()), account_id="bench-0", amount=1,
            status=ReservationStatus.ACTIVE, committed_amount=None, create_time=now,
            expire_time=now + timedelta(minutes=5), finish_time=None, metadata={},
            draws=(LotDraw(lot_id=1, held=1),),
        )
        entry = LedgerEntry(
            entry_id=1, account_id="bench-0", entry_type=EntryType.GRANT,
            grant_type=GrantType.ADMIN_GRANT, amount=10**12, balance_after=10**12,
            reservation_id=None, reason="", metadata={}, actor="anonymous", create_time=now,
            lot_id=1,
        )
        lot = Lot(
            lot_id=1, account_id="bench-0", grant_type=GrantType.ADMIN_GRANT, priority=50,
            expire_time=None, amount=10**12, remaining=10**12, held=0, expired=False,
            grant_entry_id=1, create_time=now,
        )
        self._granted = GrantResult(entry, balance, lot)
        self._reserved = ReserveResult(reserved, balance)
        self._committed = CommitResult(
            dataclasses.replace(reserved, status=ReservationStatus.COMMITTED, committed_amount=1,
                                finish_time=now, draws=(LotDraw(lot_id=1, held=1, consumed=1),)),
            dataclasses.replace(entry, entry_id=2, entry_type=EntryType.USAGE, grant_type=None,
                                amount=-1, balance_after=10**12 - 1,
                                reservation_id=reserved.reservation_id, lot_id=None),
            dataclasses.replace(balance, balance=10**12 - 1, reserved=0,
                                active_reservation_count=0, lifetime_used=1),
        )
        self._released = ReleaseResult(
            dataclasses.replace(reserved, status=ReservationStatus.RELEASED, finish_time=now,
                                release_reason="bench"),
            dataclasses.replace(balance, reserved=0, active_reservation_count=0),
        )

    async def grant(self, command: Any, actor: str) -> GrantResult:
        return self._granted

    async def check_and_reserve(self, command: Any, actor: str) -> ReserveResult:
        return self._reserved

    async def commit(self, command: Any, actor: str) -> CommitResult:
        return self._committed

    async def release(self, command: Any) -> ReleaseResult:
        return self._released


async def _serve(settings: Settings) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    server = await serve_grpc(
        settings, MemoryLedger(),  # type: ignore[arg-type]
        build_gatekeeper(settings.auth, settings.server.listen), Metrics(),
    )
    freeze_startup_heap()
    await stopping.wait()
    await server.stop(settings.server.shutdown_grace_s)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    Settings.add_arguments(parser)
    settings = Settings.load(parser.parse_args(argv))
    return run_loop(settings.server.event_loop, _serve(settings))


if __name__ == "__main__":
    sys.exit(main())
