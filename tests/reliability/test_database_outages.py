"""Database outages under load (F10, F11).

While client workers run a steady mix of Grant, CheckAndReserve, Commit, Release and
GetBalance with fixed keys and 2 s deadlines, the database is hit in turn by
pg_terminate_backend on the service's sessions, an immediate restart, and a pause (SIGSTOP of
the postmaster and every backend, then SIGCONT). The claims:

- F10: callers only ever see OK or a retriable code (UNAVAILABLE with a DATABASE_* reason,
  DEADLINE_EXCEEDED, ABORTED; CANCELLED as the README allows), never INTERNAL and never a wrong
  business answer: every account is rich and every reservation is the caller's own, so any business
  error at all would be wrong.
- F11: during the pause, calls fail by their deadline instead of hanging; and a caller with a
  generous deadline, stalled longer than the service's own bound (client-side statement
  timeout plus closing the connection), gets UNAVAILABLE from the service before SIGCONT (the
  soak's 20 s pauses; a 3 s pause is shorter than every bound, so that call just waits).
- The same Application recovers without a restart: throughput, counted in 0.5 s buckets, is
  back to half its pre-fault rate within 10 s of each fault ending.
- Each request sent again after the faults replays its first definite answer, balances are
  exactly what the definite answers add up to, and the ledger invariants hold.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from tests.ledger_checks import assert_invariants
from tests.reliability.pg_faults import (
    Attempt,
    CallLog,
    PostgresController,
    RunningService,
    fault_postgres,  # noqa: F401 (fixture)
    outcome_of,
    running_service,
    until_definite,
)
from tests.support.calls import commit_request, grant_request, release_request, reserve_request

ACCOUNTS = 4
INITIAL_CREDITS = 1_000_000_000  # so rich that INSUFFICIENT_CREDITS is always a wrong answer
DEADLINE_S = 2.0
# No reservation may expire during the test: RESERVATION_EXPIRED would be wrong.
RESERVATION_TTL_S = 600
GIVE_UP_S = 60.0  # a request still without a definite answer after this fails the test
WARMUP_S = 3.0
BASELINE_S = 2.0  # the pre-fault rate is measured over this window
BUCKET_S = 0.5
RECOVERY_SHARE = 0.5  # recovered: one bucket at half the pre-fault rate or more
RECOVERY_LIMIT_S = 10.0
PAUSE_S = (3.0, 20.0)  # the soak alternates; 20 s outlasts the service's own stall bounds
PROBE_DEADLINE_S = 30.0
# A statement the database never answers ends after the client-side command_timeout_s, and
# closing its connection may take up to 2 s more (SQLAlchemy's graceful close), plus slack.
CLOSE_GRACE_S = 4.0
CALL_OVERRUN_S = 1.0  # every call must end within its deadline plus this, whatever the fault
FINISH_TIMEOUT_S = 60.0
REPLAY_CONCURRENCY = 16
ALLOWED_OUTCOMES = ("OK", "UNAVAILABLE/DATABASE_UNAVAILABLE", "UNAVAILABLE/DATABASE_TIMEOUT",
                    "DEADLINE_EXCEEDED/", "ABORTED/CONCURRENCY_CONFLICT", "CANCELLED/")

Stub = credits_pb2_grpc.CreditsServiceStub


@dataclass
class Sent:
    """One keyed request, how to send it again, and its first definite answer."""

    method: str
    request: Any
    answer: Any


@dataclass
class Load:
    """Workers running flows (Grant, CheckAndReserve, Commit or Release, GetBalance) on a few
    accounts until told to stop; each flow's requests are retried until definite."""

    stubs: list[Stub]
    log: CallLog = field(default_factory=CallLog)
    sent: dict[str, Sent] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    definite_at_s: list[float] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def call(self, stub: Stub, key: str, method: str, request: Any) -> Any:
        rpc: Callable[..., Awaitable[Any]] = getattr(stub, method)
        answer = await until_definite(lambda: rpc(request, timeout=DEADLINE_S), self.log,
                                      give_up_s=GIVE_UP_S)
        self.definite_at_s.append(asyncio.get_running_loop().time())
        if isinstance(answer, grpc.aio.AioRpcError):
            self.wrong.append(f"{method} {key}: {answer.code().name} {answer.details()}")
            return None
        if key:
            self.sent[key] = Sent(method, request, answer)
        return answer

    async def worker(self, number: int) -> None:
        """Flows until told to stop; the flow under way always finishes (so no reservation is
        left)."""
        stub = self.stubs[number % len(self.stubs)]
        flow = 0
        while not self.stopping.is_set():
            account = f"acct-{(number + flow) % ACCOUNTS}"
            key = f"w{number}-f{flow}"
            await self.call(stub, f"{key}-grant", "Grant", grant_request(
                account, 10 + flow % 7, key=f"{key}-grant"))
            held = await self.call(stub, f"{key}-reservation", "CheckAndReserve", reserve_request(
                account, 5 + flow % 5, key=f"{key}-reservation", ttl_s=RESERVATION_TTL_S))
            if held is not None:
                reservation_id = held.reservation.reservation_id
                if flow % 3:
                    await self.call(stub, f"{key}-commit", "Commit",
                                    commit_request(reservation_id, 1 + flow % 4))
                else:
                    await self.call(stub, f"{key}-release", "Release",
                                    release_request(reservation_id))
            balance = await self.call(stub, "", "GetBalance",
                                      pb.GetBalanceRequest(account_id=account))
            if balance is not None and balance.balance.balance < INITIAL_CREDITS:
                self.wrong.append(f"GetBalance {account}: {balance.balance} below the grant")
            flow += 1

    def rate(self, start_s: float, end_s: float) -> float:
        """Definite answers per second in [start_s, end_s)."""
        return sum(start_s <= t < end_s for t in self.definite_at_s) / (end_s - start_s)


@dataclass
class FaultFigures:
    name: str
    pre_rate: float  # definite answers per second before the fault
    injected_s: float
    cleared_s: float
    recovery_s: float | None = None
    notes: str = ""

    def summary(self, load: Load) -> str:
        """What callers saw of this fault (call once every call started in it has ended)."""
        during = [a for a in load.log.attempts if self.injected_s <= a.started_s < self.cleared_s]
        first_ok_s = min((a.ended_s for a in load.log.attempts
                          if a.outcome == "OK" and a.ended_s >= self.cleared_s),
                         default=float("nan")) - self.cleared_s
        return (f"{self.name}: lasted {self.cleared_s - self.injected_s:.2f}s, "
                f"{len(during)} calls started in it ({dict(Counter(a.outcome for a in during))}),"
                f" slowest {slowest_s(during):.2f}s; first OK {first_ok_s:.2f}s after, "
                f"pre-fault {self.pre_rate:.0f}/s, recovered in {self.recovery_s}s; {self.notes}")


def slowest_s(attempts: list[Attempt]) -> float:
    return max((a.ended_s - a.started_s for a in attempts), default=0.0)


async def _recovery_s(load: Load, cleared_s: float, pre_rate: float) -> float | None:
    """Seconds from `cleared_s` to the end of the first bucket at RECOVERY_SHARE of
    `pre_rate`, or None if none within RECOVERY_LIMIT_S."""
    loop = asyncio.get_running_loop()
    bucket_end_s = BUCKET_S
    while bucket_end_s <= RECOVERY_LIMIT_S:
        await asyncio.sleep(max(cleared_s + bucket_end_s - loop.time(), 0))
        bucket_rate = load.rate(cleared_s + bucket_end_s - BUCKET_S, cleared_s + bucket_end_s)
        if bucket_rate >= RECOVERY_SHARE * pre_rate:
            return bucket_end_s
        bucket_end_s += BUCKET_S
    return None


async def _terminate(pg: PostgresController, service: RunningService, pause_s: float) -> str:
    return f"{await pg.terminate_service_backends()} sessions terminated"


async def _restart(pg: PostgresController, service: RunningService, pause_s: float) -> str:
    await pg.restart_immediate()
    return "restarted in immediate mode"


async def _probe(stub: Stub) -> tuple[str, float]:
    """One GetBalance with a generous deadline: its outcome and how long it took."""
    loop = asyncio.get_running_loop()
    started_s = loop.time()
    try:
        await stub.GetBalance(pb.GetBalanceRequest(account_id="acct-0"),
                              timeout=PROBE_DEADLINE_S)
    except grpc.aio.AioRpcError as error:
        return outcome_of(error), loop.time() - started_s
    return "OK", loop.time() - started_s


async def _pause(pg: PostgresController, service: RunningService, pause_s: float) -> str:
    """F11: the cluster frozen. A transaction caught mid-statement keeps its pool connection
    until the database answers again or the client-side statement timeout fires; a caller
    with a generous deadline (the probe) learns of the stall from the service's own bounds."""
    pool = service.app.engine.pool
    checked_out = []
    probe = asyncio.create_task(_probe(service.stubs[0]))
    try:
        async with pg.paused() as frozen:
            for _ in range(int(pause_s)):
                await asyncio.sleep(1.0)
                checked_out.append(pool.checkedout())
            await asyncio.sleep(pause_s % 1.0)
        probe_outcome, probe_s = await probe
    finally:
        probe.cancel()
    bound_s = service.app.settings.database.command_timeout_s + CLOSE_GRACE_S
    if pause_s > bound_s:
        assert probe_outcome.startswith("UNAVAILABLE/") and probe_s <= bound_s, (
            f"a stall of {pause_s}s held a call for {probe_s:.2f}s ({probe_outcome}), "
            f"the service's own bound is {bound_s}s"
        )
    return (f"{frozen} processes stopped; pool connections checked out, each second of the "
            f"pause: {checked_out} of {service.app.settings.database.pool_size}; probe with a "
            f"{PROBE_DEADLINE_S:.0f}s deadline: {probe_outcome} after {probe_s:.2f}s")


FAULTS: dict[str, Callable[[PostgresController, RunningService, float], Awaitable[str]]] = {
    "terminate": _terminate,
    "restart": _restart,
    "pause": _pause,
}


async def _check_replays(stubs: list[Stub], load: Load) -> None:
    """Every keyed request, sent again, replays its first definite answer (a Commit's
    balance is the current one, so only its reservation and entry are compared)."""
    in_flight = asyncio.Semaphore(REPLAY_CONCURRENCY)

    async def replay(number: int, key: str, sent: Sent) -> None:
        async with in_flight:
            stub = stubs[number % len(stubs)]
            again = await getattr(stub, sent.method)(sent.request, timeout=10)
        if sent.method == "Commit":
            assert (again.reservation, again.entry) == (sent.answer.reservation,
                                                        sent.answer.entry), key
        elif sent.method == "Release":
            assert again.reservation == sent.answer.reservation, key
        else:
            assert again == sent.answer, key

    await asyncio.gather(*(replay(n, key, sent)
                           for n, (key, sent) in enumerate(load.sent.items())))


async def _check_balances(stub: Stub, load: Load) -> None:
    """Balances are exactly the initial grant plus the granted minus the committed amounts."""
    expected = {f"acct-{i}": INITIAL_CREDITS for i in range(ACCOUNTS)}
    for sent in load.sent.values():
        if sent.method == "Grant":
            expected[sent.request.account_id] += sent.request.amount
        elif sent.method == "Commit":
            expected[sent.answer.reservation.account_id] -= sent.request.amount
    for account, balance in expected.items():
        answer = await stub.GetBalance(pb.GetBalanceRequest(account_id=account), timeout=10)
        assert (answer.balance.balance, answer.balance.reserved) == (balance, 0), account


@pytest.mark.parametrize(
    ("rounds", "workers", "soak"),
    [(1, 8, False), pytest.param(10, 16, True, marks=pytest.mark.soak)],
)
async def test_database_outages_under_load_are_retriable_and_recover(
    fault_postgres: PostgresController,  # noqa: F811 (fixture)
    rounds: int,
    workers: int,
    soak: bool,
) -> None:
    pg = fault_postgres
    loop = asyncio.get_running_loop()
    figures: list[FaultFigures] = []
    await pg.empty_tables()
    async with running_service(pg.url) as service:
        stub = service.stubs[0]
        for i in range(ACCOUNTS):
            await stub.Grant(grant_request(f"acct-{i}", INITIAL_CREDITS, key=f"initial-{i}"),
                             timeout=10)
        load = Load(service.stubs)
        started_s = loop.time()
        tasks = [asyncio.create_task(load.worker(n)) for n in range(workers)]
        try:
            await asyncio.sleep(WARMUP_S)
            for round_number in range(rounds):
                for name, inject in FAULTS.items():
                    pause_s = PAUSE_S[round_number % len(PAUSE_S)] if soak else PAUSE_S[0]
                    injected_s = loop.time()
                    fault = FaultFigures(name, load.rate(injected_s - BASELINE_S, injected_s),
                                         injected_s, injected_s)
                    fault.notes = await inject(pg, service, pause_s)
                    fault.cleared_s = loop.time()
                    fault.recovery_s = await _recovery_s(load, fault.cleared_s, fault.pre_rate)
                    figures.append(fault)
                    await asyncio.sleep(BASELINE_S)
        finally:
            pg.resume()
            load.stopping.set()
            done, pending = await asyncio.wait(tasks, timeout=FINISH_TIMEOUT_S)
            for task in pending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending)
        elapsed_s = loop.time() - started_s
        for task in done:
            task.result()  # a worker's own failure (no definite answer) surfaces here
        assert not pending, f"{len(pending)} workers did not finish within {FINISH_TIMEOUT_S}s"

        outcomes = load.log.outcomes()
        print(
            f"\n[F10/F11 outages] workers={workers} rounds={rounds} "
            f"operations={len(load.definite_at_s)} attempts={len(load.log.attempts)} "
            f"retries={load.log.retries} seconds={elapsed_s:.1f} faults={len(figures)} "
            f"outcomes={dict(outcomes)} slowest_call_s={slowest_s(load.log.attempts):.2f} "
            "recovery_s=" + ", ".join(f"{f.name}:{f.recovery_s}" for f in figures)
        )
        for fault in figures:
            print("  " + fault.summary(load))

        assert set(outcomes) <= set(ALLOWED_OUTCOMES), f"unexpected outcomes: {outcomes}"
        assert not load.wrong, f"wrong answers: {load.wrong[:10]}"
        assert slowest_s(load.log.attempts) <= DEADLINE_S + CALL_OVERRUN_S
        slow = [f for f in figures if f.recovery_s is None]
        assert not slow, f"throughput not back to {RECOVERY_SHARE:.0%} within " \
                         f"{RECOVERY_LIMIT_S}s after: {[f.name for f in slow]}"
        await _check_replays(service.stubs, load)
        await _check_balances(stub, load)
    connection = await pg.connect()
    try:
        await assert_invariants(connection)
    finally:
        await connection.close(timeout=5)
