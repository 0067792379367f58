"""Reads: History and ListReservations page through everything once, newest first; a page
token only works for the filters it was made for; GetBalance."""

from __future__ import annotations

import dataclasses

import pytest

from credits_service.domain import errors
from credits_service.domain.commands import (
    BalanceQuery,
    HistoryQuery,
    ReservationsQuery,
)
from credits_service.domain.model import LOTS_LISTED_MAX, EntryType, ReservationStatus

HOUR_S = 3600


async def every_page(read, query) -> list:
    """Everything a query's pages list, following next_page_token to the end."""
    found = []
    while True:
        page = await read(query)
        found.extend(page.entries if hasattr(page, "entries") else page.reservations)
        if not page.next_page_token:
            return found
        query = dataclasses.replace(query, page_token=page.next_page_token)


async def busy_account(calls, clock) -> None:
    """An account with grants, usage, releases and an expiry, over several instants."""
    await calls.grant("acct", 20, expire_in_s=HOUR_S)
    for amount in range(1, 6):
        await calls.grant("acct", amount)
        reservation_id = (await calls.reserve("acct", amount + 1)).reservation.reservation_id
        if amount % 2:
            await calls.commit(reservation_id, amount)
        else:
            await calls.release(reservation_id)
        clock.advance(60)
    await calls.reserve("acct", 2)
    clock.advance(HOUR_S)
    await calls.ledger.maintenance.expire_due_lots(batch_size=10)
    await calls.grant("other", 5)


@pytest.mark.parametrize("page_size", [1, 3, 4, 50])
async def test_history_pages_through_every_entry_once_newest_first(
        calls, clock, storage, page_size):
    await busy_account(calls, clock)

    listed = await every_page(calls.ledger.history, HistoryQuery("acct", page_size))

    ids = [e.entry_id for e in storage.entries if e.account_id == "acct"]
    assert [e.entry_id for e in listed] == sorted(ids, reverse=True)


async def test_history_filters_by_entry_type_across_pages(calls, clock):
    await busy_account(calls, clock)
    query = HistoryQuery("acct", 2, entry_types=frozenset({EntryType.USAGE, EntryType.EXPIRY}))

    listed = await every_page(calls.ledger.history, query)

    assert [e.entry_type for e in listed] == [EntryType.EXPIRY] + [EntryType.USAGE] * 3


async def test_history_refuses_a_token_made_for_other_filters(calls, clock):
    await busy_account(calls, clock)
    page = await calls.ledger.history(HistoryQuery("acct", 2))

    for other in (HistoryQuery("other", 2), HistoryQuery("acct", 2, start_time=clock.now()),
                  HistoryQuery("acct", 2, entry_types=frozenset({EntryType.GRANT}))):
        with pytest.raises(errors.InvalidPageToken):
            await calls.ledger.history(
                dataclasses.replace(other, page_token=page.next_page_token))
    with pytest.raises(errors.InvalidPageToken):
        await calls.ledger.history(HistoryQuery("acct", 2, page_token=page.next_page_token[1:]))


@pytest.mark.parametrize("page_size", [1, 2, 5])
async def test_list_reservations_pages_through_every_reservation_once_newest_first(
        calls, clock, storage, page_size):
    await busy_account(calls, clock)
    for _ in range(4):  # several at one instant: their ids order them
        await calls.reserve("acct", 1)

    listed = await every_page(calls.ledger.list_reservations,
                              ReservationsQuery("acct", page_size))

    expected = sorted(storage.reservations.values(),
                      key=lambda r: (r.create_time, r.reservation_id), reverse=True)
    assert listed == expected


async def test_list_reservations_filters_by_status_and_refuses_other_filters_tokens(
        calls, clock):
    await busy_account(calls, clock)
    query = ReservationsQuery("acct", 1, statuses=frozenset({ReservationStatus.COMMITTED}))

    listed = await every_page(calls.ledger.list_reservations, query)
    first = await calls.ledger.list_reservations(query)

    assert [r.committed_amount for r in listed] == [5, 3, 1]
    with pytest.raises(errors.InvalidPageToken):
        await calls.ledger.list_reservations(
            ReservationsQuery("acct", 1, page_token=first.next_page_token))


async def test_reads_of_an_unknown_account_are_not_found(calls):
    with pytest.raises(errors.AccountNotFound):
        await calls.ledger.get_balance(BalanceQuery("nobody"), "tester")
    for read, query in ((calls.ledger.history, HistoryQuery("nobody", 5)),
                        (calls.ledger.list_reservations, ReservationsQuery("nobody", 5))):
        with pytest.raises(errors.AccountNotFound):
            await read(query)


async def test_get_balance_lists_only_lots_with_credits_left(calls):
    await calls.grant("acct", 3, priority=1)
    kept = (await calls.grant("acct", 4)).lot.lot_id
    reservation_id = (await calls.reserve("acct", 3)).reservation.reservation_id
    await calls.commit(reservation_id)

    report = await calls.ledger.get_balance(BalanceQuery("acct"), "tester")

    assert [lot.lot_id for lot in report.lots] == [kept]
    assert report.balance.balance == 4


async def test_get_balance_lists_at_most_its_maximum_of_lots(calls):
    for _ in range(LOTS_LISTED_MAX + 1):
        await calls.grant("acct", 1)

    report = await calls.ledger.get_balance(BalanceQuery("acct"), "tester")

    assert (len(report.lots), report.lots_truncated) == (LOTS_LISTED_MAX, True)
