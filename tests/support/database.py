"""The test database read and edited directly, for what the API does not show or cannot do: a
reservation's stored status, a reservation made overdue, the service clock."""

from __future__ import annotations

from typing import Any

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp


async def reservation_status(db: asyncpg.Connection, reservation_id: str) -> str:
    """The status stored for the reservation (ACTIVE, COMMITTED, RELEASED or EXPIRED)."""
    return await db.fetchval(
        "SELECT status FROM reservations WHERE reservation_id = $1::uuid", reservation_id)


async def make_overdue(db: asyncpg.Connection, reservation_id: str) -> None:
    """Move the reservation back an hour so that its expire_time passed a second ago."""
    await db.execute(
        "UPDATE reservations SET create_time = create_time - interval '1 hour', "
        "expire_time = now() - interval '1 second' WHERE reservation_id = $1::uuid",
        reservation_id,
    )


async def service_now(db: asyncpg.Connection, clock: Any) -> Timestamp:
    """The service clock (the database clock plus the `clock` fixture's offset) as a Timestamp."""
    value = await db.fetchval("SELECT now() + $1 * interval '1 millisecond'", clock.offset_ms)
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp
