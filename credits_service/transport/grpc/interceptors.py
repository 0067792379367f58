"""The interceptor every call passes through before its servicer: authentication and the rate
limit (before the request is decoded: no token, no work), admission while draining, the
call's deadline for the service layer, requests whose bytes do not decode, the one table of
errors, and the call's metrics and log line.

It applies to every service on the server: ours, health and reflection (which follow
authentication unless auth_open_services leaves them open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from credits.v1 import credits_pb2
from credits_service.domain.errors import (
    CreditsError,
    DatabaseUnavailable,
    MalformedRequest,
    ShuttingDown,
)
from credits_service.service.deadline import reset_call_deadline, set_call_deadline
from credits_service.transport.grpc.admission import CallGate
from credits_service.transport.grpc.auth import CREDITS_SERVICE, Gatekeeper, caller, set_caller
from credits_service.transport.grpc.call_log import CallLog, request_id_of
from credits_service.transport.grpc.errors import reason_of, status_code_of, to_status

_log = logging.getLogger(__name__)
Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class _Malformed:
    """What a request whose bytes do not decode becomes, instead of an exception in grpc."""


_MALFORMED = _Malformed()
# The call's request id and, when refused before decoding, why: set in intercept_service,
# read in the handler, which grpc runs in the same task.
_request_id: ContextVar[str] = ContextVar("request_id", default="")
_refusal: ContextVar[CreditsError | None] = ContextVar("refusal", default=None)


@dataclass(frozen=True, slots=True)
class _Method:
    """One of our RPCs: its name, its request's type, whether it is a batch, whether it
    streams its responses."""

    name: str
    request_type: str
    batch: bool
    streaming: bool = False


@dataclass(frozen=True, slots=True)
class _Route:
    """What the interceptor needs of a method path, worked out once per path."""

    service: str
    name: str
    method: _Method | None  # one of ours, or another service's (health, reflection)
    open: bool  # callable without a token (auth_open_services)


class CallInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, gatekeeper: Gatekeeper, gate: CallGate, call_log: CallLog) -> None:
        self._gatekeeper = gatekeeper
        self._gate = gate
        self._call_log = call_log
        self._methods = {
            f"/{CREDITS_SERVICE}/{m.name}": _Method(
                m.name, m.input_type.full_name, m.input_type.name.startswith("Batch"),
                m.server_streaming)
            for m in credits_pb2.DESCRIPTOR.services_by_name["CreditsService"].methods
        }
        # By method path, for the paths the server has (grpc resolves them first)
        self._routes: dict[str, _Route] = {}
        # Handlers wrapped once per method: (admitted, refused)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None  # grpc answers UNIMPLEMENTED
        path = details.method
        route = self._routes.get(path) or self._route(path)
        if route.open:
            return handler  # health, by default: load balancers' probes carry no token
        metadata = details.invocation_metadata
        method = route.method
        if method is not None and self._call_log.logging():
            _request_id.set(request_id_of(metadata))
        try:
            set_caller(self._gatekeeper.admit(route.service, route.name, metadata))
        except CreditsError as refusal:
            _refusal.set(refusal)
            if method is None:
                return _refusing(handler, refusal)
            return self._handlers(path, method, handler)[1]
        if method is None:
            return handler
        return self._handlers(path, method, handler)[0]

    def _route(self, path: str) -> _Route:
        service, _, name = path[1:].rpartition("/")
        route = self._routes[path] = _Route(
            service, name, self._methods.get(path), service in self._gatekeeper.open_services)
        return route

    def _handlers(
        self, path: str, method: _Method, handler: grpc.RpcMethodHandler
    ) -> tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]:
        wrapped = self._wrapped.get(path)
        if wrapped is None:
            decode = handler.request_deserializer

            def safe_decode(data: bytes) -> Any:
                try:
                    return decode(data)
                except Exception:
                    return _MALFORMED

            if method.streaming:
                behavior = self._serving(method, handler.unary_stream)
                kind = grpc.unary_stream_rpc_method_handler
            else:
                behavior = self._serving(method, handler.unary_unary)
                kind = grpc.unary_unary_rpc_method_handler
            wrapped = self._wrapped[path] = (
                kind(behavior, request_deserializer=safe_decode,
                     response_serializer=handler.response_serializer),
                # Refused: the request's bytes are never decoded.
                kind(behavior, response_serializer=handler.response_serializer),
            )
        return wrapped

    def _serving(self, method: _Method, inner: Behavior) -> Behavior:
        """The behavior of one of our methods around its servicer's (a streaming one writes
        its responses itself, and ends UNAVAILABLE when the server starts draining)."""
        gatekeeper, gate, call_log = self._gatekeeper, self._gate, self._call_log

        async def serve(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started_s = time.perf_counter()
            refusal = _refusal.get()
            code = grpc.StatusCode.CANCELLED  # unless the call ends another way
            reason = ""
            try:
                if refusal is not None:
                    raise refusal
                gate.enter()
                try:
                    if request is _MALFORMED:
                        raise MalformedRequest(method.request_type)
                    if method.batch:  # the rate limit counts each item
                        gatekeeper.charge(caller(), len(request.items) - 1)
                    deadline = set_call_deadline(context.time_remaining())
                    try:
                        if method.streaming:
                            response = await _until_closed(gate, inner(request, context))
                        else:
                            response = await inner(request, context)
                    finally:
                        reset_call_deadline(deadline)
                    code = grpc.StatusCode.OK
                    return response
                finally:
                    gate.leave()
            except Exception as exc:
                code, reason = status_code_of(exc), reason_of(exc)
                if code is grpc.StatusCode.INTERNAL:
                    _log.exception("%s failed unexpectedly", method.name)
                elif isinstance(exc, DatabaseUnavailable):
                    _log.warning("%s failed: %s", method.name, exc)
                await context.abort_with_status(to_status(exc))
            finally:
                principal = (caller().name if refusal is None
                             else refusal.metadata.get("principal"))
                call_log.observe(method.name, request, principal, code, reason,
                                 time.perf_counter() - started_s, _request_id.get())
            raise AssertionError("abort_with_status always raises")

        return serve


async def _until_closed(gate: CallGate, streaming: Awaitable[Any]) -> Any:
    """Run a stream until it ends or the gate closes (ShuttingDown: consumers resume
    elsewhere from their cursor, and the drain does not wait for streams that never end)."""
    stream = asyncio.ensure_future(streaming)
    closed = asyncio.ensure_future(gate.wait_closed())
    try:
        await asyncio.wait((stream, closed), return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
        if not stream.done():
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream
    if stream.cancelled():
        raise ShuttingDown()
    return stream.result()


def _refusing(handler: grpc.RpcMethodHandler, refusal: CreditsError) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` (health, reflection) that only refuses."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort_with_status(to_status(refusal))

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)

