"""Consumption order and give-back (credits_service/domain/lots.py), without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from credits_service.domain.lots import (
    LotChange,
    consumption_key,
    settle,
    split_commit,
    take,
)
from credits_service.domain.model import LotDraw

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _ordered(lots: list[tuple[int, int, datetime | None]]) -> list[int]:
    """Lot ids (lot_id, priority, expire_time) sorted in consumption order."""
    return [lot_id for lot_id, *_ in sorted(lots, key=lambda lot: consumption_key(
        lot[1], lot[2], lot[0]))]


def test_lower_priority_number_is_spent_first_whatever_the_expiry():
    assert _ordered([(1, 50, T0), (2, 10, None), (3, 90, T0 - timedelta(days=9))]) == [2, 1, 3]


def test_within_a_priority_the_soonest_expiry_is_spent_first_and_never_expiring_last():
    lots = [(1, 50, None), (2, 50, T0 + timedelta(days=30)), (3, 50, T0 + timedelta(days=1))]
    assert _ordered(lots) == [3, 2, 1]


def test_ties_on_priority_and_expiry_go_to_the_oldest_lot():
    assert _ordered([(7, 50, T0), (3, 50, T0), (5, 50, T0)]) == [3, 5, 7]
    assert _ordered([(9, 50, None), (4, 50, None)]) == [4, 9]


def test_take_empties_earlier_lots_first_and_skips_empty_ones():
    assert take([(1, 5), (2, 0), (3, 10), (4, 10)], 12) == [(1, 5), (3, 7)]
    assert take([(1, 5)], 5) == [(1, 5)]


def test_take_is_none_when_the_lots_cannot_cover_the_amount():
    assert take([(1, 5), (2, 4)], 10) is None
    assert take([], 1) is None


def _draws(*pairs: tuple[int, int]) -> list[LotDraw]:
    return [LotDraw(lot_id, held) for lot_id, held in pairs]


def test_an_equal_commit_consumes_every_draw_and_gives_nothing_back():
    split = split_commit(_draws((1, 3), (2, 7)), 10)
    assert split.consumed == ((1, 3), (2, 7))
    assert split.given_back == ()
    assert split.excess == 0


def test_a_smaller_commit_consumes_in_consumption_order_and_gives_the_rest_back():
    split = split_commit(_draws((1, 3), (2, 7), (3, 5)), 6)
    assert split.consumed == ((1, 3), (2, 3), (3, 0))
    assert split.given_back == ((2, 4), (3, 5))
    assert split.excess == 0


def test_a_larger_commit_consumes_every_draw_and_asks_for_the_excess():
    split = split_commit(_draws((1, 3), (2, 7)), 15)
    assert split.consumed == ((1, 3), (2, 7))
    assert split.given_back == ()
    assert split.excess == 5


def test_release_gives_every_draw_back_to_its_lot():
    changes, write_offs = settle(_draws((1, 3), (2, 7)), (), (), expired_lots=set())
    assert changes == [LotChange(1, -3, 0), LotChange(2, -7, 0)]
    assert write_offs == []


def test_what_goes_back_to_a_lot_that_expired_mid_reservation_is_written_off_at_once():
    changes, write_offs = settle(_draws((1, 3), (2, 7)), (), (), expired_lots={2})
    assert changes == [LotChange(1, -3, 0), LotChange(2, -7, -7)]
    assert write_offs == [(2, 7)]


def test_a_commit_may_consume_what_it_drew_from_a_lot_that_expired_mid_reservation():
    draws = _draws((1, 4), (2, 6))
    split = split_commit(draws, 7)  # 4 from lot 1, 3 from lot 2, 3 of lot 2 back
    changes, write_offs = settle(draws, split.consumed, (), expired_lots={1, 2})
    assert changes == [LotChange(1, -4, -4), LotChange(2, -6, -6)]
    assert write_offs == [(2, 3)]


def test_the_excess_of_a_larger_commit_leaves_its_lots_without_touching_what_they_hold():
    draws = _draws((1, 5))
    split = split_commit(draws, 9)
    changes, write_offs = settle(draws, split.consumed, [(1, 2), (3, 2)], expired_lots=set())
    assert changes == [LotChange(1, -5, -7), LotChange(3, 0, -2)]
    assert write_offs == []


@given(
    held=st.lists(st.integers(1, 50), min_size=1, max_size=6),
    amount=st.integers(1, 400),
    expired=st.sets(st.integers(0, 5)),
)
def test_settling_a_reservation_accounts_for_every_credit_it_drew(held, amount, expired):
    draws = [LotDraw(lot_id, h) for lot_id, h in enumerate(held)]
    split = split_commit(draws, amount)
    total = sum(held)
    assert sum(c for _, c in split.consumed) == min(amount, total)
    assert sum(g for _, g in split.given_back) == max(total - amount, 0)
    assert split.excess == max(amount - total, 0)
    # Consumption order: a later draw is consumed only once every earlier one is used up.
    consumed = [c for _, c in split.consumed]
    for i, part in enumerate(consumed[1:], start=1):
        assert part == 0 or consumed[i - 1] == held[i - 1]
    changes, write_offs = settle(draws, split.consumed, (), expired)
    assert -sum(c.held_delta for c in changes) == total
    written_off = sum(w for _, w in write_offs)
    assert written_off == sum(g for lot_id, g in split.given_back if lot_id in expired)
    assert -sum(c.remaining_delta for c in changes) == min(amount, total) + written_off
