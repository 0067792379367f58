"""Races over real concurrent connections: no double spend, one effect per key, one winner per
reservation. The server's pool has several database connections and the calls are spread over
several HTTP/2 connections, so the transactions really overlap in Postgres."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from tests.grpc_errors import unpack
from tests.support.calls import balance_of, commit, grant, grant_request, release, reserve_request


async def test_500_concurrent_unit_reserves_against_100_credits_accept_exactly_100(stubs, db):
    """F1: exactly min(balance, asked) reservations succeed; the rest are INSUFFICIENT_CREDITS."""
    await grant(stubs[0], "hot", 100)

    async def reserve(i: int) -> str:
        try:
            await stubs[i % len(stubs)].CheckAndReserve(reserve_request("hot", 1, key=f"r-{i}"))
            return "OK"
        except grpc.aio.AioRpcError as error:
            return unpack(error).reason

    outcomes = await asyncio.gather(*(reserve(i) for i in range(500)))

    assert outcomes.count("OK") == 100
    assert outcomes.count("INSUFFICIENT_CREDITS") == 400
    balance = await balance_of(stubs[0], "hot")
    assert (balance.balance, balance.reserved, balance.available) == (100, 100, 0)
    assert balance.active_reservation_count == 100
    assert await db.fetchval("SELECT count(*) FROM reservations WHERE status = 'ACTIVE'") == 100


async def test_concurrent_random_amounts_never_overdraw(stubs, db):
    """F1 with mixed amounts: accepted reservations never exceed the balance, and a decline only
    happens when the amount really exceeds what was available."""
    await grant(stubs[0], "mixed", 1000)
    amounts = [(i * 37) % 90 + 1 for i in range(300)]

    async def reserve(i: int, amount: int) -> tuple[int, str, dict[str, str]]:
        try:
            await stubs[i % len(stubs)].CheckAndReserve(
                reserve_request("mixed", amount, key=f"m{i}")
            )
            return amount, "OK", {}
        except grpc.aio.AioRpcError as error:
            failure = unpack(error)
            return amount, failure.reason, failure.metadata

    outcomes = await asyncio.gather(*(reserve(i, a) for i, a in enumerate(amounts)))

    accepted = sum(amount for amount, status, _ in outcomes if status == "OK")
    assert accepted <= 1000
    for amount, status, metadata in outcomes:
        assert status in ("OK", "INSUFFICIENT_CREDITS")
        if status != "OK":
            assert int(metadata["available"]) < amount
    assert await db.fetchval(
        "SELECT reserved FROM accounts WHERE account_id = 'mixed'"
    ) == accepted
    # With 300 asks averaging ~45, the balance of 1000 must be nearly used up.
    assert 1000 - accepted < max(amounts)


async def test_20_concurrent_identical_grants_apply_once_with_identical_responses(stubs, db):
    """F2: one effect, identical responses; F3: same key with another amount writes nothing."""
    request = grant_request("idem", 70, key="same-key", grant_type=pb.GRANT_TYPE_PROMO)
    responses = await asyncio.gather(
        *(stubs[i % len(stubs)].Grant(request) for i in range(20))
    )

    assert len({r.SerializeToString(deterministic=True) for r in responses}) == 1
    assert await db.fetchval("SELECT count(*) FROM ledger_entries") == 1
    assert await db.fetchval("SELECT balance FROM accounts WHERE account_id = 'idem'") == 70

    before = await db.fetchval("SELECT count(*) FROM ledger_entries")
    mismatch = pb.GrantRequest()
    mismatch.CopyFrom(request)
    mismatch.amount = 71
    try:
        await stubs[0].Grant(mismatch)
        raise AssertionError("a reused key with another amount must fail")
    except grpc.aio.AioRpcError as error:
        failure = unpack(error)
    assert failure.code is grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await db.fetchval("SELECT count(*) FROM ledger_entries") == before
    assert await db.fetchval("SELECT balance FROM accounts WHERE account_id = 'idem'") == 70


async def test_20_concurrent_identical_reserves_place_one_reservation(stubs, db):
    """F2 for reservations: one reservation, every caller gets its id."""
    await grant(stubs[0], "idem-reservation", 10)
    request = reserve_request("idem-reservation", 3, key="h")
    responses = await asyncio.gather(
        *(stubs[i % len(stubs)].CheckAndReserve(request) for i in range(20))
    )

    assert len({r.SerializeToString(deterministic=True) for r in responses}) == 1
    assert await db.fetchval("SELECT count(*) FROM reservations") == 1
    assert await db.fetchval(
        "SELECT reserved FROM accounts WHERE account_id = 'idem-reservation'") == 3


async def test_commit_and_release_racing_on_each_reservation_have_exactly_one_winner(stubs, db):
    """F5: for many reservations, concurrent Commits (same and other amounts) and Releases: exactly
    one terminal state, at most one USAGE entry, and every loser gets a definite answer."""
    reservation_count = 40
    await grant(stubs[0], "race", 10_000)
    reservations = [
        (
            await stubs[0].CheckAndReserve(reserve_request("race", 10, key=f"h{i}"))
        ).reservation.reservation_id
        for i in range(reservation_count)
    ]

    async def attempt(i: int, call: str, reservation_id: str) -> tuple[str, str]:
        stub = stubs[i % len(stubs)]
        try:
            if call == "release":
                await release(stub, reservation_id)
            elif call == "commit":
                await commit(stub, reservation_id)
            else:
                await commit(stub, reservation_id, 7)
            return call, "OK"
        except grpc.aio.AioRpcError as error:
            return call, unpack(error).reason

    calls = ["release", "commit", "commit-7", "release", "commit"]
    results = await asyncio.gather(
        *(
            asyncio.gather(*(attempt(i + j, call, rid) for j, call in enumerate(calls)))
            for i, rid in enumerate(reservations)
        )
    )

    for rid, outcomes in zip(reservations, results, strict=True):
        status, committed = await db.fetchrow(
            "SELECT status, committed_amount FROM reservations WHERE reservation_id = $1::uuid",
            rid,
        )
        winners = {call for call, result in outcomes if result == "OK"}
        if status == "RELEASED":
            assert winners == {"release"}, outcomes
            assert {r for c, r in outcomes if c != "release"} == {"RESERVATION_RELEASED"}
        else:
            assert status == "COMMITTED"
            kind = "commit" if committed == 10 else "commit-7"
            assert winners == {kind}, outcomes
            losers = {r for c, r in outcomes if c != kind}
            assert losers == {"RESERVATION_ALREADY_COMMITTED"}, outcomes
    usage_entries = await db.fetchval(
        "SELECT count(*) FROM ledger_entries WHERE entry_type = 'USAGE'"
    )
    assert usage_entries == await db.fetchval(
        "SELECT count(*) FROM reservations WHERE status = 'COMMITTED'"
    )


@pytest.mark.parametrize("calls", [600, pytest.param(6000, marks=pytest.mark.soak)])
async def test_zipf_skewed_reserves_over_100_accounts_never_overdraw_any(stubs, db, calls):
    """F1 across accounts: 100 accounts with small balances, calls Zipf-skewed over them (a few
    hot, most cold) with random amounts: per account, accepted reservations never exceed the balance
    and a decline only happens when the amount really exceeds what was available."""
    rng = random.Random(11)
    accounts = [f"z{rank}" for rank in range(100)]
    balances = {account: rng.randint(10, 60) for account in accounts}
    for account, balance in balances.items():
        await grant(stubs[0], account, balance)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(accounts))]
    asks = [(rng.choices(accounts, weights)[0], rng.randint(1, 9)) for _ in range(calls)]
    in_flight = asyncio.Semaphore(300)

    async def reserve(i: int, account: str, amount: int) -> tuple[str, int, str, dict]:
        async with in_flight:
            try:
                await stubs[i % len(stubs)].CheckAndReserve(
                    reserve_request(account, amount, key=f"z{i}"))
                return account, amount, "OK", {}
            except grpc.aio.AioRpcError as error:
                failure = unpack(error)
                return account, amount, failure.reason, failure.metadata

    outcomes = await asyncio.gather(*(reserve(i, a, n) for i, (a, n) in enumerate(asks)))
    accepted = dict.fromkeys(accounts, 0)
    for account, amount, status, metadata in outcomes:
        assert status in ("OK", "INSUFFICIENT_CREDITS"), status
        if status == "OK":
            accepted[account] += amount
        else:
            assert int(metadata["available"]) < amount
    reserved = dict(await db.fetch("SELECT account_id, reserved FROM accounts"))
    for account in accounts:
        assert accepted[account] == reserved[account] <= balances[account], account
    # The hottest account was asked for far more than it had: it must be nearly used up.
    assert balances["z0"] - accepted["z0"] < 9
