"""Events: what happened to credits, in commit order (docs/events.md).

Each change writes its events in its own transaction (migration 0016's triggers). An event's
position is (xid, event_id): the id of the transaction that wrote it and its own id. Readers
read only events of transactions that have ended (older than their snapshot's xmin), in
position order, so a cursor handed out never has an unread event behind it: ids from the
sequence alone are not in commit order, and a reader that trusted them would skip an event
whose transaction took an id below one it had read but committed after.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

EVENTS_PAGE_MAX = 1000
_CURSOR_VERSION = "e1"
POSITION_MAX = 2**63 - 1


class EventType(enum.Enum):
    GRANTED = "GRANTED"
    ALLOCATION_GRANTED = "ALLOCATION_GRANTED"
    RESERVED = "RESERVED"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    RESERVATION_EXPIRED = "RESERVATION_EXPIRED"
    CREDITS_EXPIRED = "CREDITS_EXPIRED"
    REFUNDED = "REFUNDED"
    TRANSFERRED = "TRANSFERRED"
    ADJUSTED = "ADJUSTED"
    ACCOUNT_CREATED = "ACCOUNT_CREATED"
    ACCOUNT_FROZEN = "ACCOUNT_FROZEN"
    ACCOUNT_CLOSED = "ACCOUNT_CLOSED"
    ACCOUNT_ACTIVATED = "ACCOUNT_ACTIVATED"
    PLAN_CHANGED = "PLAN_CHANGED"
    LOW_BALANCE = "LOW_BALANCE"
    BALANCE_RECOVERED = "BALANCE_RECOVERED"
    DEPLETED = "DEPLETED"
    CREDITS_EXPIRING = "CREDITS_EXPIRING"


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where an event stands in commit order; a cursor is the position of the last event
    read (events after it come next)."""

    xid: int
    event_id: int

    def cursor(self) -> str:
        """The position as an opaque cursor."""
        raw = f"{self.xid}.{self.event_id}".encode()
        return f"{_CURSOR_VERSION}.{base64.urlsafe_b64encode(raw).decode().rstrip('=')}"

    @classmethod
    def of_cursor(cls, cursor: str) -> Position:
        """The position of a cursor this service made; ValueError for any other text."""
        version, _, body = cursor.partition(".")
        if version != _CURSOR_VERSION or not body or len(cursor) > 100:
            raise ValueError(cursor)
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("ascii")
        xid, _, event_id = raw.partition(".")
        position = cls(int(xid), int(event_id))
        if not (0 <= position.xid <= POSITION_MAX and 0 <= position.event_id <= POSITION_MAX):
            raise ValueError(cursor)
        return position


@dataclass(frozen=True, slots=True)
class Event:
    event_id: int
    position: Position
    event_type: EventType
    account_id: str
    data: Mapping[str, Any]
    create_time: datetime


@dataclass(frozen=True, slots=True)
class EventPage:
    """Events after a position, in commit order, and the position to read on from: the last
    event's, or, with none, the position all ended transactions' events are behind; and the
    position of the last event purged (every event at or before it is gone)."""

    events: tuple[Event, ...]
    position: Position
    purged: Position = Position(0, 0)
    # The reading snapshot's xmax: no transaction at or above it had begun, so no position
    # handed out has an xid that high
    xmax: int = POSITION_MAX
