#!/usr/bin/env python3
"""History latency with a large ledger: seeds --rows ledger entries, then pages History at low
load over gRPC and prints p50/p90/p99 (first pages of random accounts, and deep pages).

    .venv/bin/python bench/history.py                       # 1,000,000 rows, 20 s of paging

It starts its own embedded PostgreSQL (temporary data directory) and an in-process server on a
loopback port, so nothing else is needed; the rows are written with one SQL statement (the
service itself is read-only here). Add --json to print the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import credits_service  # noqa: E402,F401  (first: grpc fork handlers off)

SEED = """
WITH a AS (
    INSERT INTO accounts (account_id, balance, lifetime_granted)
    SELECT 'hist-' || i, $2, $2 FROM generate_series(0, $1 - 1) i
    RETURNING account_id)
INSERT INTO ledger_entries (account_id, entry_type, grant_type, amount, balance_after, actor,
                            create_time)
SELECT 'hist-' || (n % $1), 'GRANT', 'PROMO', 1, n / $1 + 1, 'bench',
       now() - (($3 - n) * interval '1 second')
  FROM generate_series(0, $3 - 1) n
"""


def _percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {name: round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 3)
            for name, q in (("p50", .5), ("p90", .9), ("p99", .99))}


async def main(args: argparse.Namespace) -> dict:
    import asyncpg
    import grpc

    from credits.v1 import credits_pb2 as pb
    from credits.v1 import credits_pb2_grpc
    from credits_service.app import Application, migrate
    from credits_service.persistence.embedded import EmbeddedPostgres
    from credits_service.settings import Settings

    with tempfile.TemporaryDirectory(prefix="credits-history-") as directory:
        server = await asyncio.to_thread(EmbeddedPostgres.start, Path(directory) / "pgdata")
        try:
            await server.ensure_database()
            await migrate(server.url())
            connection = await asyncpg.connect(host=str(server.socket_dir), user="postgres",
                                               database="credits")
            started = time.perf_counter()
            per_account = args.rows // args.accounts
            await connection.execute(SEED, args.accounts, per_account, args.rows, timeout=600)
            await connection.execute("ANALYZE")
            rows = await connection.fetchval("SELECT count(*) FROM ledger_entries")
            await connection.close()
            print(f"seeded {rows} ledger rows over {args.accounts} accounts in "
                  f"{time.perf_counter() - started:.1f}s", file=sys.stderr)
            settings = Settings.build(listen="127.0.0.1:0", database_url=server.url(),
                                metrics_listen="", auth_disabled=True, log_level="WARNING",
                                rate_limit_per_s=0, migrate_on_start=False)
            app = await Application.start(settings)
            try:
                return await _drive(app.port, args, pb, credits_pb2_grpc, grpc, rows)
            finally:
                await app.stop()
        finally:
            await asyncio.to_thread(server.stop)


async def _drive(port, args, pb, credits_pb2_grpc, grpc, rows) -> dict:
    rng = random.Random(1)
    first: list[float] = []
    deep: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = credits_pb2_grpc.CreditsServiceStub(channel)
        stop_at = time.perf_counter() + args.duration_s

        async def reader() -> None:
            while time.perf_counter() < stop_at:
                account = f"hist-{rng.randrange(args.accounts)}"
                token = ""
                for page in range(args.pages):  # the first page, then deeper ones
                    started = time.perf_counter()
                    response = await stub.History(pb.HistoryRequest(
                        account_id=account, page_size=50, page_token=token), timeout=10)
                    (first if page == 0 else deep).append(time.perf_counter() - started)
                    token = response.next_page_token
                    if not token:
                        break

        await asyncio.gather(*(reader() for _ in range(args.in_flight)))
    return {"rows": rows, "accounts": args.accounts, "in_flight": args.in_flight,
            "pages_per_walk": args.pages, "first_page_ms": _percentiles(first),
            "deeper_pages_ms": _percentiles(deep), "calls": len(first) + len(deep),
            "calls_per_s": round((len(first) + len(deep)) / args.duration_s, 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=1, help="concurrent readers")
    parser.add_argument("--pages", type=int, default=5, help="pages walked per account")
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    result = asyncio.run(main(arguments))
    print(json.dumps(result, indent=2) if arguments.json else
          f"{result['rows']} rows, {result['in_flight']} in flight, {result['calls_per_s']}/s: "
          f"first page {result['first_page_ms']} ms, deeper pages {result['deeper_pages_ms']} ms")
