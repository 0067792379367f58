"""The gRPC contract of GetBalance and History against the real server and database: every
balance field, History's order, filters and page sizes, and its page tokens refused when
malformed, edited or reused with other filters."""

from __future__ import annotations

import asyncio
import base64
import json

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from credits.v1 import credits_pb2 as pb
from tests.grpc_errors import RpcError, assert_error, expect_error
from tests.support.calls import balance_of, commit, grant, place_reservation, release, reserve
from tests.support.messages import seconds

ACCOUNT = "acct-1"


# --- GetBalance ------------------------------------------------------------------------------


async def test_get_balance_reports_every_field(stub):
    """GetBalance: balance, reserved, available, active reservations and lifetime totals."""
    await grant(stub, ACCOUNT, 100, key="g1")
    await grant(stub, ACCOUNT, 50, key="g2")
    await reserve(stub, ACCOUNT, 30, key="r1")
    await commit(stub, await place_reservation(stub, ACCOUNT, 20, key="r2"))
    await release(stub, await place_reservation(stub, ACCOUNT, 5, key="r3"))

    assert await balance_of(stub, ACCOUNT) == pb.Balance(
        account_id=ACCOUNT, balance=130, reserved=30, available=100, active_reservation_count=1,
        lifetime_granted=150, lifetime_used=20)


async def test_get_balance_of_unknown_account_is_not_found(stub):
    """No such account: NOT_FOUND / ACCOUNT_NOT_FOUND."""
    error = await expect_error(stub.GetBalance(pb.GetBalanceRequest(account_id="ghost")))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND", accountId="ghost")


# --- History ---------------------------------------------------------------------------------


async def _mixed_ledger(stub) -> list[str]:
    """Grant 100, commit 30, grant 50, commit 20 (newest last); returns the reservation ids."""
    await grant(stub, ACCOUNT, 100, key="g1", grant_type=pb.GRANT_TYPE_SIGNUP)
    first = await place_reservation(stub, ACCOUNT, 30, key="r1")
    await commit(stub, first, metadata={"job": "1"})
    await grant(stub, ACCOUNT, 50, key="g2", grant_type=pb.GRANT_TYPE_PROMO, reason="promo")
    second = await place_reservation(stub, ACCOUNT, 20, key="r2")
    await commit(stub, second)
    return [first, second]


async def test_history_lists_entries_newest_first_with_their_fields(stub):
    """History is newest first; USAGE entries name their reservation, GRANT entries their type."""
    first, second = await _mixed_ledger(stub)
    page = await stub.History(pb.HistoryRequest(account_id=ACCOUNT))

    assert page.next_page_token == ""
    summary = [(e.type, e.grant_type, e.amount, e.balance_after, e.reservation_id)
               for e in page.entries]
    assert summary == [
        (pb.ENTRY_TYPE_USAGE, 0, -20, 100, second),
        (pb.ENTRY_TYPE_GRANT, pb.GRANT_TYPE_PROMO, 50, 120, ""),
        (pb.ENTRY_TYPE_USAGE, 0, -30, 70, first),
        (pb.ENTRY_TYPE_GRANT, pb.GRANT_TYPE_SIGNUP, 100, 100, ""),
    ]
    ids = [int(e.entry_id) for e in page.entries]
    assert ids == sorted(ids, reverse=True)
    assert page.entries[1].reason == "promo"
    assert dict(page.entries[2].metadata) == {"job": "1"}
    assert all(e.account_id == ACCOUNT and e.actor == "anonymous" for e in page.entries)
    times = [seconds(e.create_time) for e in page.entries]
    assert times == sorted(times, reverse=True)


@pytest.mark.parametrize(("types", "expected"), [
    ([pb.ENTRY_TYPE_GRANT], [50, 100]),
    ([pb.ENTRY_TYPE_USAGE], [-20, -30]),
    ([pb.ENTRY_TYPE_GRANT, pb.ENTRY_TYPE_USAGE], [-20, 50, -30, 100]),
], ids=["grant", "usage", "both"])
async def test_history_filters_by_entry_type(stub, types, expected):
    """types keeps only entries of those types."""
    await _mixed_ledger(stub)
    page = await stub.History(pb.HistoryRequest(account_id=ACCOUNT, types=types))
    assert [e.amount for e in page.entries] == expected


async def test_history_filters_by_time_start_inclusive_end_exclusive(stub):
    """start_time keeps entries at or after it, end_time entries strictly before it."""
    for i in range(5):
        await grant(stub, ACCOUNT, i + 1, key=f"g{i}")
    entries = list(reversed((await stub.History(pb.HistoryRequest(account_id=ACCOUNT))).entries))
    assert len({seconds(e.create_time) for e in entries}) == 5

    page = await stub.History(pb.HistoryRequest(
        account_id=ACCOUNT, start_time=entries[1].create_time, end_time=entries[3].create_time))
    assert [e.amount for e in page.entries] == [3, 2]

    only_start = await stub.History(pb.HistoryRequest(
        account_id=ACCOUNT, start_time=entries[3].create_time))
    assert [e.amount for e in only_start.entries] == [5, 4]
    only_end = await stub.History(pb.HistoryRequest(
        account_id=ACCOUNT, end_time=entries[1].create_time))
    assert [e.amount for e in only_end.entries] == [1]


async def test_history_accepts_the_widest_time_range(stub):
    """start_time at year 1 and end_time at the end of year 9999 keep every entry."""
    await grant(stub, ACCOUNT, 10)
    page = await stub.History(pb.HistoryRequest(
        account_id=ACCOUNT, start_time=Timestamp(seconds=-62135596800),
        end_time=Timestamp(seconds=253402300799, nanos=999_999_000)))
    assert [e.amount for e in page.entries] == [10]


async def test_history_of_an_existing_account_with_nothing_matching_is_empty(stub):
    """Filters that match nothing on an existing account give an empty page, not NOT_FOUND."""
    await grant(stub, ACCOUNT, 10)
    page = await stub.History(pb.HistoryRequest(account_id=ACCOUNT, types=[pb.ENTRY_TYPE_USAGE]))
    assert (list(page.entries), page.next_page_token) == ([], "")


async def test_history_page_size_defaults_to_50_and_is_capped_at_500(stubs, stub):
    """page_size 0 gives 50 entries, 10000 gives 500; the token continues to the rest."""
    async def grant_one(i: int) -> None:
        await grant(stubs[i % len(stubs)], ACCOUNT, 1, key=f"g{i}")

    for batch in range(0, 510, 170):
        await asyncio.gather(*(grant_one(i) for i in range(batch, batch + 170)))

    default = await stub.History(pb.HistoryRequest(account_id=ACCOUNT))
    assert len(default.entries) == 50 and default.next_page_token

    capped = await stub.History(pb.HistoryRequest(account_id=ACCOUNT, page_size=10000))
    assert len(capped.entries) == 500 and capped.next_page_token
    rest = await stub.History(pb.HistoryRequest(
        account_id=ACCOUNT, page_size=10000, page_token=capped.next_page_token))
    assert (len(rest.entries), rest.next_page_token) == (10, "")
    ids = [int(e.entry_id) for e in [*capped.entries, *rest.entries]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 510


async def test_history_pages_follow_with_any_page_size(stub):
    """A token continues after the last entry of its page, whatever page size comes next."""
    for i in range(5):
        await grant(stub, ACCOUNT, i + 1, key=f"g{i}")
    first = await stub.History(pb.HistoryRequest(account_id=ACCOUNT, page_size=2))
    second = await stub.History(pb.HistoryRequest(
        account_id=ACCOUNT, page_size=3, page_token=first.next_page_token))
    assert [e.amount for e in first.entries] == [5, 4]
    assert [e.amount for e in second.entries] == [3, 2, 1]
    assert second.next_page_token == ""


# --- History page tokens ---------------------------------------------------------------------


def _page_token(after: object, real_token: str) -> str:
    """`real_token` with its position edited, keeping its signature: a forgery."""
    body, _, signature = real_token.rpartition(".")
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data["after"] = after
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") + "." + signature


@pytest.mark.parametrize("token", [
    "not-a-token",
    "!!!!",
    base64.urlsafe_b64encode(b"[1,2,3]").decode(),
    base64.urlsafe_b64encode(b'{"v":2,"after":1,"f":"x"}').decode(),
    base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
], ids=["text", "symbols", "json-list", "wrong-version", "binary"])
async def test_history_malformed_page_token_is_invalid_page_token(stub, token):
    """A token the server never made: INVALID_ARGUMENT / INVALID_PAGE_TOKEN."""
    await grant(stub, ACCOUNT, 10)
    error = await expect_error(stub.History(pb.HistoryRequest(account_id=ACCOUNT,
                                                              page_token=token)))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN",
                 field="page_token")


async def _tampered_history(stub, after: object) -> RpcError:
    for i in range(3):
        await grant(stub, ACCOUNT, 1, key=f"g{i}")
    real = await stub.History(pb.HistoryRequest(account_id=ACCOUNT, page_size=1))
    return await expect_error(stub.History(pb.HistoryRequest(
        account_id=ACCOUNT, page_size=1, page_token=_page_token(after, real.next_page_token))))


@pytest.mark.parametrize("after", [0, -1, "5", 1.5, None], ids=str)
async def test_history_tampered_page_token_is_invalid_page_token(stub, after):
    """A real token whose position was edited to a non-id: INVALID_PAGE_TOKEN."""
    error = await _tampered_history(stub, after)
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


async def test_history_page_token_with_position_past_int64_is_invalid_page_token(stub):
    """A token whose position is no 64-bit entry id is INVALID_PAGE_TOKEN, not INTERNAL."""
    error = await _tampered_history(stub, 2**63)
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


async def test_history_page_token_with_boolean_position_is_invalid_page_token(stub):
    """A token whose position is a boolean is malformed: INVALID_PAGE_TOKEN."""
    error = await _tampered_history(stub, True)
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


@pytest.mark.parametrize("other", [
    {"types": [pb.ENTRY_TYPE_GRANT]},
    {"account_id": "acct-2"},
    {"start_time": Timestamp(seconds=1)},
    {"end_time": Timestamp(seconds=4_000_000_000)},
], ids=["types", "account", "start", "end"])
async def test_history_token_used_with_other_filters_is_invalid_page_token(stub, other):
    """A token is bound to its account and filters: reused with others it is rejected."""
    for i in range(3):
        await grant(stub, ACCOUNT, 1, key=f"g{i}")
        await grant(stub, "acct-2", 1, key=f"h{i}")
    first = await stub.History(pb.HistoryRequest(account_id=ACCOUNT, page_size=1))
    assert first.next_page_token
    request = pb.HistoryRequest(account_id=ACCOUNT, page_size=1,
                                page_token=first.next_page_token)
    for name, value in other.items():
        if name == "types":
            request.types.extend(value)
        elif name == "account_id":
            request.account_id = value
        else:
            getattr(request, name).CopyFrom(value)

    error = await expect_error(stub.History(request))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


async def test_history_of_unknown_account_is_not_found(stub):
    """No such account: NOT_FOUND / ACCOUNT_NOT_FOUND."""
    error = await expect_error(stub.History(pb.HistoryRequest(account_id="ghost")))
    assert_error(error, grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND", accountId="ghost")


async def test_concurrent_get_balances_read_together_each_answer_its_own(stub, db, clock):
    """GetBalance calls in flight together are read in one statement: each still answers its
    own account's lots (in consumption order), its expiring credits by its own window and the
    service clock (moved here), and an unknown account NOT_FOUND alone."""
    from google.protobuf.duration_pb2 import Duration

    from tests.support.database import service_now
    from tests.support.messages import later

    now = await service_now(db, clock)
    await grant(stub, "bal-a", 100, expire_time=later(now, 7200))
    await grant(stub, "bal-a", 50)
    for priority in (30, 10, 20):
        await grant(stub, "bal-b", priority, priority=priority)
    await reserve(stub, "bal-b", 15)
    await stub.EnsureAccount(pb.EnsureAccountRequest(account_id="bal-c"))
    clock.advance(3600)  # bal-a's first lot now expires within 90 minutes, not within 30
    windows = {"90m": Duration(seconds=5400), "30m": Duration(seconds=1800), "-": None}
    asked = [("bal-a", "90m"), ("bal-b", "-"), ("bal-a", "30m"), ("nobody", "-"),
             ("bal-c", "90m"), ("bal-a", "-")] * 8

    def request(account: str, window: str) -> pb.GetBalanceRequest:
        message = pb.GetBalanceRequest(account_id=account)
        if windows[window] is not None:
            message.expiring_within.CopyFrom(windows[window])
        return message

    answers = await asyncio.gather(*(stub.GetBalance(request(*a)) for a in asked),
                                   return_exceptions=True)
    for (account, window), answer in zip(asked, answers, strict=True):
        if account == "nobody":
            assert isinstance(answer, grpc.aio.AioRpcError)
            assert answer.code() is grpc.StatusCode.NOT_FOUND
            continue
        assert answer.balance.account_id == account and answer.account.account_id == account
        if account == "bal-a":
            assert [lot.remaining for lot in answer.lots] == [100, 50]
            assert answer.expiring_amount == {"90m": 100, "30m": 0, "-": 0}[window]
            assert answer.balance.balance == 150
        elif account == "bal-b":
            assert [lot.priority for lot in answer.lots] == [10, 20, 30]
            assert (answer.balance.reserved, answer.totals.purchased) == (15, 60)
        else:
            assert (answer.balance.balance, list(answer.lots)) == (0, [])
