"""Ambiguous commits (F4): the reply to a COMMIT is lost after Postgres ran it.

The service reaches Postgres through a proxy that lets a share of COMMITs through and then
swallows the reply and cuts the connection: the transaction is durable, but the service (and
so the caller) cannot know. Callers follow the README's rule and send the same request again
until they get a definite answer. The claims:

- zero double charges: one ledger entry per Grant key, one reservation per CheckAndReserve key,
  exactly one USAGE entry per committed reservation;
- every retried request replays its original result (the definite answer names the entry or
  reservation that the database holds, and sending it again later returns the same);
- balances are exactly what the intended operations add up to, and the invariants hold.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from tests.ledger_checks import assert_invariants
from tests.reliability.pg_faults import (
    FAULT_DATABASE,
    CallLog,
    CommitDropProxy,
    PostgresController,
    commit_drop_proxy,  # noqa: F401 (fixture)
    fault_postgres,  # noqa: F401 (fixture)
    running_service,
    until_definite,
)
from tests.support.calls import commit_request, grant_request, reserve_request

DROP_SHARE = 0.25
DROP_SEED = 20260
ACCOUNTS = 4
INITIAL_CREDITS = 1_000_000_000  # so rich that any decline would be a wrong answer
DEADLINE_S = 5.0
GIVE_UP_S = 60.0
RESERVATION_TTL_S = 600
FLOWS_PER_WORKER_PER_ROUND = 25
FINISH_TIMEOUT_PER_ROUND_S = 60.0
REPLAY_CONCURRENCY = 16

Stub = credits_pb2_grpc.CreditsServiceStub


@dataclass
class Flow:
    """Grant, reserve and commit on one account, each request with its definite answer."""

    grant: pb.GrantRequest
    reserve: pb.CheckAndReserveRequest
    granted: pb.GrantResponse | None = None
    reserved: pb.CheckAndReserveResponse | None = None
    commit: pb.CommitRequest | None = None
    committed: pb.CommitResponse | None = None

    @property
    def committed_amount(self) -> int:
        assert self.commit is not None
        return self.commit.amount if self.commit.HasField("amount") else self.reserve.amount


async def _definite(stub: Stub, method: str, request: Any, log: CallLog) -> Any:
    """The request's definite answer, which must be OK: every account is rich."""
    rpc = getattr(stub, method)
    answer = await until_definite(lambda: rpc(request, timeout=DEADLINE_S), log,
                                  give_up_s=GIVE_UP_S)
    if isinstance(answer, grpc.aio.AioRpcError):
        raise AssertionError(f"{method} {request}: {answer.code().name} {answer.details()}")
    return answer


async def _run_flows(stub: Stub, worker: int, count: int, log: CallLog) -> list[Flow]:
    flows = []
    for number in range(count):
        key = f"w{worker}-f{number}"
        flow = Flow(
            grant=grant_request(f"acct-{(worker + number) % ACCOUNTS}", 20 + number % 9,
                                key=f"{key}-grant"),
            reserve=reserve_request(f"acct-{(worker + number) % ACCOUNTS}", 10 + number % 5,
                                    key=f"{key}-reservation", ttl_s=RESERVATION_TTL_S),
        )
        flows.append(flow)
        flow.granted = await _definite(stub, "Grant", flow.grant, log)
        flow.reserved = await _definite(stub, "CheckAndReserve", flow.reserve, log)
        # Capture the held amount (no amount given, or given), or less than it.
        flow.commit = commit_request(flow.reserved.reservation.reservation_id)
        if number % 3 == 1:
            flow.commit.amount = flow.reserve.amount
        elif number % 3 == 2:
            flow.commit.amount = flow.reserve.amount - 3
        flow.committed = await _definite(stub, "Commit", flow.commit, log)
    return flows


async def _check_ledger(pg: PostgresController, flows: list[Flow]) -> None:
    """The database holds exactly one effect per request, the one its answer names."""
    connection = await pg.connect()
    try:
        grants = {r["entry_id"] for r in await connection.fetch(
            "SELECT entry_id FROM ledger_entries WHERE entry_type = 'GRANT'"
            " AND amount < $1", INITIAL_CREDITS)}
        assert sorted(grants) == sorted(int(f.granted.entry.entry_id) for f in flows), (
            "Grant entries in the ledger are not exactly one per key, the one answered")
        reservation_ids = [r["reservation_id"] for r in await connection.fetch(
            "SELECT reservation_id::text FROM reservations")]
        assert sorted(reservation_ids) == sorted(
            f.reserved.reservation.reservation_id for f in flows), (
            "reservations are not exactly one per CheckAndReserve key, the one answered")
        usage = await connection.fetch(
            "SELECT reservation_id::text, entry_id, -amount AS amount FROM ledger_entries"
            " WHERE entry_type = 'USAGE'")
        assert sorted((r["reservation_id"], r["entry_id"], r["amount"]) for r in usage) == sorted(
            (f.reserved.reservation.reservation_id, int(f.committed.entry.entry_id),
             f.committed_amount) for f in flows), (
            "USAGE entries are not exactly one per reservation")
        expected = Counter({f"acct-{i}": INITIAL_CREDITS for i in range(ACCOUNTS)})
        for flow in flows:
            expected[flow.grant.account_id] += flow.grant.amount - flow.committed_amount
        balances = {r["account_id"]: (r["balance"], r["reserved"]) for r in await connection.fetch(
            "SELECT account_id, balance, reserved FROM accounts")}
        assert balances == {account: (balance, 0) for account, balance in expected.items()}
        await assert_invariants(connection)
    finally:
        await connection.close(timeout=5)


async def _check_replays(stubs: list[Stub], flows: list[Flow]) -> None:
    """Sending every request again returns its definite answer (a Commit's balance is the
    current one: its reservation and entry are compared)."""
    in_flight = asyncio.Semaphore(REPLAY_CONCURRENCY)

    async def replay(stub: Stub, flow: Flow) -> None:
        async with in_flight:
            assert await stub.Grant(flow.grant, timeout=10) == flow.granted
            assert await stub.CheckAndReserve(flow.reserve, timeout=10) == flow.reserved
            again = await stub.Commit(flow.commit, timeout=10)
        assert (again.reservation, again.entry) == (flow.committed.reservation,
                                                    flow.committed.entry)

    await asyncio.gather(*(replay(stubs[n % len(stubs)], flow) for n, flow in enumerate(flows)))


@pytest.mark.parametrize(
    ("rounds", "workers"), [(1, 8), pytest.param(10, 16, marks=pytest.mark.soak)]
)
async def test_lost_commit_replies_never_charge_twice(
    fault_postgres: PostgresController,  # noqa: F811 (fixture)
    commit_drop_proxy: CommitDropProxy,  # noqa: F811 (fixture)
    rounds: int,
    workers: int,
) -> None:
    proxy = commit_drop_proxy
    log = CallLog()
    loop = asyncio.get_running_loop()
    finish_timeout_s = FINISH_TIMEOUT_PER_ROUND_S * rounds
    await fault_postgres.empty_tables()
    async with running_service(proxy.url(FAULT_DATABASE)) as service:
        stub = service.stubs[0]
        for i in range(ACCOUNTS):
            await stub.Grant(grant_request(f"acct-{i}", INITIAL_CREDITS, key=f"initial-{i}"),
                             timeout=10)
        proxy.drop_replies(DROP_SHARE, DROP_SEED)
        started_s = loop.time()
        tasks = [
            asyncio.create_task(_run_flows(service.stubs[w % len(service.stubs)], w,
                                           rounds * FLOWS_PER_WORKER_PER_ROUND, log))
            for w in range(workers)
        ]
        try:
            done, pending = await asyncio.wait(tasks, timeout=finish_timeout_s)
        finally:
            proxy.drop_replies(0.0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert not pending, f"{len(pending)} workers did not finish in {finish_timeout_s}s"
        flows = [flow for task in done for flow in task.result()]
        elapsed_s = loop.time() - started_s

        print(
            f"\n[F4 ambiguous commit] workers={workers} rounds={rounds} flows={len(flows)} "
            f"operations={3 * len(flows)} attempts={len(log.attempts)} retries={log.retries} "
            f"seconds={elapsed_s:.1f} commits_seen={proxy.commits_seen} "
            f"replies_dropped={proxy.drops} (committed {proxy.drops_committed}) "
            f"outcomes={dict(log.outcomes())} simple_queries={dict(proxy.queries_seen)}"
        )
        # asyncpg sends COMMIT as a simple Query: the proxy must have seen and dropped some.
        assert proxy.drops_committed > 0 and log.retries > 0, proxy.queries_seen
        await _check_ledger(fault_postgres, flows)
        await _check_replays(service.stubs, flows)
        await _check_ledger(fault_postgres, flows)  # and the replays wrote nothing
