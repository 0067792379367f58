"""F14, bytes that are no message: corrupt protobuf sent to every RPC is INVALID_ARGUMENT with
an ErrorInfo reason (MALFORMED_REQUEST when it does not decode), tells the caller nothing of
the server's insides, logs one line and no traceback, and writes nothing.

The bytes go out raw: a channel method with no serializer sends them as they are.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError

from credits.v1 import credits_pb2 as pb
from tests.grpc_errors import expect_error, unpack
from tests.ledger_checks import row_counts

SERVICE = pb.DESCRIPTOR.services_by_name["CreditsService"]
METHODS = [method.name for method in SERVICE.methods]
REQUEST_TYPES = {method.name: method.input_type._concrete_class for method in SERVICE.methods}

# Requests valid with no field set: bytes that decode (a field of the wrong wire type is kept
# as an unknown field) are answered as the empty request is, not refused as invalid.
EMPTY_IS_VALID = {"GetRateCard", "ReloadRateCard", "UsageSummary", "ListDeadLetters"}

# Bytes of each kind the issue names, for any request type (field 1 is a string or a
# repeated message in every one of them)
CORRUPT = {
    "bad varint": b"\x10" + b"\xff" * 11,  # field 2, a varint of 11 bytes (10 at most)
    "truncated length": b"\x0a\x40abc",  # field 1 says 64 bytes, 3 follow
    "invalid utf-8": b"\x0a\x03\xff\xfe\xfd",  # field 1 as a string
    "wrong wire type": b"\x0b\x0c",  # field 1 as a start group, ended by another field's end
    "string as a varint": b"\x08\x01",  # field 1 (a string or a message) as a varint
    "truncated tag": b"\x80",
    "zero field number": b"\x00\x01",
    "random": bytes(range(256)),
}


STREAMING = {method.name for method in SERVICE.methods if method.server_streaming}
# Requests of a stream valid with no field set (WatchEvents: from now)
EMPTY_IS_VALID |= STREAMING


def _raw_call(channel: grpc.aio.Channel, method: str) -> Callable[..., Awaitable[Any]]:
    path = f"/{SERVICE.full_name}/{method}"
    if method not in STREAMING:
        return channel.unary_unary(path)
    streaming = channel.unary_stream(path)

    async def first_response(data: bytes, timeout: float) -> Any:  # noqa: ASYNC109
        """A stream answers with its first response, or its error; a stream that started is
        then cancelled."""
        call = streaming(data, timeout=timeout)
        try:
            return await call.read()
        finally:
            call.cancel()

    return first_response


def _decodes(method: str, data: bytes) -> bool:
    try:
        REQUEST_TYPES[method].FromString(data)
    except DecodeError:
        return False
    return True


async def _assert_refused_cleanly(channel, method: str, data: bytes) -> str:
    """Call `method` with `data`; it must be refused as invalid. Returns the reason."""
    error = await expect_error(_raw_call(channel, method)(data, timeout=10))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT, (method, data, error)
    assert error.domain == "credits.v1"
    if not _decodes(method, data):
        assert error.reason == "MALFORMED_REQUEST", (method, data, error)
        assert error.metadata == {"messageType": f"credits.v1.{REQUEST_TYPES[method].__name__}"}
    assert "Error" not in error.message and "Traceback" not in error.message, error.message
    return error.reason


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", list(CORRUPT))
async def test_corrupt_bytes_are_invalid_argument_and_log_one_line(
    channels, db, caplog, method, kind
):
    before = await row_counts(db)
    if method in EMPTY_IS_VALID and _decodes(method, CORRUPT[kind]):
        try:
            await _raw_call(channels[0], method)(CORRUPT[kind], timeout=10)
        except grpc.aio.AioRpcError as failure:  # ReloadRateCard: no card file here
            assert unpack(failure).reason == "RATE_CARD_REFUSED", failure
        assert await row_counts(db) == before
        return
    with caplog.at_level(logging.INFO):
        reason = await _assert_refused_cleanly(channels[0], method, CORRUPT[kind])
        # The server logs the call once its answer is sent: the caller may see it first.
        for _ in range(100):
            if any(r.name == "credits_service.rpc" for r in caplog.records):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)  # and anything logged after it
    server_lines = [r for r in caplog.records if r.name.startswith(("credits_service", "grpc"))]
    assert [(r.name, r.levelno) for r in server_lines] == [("credits_service.rpc", logging.INFO)]
    assert not any(r.exc_info for r in caplog.records)
    assert server_lines[0].reason == reason
    assert await row_counts(db) == before


@pytest.mark.parametrize("method", METHODS)
async def test_any_bytes_are_answered_without_unknown_or_internal(channels, db, method):
    """Random bytes (seeded): whatever does not decode is MALFORMED_REQUEST; whatever decodes
    is validated as any request is. Never UNKNOWN, never INTERNAL, nothing written."""
    rng = random.Random(method)
    before = await row_counts(db)
    for index in range(40):
        data = rng.randbytes(rng.randint(0, 64))
        try:
            await _raw_call(channels[index % len(channels)], method)(data, timeout=10)
            continue
        except grpc.aio.AioRpcError as failure:
            error = unpack(failure)
        assert error.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (data, error)
        if not _decodes(method, data):
            assert (error.code, error.reason) == (
                grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"), (data, error)
    assert await row_counts(db) == before
