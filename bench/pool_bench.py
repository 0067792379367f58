#!/usr/bin/env python3
"""An organisation's pool as the hot account it is by design: CheckAndReserve of 50 members
at once, each drawing from one pool within its cap, against one account with one caller (the
issue's yardstick: at least 0.8x), and against one account with 50 callers, through the real
server on its own embedded PostgreSQL.

    .venv/bin/python bench/pool_bench.py --duration-s 20

Members have no credits of their own, so each call takes the pool's path: the member's
account is found short (a first group transaction), then the pool's account and the
member's row are locked and the hold placed (a second). Caps are set (a month's cap of
10^12) so they are checked, never reached. Rounds alternate (pool, one caller, 50 callers)
and each figure is the median of --rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "generated"))

import grpc  # noqa: E402
from load import Server  # noqa: E402

from credits.v1 import credits_pb2 as pb  # noqa: E402
from credits.v1 import credits_pb2_grpc  # noqa: E402

MEMBERS = 50
CHANNELS = 4


async def setup(stub) -> None:
    await stub.CreateOrganization(pb.CreateOrganizationRequest(
        organization_id="bench-org", pool_account_id="bench-pool"))
    for account in ("bench-pool", "solo"):
        await stub.Grant(pb.GrantRequest(account_id=account, amount=10**12,
                                         type=pb.GRANT_TYPE_PURCHASE,
                                         idempotency_key=f"fund-{account}"))
    for i in range(MEMBERS):
        await stub.AddMember(pb.AddMemberRequest(
            organization_id="bench-org", account_id=f"member-{i:02d}", period_cap=10**12))


async def run(stubs, accounts: list[str], duration_s: float) -> float:
    """Reserves per second of one caller per account in `accounts`, each a loop."""
    done = 0
    stop_at = time.monotonic() + duration_s

    async def caller(n: int, account: str) -> None:
        nonlocal done
        stub = stubs[n % len(stubs)]
        while time.monotonic() < stop_at:
            await stub.CheckAndReserve(pb.CheckAndReserveRequest(
                account_id=account, amount=1, idempotency_key=str(uuid.uuid4())))
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(caller(n, account) for n, account in enumerate(accounts)))
    return done / (time.monotonic() - started)


async def main(args: argparse.Namespace) -> None:
    server = Server([])
    try:
        server.wait_serving()
        channels = [grpc.aio.insecure_channel(server.target) for _ in range(CHANNELS)]
        stubs = [credits_pb2_grpc.CreditsServiceStub(c) for c in channels]
        await setup(stubs[0])
        members = [f"member-{i:02d}" for i in range(MEMBERS)]
        await run(stubs, members, 3)  # warm up both paths
        await run(stubs, ["solo"], 2)
        figures: dict[str, list[float]] = {"pool_50_members": [], "one_account_one_caller": [],
                                           "one_account_50_callers": []}
        for _ in range(args.rounds):
            figures["pool_50_members"].append(await run(stubs, members, args.duration_s))
            figures["one_account_one_caller"].append(
                await run(stubs, ["solo"], args.duration_s))
            figures["one_account_50_callers"].append(
                await run(stubs, ["solo"] * MEMBERS, args.duration_s))
        medians = {name: round(statistics.median(rates)) for name, rates in figures.items()}
        pool = await stubs[0].GetOrganization(pb.GetOrganizationRequest(
            organization_id="bench-org", page_size=1))
        print(json.dumps({
            "reserves_per_s": medians,
            "pool_vs_one_caller": round(
                medians["pool_50_members"] / medians["one_account_one_caller"], 2),
            "pool_vs_50_callers": round(
                medians["pool_50_members"] / medians["one_account_50_callers"], 2),
            "rounds": args.rounds, "duration_s": args.duration_s,
            "pool_holds": pool.pool_balance.active_reservation_count,
        }, indent=2))
        for channel in channels:
            await channel.close()
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
