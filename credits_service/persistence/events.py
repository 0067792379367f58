"""The events outbox (migration 0016), read in commit order: only events of transactions that
have ended, older than the reading snapshot's xmin (domain/events.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from credits_service.domain.events import POSITION_MAX, Event, EventPage, EventType, Position

# $1, $2 the position read up to; $3 event types, $4 accounts (NULL: all); $5 how many. The
# horizon is the snapshot's xmin: every transaction below it has ended.
_AFTER = """
    WITH horizon AS (
        SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin
    )
    SELECT e.event_id, e.xid, e.event_type, e.account_id, e.data::text AS data,
           e.create_time, h.xmin
      FROM horizon h
      LEFT JOIN LATERAL (
            SELECT * FROM events
             WHERE (xid, event_id) > ($1, $2) AND xid < h.xmin
               AND ($3::text[] IS NULL OR event_type = ANY($3::text[]))
               AND ($4::text[] IS NULL OR account_id = ANY($4::text[]))
             ORDER BY xid, event_id LIMIT $5) e ON true"""


class EventRepository:
    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def after(
        self, position: Position, event_types: Sequence[EventType],
        account_ids: Sequence[str], limit: int,
    ) -> EventPage:
        """Up to `limit` events after `position`, of ended transactions, in commit order."""
        rows = await self._connection.fetch(
            _AFTER, position.xid, position.event_id,
            [t.value for t in event_types] or None, list(account_ids) or None, limit)
        events = tuple(
            Event(row["event_id"], Position(row["xid"], row["event_id"]),
                  EventType(row["event_type"]), row["account_id"], orjson.loads(row["data"]),
                  row["create_time"])
            for row in rows if row["event_id"] is not None)
        if events:
            return EventPage(events, events[-1].position)
        # Nothing more: everything of the transactions below the horizon is behind
        return EventPage((), max(position, Position(rows[0]["xmin"] - 1, POSITION_MAX)))
