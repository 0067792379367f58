"""Reading the events outbox in commit order (docs/events.md): a page of events after a
cursor, and a watch that follows the outbox as transactions commit.

A watch reads pages after its position until it has read everything of the transactions that
have ended; then it waits for a notification of a newer transaction (EventSignals), or the
poll interval, and reads again. A notified transaction above the horizon means an older one is
still open: the watch reads again soon (backing off) rather than wait for the next
notification, which may never come.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from credits_service.domain import errors
from credits_service.domain.events import (
    EVENTS_PAGE_MAX,
    EventPage,
    EventType,
    Position,
)
from credits_service.service.event_ports import EventSignals
from credits_service.service.ports import UnitOfWork
from credits_service.service.transactions import Transactions

_FROM_THE_START = Position(0, 0)
WATCH_PAGE_SIZE = 500  # events a watch holds at once, at most
# Reading again while a notified transaction is behind the horizon: from this, doubling
_BEHIND_HORIZON_FIRST_S = 0.002
_BEHIND_HORIZON_MAX_S = 0.05


@dataclass(frozen=True, slots=True)
class WatchPolicy:
    poll_interval_s: float
    heartbeat_s: float
    watchers_max: int


def position_of(cursor: str) -> Position:
    """The position of a cursor; InvalidArgument if this service did not make it."""
    try:
        return Position.of_cursor(cursor)
    except ValueError:
        raise _not_ours() from None


def _not_ours() -> errors.InvalidArgument:
    return errors.InvalidArgument([errors.FieldViolation(
        "cursor", "is not a cursor this service handed out")])


def _check_made_here(position: Position, page: EventPage) -> None:
    """InvalidArgument for a position of a transaction that had not begun when `page` was
    read: a cursor of another database (a restore, another cluster), which would otherwise
    wait in silence and then skip what came before it."""
    if position.xid >= page.xmax:
        raise _not_ours()


class Events:
    def __init__(self, transactions: Transactions) -> None:
        self._transactions = transactions
        self._watchers = 0

    @property
    def watchers(self) -> int:
        """Watches in progress."""
        return self._watchers

    async def page(
        self, cursor: str | None, event_types: Sequence[EventType] = (),
        account_ids: Sequence[str] = (), limit: int = EVENTS_PAGE_MAX,
    ) -> EventPage:
        """Up to `limit` events after `cursor` ("": from the first event kept; None: from
        now, no events, only the position the next page starts from), of the types and
        accounts asked (none: all), in commit order. InvalidArgument for a cursor this
        service did not make, CursorExpired for one before the oldest event kept."""
        position = position_of(cursor) if cursor else _FROM_THE_START
        asked = 0 if cursor is None else min(limit, EVENTS_PAGE_MAX)
        page = await self._read(position, event_types, account_ids, asked)
        _check_made_here(position, page)
        if position < page.purged:
            if cursor:
                raise errors.CursorExpired(page.purged.cursor())
            page = await self._read(page.purged, event_types, account_ids, asked)
        return page

    async def watch(
        self, cursor: str, from_oldest: bool, event_types: Sequence[EventType],
        account_ids: Sequence[str], signals: EventSignals, policy: WatchPolicy,
    ) -> AsyncIterator[EventPage]:
        """An empty page at the position the watch starts from (after `cursor`; empty: from
        now, or the oldest kept with `from_oldest`), then pages of events as transactions
        commit, for ever; an empty page (its position only) when nothing came for
        `policy.heartbeat_s`. InvalidArgument for a bad
        cursor, CursorExpired when the events after the position were purged (at the start or
        by a watch fallen that far behind), WatchersExhausted beyond `policy.watchers_max`."""
        if self._watchers >= policy.watchers_max:
            raise errors.WatchersExhausted(policy.watchers_max)
        self._watchers += 1
        try:
            async for page in self._follow(cursor, from_oldest, event_types, account_ids,
                                           signals, policy):
                yield page
        finally:
            self._watchers -= 1

    async def _follow(
        self, cursor: str, from_oldest: bool, event_types: Sequence[EventType],
        account_ids: Sequence[str], signals: EventSignals, policy: WatchPolicy,
    ) -> AsyncIterator[EventPage]:
        position = position_of(cursor) if cursor else None
        start = await self._read(_FROM_THE_START, event_types, account_ids, 0)
        if position is None:
            position = start.purged if from_oldest else start.position
        _check_made_here(position, start)
        if position < start.purged:
            raise errors.CursorExpired(start.purged.cursor())
        yield EventPage((), position, start.purged)  # where the stream starts
        sent_s = time.monotonic()
        behind_s = _BEHIND_HORIZON_FIRST_S
        while True:
            page = await self._read(position, event_types, account_ids, WATCH_PAGE_SIZE)
            if position < page.purged:
                raise errors.CursorExpired(page.purged.cursor())
            moved = page.position > position
            position = page.position
            if page.events:
                sent_s = time.monotonic()
                behind_s = _BEHIND_HORIZON_FIRST_S
                yield page
                continue
            quiet_s = time.monotonic() - sent_s
            if quiet_s >= policy.heartbeat_s:
                sent_s = time.monotonic()
                yield page
                quiet_s = 0.0
            if signals.latest_xid > position.xid:
                # Committed, but an older transaction is still open: read again soon
                behind_s = _BEHIND_HORIZON_FIRST_S if moved else min(
                    behind_s * 2, _BEHIND_HORIZON_MAX_S)
                await asyncio.sleep(behind_s)
                continue
            await signals.wait_beyond(
                position.xid, min(policy.poll_interval_s, policy.heartbeat_s - quiet_s))

    async def purge(self, older_than_s: float, batch_size: int) -> int:
        """Delete up to `batch_size` of the oldest events while older than `older_than_s`."""

        async def work(uow: UnitOfWork) -> int:
            return await uow.events.purge(older_than_s, batch_size)

        return await self._transactions.run(work)

    async def _read(
        self, position: Position, event_types: Sequence[EventType],
        account_ids: Sequence[str], limit: int,
    ) -> EventPage:
        async def work(uow: UnitOfWork) -> EventPage:
            return await uow.events.after(position, event_types, account_ids, limit)

        return await self._transactions.run(work)
