"""Limits: the balance maximum, available credits, the bounded retry of conflicting
transactions, and storage failures as the caller sees them."""

from __future__ import annotations

import pytest

from credits_service.domain import errors
from credits_service.domain.model import BALANCE_MAX
from credits_service.persistence.errors import StorageUnavailable, TransientConflict
from credits_service.service.deadline import reset_call_deadline, set_call_deadline

ATTEMPTS = 3


async def test_a_grant_may_reach_the_balance_max_but_not_pass_it(calls, storage):
    await calls.grant("acct", BALANCE_MAX - 1)
    assert (await calls.grant("acct", 1)).balance.balance == BALANCE_MAX

    with pytest.raises(errors.BalanceLimitExceeded) as declined:
        await calls.grant("acct", 1)

    assert declined.value.metadata == {"accountId": "acct", "balance": str(BALANCE_MAX),
                                       "requested": "1", "balanceMax": str(BALANCE_MAX)}
    assert (storage.accounts["acct"].balance, len(storage.entries), len(storage.lots)) == (
        BALANCE_MAX, 2, 2)


async def test_a_reservation_beyond_available_credits_is_declined(calls, storage):
    await calls.grant("acct", 10)
    await calls.reserve("acct", 7)

    with pytest.raises(errors.InsufficientCredits) as declined:
        await calls.reserve("acct", 4)

    assert declined.value.metadata == {"accountId": "acct", "available": "3", "requested": "4"}
    assert (await calls.reserve("acct", 3)).balance.available == 0
    assert len(storage.reservations) == 2


async def test_a_conflict_at_commit_is_retried_until_it_succeeds(storage, new_calls):
    calls = new_calls(storage, transaction_attempts_max=ATTEMPTS)
    storage.fail_next_commits(TransientConflict, times=ATTEMPTS - 1)

    assert (await calls.grant("acct", 10)).balance.balance == 10
    assert (storage.begun, storage.committed) == (ATTEMPTS, 1)


async def test_conflicts_past_the_bounded_retry_are_a_concurrency_conflict_writing_nothing(
        storage, new_calls):
    calls = new_calls(storage, transaction_attempts_max=ATTEMPTS)
    storage.fail_next_commits(TransientConflict, times=ATTEMPTS)

    with pytest.raises(errors.ConcurrencyConflict):
        await calls.grant("acct", 10, key="g")

    assert storage.begun == ATTEMPTS
    assert storage.snapshot() == ({}, {}, {}, [], {})
    assert (await calls.grant("acct", 10, key="g")).balance.balance == 10  # key unused


async def test_a_group_transaction_is_retried_alike(storage, new_calls):
    calls = new_calls(storage, transaction_attempts_max=ATTEMPTS)
    await calls.grant("acct", 10)
    storage.fail_next_commits(TransientConflict, times=ATTEMPTS - 1)

    assert (await calls.reserve("acct", 4)).balance.available == 6
    assert len(storage.reservations) == 1


async def test_an_unavailable_database_is_not_retried_and_reaches_the_caller_as_such(
        storage, calls):
    storage.fail_next_commits(StorageUnavailable)

    with pytest.raises(errors.DatabaseUnavailable) as failed:
        await calls.grant("acct", 10)

    assert type(failed.value) is errors.DatabaseUnavailable
    assert (storage.begun, storage.accounts) == (1, {})


async def test_a_call_whose_deadline_has_passed_begins_no_transaction(storage, calls):
    token = set_call_deadline(0)
    try:
        with pytest.raises(errors.DatabaseTimeout):
            await calls.grant("acct", 10)
    finally:
        reset_call_deadline(token)

    assert storage.begun == 0
