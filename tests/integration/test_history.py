"""History pages through the ledger newest first with no gaps and no duplicates (F15)."""

from __future__ import annotations

import asyncio
import itertools

from credits.v1 import credits_pb2 as pb


async def _page_all(stub, **filters) -> list[pb.LedgerEntry]:
    entries: list[pb.LedgerEntry] = []
    token = ""
    for _ in range(1000):
        page = await stub.History(pb.HistoryRequest(page_token=token, **filters))
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries
    raise AssertionError("pagination did not end")


async def test_history_pages_through_1000_entries_without_gaps_or_duplicates(stubs, stub):
    async def grant(i: int) -> None:
        await stubs[i % len(stubs)].Grant(pb.GrantRequest(
            account_id="pages", amount=i + 1, type=pb.GRANT_TYPE_PURCHASE,
            idempotency_key=f"g{i}"))

    for batch in range(10):
        await asyncio.gather(*(grant(batch * 100 + i) for i in range(100)))

    entries = await _page_all(stub, account_id="pages", page_size=37)

    assert len(entries) == 1000
    ids = [int(e.entry_id) for e in entries]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids, reverse=True)
    assert sorted(e.amount for e in entries) == list(range(1, 1001))
    # Newest first: each entry's balance_after is the previous one's minus its amount.
    for newer, older in itertools.pairwise(entries):
        assert newer.balance_after == older.balance_after + newer.amount
    assert entries[0].balance_after == sum(range(1, 1001))


async def test_history_paging_while_entries_are_appended_has_no_gaps_or_duplicates(stub):
    for i in range(200):
        await stub.Grant(pb.GrantRequest(account_id="live", amount=1,
                                         type=pb.GRANT_TYPE_PURCHASE, idempotency_key=f"a{i}"))
    first = await stub.History(pb.HistoryRequest(account_id="live", page_size=50))
    newest_seen = int(first.entries[0].entry_id)

    async def append_more() -> None:
        for i in range(100):
            await stub.Grant(pb.GrantRequest(account_id="live", amount=1,
                                             type=pb.GRANT_TYPE_PURCHASE,
                                             idempotency_key=f"b{i}"))

    writer = asyncio.create_task(append_more())
    entries = list(first.entries)
    token = first.next_page_token
    while token:
        page = await stub.History(pb.HistoryRequest(account_id="live", page_size=50,
                                                    page_token=token))
        entries.extend(page.entries)
        token = page.next_page_token
    await writer

    ids = [int(e.entry_id) for e in entries]
    assert len(ids) == len(set(ids)) == 200
    assert ids[0] == newest_seen and ids == sorted(ids, reverse=True)


async def test_history_filters_compose_as_intersection(stub):
    await stub.Grant(pb.GrantRequest(account_id="mix", amount=100, type=pb.GRANT_TYPE_PURCHASE,
                                     idempotency_key="g0"))
    for i in range(5):
        reserved = await stub.CheckAndReserve(pb.CheckAndReserveRequest(
            account_id="mix", amount=3, idempotency_key=f"r{i}"))
        await stub.Commit(pb.CommitRequest(reservation_id=reserved.reservation.reservation_id))
        await stub.Grant(pb.GrantRequest(account_id="mix", amount=1, type=pb.GRANT_TYPE_PROMO,
                                         idempotency_key=f"g{i + 1}"))
    everything = await _page_all(stub, account_id="mix", page_size=4)
    middle = everything[3]
    end_time = middle.create_time

    usage = await _page_all(stub, account_id="mix", types=[pb.ENTRY_TYPE_USAGE], page_size=2)
    before = await _page_all(stub, account_id="mix", end_time=end_time, page_size=2)
    both = await _page_all(stub, account_id="mix", types=[pb.ENTRY_TYPE_USAGE],
                           end_time=end_time, page_size=2)

    def ids(entries):
        return {e.entry_id for e in entries}

    assert len(usage) == 5 and all(e.type == pb.ENTRY_TYPE_USAGE for e in usage)
    assert ids(both) == ids(usage) & ids(before)
