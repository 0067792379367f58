"""Helpers to call an RPC expecting an error, unpack its google.rpc details and check them."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

DOMAIN = "credits.v1"


@dataclass
class RpcError:
    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]
    field_violations: list[tuple[str, str]] = field(default_factory=list)


def unpack(error: grpc.aio.AioRpcError) -> RpcError:
    status = rpc_status.from_call(error)
    info = error_details_pb2.ErrorInfo()
    violations: list[tuple[str, str]] = []
    found_info = False
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
            found_info = True
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations = [(v.field, v.description) for v in bad_request.field_violations]
    assert found_info or error.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ), f"{error.code()} without ErrorInfo: {error.details()}"
    return RpcError(
        code=error.code(),
        message=error.details() or "",
        reason=info.reason,
        domain=info.domain,
        metadata=dict(info.metadata),
        field_violations=violations,
    )


async def expect_error(call: Awaitable[object]) -> RpcError:
    """Await `call`, which must fail; return its unpacked status."""
    try:
        response = await call
    except grpc.aio.AioRpcError as error:
        return unpack(error)
    raise AssertionError(f"expected an error, got {response!r}")


def assert_error(error: RpcError, code: grpc.StatusCode, reason: str, **metadata: str) -> None:
    """`error` has this code, reason and our domain, and these ErrorInfo metadata among its own."""
    assert (error.code, error.reason, error.domain) == (code, reason, DOMAIN), error
    for key, value in metadata.items():
        assert error.metadata.get(key) == value, (key, error.metadata)
