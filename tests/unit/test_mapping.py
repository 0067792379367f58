"""Domain -> protobuf mapping details that have a reference to agree with."""

import dataclasses
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from credits.v1 import credits_pb2 as pb
from credits_service.domain.ids import new_reservation_ids
from credits_service.domain.model import BalanceSnapshot, LotDraw, Reservation, ReservationStatus
from credits_service.transport.grpc.messages import (
    RESERVATION_STATUS_TO_PROTO,
    balance,
    timestamp,
)
from credits_service.transport.grpc.messages import (
    reservation as reservation_message,
)


@pytest.mark.parametrize(
    "value",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 11, 22, 3, 4, 5, 123_456, tzinfo=timezone(timedelta(hours=5))),
        datetime(2026, 11, 22, 3, 4, 5, 7),  # naive: UTC, as FromDatetime reads it
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
    ],
)
def test_timestamps_match_protobufs_own_conversion(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value)
    assert timestamp(value) == expected


def _reservation(**changes: object) -> Reservation:
    reservation = Reservation(
        reservation_id="0f8fad5b-d9cb-469f-a165-70867728950e", account_id="acct", amount=9,
        status=ReservationStatus.COMMITTED, committed_amount=7,
        create_time=datetime(2026, 11, 22, 3, 4, 5, 123_456, tzinfo=UTC),
        expire_time=datetime(2026, 11, 22, 3, 5, 5, tzinfo=UTC),
        finish_time=datetime(2026, 11, 22, 3, 4, 6, tzinfo=UTC),
        metadata={"job": "render", "note": "caf\u00e9"},
        draws=(LotDraw(3, 4, 4), LotDraw(5, 5, 3)), release_reason="done",
    )
    return dataclasses.replace(reservation, **changes)


@pytest.mark.parametrize("reservation", [
    _reservation(),
    _reservation(status=ReservationStatus.ACTIVE, committed_amount=None, finish_time=None,
                 metadata={}, draws=(LotDraw(1, 9),), release_reason=""),
])
def test_messages_built_in_place_match_the_constructor_form(reservation: Reservation) -> None:
    """set_reservation / set_balance fill fields in place (no copies); the message is the one
    the keyword constructor gives."""
    expected = pb.Reservation(
        reservation_id=reservation.reservation_id, account_id=reservation.account_id,
        amount=reservation.amount,
        status=RESERVATION_STATUS_TO_PROTO[reservation.status],
        committed_amount=reservation.committed_amount or 0,
        create_time=timestamp(reservation.create_time),
        expire_time=timestamp(reservation.expire_time),
        metadata=dict(reservation.metadata),
        draws=[pb.LotDraw(lot_id=str(d.lot_id), held=d.held, consumed=d.consumed or 0)
               for d in reservation.draws],
        release_reason=reservation.release_reason,
    )
    if reservation.finish_time is not None:
        expected.finish_time.CopyFrom(timestamp(reservation.finish_time))
    assert reservation_message(reservation) == expected
    assert reservation_message(reservation).HasField("finish_time") is (
        reservation.finish_time is not None)
    snapshot = BalanceSnapshot("acct", 10, 4, 2, 12, 2, 1)
    assert balance(snapshot) == pb.Balance(
        account_id="acct", balance=10, reserved=4, available=6, active_reservation_count=2,
        lifetime_granted=12, lifetime_used=2, lifetime_expired=1)


def test_reservation_ids_are_version_7_uuids_in_canonical_form() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [value for count in (1, 2, 997, 3000) for value in new_reservation_ids(count)]
    after_ms = time.time_ns() // 1_000_000
    assert len(ids) == 4000
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before_ms <= parsed.int >> 80 <= after_ms  # the Unix time in milliseconds
    assert {value[19] for value in ids} == set("89ab")  # every variant digit occurs
    for position in (15, 16, 17, 20, 35):  # random digits take every value
        assert {value[position] for value in ids} == set("0123456789abcdef")


def test_reservation_ids_created_later_sort_after() -> None:
    """Index locality: reservations created in a later millisecond get larger ids."""
    earlier = new_reservation_ids(50)
    time.sleep(0.002)
    later = new_reservation_ids(50)
    assert max(earlier) < min(later)
    assert max(uuid.UUID(v) for v in earlier) < min(uuid.UUID(v) for v in later)
