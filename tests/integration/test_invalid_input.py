"""F14: generated invalid requests for every RPC are INVALID_ARGUMENT naming exactly the broken
fields, and write nothing; an oversized message is refused by the transport limit.

Hypothesis drives a synchronous test body in a worker thread; each example is sent to the real
server on the test's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from credits.v1 import credits_pb2 as pb
from tests.grpc_errors import expect_error
from tests.ledger_checks import TABLE_NAMES, row_counts
from tests.support.calls import grant, grant_request, reserve

ALPHABET = "ABCXYZabcxyz0189._:@-"
TTL_MAX_S = 86_400

# --- one strategy per field: (value, is_valid) ---------------------------------------------

valid_id = st.text(ALPHABET, min_size=1, max_size=128)
invalid_id = st.one_of(
    st.just(""),
    st.text(ALPHABET, min_size=129, max_size=200),
    st.builds(lambda a, bad, b: a + bad + b, st.text(ALPHABET, max_size=20),
              st.sampled_from([" ", "/", "#", ",", "é", "\n", "\x00", "ü", "*"]),
              st.text(ALPHABET, max_size=20)),
)
valid_amount = st.integers(1, 10**12)
invalid_amount = st.one_of(st.integers(-(2**63), 0), st.integers(10**12 + 1, 2**63 - 1))
valid_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=256)
invalid_text = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=257, max_size=300),
    st.builds(lambda a, c: a + c, st.text(max_size=10, alphabet="abc"),
              st.sampled_from(["\x00", "\x07", "\x1b", "\x7f"])),
)
valid_metadata = st.dictionaries(st.text("abcXYZ019._-", min_size=1, max_size=64), valid_text,
                                 max_size=16)
invalid_metadata = st.one_of(
    st.dictionaries(st.text("abcXYZ019", min_size=1, max_size=8), st.just("v"),
                    min_size=17, max_size=25),
    st.builds(lambda ok, key: {**ok, key: "v"},
              st.dictionaries(st.text("abc", min_size=1, max_size=4), st.just("v"), max_size=4),
              st.one_of(st.just(""), st.text("abc", min_size=65, max_size=70),
                        st.sampled_from(["a b", "a/b", "ü", "k:1"]))),
    st.builds(lambda bad: {"k": bad}, invalid_text),
)
valid_grant_type = st.sampled_from([v for v in pb.GrantType.values() if v != 0])
invalid_grant_type = st.one_of(st.just(0), st.integers(8, 2**31 - 1))
valid_ttl = st.one_of(st.none(), st.integers(1000, TTL_MAX_S * 1000))
invalid_ttl = st.one_of(st.integers(-10**9, 999), st.integers(TTL_MAX_S * 1000 + 1, 10**12))
# expire_time: unset or in the future (a past one is EXPIRE_TIME_PASSED, see test_lots.py);
# invalid: past year 9999.
valid_expire_time = st.one_of(st.none(), st.integers(4_102_444_800, 253_402_300_799))
invalid_expire_time = st.integers(253_402_300_800, 2**62)
valid_priority = st.one_of(st.none(), st.integers(0, 100))
invalid_priority = st.one_of(st.integers(-(2**31), -1), st.integers(101, 2**31 - 1))
valid_extend_ttl = st.integers(1000, TTL_MAX_S * 1000)
invalid_extend_ttl = st.one_of(st.none(), invalid_ttl)
DAY_MS = 86_400_000
valid_window = st.one_of(st.none(), st.integers(0, 3650 * DAY_MS))
invalid_window = st.one_of(st.integers(-10**12, -1), st.integers(3650 * DAY_MS + 1, 10**15))
valid_statuses = st.lists(st.sampled_from([v for v in pb.ReservationStatus.values() if v]),
                          max_size=3)
invalid_statuses = st.builds(lambda ok, bad: [*ok, bad], valid_statuses,
                             st.one_of(st.just(0), st.integers(5, 1000)))
valid_reservation_id = st.uuids().map(str)
invalid_reservation_id = st.one_of(
    st.just(""), st.text(ALPHABET, max_size=40).filter(lambda s: len(s) != 36),
    st.uuids().map(lambda u: str(u).replace("-", "g", 1)),
)
valid_page_size = st.integers(0, 10_000)
invalid_page_size = st.integers(-(2**31), -1)
valid_page_token = st.just("")
invalid_page_token = st.text(ALPHABET, min_size=513, max_size=600)
valid_entry_types = st.lists(st.sampled_from([v for v in pb.EntryType.values() if v]),
                             max_size=3)
invalid_entry_types = st.builds(lambda ok, bad: [*ok, bad], valid_entry_types,
                                st.one_of(st.just(0), st.integers(4, 1000)))


def field(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> st.SearchStrategy:
    return st.one_of(valid.map(lambda v: (v, True)), invalid.map(lambda v: (v, False)))


def requests(build: Callable[..., Any], **fields: st.SearchStrategy) -> st.SearchStrategy:
    """(request, names of the invalid fields), with at least one field invalid."""

    def assemble(drawn: dict[str, tuple[Any, bool]]) -> tuple[Any, set[str]]:
        return build(**{name: value for name, (value, _) in drawn.items()}), {
            name for name, (_, ok) in drawn.items() if not ok}

    return st.fixed_dictionaries(fields).map(assemble).filter(lambda pair: pair[1])


# The builders take each field by its proto name and any drawn value, valid or not: `requests`
# names the broken fields by those parameter names (tests.support.calls builds valid requests).
def _duration(ttl_ms: int | None) -> dict[str, Duration]:
    if ttl_ms is None:
        return {}
    seconds, millis = divmod(abs(ttl_ms), 1000)
    sign = -1 if ttl_ms < 0 else 1
    return {"ttl": Duration(seconds=sign * seconds, nanos=sign * millis * 1_000_000)}


def _grant(account_id, amount, type, idempotency_key, reason, metadata, expire_time, priority):
    extra = {} if priority is None else {"priority": priority}
    if expire_time is not None:
        extra["expire_time"] = Timestamp(seconds=expire_time)
    return pb.GrantRequest(account_id=account_id, amount=amount, type=type,
                           idempotency_key=idempotency_key, reason=reason, metadata=metadata,
                           **extra)


def _extend(reservation_id, ttl):
    return pb.ExtendReservationRequest(reservation_id=reservation_id, **_duration(ttl))


def _get_balance(account_id, expiring_within):
    extra = {}
    if expiring_within is not None:
        extra["expiring_within"] = _duration(expiring_within)["ttl"]
    return pb.GetBalanceRequest(account_id=account_id, **extra)


def _list_reservations(account_id, page_size, page_token, statuses):
    return pb.ListReservationsRequest(account_id=account_id, page_size=page_size,
                                      page_token=page_token, statuses=statuses)


def _reserve(account_id, amount, idempotency_key, ttl, metadata):
    return pb.CheckAndReserveRequest(account_id=account_id, amount=amount,
                                     idempotency_key=idempotency_key, metadata=metadata,
                                     **_duration(ttl))


def _commit(reservation_id, amount, metadata):
    extra = {} if amount is None else {"amount": amount}
    return pb.CommitRequest(reservation_id=reservation_id, metadata=metadata, **extra)


def _history(account_id, page_size, page_token, types, time_range):
    start, end = time_range
    return pb.HistoryRequest(account_id=account_id, page_size=page_size, page_token=page_token,
                             types=types, start_time=Timestamp(seconds=start),
                             end_time=Timestamp(seconds=end))


valid_range = st.tuples(st.integers(0, 2 * 10**9), st.integers(1, 10**9)).map(
    lambda p: (p[0], p[0] + p[1]))
invalid_range = st.tuples(st.integers(1, 2 * 10**9), st.integers(0, 10**9)).map(
    lambda p: (p[0], p[0] - min(p[1], p[0])))

# The History time range is reported on end_time when it is not after start_time.
RPC_REQUESTS: dict[str, st.SearchStrategy] = {
    "Grant": requests(
        _grant, account_id=field(valid_id, invalid_id), amount=field(valid_amount, invalid_amount),
        type=field(valid_grant_type, invalid_grant_type),
        idempotency_key=field(valid_id, invalid_id), reason=field(valid_text, invalid_text),
        metadata=field(valid_metadata, invalid_metadata),
        expire_time=field(valid_expire_time, invalid_expire_time),
        priority=field(valid_priority, invalid_priority)),
    "CheckAndReserve": requests(
        _reserve, account_id=field(valid_id, invalid_id),
        amount=field(valid_amount, invalid_amount), idempotency_key=field(valid_id, invalid_id),
        ttl=field(valid_ttl, invalid_ttl), metadata=field(valid_metadata, invalid_metadata)),
    "Commit": requests(
        _commit, reservation_id=field(valid_reservation_id, invalid_reservation_id),
        amount=field(st.one_of(st.none(), valid_amount), invalid_amount),
        metadata=field(valid_metadata, invalid_metadata)),
    "Release": requests(
        lambda reservation_id, reason: pb.ReleaseRequest(reservation_id=reservation_id,
                                                         reason=reason),
        reservation_id=field(valid_reservation_id, invalid_reservation_id),
        reason=field(valid_text, invalid_text)),
    "ExtendReservation": requests(
        _extend, reservation_id=field(valid_reservation_id, invalid_reservation_id),
        ttl=field(valid_extend_ttl, invalid_extend_ttl)),
    "GetBalance": requests(_get_balance, account_id=field(valid_id, invalid_id),
                           expiring_within=field(valid_window, invalid_window)),
    "ListReservations": requests(
        _list_reservations, account_id=field(valid_id, invalid_id),
        page_size=field(valid_page_size, invalid_page_size),
        page_token=field(valid_page_token, invalid_page_token),
        statuses=field(valid_statuses, invalid_statuses)),
    "History": requests(
        _history, account_id=field(valid_id, invalid_id),
        page_size=field(valid_page_size, invalid_page_size),
        page_token=field(valid_page_token, invalid_page_token),
        types=field(valid_entry_types, invalid_entry_types),
        time_range=field(valid_range, invalid_range)),
}
FIELD_NAMES = {"time_range": "end_time"}


async def test_generated_invalid_requests_are_refused_naming_exactly_the_broken_fields(stub, db):
    # Something to break: an account with a reservation, so a write would show.
    await grant(stub, "acct", 100, key="g")
    await reserve(stub, "acct", 10, key="r")
    before = await row_counts(db)
    loop = asyncio.get_running_loop()
    seen: dict[str, int] = dict.fromkeys(RPC_REQUESTS, 0)

    def check(method: str, request: Any, broken: set[str]) -> None:
        async def send() -> Any:  # grpc.aio calls must be made on the server's loop
            return await expect_error(getattr(stub, method)(request, timeout=10))

        error = asyncio.run_coroutine_threadsafe(send(), loop).result(30)
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT, (method, request, error)
        assert (error.reason, error.domain) == ("INVALID_ARGUMENT", "credits.v1"), error
        reported = {name.split("[", 1)[0] for name, _ in error.field_violations}
        assert reported == {FIELD_NAMES.get(name, name) for name in broken}, (request, error)
        seen[method] += 1

    @given(st.sampled_from(sorted(RPC_REQUESTS)).flatmap(
        lambda method: st.tuples(st.just(method), RPC_REQUESTS[method])))
    def generated(case: tuple[str, tuple[Any, set[str]]]) -> None:
        method, (request, broken) = case
        check(method, request, broken)

    await asyncio.to_thread(generated)
    assert all(seen.values()), f"some RPC was never exercised: {seen}"
    assert await row_counts(db) == before


async def test_an_oversized_message_is_refused_by_the_transport(stub, db, test_settings):
    """Larger than max_message_bytes: RESOURCE_EXHAUSTED before any handler runs."""
    request = grant_request("acct", 1, reason="x" * (test_settings.server.max_message_bytes + 1))
    error = await expect_error(stub.Grant(request, timeout=10))
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert await row_counts(db) == dict.fromkeys(TABLE_NAMES, 0)
