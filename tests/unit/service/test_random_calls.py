"""Any mix of calls, made a round of concurrent calls at a time, with the clock moving between
rounds, keeps the ledger's invariants, and fails only with declines."""

from __future__ import annotations

import asyncio
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credits_service.domain import errors
from credits_service.domain.commands import ReserveResult
from tests.support.fake_storage import FakeStorage

ACCOUNTS = ("a", "b")
EXAMPLES = int(os.environ.get("FAKE_LEDGER_EXAMPLES", "30"))

GRANT = st.tuples(st.just("grant"), st.sampled_from(ACCOUNTS), st.integers(1, 8),
                  st.sampled_from([None, 10, 50]), st.sampled_from([None, 30, 90]))
RESERVE = st.tuples(st.just("reserve"), st.sampled_from(ACCOUNTS), st.integers(1, 8),
                    st.sampled_from([20, 60, 120]))
COMMIT = st.tuples(st.just("commit"), st.integers(0, 20), st.sampled_from([None, 1, 3, 6, 9]))
RELEASE = st.tuples(st.just("release"), st.integers(0, 20))
SWEEP = st.tuples(st.sampled_from(["expire reservations", "expire lots"]))
ROUND = st.tuples(st.sampled_from([0, 25, 45]),
                  st.lists(st.one_of(GRANT, RESERVE, COMMIT, RELEASE, SWEEP), max_size=6))


async def run_call(calls, reservation_ids, op) -> object:
    kind, *args = op
    if kind == "grant":
        account, amount, priority, expire_s = args
        return await calls.grant(account, amount, priority=priority, expire_in_s=expire_s)
    if kind == "reserve":
        account, amount, ttl_s = args
        return await calls.reserve(account, amount, ttl_ms=ttl_s * 1000)
    if kind in ("commit", "release") and not reservation_ids:
        return None
    if kind == "commit":
        return await calls.commit(reservation_ids[args[0] % len(reservation_ids)], args[1])
    if kind == "release":
        return await calls.release(reservation_ids[args[0] % len(reservation_ids)])
    if kind == "expire reservations":
        return await calls.ledger.maintenance.expire_due_reservations(batch_size=3)
    return await calls.ledger.maintenance.expire_due_lots(batch_size=1)


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=st.lists(ROUND, max_size=6))
async def test_concurrent_calls_keep_the_invariants_and_fail_only_with_declines(
        new_calls, rounds):
    storage = FakeStorage()
    calls = new_calls(storage, group_size_max=4)
    reservation_ids: list[str] = []
    for advance_s, ops in rounds:
        storage.clock.advance(advance_s)
        outcomes = await asyncio.gather(
            *(run_call(calls, reservation_ids, op) for op in ops), return_exceptions=True)
        for outcome in outcomes:
            assert not isinstance(outcome, BaseException) or isinstance(
                outcome, errors.Declined), repr(outcome)
            if isinstance(outcome, ReserveResult):
                reservation_ids.append(outcome.reservation.reservation_id)
        storage.assert_invariants()
