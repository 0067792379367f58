"""The events outbox (migrations 0016 and 0017), read in commit order: only events of
transactions that have ended, older than the reading snapshot's xmin (domain/events.py); and
its retention purge, which deletes the oldest events in position order and keeps the position
of the last it deleted (events_purged)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from credits_service.domain.events import POSITION_MAX, Event, EventPage, EventType, Position

# $1, $2 the position read up to; $3 event types, $4 accounts (NULL: all); $5 how many. The
# horizon is the snapshot's xmin: every transaction below it has ended.
_AFTER = """
    WITH horizon AS (
        SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin,
               pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax,
               p.xid AS purged_xid, p.event_id AS purged_event_id
          FROM events_purged p
    )
    SELECT e.event_id, e.xid, e.event_type, e.account_id, e.data::text AS data,
           e.create_time, h.xmin, h.xmax, h.purged_xid, h.purged_event_id
      FROM horizon h
      LEFT JOIN LATERAL (
            SELECT * FROM events
             WHERE (xid, event_id) > ($1, $2) AND xid < h.xmin
               AND ($3::text[] IS NULL OR event_type = ANY($3::text[]))
               AND ($4::text[] IS NULL OR account_id = ANY($4::text[]))
             ORDER BY xid, event_id LIMIT $5) e ON true"""

# The purge's watermark, locked: one purge at a time across replicas, the others skip.
_LOCK_PURGED = "SELECT xid, event_id FROM events_purged FOR UPDATE SKIP LOCKED"
# The oldest events after the watermark, of ended transactions, and whether each is past
# retention ($3 seconds).
_OLDEST = """
    SELECT xid, event_id, create_time < credits_now() - make_interval(secs => $3) AS old
      FROM events
     WHERE (xid, event_id) > ($1, $2)
       AND xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
     ORDER BY xid, event_id LIMIT $4"""
_DELETE = "DELETE FROM events WHERE (xid, event_id) > ($1, $2) AND (xid, event_id) <= ($3, $4)"
_SET_PURGED = "UPDATE events_purged SET xid = $1, event_id = $2"


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
        purged = Position(rows[0]["purged_xid"], rows[0]["purged_event_id"])

        events = tuple(
            Event(row["event_id"], Position(row["xid"], row["event_id"]),
                  EventType(row["event_type"]), row["account_id"], orjson.loads(row["data"]),
                  row["create_time"])
            for row in rows if row["event_id"] is not None)
        xmax = rows[0]["xmax"]
        if events:
            return EventPage(events, events[-1].position, purged, xmax)
        # Nothing more: everything of the transactions below the horizon is behind
        return EventPage(
            (), max(position, Position(rows[0]["xmin"] - 1, POSITION_MAX)), purged, xmax)

    async def purge(self, older_than_s: float, limit: int) -> int:
        """Delete up to `limit` of the oldest events, in position order, while they are older
        than `older_than_s`, and move the watermark to the last deleted; returns how many (0
        when another transaction is purging)."""
        mark = await self._connection.fetchrow(_LOCK_PURGED)
        if mark is None:
            return 0
        rows = await self._connection.fetch(
            _OLDEST, mark["xid"], mark["event_id"], older_than_s, limit)
        last = None
        count = 0
        for row in rows:
            if not row["old"]:
                break  # positions after a young event stay, old or not: the watermark is a prefix
            last, count = row, count + 1
        if last is None:
            return 0
        await self._connection.execute(
            _DELETE, mark["xid"], mark["event_id"], last["xid"], last["event_id"])
        await self._connection.execute(_SET_PURGED, last["xid"], last["event_id"])
        return count
