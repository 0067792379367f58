"""Which lots a reservation draws from: lowest priority number first, then the soonest
expire_time (never-expiring last), then the oldest lot; amounts split across lots."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credits_service.domain.commands import BalanceQuery
from credits_service.domain.model import LotDraw
from tests.support.fake_storage import FakeStorage

HOUR_S = 3600


def held(result) -> list[tuple[int, int]]:
    return [(d.lot_id, d.held) for d in result.reservation.draws]


async def test_the_lowest_priority_number_is_drawn_first_whatever_the_expiry(calls):
    late = (await calls.grant("a", 5, priority=90, expire_in_s=HOUR_S)).lot.lot_id
    early = (await calls.grant("a", 5, priority=10)).lot.lot_id

    assert held(await calls.reserve("a", 7)) == [(early, 5), (late, 2)]


async def test_within_a_priority_the_soonest_expiry_first_and_never_expiring_last(calls):
    never = (await calls.grant("a", 4)).lot.lot_id
    later = (await calls.grant("a", 4, expire_in_s=2 * HOUR_S)).lot.lot_id
    sooner = (await calls.grant("a", 4, expire_in_s=HOUR_S)).lot.lot_id

    assert held(await calls.reserve("a", 10)) == [(sooner, 4), (later, 4), (never, 2)]


async def test_ties_go_to_the_oldest_lot(calls):
    first = (await calls.grant("a", 3)).lot.lot_id
    second = (await calls.grant("a", 3)).lot.lot_id

    assert held(await calls.reserve("a", 2)) == [(first, 2)]
    assert held(await calls.reserve("a", 2)) == [(first, 1), (second, 1)]


async def test_a_reservation_skips_credits_other_reservations_hold(calls, storage):
    lot = (await calls.grant("a", 10)).lot.lot_id
    other = (await calls.grant("a", 10, priority=60)).lot.lot_id
    await calls.reserve("a", 8)

    assert held(await calls.reserve("a", 5)) == [(lot, 2), (other, 3)]
    assert (storage.lots[lot].held, storage.lots[other].held) == (10, 3)


async def test_get_balance_lists_lots_in_consumption_order(calls, clock):
    never = (await calls.grant("a", 1)).lot.lot_id
    soon = (await calls.grant("a", 2, expire_in_s=HOUR_S)).lot.lot_id
    first = (await calls.grant("a", 3, priority=0, expire_in_s=9 * HOUR_S)).lot.lot_id

    report = await calls.ledger.get_balance(
        BalanceQuery("a", expiring_within_ms=2 * HOUR_S * 1000), "tester")

    assert [lot.lot_id for lot in report.lots] == [first, soon, never]
    assert report.expiring_amount == 2
    assert (report.balance.balance, report.lots_truncated) == (6, False)


LOTS = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from([None, 1, 2, 3]), st.integers(1, 5)),
    min_size=1, max_size=6,
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lots=LOTS, data=st.data())
async def test_any_reservation_draws_in_consumption_order(new_calls, lots, data):
    storage = FakeStorage()
    calls = new_calls(storage)
    granted = []
    for priority, expire_h, amount in lots:
        lot = (await calls.grant("a", amount, priority=priority,
                                 expire_in_s=expire_h and expire_h * HOUR_S)).lot
        granted.append(lot)
    amount = data.draw(st.integers(1, sum(lot.amount for lot in granted)))

    reservation = (await calls.reserve("a", amount)).reservation

    assert reservation.draws == expected_draws(granted, amount, storage.clock.now())
    storage.assert_invariants()


def expected_draws(lots, amount, now) -> tuple[LotDraw, ...]:
    """The model: lots sorted by (priority, expiring at all, expire_time, lot id), emptied
    in turn."""
    ordered = sorted(lots, key=lambda lot: (
        lot.priority, lot.expire_time is None, lot.expire_time or now - timedelta(days=1),
        lot.lot_id))
    draws, left = [], amount
    for lot in ordered:
        part = min(lot.amount, left)
        if part:
            draws.append(LotDraw(lot.lot_id, part))
        left -= part
    return tuple(draws)
