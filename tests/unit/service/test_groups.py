"""Group commit: concurrent calls share transactions and get what each would alone; a batch
answers each item as if sent alone."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credits_service.domain import errors
from credits_service.domain.commands import CommitResult, ReleaseResult, ReserveResult
from credits_service.domain.model import EntryType, ReservationStatus
from tests.support.fake_storage import FakeStorage

HOUR_S = 3600


def summary(outcome) -> tuple:
    """An outcome without what differs between runs (reservation ids, times)."""
    if isinstance(outcome, BaseException):
        return ("declined", type(outcome).__name__)
    r = outcome.reservation
    return (type(outcome).__name__, r.amount, r.status, r.committed_amount,
            [(d.lot_id, d.held, d.consumed) for d in r.draws], outcome.balance)


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(balance=st.integers(1, 12), asked=st.integers(1, 20))
async def test_concurrent_unit_reservations_accept_exactly_what_the_balance_covers(
        new_calls, balance, asked):
    storage = FakeStorage()
    calls = new_calls(storage)
    await calls.grant("hot", balance)

    outcomes = await asyncio.gather(*(calls.reserve("hot", 1) for _ in range(asked)),
                                    return_exceptions=True)

    accepted = [o for o in outcomes if isinstance(o, ReserveResult)]
    assert len(accepted) == min(balance, asked)
    assert all(isinstance(o, errors.InsufficientCredits)
               for o in outcomes if not isinstance(o, ReserveResult))
    assert storage.accounts["hot"].available == balance - len(accepted)
    storage.assert_invariants()


async def test_concurrent_reservations_are_decided_in_groups(calls, metrics):
    await calls.grant("hot", 100)

    await asyncio.gather(*(calls.reserve("hot", 1) for _ in range(10)))

    assert metrics.groups["CheckAndReserve"] == [1, 9]


async def settle_all(calls, operations, *, concurrently: bool) -> list:
    """Run (kind, reservation_id, amount) commits and releases, all at once or in turn."""

    def call(kind, reservation_id, amount):
        if kind == "commit":
            return calls.commit(reservation_id, amount)
        return calls.release(reservation_id)

    if concurrently:
        return await asyncio.gather(*(call(*op) for op in operations), return_exceptions=True)
    outcomes = []
    for op in operations:
        try:
            outcomes.append(await call(*op))
        except errors.Declined as declined:
            outcomes.append(declined)
    return outcomes


async def settled_run(calls, clock, *, concurrently: bool) -> list:
    """Commits on one account and releases on another, plain cases first and then those a
    group leaves to a transaction of their own (a larger commit, an expired reservation)."""
    for account in ("c", "r"):
        await calls.grant(account, 6, priority=1, expire_in_s=HOUR_S)
        await calls.grant(account, 30)
    ids = {}
    for name, account, amount, ttl_s in [
        ("c1", "c", 5, 60), ("c2", "c", 4, 60), ("c3", "c", 3, 60), ("c4", "c", 2, 1),
        ("r1", "r", 5, 60), ("r2", "r", 4, 60), ("r3", "r", 3, 1),
    ]:
        ids[name] = (await calls.reserve(account, amount, ttl_ms=ttl_s * 1000)
                     ).reservation.reservation_id
    clock.advance(2)  # c4 and r3 are due
    operations = [
        ("commit", ids["c1"], 3), ("release", ids["r1"], None), ("commit", ids["c2"], None),
        ("release", ids["r2"], None), ("commit", ids["c3"], 9), ("release", ids["r3"], None),
        ("commit", ids["c4"], 2),
    ]
    return await settle_all(calls, operations, concurrently=concurrently)


async def test_concurrent_commits_and_releases_get_what_each_would_one_by_one(
        new_calls, storage, metrics):
    alone = FakeStorage()
    one_by_one = await settled_run(new_calls(alone), alone.clock, concurrently=False)
    calls = new_calls(storage, metrics)

    together = await settled_run(calls, storage.clock, concurrently=True)

    assert (metrics.groups["Commit"][-2:], metrics.groups["Release"][-2:]) == ([1, 3], [1, 2])
    assert [summary(o) for o in together] == [summary(o) for o in one_by_one]
    assert [summary(o)[:3] for o in together] == [
        ("CommitResult", 5, ReservationStatus.COMMITTED),
        ("ReleaseResult", 5, ReservationStatus.RELEASED),
        ("CommitResult", 4, ReservationStatus.COMMITTED),
        ("ReleaseResult", 4, ReservationStatus.RELEASED),
        ("CommitResult", 3, ReservationStatus.COMMITTED),
        ("declined", "ReservationExpired"),
        ("declined", "ReservationExpired"),
    ]
    assert (storage.accounts, storage.lots) == (alone.accounts, alone.lots)
    alone.assert_invariants()


async def test_the_same_reservation_committed_twice_in_one_group_is_committed_once(
        calls, storage, metrics):
    await calls.grant("acct", 10)
    first = (await calls.reserve("acct", 2)).reservation.reservation_id
    twice = (await calls.reserve("acct", 4)).reservation.reservation_id

    outcomes = await asyncio.gather(
        calls.commit(first), calls.commit(twice, 4), calls.commit(twice, 4))

    assert metrics.groups["Commit"] == [1, 2]
    assert outcomes[1] == outcomes[2]
    usages = [e for e in storage.entries if e.entry_type is EntryType.USAGE]
    assert [e.reservation_id for e in usages].count(twice) == 1
    assert storage.accounts["acct"].balance == 4


async def test_a_commit_and_a_release_of_one_reservation_in_one_group_one_wins(
        calls, storage):
    await calls.grant("acct", 10)
    first = (await calls.reserve("acct", 2)).reservation.reservation_id
    contested = (await calls.reserve("acct", 4)).reservation.reservation_id

    outcomes = await asyncio.gather(
        calls.release(first), calls.commit(contested, 3), calls.release(contested),
        return_exceptions=True)

    assert isinstance(outcomes[1], CommitResult)
    assert isinstance(outcomes[2], errors.ReservationAlreadyCommitted)
    assert storage.reservations[contested].status is ReservationStatus.COMMITTED
    assert isinstance(outcomes[0], ReleaseResult)


async def test_a_batch_answers_each_item_as_if_sent_alone(new_calls, storage):
    def items(calls):
        other = "someone-else"
        return [
            (calls.reserve_command("a", 4, key="k1"), "tester"),
            (calls.reserve_command("a", 7, key="k2"), "tester"),  # 6 left: declined
            (calls.reserve_command("nobody", 1, key="k3"), "tester"),
            (calls.reserve_command("b", 5, key="k4"), "tester"),
            (calls.reserve_command("a", 4, key="k1"), "tester"),  # the same again: replayed
            (calls.reserve_command("a", 5, key="k1"), "tester"),  # another request
            (calls.reserve_command("b", 5, key="k1"), other),  # another actor's own key
            (calls.reserve_command("a", 6, key="k5"), "tester"),
        ]

    alone = FakeStorage()
    alone_calls = new_calls(alone)
    calls = new_calls(storage)
    for each in (alone_calls, calls):
        await each.grant("a", 10)
        await each.grant("b", 5)
    one_by_one = []
    for command, actor in items(alone_calls):
        try:
            one_by_one.append(await alone_calls.ledger.check_and_reserve(command, actor))
        except errors.Declined as declined:
            one_by_one.append(declined)

    batch = await calls.ledger.check_and_reserve_batch(items(calls))

    assert [summary(o) for o in batch] == [summary(o) for o in one_by_one]
    assert batch[4] == batch[0]
    assert [summary(o)[0] for o in batch] == [
        "ReserveResult", "declined", "declined", "ReserveResult", "ReserveResult", "declined",
        "declined", "ReserveResult"]
    assert storage.accounts == alone.accounts
    alone.assert_invariants()
