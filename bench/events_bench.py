#!/usr/bin/env python3
"""Events (issue 30): commit-to-stream latency of WatchEvents at a steady rate of changes, and
events lost across a `kill -9` of the server with the consumer resuming from its cursor,
through the real server on its own embedded PostgreSQL.

    .venv/bin/python bench/events_bench.py --rate 500 --duration-s 30

Latency: one CheckAndReserve of 1 per change (the hot path's change) to one of 1,000 funded
accounts, paced at --rate, each writing one RESERVED event; one consumer, in a process of its
own, watches from now. Each event's latency is from the call's reply (the commit
acknowledged) to the event's arrival on the stream ("from reply", which can be below zero: the
stream may be faster than the reply), and from the call's send ("from send", an upper bound on
commit-to-stream). p50, p99 and max of both.

Kill: the same load; a consumer that saves the cursor of every event it handles; the server
is killed with SIGKILL mid-load and started again on the same data directory and port. The
writer retries a failed call with its idempotency key until it is acknowledged; the consumer
reconnects with its saved cursor. Lost: acknowledged holds whose event the consumer never got,
and events in the outbox it never got; duplicates: events it got twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "generated"))

import grpc  # noqa: E402
import orjson  # noqa: E402
from load import Server  # noqa: E402

from credits.v1 import credits_pb2 as pb  # noqa: E402
from credits.v1 import credits_pb2_grpc  # noqa: E402

ACCOUNTS = 1000
RESERVED = pb.EVENT_TYPE_RESERVED


def _percentiles(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    if not ordered:
        return {}
    return {"p50": round(statistics.median(ordered), 2),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max": round(ordered[-1], 2)}


async def fund(stub) -> None:
    await asyncio.gather(*(stub.Grant(pb.GrantRequest(
        account_id=f"ev-{i}", amount=10**9, type=pb.GRANT_TYPE_PURCHASE,
        idempotency_key=f"fund-{i}")) for i in range(ACCOUNTS)))


class Writer:
    """Holds (CheckAndReserve of 1, the hot path's change) paced at `rate` per second; each
    retried with its key until acknowledged."""

    def __init__(self, stubs, rate: float) -> None:
        self.stubs = stubs
        self.rate = rate
        # reservation id -> (first send, acknowledged)
        self.acked_s: dict[str, tuple[float, float]] = {}
        self.failures: dict[str, int] = {}

    async def reserve(self, n: int) -> None:
        key = str(uuid.uuid4())
        request = pb.CheckAndReserveRequest(account_id=f"ev-{n % ACCOUNTS}", amount=1,
                                            idempotency_key=key)
        sent = time.monotonic()
        for attempt in range(600):
            try:
                reply = await self.stubs[n % len(self.stubs)].CheckAndReserve(
                    request, timeout=5)
                self.acked_s[reply.reservation.reservation_id] = (sent, time.monotonic())
                return
            except grpc.aio.AioRpcError as failure:
                name = failure.code().name
                self.failures[name] = self.failures.get(name, 0) + 1
                await asyncio.sleep(0.1 if attempt < 100 else 0.5)
        raise SystemExit(f"a hold was never acknowledged: {key}")

    async def run(self, duration_s: float) -> None:
        tasks = []
        started = time.monotonic()
        n = 0
        while (elapsed := time.monotonic() - started) < duration_s:
            due = int(elapsed * self.rate) + 1
            while n < due:
                tasks.append(asyncio.create_task(self.reserve(n)))
                n += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)


class Consumer:
    """Follows RESERVED events, saving the cursor of each one handled; reconnects with it."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.cursor = ""
        self.arrived_s: dict[str, float] = {}  # reservation id -> arrival
        self.event_ids: list[int] = []
        self.reconnects = 0
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with grpc.aio.insecure_channel(self.target) as channel:
                    stub = credits_pb2_grpc.CreditsServiceStub(channel)
                    call = stub.WatchEvents(pb.WatchEventsRequest(
                        cursor=self.cursor, event_types=[RESERVED]))
                    while not stop.is_set():
                        response = await call.read()
                        if response is grpc.aio.EOF:
                            break
                        if response.HasField("event"):
                            data = orjson.loads(response.event.data_json)
                            self.arrived_s[data["reservation_id"]] = time.monotonic()
                            self.event_ids.append(response.event.event_id)
                        self.cursor = response.cursor  # handled: saved
                        self.ready.set()
                    call.cancel()
            except grpc.aio.AioRpcError:
                self.reconnects += 1
                await asyncio.sleep(0.2)


def _channels(target: str, count: int = 4):
    channels = [grpc.aio.insecure_channel(target) for _ in range(count)]
    return channels, [credits_pb2_grpc.CreditsServiceStub(c) for c in channels]


def _consume(target: str, arrivals, ready, stop) -> None:
    """The latency consumer, in a process of its own: the writer's event loop does not delay
    it (time.monotonic is one clock across processes here)."""

    async def consume() -> None:
        consumer = Consumer(target)
        stopping = asyncio.Event()
        following = asyncio.create_task(consumer.run(stopping))
        await consumer.ready.wait()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        following.cancel()
        arrivals.update(consumer.arrived_s)

    asyncio.run(consume())


async def latency(args: argparse.Namespace) -> dict:
    import multiprocessing

    server = Server([])
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        arrivals, ready, stop = manager.dict(), manager.Event(), manager.Event()
        process = context.Process(target=_consume, args=(server.target, arrivals, ready, stop))
        try:
            server.wait_serving()
            channels, stubs = _channels(server.target)
            await fund(stubs[0])
            process.start()
            await asyncio.to_thread(ready.wait, 60)
            writer = Writer(stubs, args.rate)
            started = time.monotonic()
            await writer.run(args.duration_s)
            elapsed_s = time.monotonic() - started
            await asyncio.sleep(3)
            stop.set()
            await asyncio.to_thread(process.join, 30)
            return await _latency_figures(writer, dict(arrivals), elapsed_s, channels)
        finally:
            if process.is_alive():
                process.kill()
            server.stop()


async def _latency_figures(writer: Writer, arrived_s: dict[str, float], elapsed_s: float,
                           channels) -> dict:
    from_reply = [(arrived_s[e] - acked) * 1000
                  for e, (_, acked) in writer.acked_s.items() if e in arrived_s]
    from_send = [(arrived_s[e] - sent) * 1000
                 for e, (sent, _) in writer.acked_s.items() if e in arrived_s]
    for channel in channels:
        await channel.close()
    return {"changes": len(writer.acked_s),
            "changes_per_s": round(len(writer.acked_s) / elapsed_s),
            "missing": len(set(writer.acked_s) - set(arrived_s)),
            "latency_ms_from_reply": _percentiles(from_reply),
            "latency_ms_from_send": _percentiles(from_send)}


def _restart(server: Server) -> None:
    """SIGKILL the server process, then serve again on its data directory and port."""
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
    env["CREDITS_AUTH_DISABLED"] = "1"
    server.process = subprocess.Popen(
        [sys.executable, "-m", "credits_service", "serve", "--data-dir",
         str(Path(server.directory.name) / "data"), "--listen", f"127.0.0.1:{server.port}",
         "--metrics-listen", "", "--log-level", "WARNING", "--rate-limit-per-s", "0"],
        cwd=ROOT, env=env, stdout=server.log, stderr=subprocess.STDOUT)


async def kill(args: argparse.Namespace) -> dict:
    server = Server([])
    try:
        server.wait_serving()
        channels, stubs = _channels(server.target)
        await fund(stubs[0])
        consumer = Consumer(server.target)
        stop = asyncio.Event()
        following = asyncio.create_task(consumer.run(stop))
        await consumer.ready.wait()
        writer = Writer(stubs, args.rate)
        writing = asyncio.create_task(writer.run(args.duration_s))
        await asyncio.sleep(args.duration_s / 2)
        killed_at = len(writer.acked_s)
        await asyncio.to_thread(_restart, server)
        await asyncio.to_thread(server.wait_serving, 120)
        await writing
        deadline = time.monotonic() + 30
        while set(writer.acked_s) - set(consumer.arrived_s) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stop.set()
        following.cancel()
        # Every RESERVED event in the outbox, read from the oldest
        outbox: set[int] = set()
        call = stubs[0].WatchEvents(pb.WatchEventsRequest(from_oldest=True,
                                                          event_types=[RESERVED]))
        quiet = 0
        while quiet < 2:
            response = await call.read()
            if response.HasField("event"):
                outbox.add(response.event.event_id)
            elif outbox:
                quiet += 1
            if len(outbox) >= len(writer.acked_s):
                break
        call.cancel()
        for channel in channels:
            await channel.close()
        received = set(consumer.event_ids)
        return {"acknowledged": len(writer.acked_s), "acknowledged_before_kill": killed_at,
                "lost_acknowledged": len(set(writer.acked_s) - set(consumer.arrived_s)),
                "lost_from_outbox": len(outbox - received),
                "duplicates": len(consumer.event_ids) - len(received),
                "consumer_reconnects": consumer.reconnects,
                "writer_errors_retried": writer.failures}
    finally:
        server.stop()


async def main(args: argparse.Namespace) -> None:
    figures = {"rate": args.rate, "duration_s": args.duration_s}
    if args.part in ("latency", "all"):
        figures["latency"] = await latency(args)
    if args.part in ("kill", "all"):
        figures["kill_9"] = await kill(args)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500, help="changes per second")
    parser.add_argument("--duration-s", type=float, default=30)
    parser.add_argument("--part", choices=("latency", "kill", "all"), default="all")
    asyncio.run(main(parser.parse_args()))
