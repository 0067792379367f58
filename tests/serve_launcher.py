"""Run the real `credits-service` command as a subprocess the way an operator does, with its
embedded PostgreSQL in a data directory under tmp, and clean up whatever it leaves behind.

`launcher` (a fixture) starts servers; every process it started is killed and every embedded
cluster stopped at the end of the test, whatever its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from credits.v1 import credits_pb2_grpc
from credits_service.persistence.embedded import EmbeddedPostgres
from credits_service.settings import ENV_PREFIX
from credits_service.transport.grpc.server import SERVICE_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 20.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# --- helpers -------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port free now and outside the kernel's ephemeral range. A port from bind(0)
    lies inside that range: an outgoing connection could be given it as its local port before
    the server binds it (seen once in CI: "Address already in use")."""
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(10_000, low) if low > 10_000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free loopback port")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0  # unknown: let the kernel choose


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without CREDITS_* settings (a developer's CREDITS_DATABASE_URL
    must not turn these tests away from the embedded path), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["PYTHONUNBUFFERED"] = "1"
    env[ENV_PREFIX + "AUTH_DISABLED"] = "1"  # these servers listen on loopback
    env.update(extra)
    return env


def processes_using(path: Path) -> list[str]:
    """Live processes whose command line names `path` (or something inside it)."""
    pattern = re.compile(re.escape(str(path)) + r"(?=$|[\s/])")
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
                continue
            cmdline = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if pattern.search(cmdline):
            found.append(f"pid {proc.pid}: {cmdline}")
    return found


async def assert_nothing_running_in(data_dir: Path, timeout_s: float = 5.0) -> None:
    """No process (the service, postgres or its children) is left using `data_dir`."""
    deadline = time.monotonic() + timeout_s
    while (left := processes_using(data_dir)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not left, f"processes still running in {data_dir}:\n" + "\n".join(left)
    assert not (data_dir / "pgdata" / "postmaster.pid").exists(), "postmaster.pid left behind"


@dataclass
class ServeProcess:
    popen: subprocess.Popen[bytes]
    data_dir: Path
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"exit code {self.popen.poll()}; output of {self.popen.args}:\n{self.log()}"

    async def wait_serving(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Health Check SERVING, for the server and for the credits service."""
        deadline = time.monotonic() + timeout_s
        # Reconnect quickly: grpc's default backoff (1 s, growing) would notice a restarted
        # server seconds late.
        options = [("grpc.initial_reconnect_backoff_ms", 50),
                   ("grpc.min_reconnect_backoff_ms", 50),
                   ("grpc.max_reconnect_backoff_ms", 100)]
        async with grpc.aio.insecure_channel(self.address, options=options) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.popen.poll() is not None:
                    pytest.fail(f"serve exited before it was SERVING; {self.describe()}")
                try:
                    statuses = [
                        (await health.Check(health_pb2.HealthCheckRequest(service=name),
                                            timeout=1.0)).status
                        for name in ("", SERVICE_NAME)
                    ]
                    if statuses == [SERVING, SERVING]:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"not SERVING within {timeout_s}s; {self.describe()}")
                await asyncio.sleep(0.1)

    async def wait_exit(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while (code := self.popen.poll()) is None:
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not exit within {timeout_s}s; {self.describe()}")
            await asyncio.sleep(0.05)
        return code

    async def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        self.popen.send_signal(signum)
        return await self.wait_exit(timeout_s)


class Launcher:
    """Starts `credits-service` subprocesses and cleans up after them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []
        self.data_dirs: set[Path] = set()
        self._logs = 0

    def data_dir(self, name: str = "data") -> Path:
        path = self.tmp_path / name
        self.data_dirs.add(path)
        return path

    def serve(
        self, data_dir: Path, *args: str, port: int | None = None, grace_s: float = 5.0
    ) -> ServeProcess:
        self.data_dirs.add(data_dir)
        port = free_port() if port is None else port
        self._logs += 1
        log_path = self.tmp_path / f"serve-{self._logs}.log"
        command = [
            sys.executable, "-m", "credits_service", "serve",
            "--data-dir", str(data_dir),
            "--listen", f"127.0.0.1:{port}",
            "--shutdown-grace-s", str(grace_s),
            "--metrics-listen", "127.0.0.1:0",
            *args,
        ]
        with log_path.open("wb") as log:
            popen = subprocess.Popen(command, cwd=REPO_ROOT, env=clean_env(),
                                     stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT)
        self.processes.append(popen)
        return ServeProcess(popen, data_dir, port, log_path)

    async def run(
        self, *args: str, env: dict[str, str] | None = None, timeout_s: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """`credits-service ARGS...` to completion, without blocking the event loop."""
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "credits_service", *args],
            cwd=REPO_ROOT, env=clean_env(**(env or {})), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout_s,
        )

    def cleanup(self) -> None:
        for popen in self.processes:
            if popen.poll() is None:
                popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=10)
        for data_dir in self.data_dirs:
            pgdata = data_dir / "pgdata"
            if (pgdata / "postmaster.pid").exists():
                with contextlib.suppress(Exception):
                    # Attaches to the cluster left running and stops it.
                    EmbeddedPostgres.start(pgdata).stop()
            # Last resort: whatever we started that still runs in the directory, by pid.
            for proc in psutil.process_iter(["cmdline"]):
                with contextlib.suppress(psutil.Error):
                    if any(str(data_dir) in part for part in proc.info["cmdline"] or []):
                        if proc.pid != os.getpid():
                            proc.kill()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.cleanup()


@contextlib.asynccontextmanager
async def credits_stub(address: str) -> AsyncIterator[credits_pb2_grpc.CreditsServiceStub]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield credits_pb2_grpc.CreditsServiceStub(channel)
