"""WatchEvents: its validation, its mapping, and the stream's writes (docs/events.md).

Each response is written when the consumer's flow-control window has room for it, so a slow
consumer slows its own stream and nothing else: the stream holds one page of events at most,
and one that cannot write for the stall limit ends (CONSUMER_STALLED) instead of holding its
slot for ever.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
import orjson

from credits.v1 import credits_pb2 as pb
from credits_service.domain import errors
from credits_service.domain.events import Event, EventType
from credits_service.service.event_ports import EventSignals
from credits_service.service.events import WatchPolicy
from credits_service.service.ledger import Ledger
from credits_service.transport.grpc import messages
from credits_service.transport.grpc.fields import FieldChecker

WATCH_ACCOUNTS_MAX = 100
WATCH_EVENT_TYPES_MAX = 32
_CURSOR_LENGTH_MAX = 100

EVENT_TYPE_TO_PROTO = {t: pb.EventType.Value(f"EVENT_TYPE_{t.value}") for t in EventType}
EVENT_TYPE_OF_PROTO = {value: t for t, value in EVENT_TYPE_TO_PROTO.items()}


@dataclass(frozen=True, slots=True)
class Watching:
    """What event streams need of the server: the wake-ups, the policy, the stall limit."""

    signals: EventSignals
    policy: WatchPolicy
    stall_limit_s: float


def _to_watch(request: pb.WatchEventsRequest) -> tuple[list[EventType], list[str]]:
    check = FieldChecker()
    if len(request.cursor) > _CURSOR_LENGTH_MAX:
        check.fail("cursor", "is not a cursor this service handed out")
    if request.cursor and request.from_oldest:
        check.fail("from_oldest", "must be false with a cursor: the stream starts after it")
    event_types = []
    if len(request.event_types) > WATCH_EVENT_TYPES_MAX:
        check.fail("event_types", f"must name at most {WATCH_EVENT_TYPES_MAX} types")
    for i, value in enumerate(request.event_types[:WATCH_EVENT_TYPES_MAX]):
        event_type = EVENT_TYPE_OF_PROTO.get(value)
        if event_type is None:
            check.fail(f"event_types[{i}]", f"{value} is not an event type this server sends")
        else:
            event_types.append(event_type)
    if len(request.account_ids) > WATCH_ACCOUNTS_MAX:
        check.fail("account_ids", f"must name at most {WATCH_ACCOUNTS_MAX} accounts")
    for i, account_id in enumerate(request.account_ids[:WATCH_ACCOUNTS_MAX]):
        check.identifier(f"account_ids[{i}]", account_id)
    check.done()
    return list(dict.fromkeys(event_types)), list(dict.fromkeys(request.account_ids))


def to_event(event: Event) -> pb.Event:
    return pb.Event(
        event_id=event.event_id, cursor=event.position.cursor(),
        event_type=EVENT_TYPE_TO_PROTO[event.event_type], account_id=event.account_id,
        create_time=messages.timestamp(event.create_time),
        data_json=orjson.dumps(event.data).decode())


class EventsApi:
    _ledger: Ledger
    _watching: Watching | None

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> None:
        event_types, account_ids = _to_watch(request)
        watching = self._watching
        if watching is None:  # bench/memory_server.py: a ledger without an outbox
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server has no events")
            return
        pages = self._ledger.events.watch(
            request.cursor, request.from_oldest, event_types, account_ids,
            watching.signals, watching.policy)
        try:
            async for page in pages:
                if not page.events:
                    await _write(context, pb.WatchEventsResponse(
                        cursor=page.position.cursor()), watching.stall_limit_s)
                for event in page.events:
                    message = to_event(event)
                    await _write(context, pb.WatchEventsResponse(
                        event=message, cursor=message.cursor), watching.stall_limit_s)
        finally:
            await pages.aclose()


async def _write(context: grpc.aio.ServicerContext, response: Any, stall_limit_s: float) -> None:
    write = asyncio.ensure_future(context.write(response))
    try:
        done, _ = await asyncio.wait((write,), timeout=stall_limit_s)
    finally:
        # A write left behind (stalled, or the call cancelled) ends with the call; what it
        # raises then is not news
        write.add_done_callback(_ignore_outcome)
    if not done:
        raise errors.ConsumerStalled(stall_limit_s)
    write.result()


def _ignore_outcome(write: asyncio.Future[Any]) -> None:
    if not write.cancelled():
        write.exception()
