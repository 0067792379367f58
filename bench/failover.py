#!/usr/bin/env python3
"""PostgreSQL failover under load, on loopback (issue 33; docs/operating.md, "PostgreSQL with
a standby"): a pg_auto_failover monitor, a primary and a synchronous standby (Debian's
postgresql-15 and pg_auto_failover, installed with apt-get when missing), a credits-service
on the multi-host URL (target_session_attrs=read-write), a reserve+commit load through the
client library (its retries keep each call's key), then a SIGKILL of the primary:

    .venv/bin/python bench/failover.py                   # kill the primary node (failover)
    .venv/bin/python bench/failover.py --kill postmaster # kill its postmaster alone
    .venv/bin/python bench/failover.py --monitor-defaults   # pg_auto_failover's own timeouts

It reports, as JSON: acknowledged operations lost (every hold and commit the client saw
succeed must be in the ledger afterwards; must be 0), the time from the kill to the first
write that succeeded after it, the status codes the client's attempts saw (retried with the
same key; never INTERNAL), and `credits-service verify` on the new primary. Runs as root
(PostgreSQL itself runs as the postgres user). Exit 1 if anything acknowledged was lost, an
attempt answered INTERNAL, or verify failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "client"))
sys.path.insert(0, str(ROOT / "generated"))
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PACKAGES = ("postgresql-15", "postgresql-15-auto-failover", "pg-auto-failover-cli")
# Tuned on the monitor, live (ALTER SYSTEM): a dead primary is noticed in about 3 s and
# demoted after 5 s, instead of pg_auto_failover's defaults (about 50 s in all, measured here)
TUNED = {"pgautofailover.health_check_period": "1000",
         "pgautofailover.health_check_timeout": "1000",
         "pgautofailover.health_check_max_retries": "1",
         "pgautofailover.health_check_retry_delay": "500",
         "pgautofailover.node_considered_unhealthy_timeout": "3000",
         "pgautofailover.primary_demote_timeout": "5000"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ensure_packages() -> None:
    if shutil.which("pg_autoctl") and (PG_BIN / "pg_ctl").exists():
        return
    print("installing", " ".join(PACKAGES), "...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=env)
    # Debian starts a cluster of its own on install: stopped, it is none of ours
    subprocess.run(["pg_ctlcluster", "15", "main", "stop"], check=False,
                   capture_output=True)


class Cluster:
    """A monitor and two nodes, each a `pg_autoctl ... --run` process run as postgres."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.ports = {"monitor": free_port(), "node1": free_port(), "node2": free_port()}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PATH": f"{PG_BIN}:{os.environ['PATH']}",
                "XDG_CONFIG_HOME": str(self.work / "config"),
                "XDG_DATA_HOME": str(self.work / "share")}

    def _run(self, name: str, *args: str) -> None:
        log = open(self.work / f"{name}.log", "ab")  # kept open for the process
        self.processes[name] = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", "pg_autoctl", *args], env=self._env(),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def monitor_uri(self) -> str:
        return (f"postgres://autoctl_node@127.0.0.1:{self.ports['monitor']}/pg_auto_failover"
                "?sslmode=disable")

    def url(self, database: str = "credits") -> str:
        hosts = ",".join(f"127.0.0.1:{self.ports[n]}" for n in ("node1", "node2"))
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"

    def pgdata(self, name: str) -> Path:
        return self.work / name

    async def form(self, tuned: bool) -> None:
        common = ["--pgctl", str(PG_BIN / "pg_ctl"), "--hostname", "127.0.0.1", "--auth",
                  "trust", "--no-ssl"]
        self._run("monitor", "create", "monitor", "--pgdata", str(self.pgdata("monitor")),
                  "--pgport", str(self.ports["monitor"]), *common, "--run")
        await self._until(lambda: self._sql("monitor", "SELECT 1") == "1", "the monitor")
        if tuned:
            for name, value in TUNED.items():
                self._sql("monitor", f"ALTER SYSTEM SET {name} = {value}")
            self._sql("monitor", "SELECT pg_reload_conf()")
        for node in ("node1", "node2"):
            self._run(node, "create", "postgres", "--pgdata", str(self.pgdata(node)),
                      "--pgport", str(self.ports[node]), "--dbname", "credits",
                      "--monitor", self.monitor_uri, "--name", node, *common, "--run")
            want = "single" if node == "node1" else "secondary"  # alone, then a pair
            await self._until(lambda n=node, w=want: self.state(n) == w, f"{node} {want}")
        await self._until(lambda: self.state("node1") == "primary"
                          and self.state("node2") == "secondary", "replication")

    def _sql(self, name: str, sql: str, database: str | None = None) -> str:
        database = database or ("pg_auto_failover" if name == "monitor" else "postgres")
        result = subprocess.run(
            [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.ports[name]), "-U",
             "postgres", "-d", database, "-AtX",
             "-c", sql], capture_output=True, text=True, timeout=10,
            env={**os.environ, "PGCONNECT_TIMEOUT": "2"})
        return result.stdout.strip() if result.returncode == 0 else ""

    def state(self, node: str) -> str:
        return self._sql("monitor", "SELECT reportedstate FROM pgautofailover.node "
                                    f"WHERE nodename = '{node}'")

    def primary(self) -> str:
        """The node the monitor wants primary (a dead one still reports its old state)."""
        return self._sql("monitor", "SELECT nodename FROM pgautofailover.node "
                                    "WHERE goalstate IN ('primary', 'wait_primary', "
                                    "'single') ORDER BY nodename LIMIT 1")

    async def _until(self, condition: Any, what: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}; logs in {self.work}")
            await asyncio.sleep(0.5)

    def kill(self, node: str, what: str) -> None:
        """SIGKILL the node's postmaster, and with `what` == 'node' its pg_autoctl
        processes too (the whole node gone, as when its machine dies)."""
        pid_file = self.pgdata(node) / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0])
        victims = [postmaster]
        if what == "node":
            found = subprocess.run(["pgrep", "-f", f"pg_autoctl.*{self.pgdata(node)}"],
                                   capture_output=True, text=True).stdout.split()
            found += subprocess.run(["pgrep", "-s", str(os.getsid(
                self.processes[node].pid))], capture_output=True, text=True).stdout.split()
            victims += [int(pid) for pid in found]
        for pid in set(victims):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        import psutil

        for name in self.ports:  # each postmaster with all its children (logger, workers)
            try:
                postmaster = psutil.Process(int(
                    (self.pgdata(name) / "postmaster.pid").read_text().split()[0]))
                for process in [*postmaster.children(recursive=True), postmaster]:
                    process.kill()
            except (OSError, ValueError, IndexError, psutil.Error):
                pass
        for process in self.processes.values():
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        subprocess.run(["pkill", "-9", "-f", str(self.work)], capture_output=True)


class Tally:
    """Every attempt's status code, by a client interceptor (the client retries behind it)."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}

    def interceptor(self) -> Any:
        import grpc

        tally = self

        class Count(grpc.aio.UnaryUnaryClientInterceptor):
            async def intercept_unary_unary(self, continuation: Any, details: Any,
                                            request: Any) -> Any:
                call = await continuation(details, request)
                try:
                    await call
                    code = "OK"
                except grpc.aio.AioRpcError as error:
                    code = error.code().name
                tally.codes[code] = tally.codes.get(code, 0) + 1
                return call

        return Count()


async def drive(target: str, stop: asyncio.Event, acked: list[dict[str, Any]],
                tally: Tally, workers: int) -> list[str]:
    """Reserve 1 credit then commit it, over and over, recording what was acknowledged."""
    from credits_client import CreditsClient, CreditsError

    failures: list[str] = []
    async with CreditsClient(target, timeout_s=60, attempt_timeout_s=3, attempts_max=60,
                             backoff_max_s=0.5, interceptors=[tally.interceptor()]) as client:
        await client.grant("ha-0", 10**9, idempotency_key="ha-fund")

        async def worker(n: int) -> None:
            while not stop.is_set():
                key = f"ha-{n}-{uuid.uuid4().hex}"
                record: dict[str, Any] = {"key": key, "started_at": time.monotonic()}
                try:
                    held = await client.reserve("ha-0", amount=1, idempotency_key=key)
                    record.update(reservation_id=held.reservation.reservation_id,
                                  reserved_at=time.monotonic())
                    acked.append(record)
                    await client.commit(held.reservation.reservation_id)
                    record["committed_at"] = time.monotonic()
                except CreditsError as error:
                    failures.append(f"{error.reason}: {error.message}")

        await asyncio.gather(*(worker(n) for n in range(workers)))
    return failures


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ensure_packages()
    work = Path(tempfile.mkdtemp(prefix="credits-ha-"))
    shutil.chown(work, "postgres", "postgres")
    cluster = Cluster(work)
    server = None
    try:
        began = time.monotonic()
        await cluster.form(tuned=not args.monitor_defaults)
        formed_s = time.monotonic() - began
        url = cluster.url()
        port = free_port()
        server = await asyncio.to_thread(start_service, url, port, work)
        await asyncio.sleep(3)
        stop = asyncio.Event()
        acked: list[dict[str, Any]] = []
        tally = Tally()
        load = asyncio.ensure_future(drive(f"127.0.0.1:{port}", stop, acked, tally,
                                           args.workers))
        await asyncio.sleep(args.before_s)
        victim = await asyncio.to_thread(cluster.primary)
        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill, victim, args.kill)
        await asyncio.sleep(args.after_s)
        stop.set()
        failures = await load
        # the first hold asked for after the kill that succeeded: when it was acknowledged
        first_write_after = min((r["reserved_at"] for r in acked
                                 if r["started_at"] > killed_at), default=None)
        primary_after = await asyncio.to_thread(cluster.primary)
        lost = await lost_writes(url, acked)
        verified = await asyncio.to_thread(service_command, "verify", url)
        return {
            "killed": f"{victim} ({args.kill})", "primary_after": primary_after,
            "monitor": "defaults" if args.monitor_defaults else "tuned",
            "cluster_formed_s": round(formed_s, 1),
            "acknowledged_holds": len(acked),
            "acknowledged_commits": sum("committed_at" in r for r in acked),
            "lost": lost,
            "first_write_after_kill_s": (round(first_write_after - killed_at, 2)
                                         if first_write_after else None),
            "attempt_codes": tally.codes,
            "calls_failed_after_retries": failures[:10],
            "verify": "ok" if verified.returncode == 0 else verified.stdout[-2000:],
            "work_dir": str(work) if args.keep else None,
        }
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        cluster.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def service_command(command: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "credits_service", command, "--database-url",
                           url], cwd=ROOT, env=service_env(), capture_output=True, text=True,
                          timeout=300)


def service_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
    env["CREDITS_AUTH_DISABLED"] = "1"
    return env


def start_service(url: str, port: int, work: Path) -> subprocess.Popen[bytes]:
    """Migrate, then `credits-service serve` on the multi-host URL."""
    migrated = service_command("migrate", url)
    if migrated.returncode != 0:
        raise RuntimeError(f"migrate failed: {migrated.stdout}{migrated.stderr}")
    log = open(work / "serve.log", "wb")  # kept open for the process
    return subprocess.Popen(
        [sys.executable, "-m", "credits_service", "serve", "--database-url", url, "--listen",
         f"127.0.0.1:{port}", "--metrics-listen", "", "--rate-limit-per-s", "0",
         "--no-migrate-on-start", "--log-level", "WARNING"],
        cwd=ROOT, env=service_env(), stdout=log, stderr=subprocess.STDOUT)


async def lost_writes(url: str, acked: list[dict[str, Any]]) -> dict[str, int]:
    """Acknowledged holds missing from the ledger, and acknowledged commits not COMMITTED."""
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT reservation_id::text AS id, status FROM reservations "
            "WHERE reservation_id = ANY($1::uuid[])", [r["reservation_id"] for r in acked])
    finally:
        await connection.close()
    status = {row["id"]: row["status"] for row in rows}
    return {"holds": sum(r["reservation_id"] not in status for r in acked),
            "commits": sum("committed_at" in r and status.get(r["reservation_id"])
                           != "COMMITTED" for r in acked)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kill", choices=("node", "postmaster"), default="node")
    parser.add_argument("--monitor-defaults", action="store_true",
                        help="keep pg_auto_failover's health-check timeouts (slower failover)")
    parser.add_argument("--workers", type=int, default=16, help="calls in flight")
    parser.add_argument("--before-s", type=float, default=10, help="load before the kill")
    parser.add_argument("--after-s", type=float, default=30, help="load after the kill")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--out", default="", help="write the report here too")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: PostgreSQL runs as the postgres user (runuser)")
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    bad = (report["lost"]["holds"] or report["lost"]["commits"] or report["verify"] != "ok"
           or "INTERNAL" in report["attempt_codes"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
