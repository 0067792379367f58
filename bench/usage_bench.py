#!/usr/bin/env python3
"""UsageSummary latency on a large ledger, through the real server: a fresh embedded
PostgreSQL filled with N USAGE entries (M accounts, one account in five on `pro`, activity
skewed towards a few accounts, six features counting usage by amount, spread over the last D
days), their rollups built as the trigger builds them (usage_shards spread over 16 shards, as
16 connections would, then folded as the sweeper folds hours past), checked against the
entries with the invariants `verify` runs; then
sequential UsageSummary calls of each kind, with their latency percentiles.

    .venv/bin/python bench/usage_bench.py --entries 10000000 --accounts 10000

The entries are written with triggers and foreign keys off (session_replication_role
replica), without reservations or lots: the summary reads only the rollups and the accounts'
plans, and the rollups are built from these entries and checked against them. Balances are
not kept: `verify` would flag them, so only the rollup invariants are run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "generated"))

from load import Server  # noqa: E402

from credits_service.persistence.usage import UsageRepository  # noqa: E402
from credits_service.workers.sweeper import USAGE_SHARDS_SETTLED_S  # noqa: E402

FEATURES = "ARRAY[NULL, 'llm', 'image', 'video', 'audio', 'embed']::text[]"
CHUNK = 1_000_000
# One statement per chunk: account skewed by power(random(), 3) (account 0 the busiest).
_ENTRIES = f"""
    INSERT INTO ledger_entries (account_id, entry_type, amount, balance_after, reservation_id,
                                actor, create_time, feature, units, rate_card_version)
    SELECT 'acct-' || floor($2 * power(random(), 3))::int, 'USAGE', -(1 + floor(random() * 20)),
           0, gen_random_uuid(), 'bench', $3::timestamptz - random() * $4 * interval '1 day',
           f.feature, CASE WHEN f.feature IS NULL THEN NULL ELSE floor(random() * 5000) END,
           CASE WHEN f.feature IS NULL THEN NULL ELSE 'bench-1' END
      FROM generate_series(1, $1) n
     CROSS JOIN LATERAL (SELECT ({FEATURES})[1 + floor(random() * 6 + n * 0)::int] AS feature) f"""
_HOUR = "date_trunc('hour', e.create_time, 'UTC')"
_ROLLUPS = [
    f"""INSERT INTO usage_hours (account_id, hour, feature, credits, units, calls)
        SELECT e.account_id, {_HOUR}, coalesce(e.feature, ''), -sum(e.amount),
               coalesce(sum(e.units), 0), count(*)
          FROM ledger_entries e WHERE e.entry_type = 'USAGE' GROUP BY 1, 2, 3""",
    """INSERT INTO usage_days (day, account_id, feature, credits, units, calls)
        SELECT (e.create_time AT TIME ZONE 'UTC')::date, e.account_id, coalesce(e.feature, ''),
               -sum(e.amount), coalesce(sum(e.units), 0), count(*)
          FROM ledger_entries e WHERE e.entry_type = 'USAGE' GROUP BY 1, 2, 3""",
    """INSERT INTO usage_months (month, account_id, feature, credits, units, calls)
        SELECT date_trunc('month', e.create_time AT TIME ZONE 'UTC')::date, e.account_id,
               coalesce(e.feature, ''), -sum(e.amount), coalesce(sum(e.units), 0), count(*)
          FROM ledger_entries e WHERE e.entry_type = 'USAGE' GROUP BY 1, 2, 3""",
    f"""INSERT INTO usage_shards (hour, plan, feature, shard, credits, units, calls)
        SELECT {_HOUR}, a.plan, coalesce(e.feature, ''), (e.entry_id % 16)::smallint,
               -sum(e.amount), coalesce(sum(e.units), 0), count(*)
          FROM ledger_entries e JOIN accounts a ON a.account_id = e.account_id
         WHERE e.entry_type = 'USAGE' GROUP BY 1, 2, 3, 4""",
]


def _socket_dir(server: Server) -> str:
    pid_file = Path(server.directory.name) / "data" / "pgdata" / "postmaster.pid"
    return pid_file.read_text().splitlines()[4]


async def fill(connection: asyncpg.Connection, entries: int, accounts: int, days: int,
               now: datetime) -> dict[str, float]:
    took: dict[str, float] = {}
    started = time.monotonic()
    await connection.execute(
        "INSERT INTO accounts (account_id, plan) SELECT 'acct-' || n, "
        "CASE WHEN n % 5 = 0 THEN 'pro' ELSE 'default' END FROM generate_series(0, $1 - 1) n",
        accounts)
    await connection.execute("SET session_replication_role = replica")
    written = 0
    while written < entries:
        rows = min(CHUNK, entries - written)
        await connection.execute(_ENTRIES, rows, accounts, now, days)
        written += rows
        print(f"  {written:,} entries", file=sys.stderr)
    await connection.execute("SET session_replication_role = origin")
    took["entries_s"] = time.monotonic() - started
    started = time.monotonic()
    for statement in _ROLLUPS:
        await connection.execute(statement)
    took["shard_rows"] = await connection.fetchval("SELECT count(*) FROM usage_shards")
    # What the sweeper does to hours that ended an hour ago or more
    started_fold = time.monotonic()
    took["shard_rows_folded"] = await UsageRepository(connection).compact_shards(
        USAGE_SHARDS_SETTLED_S, 10**9)
    took["fold_s"] = time.monotonic() - started_fold
    for table in ("usage_hours", "usage_days", "usage_months", "usage_shards"):
        await connection.execute(f"VACUUM ANALYZE {table}")
    await connection.execute("ANALYZE accounts")
    took["rollups_s"] = time.monotonic() - started
    return took


async def check_rollups(connection: asyncpg.Connection) -> float:
    from credits_service.persistence.invariants import INVARIANTS

    started = time.monotonic()
    for name, query in INVARIANTS.items():
        if name.startswith("usage_"):
            broken = await connection.fetch(query)
            if broken:
                raise SystemExit(f"{name}: broken, e.g. {dict(broken[0])}")
    return time.monotonic() - started


async def measure(target: str, calls: int, accounts: int, now: datetime) -> list[dict]:
    import grpc
    from google.protobuf.timestamp_pb2 import Timestamp

    from credits.v1 import credits_pb2 as pb
    from credits.v1 import credits_pb2_grpc

    def at(moment: datetime) -> Timestamp:
        stamp = Timestamp()
        stamp.FromDatetime(moment)
        return stamp

    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    this_month = today.replace(day=1)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    month = (at(last_month), at(this_month))  # the last whole calendar month
    days30 = (at(today - timedelta(days=30)), at(today))
    ragged = (at(today - timedelta(days=30, hours=-7)), at(today - timedelta(hours=5)))
    rng = random.Random(7)
    kinds = {
        "one account (the busiest), last month by day": lambda: pb.UsageSummaryRequest(
            account_ids=["acct-0"], start_time=month[0], end_time=month[1]),
        "one account (random), last month by day": lambda: pb.UsageSummaryRequest(
            account_ids=[f"acct-{rng.randrange(accounts)}"], start_time=month[0],
            end_time=month[1]),
        "one account (the busiest), last month by hour": lambda: pb.UsageSummaryRequest(
            account_ids=["acct-0"], start_time=month[0], end_time=month[1],
            bucket_size=pb.USAGE_BUCKET_SIZE_HOUR),
        "one account (the busiest), this month so far": lambda: pb.UsageSummaryRequest(
            account_ids=["acct-0"]),
        "100 accounts, last month by day": lambda: pb.UsageSummaryRequest(
            account_ids=[f"acct-{n}" for n in rng.sample(range(accounts), 100)],
            start_time=month[0], end_time=month[1]),
        "all accounts, last month by day, top 10": lambda: pb.UsageSummaryRequest(
            start_time=month[0], end_time=month[1]),
        "all accounts, last month by hour, top 10": lambda: pb.UsageSummaryRequest(
            start_time=month[0], end_time=month[1], bucket_size=pb.USAGE_BUCKET_SIZE_HOUR),
        "all accounts, this month so far (defaults), top 10": lambda: pb.UsageSummaryRequest(),
        "plan pro, this month so far, top 10": lambda: pb.UsageSummaryRequest(plan="pro"),
        "all accounts, last month, feature llm, top 10": lambda: pb.UsageSummaryRequest(
            start_time=month[0], end_time=month[1], features=["llm"]),
        "all accounts, last 30 days by day, top 10": lambda: pb.UsageSummaryRequest(
            start_time=days30[0], end_time=days30[1]),
        "all accounts, last 30 days by day, no top": lambda: pb.UsageSummaryRequest(
            start_time=days30[0], end_time=days30[1], top_accounts=0),
        "all accounts, 30 days ragged ends, top 10": lambda: pb.UsageSummaryRequest(
            start_time=ragged[0], end_time=ragged[1]),
    }
    results = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = credits_pb2_grpc.CreditsServiceStub(channel)
        for name, request in kinds.items():
            for _ in range(3):  # warm the plan caches
                await stub.UsageSummary(request(), timeout=30)
            latencies = []
            rows = 0
            for _ in range(calls):
                started = time.perf_counter()
                answer = await stub.UsageSummary(request(), timeout=30)
                latencies.append((time.perf_counter() - started) * 1000)
                rows = len(answer.buckets)
            latencies.sort()
            result = {"kind": name, "calls": calls, "rows": rows,
                      "p50_ms": round(latencies[len(latencies) // 2], 2),
                      "p99_ms": round(latencies[min(len(latencies) - 1,
                                                    int(len(latencies) * 0.99))], 2),
                      "max_ms": round(latencies[-1], 2)}
            print(f"{name:52} p50 {result['p50_ms']:7.2f}  p99 {result['p99_ms']:7.2f}  "
                  f"max {result['max_ms']:7.2f} ms  ({rows} bucket rows)")
            results.append(result)
    return results


async def run(args: argparse.Namespace, server: Server) -> dict:
    connection = await asyncpg.connect(host=_socket_dir(server), user="postgres",
                                       database="credits")
    try:
        now = await connection.fetchval("SELECT now()")
        took = await fill(connection, args.entries, args.accounts, args.days, now)
        took["check_rollups_s"] = await check_rollups(connection)
        sizes = {table: await connection.fetchval(f"SELECT count(*) FROM {table}")
                 for table in ("ledger_entries", "usage_hours", "usage_days", "usage_months",
                               "usage_shards")}
    finally:
        await connection.close()
    print(f"filled in {took['entries_s']:.0f} s, rollups {took['rollups_s']:.0f} s (the "
          f"sweeper's fold of {took['shard_rows']:,} shard rows {took['fold_s']:.1f} s), "
          f"checked in {took['check_rollups_s']:.0f} s; rows: {sizes}", file=sys.stderr)
    results = await measure(server.target, args.calls, args.accounts, now.astimezone(UTC))
    return {"took_s": took, "rows": sizes, "results": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--calls", type=int, default=200, help="calls of each kind")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args()
    server = Server([])
    try:
        server.wait_serving()
        report = asyncio.run(run(args, server))
    finally:
        server.stop()
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
