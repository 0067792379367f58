"""Reading protobuf messages in assertions: byte-for-byte equality, times as numbers, and a
reservation's draws."""

from __future__ import annotations

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from credits.v1 import credits_pb2 as pb


def same(a: Message, b: Message) -> bool:
    """Whether two messages serialize to the same bytes (deterministically)."""
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def seconds(stamp: Timestamp) -> float:
    """A Timestamp as seconds since the epoch."""
    return stamp.seconds + stamp.nanos / 1e9


def later(stamp: Timestamp, delay_s: int) -> Timestamp:
    """`stamp` moved `delay_s` seconds on (back, if negative)."""
    return Timestamp(seconds=stamp.seconds + delay_s, nanos=stamp.nanos)


def draws(reservation: pb.Reservation) -> list[tuple[str, int, int]]:
    """(lot_id, held, consumed) of each of the reservation's draws, in order."""
    return [(d.lot_id, d.held, d.consumed) for d in reservation.draws]
