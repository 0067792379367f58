"""Webhooks (issue 30, part 4) against the real server and a local HTTP receiver that fails,
times out and succeeds: events delivered in order, signed (the documented check passes),
retried with backoff, kept as dead letters when the retry time is spent, listed and
redelivered by an admin; two replicas deliver each event once."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest

from credits.v1 import credits_pb2 as pb
from credits_service.app import StartupError, load_webhooks
from credits_service.settings import Settings
from tests.grpc_errors import expect_error
from tests.support.calls import grant
from tests.support.serving import serving_app

SECRET = "whsec-test-0123456789abcdef"


def verify(secret: str, header: str, body: bytes, tolerance_s: float = 300) -> bool:
    """The receiver's check, as docs/webhooks.md shows it."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    if abs(time.time() - timestamp) > tolerance_s:
        return False  # too old: a replay
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body,
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


class Receiver:
    """An HTTP endpoint on loopback whose answers the test chooses: 'ok', 'fail' (500),
    'slow' (answers after the attempt timeout); `fail_first` failures before 'ok'."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.fail_first = 0
        self.received: list[dict[str, Any]] = []  # every request, answered or not
        self.accepted: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = {"body": body, "headers": dict(self.headers),
                           "event": json.loads(body)}
                receiver.received.append(request)
                if receiver.fail_first > 0:
                    receiver.fail_first -= 1
                    self.send_response(500)
                elif receiver.mode == "slow":
                    time.sleep(1.5)
                    self.send_response(200)
                elif receiver.mode == "fail":
                    self.send_response(503)
                else:
                    receiver.accepted.append(request)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def accepted_ids(self) -> list[int]:
        return [r["event"]["event_id"] for r in self.accepted]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    hook.thread.start()
    try:
        yield hook
    finally:
        hook.server.shutdown()
        hook.server.server_close()


def hooks_file(tmp_path: Any, receiver: Receiver, **endpoint: Any) -> str:
    lines = ["[[endpoints]]", 'name = "billing"', f'url = "{receiver.url}"',
             f'secret = "{SECRET}"', 'event_types = ["GRANTED"]']
    lines += [f"{k} = {json.dumps(v)}" for k, v in endpoint.items()]
    path = tmp_path / "webhooks.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def hooked(settings: Settings, path: str, **overrides: Any):
    return serving_app(settings, **{
        "webhooks_file": path, "webhook_timeout_s": 0.5, "webhook_retry_for_s": 1.5,
        "webhook_backoff_initial_s": 0.05, "webhook_backoff_max_s": 0.2,
        "events_poll_interval_s": 0.1, "shutdown_grace_s": 1, **overrides})


async def until(condition: Any, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


async def test_events_are_delivered_in_order_signed_and_only_those_asked(
        test_settings, tmp_path, receiver):
    async with hooked(test_settings, hooks_file(tmp_path, receiver)) as (_, stub):
        await asyncio.sleep(0.3)  # the endpoint starts from now
        for i in range(5):
            await grant(stub, "h", 10 + i)
        await until(lambda: len(receiver.accepted) == 5)
    events = [r["event"] for r in receiver.accepted]
    assert [e["data"]["amount"] for e in events] == [10, 11, 12, 13, 14]
    assert {e["event_type"] for e in events} == {"GRANTED"}  # not ACCOUNT_CREATED
    for request in receiver.accepted:
        headers = request["headers"]
        assert verify(SECRET, headers["Credits-Signature"], request["body"])
        assert not verify("another-secret-0123456789", headers["Credits-Signature"],
                          request["body"])
        assert headers["Credits-Event-Id"] == str(request["event"]["event_id"])
        assert headers["Content-Type"] == "application/json"


async def test_failures_are_retried_with_backoff_until_taken(test_settings, tmp_path, receiver):
    receiver.fail_first = 3
    async with hooked(test_settings, hooks_file(tmp_path, receiver)) as (_, stub):
        await asyncio.sleep(0.3)
        await grant(stub, "f", 1)
        await grant(stub, "f", 2)
        await until(lambda: len(receiver.accepted) == 2)
    assert len(receiver.received) == 5  # three refusals of the first, then both
    assert [r["event"]["data"]["amount"] for r in receiver.accepted] == [1, 2]


async def test_an_endpoint_that_times_out_gets_a_dead_letter_and_the_next_event(
        test_settings, tmp_path, receiver):
    receiver.mode = "slow"
    async with hooked(test_settings, hooks_file(tmp_path, receiver)) as (_, stub):
        await asyncio.sleep(0.3)
        await grant(stub, "d", 1)
        listed = None

        def dead() -> bool:
            return bool(listed and listed.dead_letters)

        deadline = time.monotonic() + 15
        while not dead() and time.monotonic() < deadline:
            listed = await stub.ListDeadLetters(pb.ListDeadLettersRequest())
            await asyncio.sleep(0.1)
        (letter,) = listed.dead_letters
        assert (letter.endpoint, letter.status, letter.last_error) == (
            "billing", pb.DEAD_LETTER_STATUS_DEAD, "timed out")
        assert letter.attempts >= 2 and json.loads(letter.body_json)["data"]["amount"] == 1
        receiver.mode = "ok"
        await grant(stub, "d", 2)  # the endpoint moved on
        await until(lambda: [r["event"]["data"]["amount"] for r in receiver.accepted] == [2])
        redelivered = (await stub.RedeliverDeadLetter(pb.RedeliverDeadLetterRequest(
            dead_letter_id=letter.dead_letter_id))).dead_letter
        assert redelivered.status == pb.DEAD_LETTER_STATUS_REDELIVERED
        assert redelivered.attempts == letter.attempts + 1
        assert [r["event"]["data"]["amount"] for r in receiver.accepted] == [2, 1]
        again = (await stub.RedeliverDeadLetter(pb.RedeliverDeadLetterRequest(
            dead_letter_id=letter.dead_letter_id))).dead_letter
        assert again == redelivered and len(receiver.accepted) == 2  # not sent twice
        assert not (await stub.ListDeadLetters(pb.ListDeadLettersRequest())).dead_letters
        shown = await stub.ListDeadLetters(pb.ListDeadLettersRequest(include_redelivered=True))
        assert [d.dead_letter_id for d in shown.dead_letters] == [letter.dead_letter_id]


async def test_a_redelivery_the_endpoint_refuses_is_an_error_and_stays_dead(
        test_settings, tmp_path, receiver):
    receiver.mode = "fail"
    async with hooked(test_settings, hooks_file(tmp_path, receiver),
                      webhook_retry_for_s=0.2) as (_, stub):
        await asyncio.sleep(0.3)
        await grant(stub, "r", 1)
        listed = pb.ListDeadLettersResponse()
        deadline = time.monotonic() + 15
        while not listed.dead_letters and time.monotonic() < deadline:
            listed = await stub.ListDeadLetters(pb.ListDeadLettersRequest(endpoint="billing"))
            await asyncio.sleep(0.1)
        letter = listed.dead_letters[0]
        error = await expect_error(stub.RedeliverDeadLetter(pb.RedeliverDeadLetterRequest(
            dead_letter_id=letter.dead_letter_id)))
        assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                              "WEBHOOK_DELIVERY_FAILED")
        assert error.metadata["error"].startswith("HTTP 503")
        after = await stub.ListDeadLetters(pb.ListDeadLettersRequest())
        assert after.dead_letters[0].attempts == letter.attempts + 1


async def test_two_replicas_deliver_each_event_once(test_settings, tmp_path, receiver):
    path = hooks_file(tmp_path, receiver)
    async with hooked(test_settings, path) as (_, stub), hooked(test_settings, path):
        await asyncio.sleep(0.3)
        for i in range(20):
            await grant(stub, f"two-{i % 3}", i + 1)
        await until(lambda: len(receiver.accepted) >= 20)
        await asyncio.sleep(0.5)  # any second delivery would come meanwhile
    amounts = [r["event"]["data"]["amount"] for r in receiver.accepted]
    assert amounts == list(range(1, 21))


async def test_a_replica_keeps_its_lease_through_long_retries(test_settings, tmp_path, receiver):
    """Waits between retries longer than the lease: the replica renews it meanwhile, so the
    other never takes over and restarts the retries; the event is one dead letter."""
    receiver.mode = "fail"
    path = hooks_file(tmp_path, receiver)
    slow = {"webhook_lease_s": 1, "webhook_backoff_initial_s": 0.6,
            "webhook_backoff_max_s": 1.5, "webhook_retry_for_s": 3}
    async with hooked(test_settings, path, **slow) as (_, stub), \
            hooked(test_settings, path, **slow):
        await asyncio.sleep(0.3)
        await grant(stub, "lease", 1)
        listed = pb.ListDeadLettersResponse()
        deadline = time.monotonic() + 20
        while not listed.dead_letters and time.monotonic() < deadline:
            listed = await stub.ListDeadLetters(pb.ListDeadLettersRequest())
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)
        listed = await stub.ListDeadLetters(pb.ListDeadLettersRequest())
    assert len(listed.dead_letters) == 1
    assert listed.dead_letters[0].attempts == len(receiver.received)


async def test_bad_dead_letter_requests(stub):
    for bad in ("", "0", "x1", "-5", "\u0661", "9" * 20):  # \u0661: an Arabic-Indic one
        error = await expect_error(stub.RedeliverDeadLetter(pb.RedeliverDeadLetterRequest(
            dead_letter_id=bad)))
        assert (error.code, error.metadata["field"]) == (
            grpc.StatusCode.INVALID_ARGUMENT, "dead_letter_id")
    error = await expect_error(stub.RedeliverDeadLetter(pb.RedeliverDeadLetterRequest(
        dead_letter_id="999")))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "DEAD_LETTER_NOT_FOUND")
    for token in ("nonsense", "abc.\u00e9t\u00e9"):
        error = await expect_error(stub.ListDeadLetters(pb.ListDeadLettersRequest(
            page_token=token)))
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT,
                                              "INVALID_PAGE_TOKEN")
    error = await expect_error(stub.ListDeadLetters(pb.ListDeadLettersRequest(
        endpoint="a\x00b")))
    assert (error.code, error.metadata["field"]) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                     "endpoint")


@pytest.mark.parametrize(("text", "message"), [
    ("[[endpoints]]\nname = 'a'\nurl = 'ftp://x'\nsecret = '0123456789abcdef'",
     "endpoints[0].url: required, an http:// or https:// URL"),
    ("[[endpoints]]\nname = 'a'\nurl = 'http://x'\nsecret = 'short'",
     "endpoints[0].secret: required, at least 16"),
    ("[[endpoints]]\nname = 'a'\nurl = 'http://x'\nsecret = '0123456789abcdef'\n"
     "event_types = ['NOPE']", "endpoints[0].event_types: 'NOPE' is not one of"),
    ("[[endpoints]]\nname = 'a'\nurl = 'http://x'\nsecret = '0123456789abcdef'\ncolour = 1",
     "endpoints[0].colour: unknown key"),
    ("[[endpoints]]\nname = 'a'\nurl = 'http://x'\nsecret = '0123456789abcdef'\n"
     "[[endpoints]]\nname = 'a'\nurl = 'http://y'\nsecret = '0123456789abcdef'",
     "endpoints: the name 'a' is used twice"),
])
def test_a_broken_webhooks_file_stops_start_up_naming_the_key(tmp_path, text, message):
    path = tmp_path / "hooks.toml"
    path.write_text(text)
    with pytest.raises(StartupError) as refused:
        load_webhooks(Settings.build(webhooks_file=str(path)).webhooks)
    assert message in str(refused.value)
