#!/usr/bin/env python3
"""Load driver: real gRPC calls against a real credits-service, from separate client processes.

    .venv/bin/python bench/load.py                                   # every scenario, 10 s each
    .venv/bin/python bench/load.py --scenarios health,reserve --in-flight 64 --duration-s 30
    .venv/bin/python bench/load.py --target 127.0.0.1:50051 --token "$TOKEN"   # a running server
    .venv/bin/python bench/load.py --no-database --distributions uniform   # no database work
    .venv/bin/python bench/load.py --scenarios cycle --fund-credits 0 \
        --server-arg=--plans-file=bench/unlimited.toml     # unlimited accounts without credits

Without --target it starts `credits-service serve` itself (embedded PostgreSQL in a temporary
data directory, loopback, auth disabled) and reports that server's RSS for each scenario: idle
before, once loaded (after --rss-settle-s of load), its peak under load, and idle after.
Scenarios: health (the standard health Check: the floor every unary RPC sits on), reserve
(CheckAndReserve), cycle (CheckAndReserve then Commit; counted in cycles), release
(CheckAndReserve then Release: the path of work that failed; counted in pairs), balance
(GetBalance), grant, history (a
page of 50), batch (BatchCheckAndReserve of --batch-size items; counted in items, and compared
with reserve). Accounts: uniform over --accounts, one hot account, or Zipf-skewed.
Prints a table and writes JSON (--out) with calls/s, p50/p90/p99 latency, errors by status code,
server RSS, the CPU each process spent (cores on average and microseconds per operation: the
clients always; the server and its PostgreSQL when the driver started them), each
scenario's throughput relative to the health floor, and its server-side cost ratio: server +
PostgreSQL CPU per operation over the server's CPU per health Check (for cycle and release,
also the Commit's or the Release's alone: the pair's cost less the reserve's).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("health", "reserve", "cycle", "release", "balance", "grant", "history", "batch")
DISTRIBUTIONS = ("uniform", "hot", "zipf")
NO_DATABASE_SCENARIOS = ("health", "reserve", "cycle", "release", "grant")  # memory_server.py
BALANCE_PER_ACCOUNT = 10**12


@dataclass
class Result:
    scenario: str
    distribution: str
    in_flight: int
    client_processes: int
    duration_s: float
    operations: int = 0
    operations_per_s: float = 0.0
    items_per_call: int = 1
    calls_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    server_rss_mb_before: float | None = None  # idle, just before the load
    server_rss_mb_loaded: float | None = None  # once the load has run --rss-settle-s
    server_rss_mb_peak: float | None = None  # the largest of the 1 s samples under load
    server_rss_mb_after: float | None = None  # idle again, just after the load
    # CPU spent while the scenario ran, by "client", "server" and "postgres" (the last two only
    # for a server this driver started): cores on average over the duration, and microseconds
    # per operation (per item for batches, per cycle or pair for cycle and release)
    cpu_cores: dict[str, float] = field(default_factory=dict)
    cpu_us_per_operation: dict[str, float] = field(default_factory=dict)
    ratio_to_floor: float | None = None
    ratio_to_reserve: float | None = None
    # The server-side cost ratio: (server + PostgreSQL CPU per operation) / (server CPU per
    # health Check), for a server this driver started
    cost_ratio: float | None = None
    # cycle and release: the cost ratio of the Commit (Release) alone, the pair's cost less
    # the reserve scenario's over the same accounts in the same run
    second_call_cost_ratio: float | None = None


# --- the client side (runs in worker processes) -------------------------------------------


def _account_picker(distribution: str, accounts: int, seed: int):
    rng = random.Random(seed)
    if distribution == "hot":
        return lambda: "bench-0"
    if distribution == "uniform":
        return lambda: f"bench-{rng.randrange(accounts)}"
    weights = list(itertools.accumulate(1 / (rank + 1) ** 1.1 for rank in range(accounts)))
    total = weights[-1]
    return lambda: f"bench-{bisect.bisect_left(weights, rng.random() * total)}"


async def _drive(target: str, token: str, scenario: str, distribution: str, accounts: int,
                 in_flight: int, duration_s: float, seed: int, batch_size: int,
                 feature: str = "", ) -> tuple[list[float], dict, float]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from credits.v1 import credits_pb2 as pb
    from credits.v1 import credits_pb2_grpc

    metadata = (("authorization", f"Bearer {token}"),) if token else None
    pick = _account_picker(distribution, accounts, seed)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    prefix = uuid.uuid4().hex[:12]
    counter = itertools.count()
    # What each reservation holds: 1 credit, or a feature's units (--feature NAME:UNITS)
    name, _, units = feature.partition(":")
    hold: dict = {"feature": name, "units": int(units or 0)} if name else {"amount": 1}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = credits_pb2_grpc.CreditsServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        async def one() -> None:
            if scenario == "health":
                await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            elif scenario == "grant":
                await stub.Grant(pb.GrantRequest(
                    account_id=pick(), amount=1, type=pb.GRANT_TYPE_PROMO,
                    idempotency_key=f"{prefix}-{next(counter)}"), metadata=metadata, timeout=10)
            elif scenario == "balance":
                await stub.GetBalance(pb.GetBalanceRequest(account_id=pick()),
                                      metadata=metadata, timeout=10)
            elif scenario == "history":
                await stub.History(pb.HistoryRequest(account_id=pick(), page_size=50),
                                   metadata=metadata, timeout=10)
            elif scenario == "batch":
                response = await stub.BatchCheckAndReserve(pb.BatchCheckAndReserveRequest(
                    items=[pb.CheckAndReserveRequest(
                        account_id=pick(), idempotency_key=f"{prefix}-{next(counter)}", **hold)
                        for _ in range(batch_size)]),
                    metadata=metadata, timeout=30)
                for result in response.results:
                    if result.HasField("error"):
                        reason = f"item:{result.error.reason}"
                        errors[reason] = errors.get(reason, 0) + 1
            else:
                reserved = await stub.CheckAndReserve(pb.CheckAndReserveRequest(
                    account_id=pick(), idempotency_key=f"{prefix}-{next(counter)}", **hold),
                    metadata=metadata, timeout=10)
                if scenario == "cycle":
                    await stub.Commit(pb.CommitRequest(
                        reservation_id=reserved.reservation.reservation_id), metadata=metadata,
                        timeout=10)
                elif scenario == "release":
                    await stub.Release(pb.ReleaseRequest(
                        reservation_id=reserved.reservation.reservation_id, reason="bench"),
                        metadata=metadata, timeout=10)

        stop_at = time.perf_counter() + duration_s

        async def loop() -> None:
            while (started := time.perf_counter()) < stop_at:
                try:
                    await one()
                    latencies.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError as error:
                    errors[error.code().name] = errors.get(error.code().name, 0) + 1

        cpu_started_s = time.process_time()  # every thread of this process, gRPC's included
        await asyncio.gather(*(loop() for _ in range(in_flight)))
        cpu_s = time.process_time() - cpu_started_s
    return latencies, errors, cpu_s


def _worker(args: tuple) -> tuple[list[float], dict, float]:
    return asyncio.run(_drive(*args))


# --- the server side ----------------------------------------------------------------------


class Server:
    """`credits-service serve` on a free loopback port with its own embedded PostgreSQL; or,
    with no_database, bench/memory_server.py: the same gRPC server over a ledger in memory."""

    def __init__(self, extra_args: list[str], no_database: bool = False) -> None:
        self.directory = tempfile.TemporaryDirectory(prefix="credits-bench-")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
        env["CREDITS_AUTH_DISABLED"] = "1"
        self.log = open(Path(self.directory.name) / "serve.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, *([str(ROOT / "bench" / "memory_server.py")] if no_database
                               else ["-m", "credits_service", "serve"]), "--data-dir",
             str(Path(self.directory.name) / "data"), "--listen", f"127.0.0.1:{self.port}",
             "--metrics-listen", "", "--log-level", "WARNING", "--rate-limit-per-s", "0",
             *extra_args],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout_s: float = 60) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.target) as channel:
            while True:
                try:
                    status = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start: see {self.log.name}")
                time.sleep(0.2)

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds used so far by the server process (all its threads) and by its embedded
        PostgreSQL (the postmaster, its live children and the children it has reaped)."""
        import psutil

        def used(times: Any, reaped: bool = False) -> float:
            total = times.user + times.system
            return total + (times.children_user + times.children_system if reaped else 0.0)

        spent = {"server": used(psutil.Process(self.process.pid).cpu_times())}
        pid_file = Path(self.directory.name) / "data" / "pgdata" / "postmaster.pid"
        try:
            postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
            total = used(postmaster.cpu_times(), reaped=True)
            for child in postmaster.children(recursive=True):
                try:
                    total += used(child.cpu_times())
                except psutil.NoSuchProcess:
                    pass
            spent["postgres"] = total
        except (OSError, ValueError, IndexError, psutil.Error):
            pass
        return spent

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        self.directory.cleanup()


async def _fund(target: str, token: str, accounts: int, credits: int) -> None:
    import grpc

    from credits.v1 import credits_pb2 as pb
    from credits.v1 import credits_pb2_grpc

    metadata = (("authorization", f"Bearer {token}"),) if token else None
    run = uuid.uuid4().hex[:8]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = credits_pb2_grpc.CreditsServiceStub(channel)
        queue = iter(range(accounts))

        async def funder() -> None:
            for index in queue:
                if not credits:  # the account on the server's default plan, no lot
                    await stub.EnsureAccount(pb.EnsureAccountRequest(
                        account_id=f"bench-{index}"), metadata=metadata, timeout=30)
                    continue
                await stub.Grant(pb.GrantRequest(
                    account_id=f"bench-{index}", amount=credits,
                    type=pb.GRANT_TYPE_ADMIN_GRANT, idempotency_key=f"fund-{run}-{index}"),
                    metadata=metadata, timeout=30)

        await asyncio.gather(*(funder() for _ in range(64)))


def _sample_rss(server: Server, pending: Any, result: Result, settle_s: float) -> None:
    """Sample the server's RSS every second while the clients run: the first sample once the
    load has run settle_s (the working set of full load, the start of a growth measurement
    that leaves out the ramp from idle), and the peak."""
    started = time.perf_counter()
    while not pending.ready():
        pending.wait(1.0)
        rss = server.rss_mb()
        result.server_rss_mb_peak = max(result.server_rss_mb_peak or 0.0, rss)
        if result.server_rss_mb_loaded is None and time.perf_counter() - started >= settle_s:
            result.server_rss_mb_loaded = rss


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def run(args: argparse.Namespace) -> list[Result]:
    server = None if args.target else Server(args.server_arg, args.no_database)
    target = args.target or server.target
    results: list[Result] = []
    try:
        if server:
            server.wait_serving()
        if not args.no_database:
            print(f"funding {args.accounts} accounts ...", file=sys.stderr)
            asyncio.run(_fund(target, args.token, args.accounts, args.fund_credits))
        for scenario, distribution in itertools.product(args.scenarios, args.distributions):
            if scenario == "health" and distribution != args.distributions[0]:
                continue  # accounts do not matter to the floor
            result = Result(scenario, distribution if scenario != "health" else "-",
                            args.in_flight, args.client_processes, args.duration_s)
            result.server_rss_mb_before = server.rss_mb() if server else None
            cpu_before = server.cpu_s() if server else {}
            per_process = max(1, args.in_flight // args.client_processes)
            jobs = [(target, args.token, scenario, distribution, args.accounts, per_process,
                     args.duration_s, seed, args.batch_size, args.feature)
                    for seed in range(args.client_processes)]
            with multiprocessing.get_context("spawn").Pool(args.client_processes) as pool:
                pending = pool.map_async(_worker, jobs)
                if server:
                    _sample_rss(server, pending, result, min(args.rss_settle_s,
                                                             args.duration_s / 2))
                outcomes = pending.get()
            cpu_s = {"client": sum(spent for _, _, spent in outcomes)}
            if server:  # the window includes the clients' start-up, when the server is idle
                cpu_s.update((name, spent - cpu_before[name])
                             for name, spent in server.cpu_s().items() if name in cpu_before)
            latencies = sorted(v for values, _, _ in outcomes for v in values)
            for _, errors, _ in outcomes:
                for code, count in errors.items():
                    result.errors[code] = result.errors.get(code, 0) + count
            result.items_per_call = args.batch_size if scenario == "batch" else 1
            result.operations = len(latencies) * result.items_per_call
            result.operations_per_s = round(result.operations / args.duration_s, 1)
            result.calls_per_s = round(len(latencies) / args.duration_s, 1)
            for name, spent in cpu_s.items():
                result.cpu_cores[name] = round(spent / args.duration_s, 3)
                if result.operations:
                    result.cpu_us_per_operation[name] = round(
                        spent / result.operations * 1e6, 1)
            result.latency_ms = {name: round(_percentile(latencies, q) * 1000, 3)
                                 for name, q in (("p50", .5), ("p90", .9), ("p99", .99))}
            result.server_rss_mb_after = server.rss_mb() if server else None
            results.append(result)
            print(_row(result), file=sys.stderr)
    finally:
        if server:
            server.stop()
    floor = next((r.operations_per_s for r in results if r.scenario == "health"), None)
    reserve = {r.distribution: r.operations_per_s for r in results if r.scenario == "reserve"}
    _cost_ratios(results)
    for result in results:
        if floor:
            result.ratio_to_floor = round(result.operations_per_s / floor, 3)
        if result.scenario == "batch" and reserve.get(result.distribution):
            result.ratio_to_reserve = round(
                result.operations_per_s / reserve[result.distribution], 3)
    return results


def _cost_ratios(results: list[Result]) -> None:
    """Each scenario's server-side cost ratio: what the server and its PostgreSQL spend on an
    operation, over what the server spends on a health Check (the floor's own cost)."""
    floor = next((r for r in results if r.scenario == "health"), None)
    floor_us = floor.cpu_us_per_operation.get("server") if floor else None
    if not floor_us:
        return

    def cost(r: Result) -> float | None:
        spent = r.cpu_us_per_operation
        return spent["server"] + spent["postgres"] if "postgres" in spent else None

    for result in results:
        if (spent := cost(result)) is not None:
            result.cost_ratio = round(spent / floor_us, 2)
    for result in results:
        if result.scenario not in ("cycle", "release"):
            continue
        reserve = next((r for r in results if r.scenario == "reserve"
                        and r.distribution == result.distribution), None)
        pair, alone = cost(result), cost(reserve) if reserve else None
        if pair is not None and alone is not None:
            result.second_call_cost_ratio = round((pair - alone) / floor_us, 2)


def _row(r: Result) -> str:
    rss = "-"
    if r.server_rss_mb_before is not None:
        loaded = (f"{r.server_rss_mb_loaded:.0f}"
                  if r.server_rss_mb_loaded is not None else "?")
        rss = (f"{r.server_rss_mb_before:.0f}->{loaded}->{r.server_rss_mb_after:.0f} MB "
               f"(peak {r.server_rss_mb_peak or 0:.0f})")
    ratio = f"{r.ratio_to_floor:.2f}" if r.ratio_to_floor is not None else "-"
    if r.cost_ratio is not None:
        ratio += f"  cost x{r.cost_ratio:.2f}"
    if r.second_call_cost_ratio is not None:
        ratio += f" (second call x{r.second_call_cost_ratio:.2f})"
    if r.ratio_to_reserve is not None:
        ratio += f" (x reserve {r.ratio_to_reserve:.2f})"
    cpu = " ".join(f"{name} {r.cpu_us_per_operation[name]:.0f} ({r.cpu_cores[name]:.2f})"
                   for name in ("client", "server", "postgres") if name in r.cpu_us_per_operation)
    return (f"{r.scenario:8} {r.distribution:8} {r.operations_per_s:>10.1f}/s "
            f"p50 {r.latency_ms.get('p50', 0):7.2f} p90 {r.latency_ms.get('p90', 0):7.2f} "
            f"p99 {r.latency_ms.get('p99', 0):7.2f} ms  x floor {ratio:>5}  errors "
            f"{r.errors or '{}'}  rss {rss}  cpu us/op (cores) {cpu or '-'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", type=lambda v: [s for s in v.split(",") if s],
                        help=f"default: {','.join(SCENARIOS)} (with --no-database: "
                             f"{','.join(NO_DATABASE_SCENARIOS)})")
    parser.add_argument("--distributions", default="uniform,hot,zipf",
                        type=lambda v: [s for s in v.split(",") if s])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--fund-credits", type=int, default=BALANCE_PER_ACCOUNT,
                        help="credits granted to each account first; 0: EnsureAccount only "
                             "(on the server's default plan: e.g. an unlimited one)")
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=100,
                        help="items per BatchCheckAndReserve call in the batch scenario")
    parser.add_argument("--feature", default="",
                        help="NAME:UNITS: reservations hold a feature's units, priced by the "
                             "server's rate card (e.g. --feature token:1000 with "
                             "--server-arg=--rate-card-file=bench/rates.toml), not 1 credit")
    parser.add_argument("--target", default="", help="host:port of a running server")
    parser.add_argument("--token", default="", help="bearer token for --target")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra flag for the server this driver starts (repeatable)")
    parser.add_argument("--rss-settle-s", type=float, default=10.0,
                        help="server RSS 'loaded' is sampled once the load has run this long "
                             "(at most half the duration)")
    parser.add_argument("--no-database", action="store_true",
                        help="start bench/memory_server.py instead: our gRPC server over a "
                             "ledger that answers from memory, to measure the ceiling of "
                             "a call before any database work")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.scenarios = args.scenarios or list(
        NO_DATABASE_SCENARIOS if args.no_database else SCENARIOS)
    bad = [s for s in args.scenarios if s not in SCENARIOS] + [
        d for d in args.distributions if d not in DISTRIBUTIONS]
    if bad:
        parser.error(f"unknown scenario or distribution: {bad}")
    if args.no_database and (args.target or set(args.scenarios) - set(NO_DATABASE_SCENARIOS)):
        parser.error("--no-database starts its own server, for the scenarios "
                     f"{','.join(NO_DATABASE_SCENARIOS)} only")
    results = run(args)
    print("\n".join(_row(r) for r in results))
    if args.out:
        Path(args.out).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
