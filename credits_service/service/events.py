"""Reading the events outbox in commit order (docs/events.md): a page of events after a
cursor, each with its own cursor, or, from "now", the cursor where the future begins."""

from __future__ import annotations

from collections.abc import Sequence

from credits_service.domain import errors
from credits_service.domain.events import (
    EVENTS_PAGE_MAX,
    EventPage,
    EventType,
    Position,
)
from credits_service.service.ports import UnitOfWork
from credits_service.service.transactions import Transactions

_FROM_THE_START = Position(0, 0)


class Events:
    def __init__(self, transactions: Transactions) -> None:
        self._transactions = transactions

    async def page(
        self, cursor: str | None, event_types: Sequence[EventType] = (),
        account_ids: Sequence[str] = (), limit: int = EVENTS_PAGE_MAX,
    ) -> EventPage:
        """Up to `limit` events after `cursor` ("": from the first event kept; None: from
        now, no events, only the position the next page starts from), of the types and
        accounts asked (none: all), in commit order. InvalidArgument for a cursor this
        service did not make."""
        if cursor:
            try:
                position = Position.of_cursor(cursor)
            except ValueError:
                raise errors.InvalidArgument([errors.FieldViolation(
                    "cursor", "is not a cursor this service handed out")]) from None
        else:
            position = _FROM_THE_START
        asked = 0 if cursor is None else min(limit, EVENTS_PAGE_MAX)

        async def work(uow: UnitOfWork) -> EventPage:
            return await uow.events.after(position, event_types, account_ids, asked)

        return await self._transactions.run(work)


