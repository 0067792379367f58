#!/usr/bin/env python3
"""The client library's overhead (issue 31): the reserve+commit cycle through raw generated
stubs against the same cycle through CreditsClient (reserve then commit, and the `hold`
context manager, which also runs its keep-alive task), through the real server on its own
embedded PostgreSQL, from one client process.

    .venv/bin/python bench/client_bench.py --duration-s 15 --rounds 3

Rounds alternate (raw, client, hold) and each figure is the median of --rounds: cycles per
second, and the client process's CPU per cycle (what the library adds is client CPU; on two
shared cores it also slows the server). Overhead = 1 - client / raw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "generated"))
sys.path.insert(0, str(ROOT / "client"))

import grpc  # noqa: E402
from load import Server  # noqa: E402

from credits.v1 import credits_pb2 as pb  # noqa: E402
from credits.v1 import credits_pb2_grpc  # noqa: E402
from credits_client import CreditsClient  # noqa: E402

ACCOUNTS = 1000


async def run(cycle, in_flight: int, duration_s: float) -> tuple[float, float]:
    """Cycles per second and client CPU microseconds per cycle of `in_flight` loops."""
    done = 0
    stop_at = time.monotonic() + duration_s

    async def loop(n: int) -> None:
        nonlocal done
        i = n
        while time.monotonic() < stop_at:
            await cycle(f"cb-{i % ACCOUNTS}")
            done += 1
            i += in_flight

    cpu_before, started = time.process_time(), time.monotonic()
    await asyncio.gather(*(loop(n) for n in range(in_flight)))
    elapsed = time.monotonic() - started
    return done / elapsed, (time.process_time() - cpu_before) / max(done, 1) * 1e6


async def main(args: argparse.Namespace) -> None:
    server = Server([])
    try:
        server.wait_serving()
        channel = grpc.aio.insecure_channel(server.target)
        stub = credits_pb2_grpc.CreditsServiceStub(channel)
        client = CreditsClient(server.target)
        await asyncio.gather(*(client.grant(f"cb-{i}", 10**9, idempotency_key=f"cb-{i}")
                               for i in range(ACCOUNTS)))

        async def raw(account: str) -> None:
            reserved = await stub.CheckAndReserve(pb.CheckAndReserveRequest(
                account_id=account, amount=2, idempotency_key=str(uuid.uuid4())), timeout=10)
            await stub.Commit(pb.CommitRequest(
                reservation_id=reserved.reservation.reservation_id, amount=1), timeout=10)

        async def with_client(account: str) -> None:
            held = await client.reserve(account, amount=2)
            await client.commit(held.reservation.reservation_id, amount=1)

        async def with_hold(account: str) -> None:
            async with client.hold(account, amount=2) as hold:
                hold.commit(amount=1)

        kinds = {"raw_stubs": raw, "client": with_client, "client_hold": with_hold}
        for cycle in kinds.values():  # warm up
            await run(cycle, args.in_flight, 2)
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in kinds}
        for _ in range(args.rounds):
            for name, cycle in kinds.items():
                figures[name].append(await run(cycle, args.in_flight, args.duration_s))
        medians = {name: {"cycles_per_s": round(statistics.median(r for r, _ in runs)),
                          "client_cpu_us_per_cycle": round(
                              statistics.median(c for _, c in runs))}
                   for name, runs in figures.items()}
        raw_rate = medians["raw_stubs"]["cycles_per_s"]
        print(json.dumps({
            "medians": medians,
            "overhead_vs_raw": {name: f"{1 - m['cycles_per_s'] / raw_rate:+.1%}"
                                for name, m in medians.items() if name != "raw_stubs"},
            "rounds": {name: [round(r) for r, _ in runs] for name, runs in figures.items()},
            "in_flight": args.in_flight, "duration_s": args.duration_s,
        }, indent=2))
        await client.close()
        await channel.close()
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=32)
    asyncio.run(main(parser.parse_args()))
