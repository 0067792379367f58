"""Idempotency keys: a retry replays the first outcome (a decline too) and writes nothing;
another request under the key is declined; keys are scoped by the caller."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from credits_service.domain import errors
from credits_service.domain.commands import GrantCommand
from credits_service.domain.model import BALANCE_MAX, GrantType


async def test_a_grant_retried_with_its_key_replays_and_writes_nothing(calls, storage):
    command = calls.grant_command("acct", 10, expire_in_s=60, priority=7)
    first = await calls.ledger.grant(command, "tester")
    before = storage.snapshot()

    assert await calls.ledger.grant(command, "tester") == first
    assert storage.snapshot() == before


async def test_a_reservation_retried_with_its_key_replays_and_writes_nothing(calls, storage):
    await calls.grant("acct", 10)
    command = calls.reserve_command("acct", 4)
    first = await calls.ledger.check_and_reserve(command, "tester")
    before = storage.snapshot()

    assert await calls.ledger.check_and_reserve(command, "tester") == first
    assert storage.snapshot() == before


async def test_the_same_key_for_another_request_is_declined_and_writes_nothing(calls, storage):
    await calls.grant("acct", 10, key="g")
    await calls.reserve("acct", 4, key="r")
    before = storage.snapshot()

    with pytest.raises(errors.IdempotencyKeyReused):
        await calls.grant("acct", 11, key="g")
    with pytest.raises(errors.IdempotencyKeyReused):
        await calls.reserve("acct", 5, key="r")

    assert storage.snapshot() == before


async def test_an_insufficient_credits_decline_is_replayed_even_after_a_grant(calls):
    await calls.grant("acct", 3)
    with pytest.raises(errors.InsufficientCredits) as first:
        await calls.reserve("acct", 5, key="r")
    await calls.grant("acct", 10)

    with pytest.raises(errors.InsufficientCredits) as replayed:
        await calls.reserve("acct", 5, key="r")

    assert replayed.value == first.value
    assert replayed.value.metadata["available"] == "3"


async def test_an_unknown_account_decline_is_not_stored_so_the_key_succeeds_later(
        calls, storage):
    with pytest.raises(errors.AccountNotFound):
        await calls.reserve("later", 5, key="r")
    assert storage.keys == {}
    await calls.grant("later", 10)

    placed = await calls.reserve("later", 5, key="r")

    assert placed.balance.available == 5
    assert await calls.reserve("later", 5, key="r") == placed


async def test_a_balance_limit_decline_is_replayed_even_after_credits_are_spent(calls):
    await calls.grant("acct", BALANCE_MAX)
    with pytest.raises(errors.BalanceLimitExceeded):
        await calls.grant("acct", 1, key="g")
    reservation = (await calls.reserve("acct", 5)).reservation
    await calls.commit(reservation.reservation_id)

    with pytest.raises(errors.BalanceLimitExceeded) as replayed:
        await calls.grant("acct", 1, key="g")

    assert replayed.value.metadata["balance"] == str(BALANCE_MAX)


async def test_a_grant_expiring_in_the_past_is_not_stored_so_its_key_stays_usable(
        calls, storage, clock):
    past = clock.now() - timedelta(seconds=1)
    with pytest.raises(errors.ExpireTimePassed):
        await calls.ledger.grant(GrantCommand("acct", 10, GrantType.PROMO, "g",
                                              expire_time=past), "tester")
    with pytest.raises(errors.ExpireTimePassed):  # now is not in the future either
        await calls.ledger.grant(GrantCommand("acct", 10, GrantType.PROMO, "g",
                                              expire_time=clock.now()), "tester")
    assert storage.snapshot() == ({}, {}, {}, [], {})

    assert (await calls.grant("acct", 10, key="g")).balance.balance == 10


async def test_a_key_is_the_callers_across_methods(calls, storage):
    await calls.grant("acct", 10, key="k")
    before = storage.snapshot()

    with pytest.raises(errors.IdempotencyKeyReused):
        await calls.reserve("acct", 1, key="k")

    assert storage.snapshot() == before


async def test_keys_are_scoped_by_actor(calls, storage):
    other = calls.as_actor("someone-else")

    await calls.grant("acct", 10, key="same")
    await other.grant("acct", 10, key="same")

    assert storage.accounts["acct"].balance == 20
    assert set(storage.keys) == {("tester", "same"), ("someone-else", "same")}


async def test_purged_keys_are_forgotten(calls, storage, clock):
    await calls.grant("acct", 10, key="old")
    clock.advance(120)
    await calls.grant("acct", 10, key="new")

    assert await calls.ledger.maintenance.purge_idempotency_keys(60, batch_size=10) == 1

    assert set(storage.keys) == {("tester", "new")}
    assert (await calls.grant("acct", 10, key="old")).balance.balance == 30


async def test_concurrent_retries_of_one_request_apply_it_once(calls, storage):
    await calls.grant("acct", 10)
    grant = calls.grant_command("acct", 5)
    reserve = calls.reserve_command("acct", 4)

    granted = await asyncio.gather(*(calls.ledger.grant(grant, "tester") for _ in range(3)))
    unary, (batched,) = await asyncio.gather(
        calls.ledger.check_and_reserve(reserve, "tester"),
        calls.ledger.check_and_reserve_batch([(reserve, "tester")]))

    assert granted[0] == granted[1] == granted[2]
    assert unary == batched
    assert (storage.accounts["acct"].balance, len(storage.reservations)) == (15, 1)
