"""WatchEvents against the real server (issue 30, part 2): a stream from now, from a cursor
or from the oldest event kept, with filters; a consumer that reconnects with its last cursor
gets everything after it once; cursors that are malformed or older than the retention are
refused with a clear error; LISTEN wakes a stream at once, and polling carries on while it is
down; a consumer that stops reading is cut off without holding anything; draining ends every
stream UNAVAILABLE."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import orjson
import pytest

from credits.v1 import credits_pb2 as pb
from credits_service.domain.events import Position
from tests.grpc_errors import unpack
from tests.support.calls import commit, grant, reserve
from tests.support.serving import serving_app

E = pb.EventType


async def first_error(call: Any):
    """The error a stream ends with, reading (and dropping) what comes before it."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        while await call.read() is not grpc.aio.EOF:
            pass
    return unpack(raised.value)


async def take(call: Any, count: int, timeout_s: float = 10.0) -> list[pb.WatchEventsResponse]:
    """The next `count` events of a stream (heartbeats skipped)."""
    got: list[pb.WatchEventsResponse] = []

    async def read() -> None:
        while len(got) < count:
            response = await call.read()
            assert response is not grpc.aio.EOF
            if response.HasField("event"):
                got.append(response)

    await asyncio.wait_for(read(), timeout_s)
    return got


async def started(call: Any) -> str:
    """The cursor of the first response: where the stream starts."""
    first = await asyncio.wait_for(call.read(), 10)
    assert not first.HasField("event") and first.cursor
    return first.cursor


async def test_a_stream_from_now_sends_each_event_once_in_commit_order(app, stub):
    call = stub.WatchEvents(pb.WatchEventsRequest())
    await started(call)
    await grant(stub, "w", 100)
    await commit(stub, (await reserve(stub, "w", 10)).reservation.reservation_id, 7)
    got = await take(call, 4)
    call.cancel()
    assert [r.event.event_type for r in got] == [
        E.EVENT_TYPE_ACCOUNT_CREATED, E.EVENT_TYPE_GRANTED, E.EVENT_TYPE_RESERVED,
        E.EVENT_TYPE_COMMITTED]
    assert all(r.cursor == r.event.cursor and r.event.account_id == "w" for r in got)
    assert len({r.event.event_id for r in got}) == len(got)
    committed = next(r.event for r in got if r.event.event_type == E.EVENT_TYPE_COMMITTED)
    data = orjson.loads(committed.data_json)
    assert (data["amount"], data["balance_after"]) == (-7, 93)


async def test_a_consumer_resuming_from_its_cursor_gets_the_rest_once(app, stub):
    start = stub.WatchEvents(pb.WatchEventsRequest())
    cursor = await started(start)
    start.cancel()
    for i in range(6):
        await grant(stub, f"r{i}", 10 + i)
    first = stub.WatchEvents(pb.WatchEventsRequest(cursor=cursor))
    await started(first)
    head = await take(first, 5)
    first.cancel()  # the consumer goes away having handled five
    again = stub.WatchEvents(pb.WatchEventsRequest(cursor=head[-1].cursor))
    await started(again)
    tail = await take(again, 7)
    again.cancel()
    ids = [r.event.event_id for r in head + tail]
    assert len(ids) == len(set(ids)) == 12 and ids == sorted(ids)
    assert [(r.event.account_id, r.event.event_type) for r in head + tail][-2:] == [
        ("r5", E.EVENT_TYPE_ACCOUNT_CREATED), ("r5", E.EVENT_TYPE_GRANTED)]


async def test_filters_by_type_and_account_and_from_the_oldest_kept(app, stub):
    for account in ("f1", "f2"):
        await grant(stub, account, 5)
        await reserve(stub, account, 1)
    call = stub.WatchEvents(pb.WatchEventsRequest(
        from_oldest=True, event_types=[E.EVENT_TYPE_RESERVED], account_ids=["f2"]))
    await started(call)
    (only,) = await take(call, 1)
    assert (only.event.account_id, only.event.event_type) == ("f2", E.EVENT_TYPE_RESERVED)
    # Nothing else matches: the next response is a heartbeat whose cursor has moved past
    # the events of other accounts and types
    call.cancel()


@pytest.mark.parametrize(("request_fields", "field"), [
    ({"event_types": [999]}, "event_types[0]"),
    ({"event_types": [E.EVENT_TYPE_UNSPECIFIED]}, "event_types[0]"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": "e1.bm90LWEtcG9zaXRpb24"}, "cursor"),
    ({"cursor": "e1.MS4y", "from_oldest": True}, "from_oldest"),
    ({"account_ids": ["bad id"]}, "account_ids[0]"),
    ({"cursor": Position(2**40, 1).cursor()}, "cursor"),  # another database's: not begun here
    ({"account_ids": [f"a{i}" for i in range(101)]}, "account_ids"),
])
async def test_bad_requests_are_invalid_argument_never_an_empty_stream(
        app, stub, request_fields, field):
    error = await first_error(stub.WatchEvents(pb.WatchEventsRequest(**request_fields)))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT" and error.metadata["field"] == field


async def test_a_cursor_older_than_the_retention_is_out_of_range_with_the_oldest(
        app, stub, clock):
    start = stub.WatchEvents(pb.WatchEventsRequest())
    cursor = await started(start)
    start.cancel()
    await grant(stub, "old", 1)
    clock.advance(app.settings.events.retention_s + 60)
    await grant(stub, "new", 2)
    assert await app.sweeper.purge_events_once() == 2  # old's two events
    error = await first_error(stub.WatchEvents(pb.WatchEventsRequest(cursor=cursor)))
    assert (error.code, error.reason) == (grpc.StatusCode.OUT_OF_RANGE, "CURSOR_EXPIRED")
    resumed = stub.WatchEvents(pb.WatchEventsRequest(cursor=error.metadata["oldestCursor"]))
    await started(resumed)
    got = await take(resumed, 2)
    resumed.cancel()
    assert {r.event.account_id for r in got} == {"new"}
    oldest = stub.WatchEvents(pb.WatchEventsRequest(from_oldest=True))
    await started(oldest)
    assert [r.event.account_id for r in await take(oldest, 2)] == ["new", "new"]
    oldest.cancel()


def streaming(settings: Any, **overrides: Any):
    return serving_app(settings, **{"shutdown_grace_s": 5, **overrides})


async def test_listen_wakes_a_stream_at_once_and_polling_carries_on_without_it(
        test_settings, db):
    async with streaming(test_settings, events_poll_interval_s=30) as (app, stub):
        assert await app.signals.wait_listening(5)
        call = stub.WatchEvents(pb.WatchEventsRequest())
        await started(call)
        began = time.monotonic()
        await grant(stub, "quick", 1)
        await take(call, 2)
        assert time.monotonic() - began < 2  # woken by NOTIFY, not the 30 s poll
        call.cancel()
    async with streaming(test_settings, events_poll_interval_s=0.1) as (app, stub):
        assert await app.signals.wait_listening(5)
        await db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = 'credits-service-listen'")
        call = stub.WatchEvents(pb.WatchEventsRequest())
        await started(call)
        await grant(stub, "polled", 1)
        assert [r.event.account_id for r in await take(call, 2)] == ["polled", "polled"]
        assert await app.signals.wait_listening(5)  # and LISTEN is back
        call.cancel()


async def test_a_bogus_notification_keeps_no_stream_busy(test_settings, db, monkeypatch):
    from credits_service.persistence import event_signals

    monkeypatch.setattr(event_signals, "_PENDING_S", 0.3)
    async with streaming(test_settings, events_poll_interval_s=30) as (app, stub):
        assert await app.signals.wait_listening(5)
        call = stub.WatchEvents(pb.WatchEventsRequest())
        await started(call)
        await db.execute("NOTIFY credits_events, '9000000000000000000'")
        await asyncio.sleep(0.1)
        assert app.signals.latest_xid == 9000000000000000000  # a stream reads again soon
        await asyncio.sleep(0.4)
        assert app.signals.latest_xid == 0  # and then waits as before
        await grant(stub, "after", 1)
        assert [r.event.account_id for r in await take(call, 2)] == ["after", "after"]
        call.cancel()


async def test_a_consumer_that_stops_reading_is_cut_off_and_others_are_not_slowed(
        test_settings, db):
    async with streaming(test_settings, events_stall_limit_s=1.0,
                         events_watchers_max=2) as (app, stub):
        stalled = stub.WatchEvents(pb.WatchEventsRequest())
        await started(stalled)  # then reads nothing more
        reader = stub.WatchEvents(pb.WatchEventsRequest())
        await started(reader)
        third = await first_error(stub.WatchEvents(pb.WatchEventsRequest()))
        assert (third.code, third.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                              "WATCHERS_EXHAUSTED")
        # Enough events to fill the stalled consumer's flow-control window many times over
        await db.execute("""
            INSERT INTO events (event_type, account_id, data)
            SELECT 'GRANTED', 'flood', jsonb_build_object('pad', repeat('x', 2000), 'i', i)
              FROM generate_series(1, 3000) i""")
        got = await take(reader, 3000, timeout_s=60)
        assert len(got) == 3000
        deadline = time.monotonic() + 10
        while app.ledger.events.watchers > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert app.ledger.events.watchers == 1  # the stalled stream ended, its slot free
        error = await first_error(stalled)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "CONSUMER_STALLED")
        reader.cancel()


async def test_draining_ends_streams_unavailable_at_once(test_settings):
    async with streaming(test_settings, shutdown_grace_s=30) as (app, stub):
        call = stub.WatchEvents(pb.WatchEventsRequest())
        await started(call)
        began = time.monotonic()
        stopping = asyncio.create_task(app.stop())
        error = await first_error(call)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE,
                                              "SERVER_SHUTTING_DOWN")
        await stopping
        assert time.monotonic() - began < 10  # not the 30 s grace


async def test_a_statement_that_writes_no_event_wakes_nobody(app, stub, db_pool):
    """A reservations UPDATE that ends no hold runs the events trigger with no rows: no
    NOTIFY, so no stream reads for nothing; a change that writes events notifies once."""
    heard: list[str] = []
    async with db_pool.acquire() as listener, db_pool.acquire() as writer:
        def hear(*args: Any) -> None:
            heard.append(args[3])

        await listener.add_listener("credits_events", hear)
        await writer.execute("UPDATE reservations SET metadata = metadata WHERE false")
        await asyncio.sleep(0.3)
        assert heard == []
        await grant(stub, "noisy", 1)
        deadline = time.monotonic() + 5
        while not heard and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await listener.remove_listener("credits_events", hear)
    assert len(heard) == 1 and int(heard[0]) > 0
