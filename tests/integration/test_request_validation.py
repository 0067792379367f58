"""Requests that break a field rule are INVALID_ARGUMENT naming the field (every broken field at
once) and write nothing; values at the limits of each rule are accepted."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from credits.v1 import credits_pb2 as pb
from tests.grpc_errors import assert_error, expect_error
from tests.ledger_checks import TABLE_NAMES, row_counts
from tests.support.calls import grant, place_reservation, reserve
from tests.support.database import reservation_status

ACCOUNT = "acct-1"
MISSING_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


# Each builder takes proto field names, so that a row of BAD_REQUESTS reads as the field it
# breaks, the value, and the field the error must name.
def _grant_request(**fields) -> pb.GrantRequest:
    return pb.GrantRequest(**{"account_id": "fresh", "amount": 5, "type": pb.GRANT_TYPE_PROMO,
                              "idempotency_key": "v1", **fields})


def _reserve_request(**fields) -> pb.CheckAndReserveRequest:
    return pb.CheckAndReserveRequest(**{"account_id": ACCOUNT, "amount": 1,
                                        "idempotency_key": "v2", **fields})


def _commit_request(**fields) -> pb.CommitRequest:
    return pb.CommitRequest(**{"reservation_id": "{reservation}", **fields})


def _release_request(**fields) -> pb.ReleaseRequest:
    return pb.ReleaseRequest(**{"reservation_id": "{reservation}", **fields})


def _history_request(**fields) -> pb.HistoryRequest:
    return pb.HistoryRequest(**{"account_id": ACCOUNT, **fields})


SEVENTEEN_PAIRS = {f"k{i}": "v" for i in range(17)}
BAD_REQUESTS = [
    # Grant
    ("Grant", _grant_request(account_id=""), "account_id"),
    ("Grant", _grant_request(account_id="a" * 129), "account_id"),
    ("Grant", _grant_request(account_id="bad id"), "account_id"),
    ("Grant", _grant_request(account_id="bad/id"), "account_id"),
    ("Grant", _grant_request(account_id="café"), "account_id"),
    ("Grant", _grant_request(idempotency_key=""), "idempotency_key"),
    ("Grant", _grant_request(idempotency_key="k" * 129), "idempotency_key"),
    ("Grant", _grant_request(idempotency_key="key#1"), "idempotency_key"),
    ("Grant", _grant_request(amount=0), "amount"),
    ("Grant", _grant_request(amount=-1), "amount"),
    ("Grant", _grant_request(amount=10**12 + 1), "amount"),
    ("Grant", _grant_request(type=pb.GRANT_TYPE_UNSPECIFIED), "type"),
    ("Grant", _grant_request(type=99), "type"),
    ("Grant", _grant_request(reason="a\x00b"), "reason"),
    ("Grant", _grant_request(reason="r" * 257), "reason"),
    ("Grant", _grant_request(metadata=SEVENTEEN_PAIRS), "metadata"),
    ("Grant", _grant_request(metadata={"bad key": "v"}), "metadata['bad key']"),
    ("Grant", _grant_request(metadata={"": "v"}), "metadata['']"),
    ("Grant", _grant_request(metadata={"k" * 65: "v"}), f"metadata[{'k' * 64!r}]"),
    ("Grant", _grant_request(metadata={"k": "v" * 257}), "metadata['k']"),
    ("Grant", _grant_request(metadata={"k": "v\x07"}), "metadata['k']"),
    # CheckAndReserve
    ("CheckAndReserve", _reserve_request(account_id=""), "account_id"),
    ("CheckAndReserve", _reserve_request(account_id="x" * 129), "account_id"),
    ("CheckAndReserve", _reserve_request(idempotency_key=""), "idempotency_key"),
    ("CheckAndReserve", _reserve_request(idempotency_key="a,b"), "idempotency_key"),
    ("CheckAndReserve", _reserve_request(amount=0), "amount"),
    ("CheckAndReserve", _reserve_request(amount=-1), "amount"),
    ("CheckAndReserve", _reserve_request(amount=10**12 + 1), "amount"),
    ("CheckAndReserve", _reserve_request(ttl=Duration(nanos=500_000_000)), "ttl"),
    ("CheckAndReserve", _reserve_request(ttl=Duration(seconds=0)), "ttl"),
    ("CheckAndReserve", _reserve_request(ttl=Duration(seconds=-1)), "ttl"),
    ("CheckAndReserve", _reserve_request(ttl=Duration(seconds=86401)), "ttl"),
    ("CheckAndReserve", _reserve_request(ttl=Duration(seconds=86400, nanos=1_000_000)), "ttl"),
    ("CheckAndReserve", _reserve_request(metadata=SEVENTEEN_PAIRS), "metadata"),
    ("CheckAndReserve", _reserve_request(metadata={"a/b": "v"}), "metadata['a/b']"),
    ("CheckAndReserve", _reserve_request(metadata={"k": "v" * 257}), "metadata['k']"),
    # Commit
    ("Commit", _commit_request(reservation_id=""), "reservation_id"),
    ("Commit", _commit_request(reservation_id="not-a-uuid"), "reservation_id"),
    ("Commit", _commit_request(reservation_id=MISSING_ID[:-1]), "reservation_id"),
    ("Commit", _commit_request(reservation_id=MISSING_ID + "0"), "reservation_id"),
    ("Commit", _commit_request(reservation_id=MISSING_ID.replace("0", "g")), "reservation_id"),
    ("Commit", _commit_request(amount=0), "amount"),
    ("Commit", _commit_request(amount=-1), "amount"),
    ("Commit", _commit_request(amount=10**12 + 1), "amount"),
    ("Commit", _commit_request(metadata=SEVENTEEN_PAIRS), "metadata"),
    ("Commit", _commit_request(metadata={"k!": "v"}), "metadata['k!']"),
    # Release
    ("Release", _release_request(reservation_id=""), "reservation_id"),
    ("Release", _release_request(reservation_id="12345"), "reservation_id"),
    ("Release", _release_request(reason="\x00"), "reason"),
    ("Release", _release_request(reason="r" * 257), "reason"),
    # GetBalance
    ("GetBalance", pb.GetBalanceRequest(account_id=""), "account_id"),
    ("GetBalance", pb.GetBalanceRequest(account_id="a" * 129), "account_id"),
    ("GetBalance", pb.GetBalanceRequest(account_id="a\nb"), "account_id"),
    # History
    ("History", _history_request(account_id=""), "account_id"),
    ("History", _history_request(account_id="a b"), "account_id"),
    ("History", _history_request(page_size=-1), "page_size"),
    ("History", _history_request(types=[pb.ENTRY_TYPE_UNSPECIFIED]), "types"),
    ("History", _history_request(types=[pb.ENTRY_TYPE_GRANT, 99]), "types"),
    ("History", _history_request(page_token="t" * 513), "page_token"),
    ("History", _history_request(start_time=Timestamp(seconds=100),
                                 end_time=Timestamp(seconds=100)), "end_time"),
    ("History", _history_request(start_time=Timestamp(seconds=200),
                                 end_time=Timestamp(seconds=100)), "end_time"),
]


@pytest.mark.parametrize(("method", "request_message", "field"), BAD_REQUESTS,
                         ids=[f"{i}-{m}-{f}" for i, (m, _, f) in enumerate(BAD_REQUESTS)])
async def test_invalid_request_is_rejected_naming_the_field_and_writes_nothing(
        stub, db, method, request_message, field):
    """Each broken field rule: INVALID_ARGUMENT naming the field, no row in any table."""
    await grant(stub, ACCOUNT, 100)
    reservation_id = await place_reservation(stub, ACCOUNT, 10)
    request = type(request_message)()
    request.CopyFrom(request_message)
    if getattr(request, "reservation_id", None) == "{reservation}":
        request.reservation_id = reservation_id
    counts = await row_counts(db)

    error = await expect_error(getattr(stub, method)(request))

    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", field=field)
    assert field in [name for name, _ in error.field_violations]
    assert await row_counts(db) == counts
    assert await reservation_status(db, reservation_id) == "ACTIVE"


async def test_every_violation_of_a_request_is_reported_at_once(stub, db):
    """A request breaking several rules lists each field in BadRequest."""
    error = await expect_error(stub.Grant(pb.GrantRequest(
        account_id="", amount=0, type=pb.GRANT_TYPE_UNSPECIFIED, idempotency_key="",
        reason="r" * 257)))
    assert_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert {name for name, _ in error.field_violations} == {
        "account_id", "amount", "type", "idempotency_key", "reason"}
    assert all(description for _, description in error.field_violations)
    assert await row_counts(db) == dict.fromkeys(TABLE_NAMES, 0)


async def test_values_at_the_limits_are_accepted(stub):
    """128-char ids, amount 10^12, 256-char reason with tab/newline, 16 metadata pairs with
    64-char keys and 256-char values, and TTLs of 1 s and 24 h are all valid."""
    account = "A-z.0_9:@" + "x" * 119
    metadata = {f"{i:02d}" + "k" * 62: "v" * 256 for i in range(16)}
    reason = "line one\tand\r\nline two " + "r" * 232
    response = await grant(stub, account, 10**12, key="k" * 128, reason=reason,
                           metadata=metadata)
    assert (response.entry.amount, response.entry.reason) == (10**12, reason)
    assert dict(response.entry.metadata) == metadata

    for key, ttl in (("t1", Duration(seconds=1)), ("t2", Duration(seconds=86400))):
        reservation = (await reserve(stub, account, 1, key=key, ttl=ttl)).reservation
        assert (reservation.expire_time.ToDatetime() - reservation.create_time.ToDatetime()
                == timedelta(seconds=ttl.seconds))
    assert (await reserve(stub, account, 10**12 - 2, key="all")).balance.available == 0
