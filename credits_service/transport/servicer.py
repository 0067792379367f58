"""The CreditsService servicer: validate and map the request, call one use case, map back."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from credits_service.domain.errors import DomainError, StorageError
from credits_service.service.ledger import Ledger
from credits_service.transport import mapping
from credits_service.transport.admission import CallGate, ShuttingDown
from credits_service.transport.errors import to_status
from credits_service.transport.validation import InvalidArgument, Validator

_log = logging.getLogger(__name__)

# Until per-caller tokens exist every call acts as this principal; it scopes idempotency keys
# and is recorded as the actor of ledger entries.
ANONYMOUS_PRINCIPAL = "anonymous"

Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[["CreditsServicer", Request, grpc.aio.ServicerContext], Awaitable[Response]]


def rpc(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Turn known errors into their rich status; anything else is logged and INTERNAL."""

    @functools.wraps(handler)
    async def wrapper(
        self: CreditsServicer, request: Request, context: grpc.aio.ServicerContext
    ) -> Response:
        try:
            self.gate.enter()
        except ShuttingDown as exc:
            await context.abort_with_status(to_status(exc))
        try:
            return await handler(self, request, context)
        except (InvalidArgument, DomainError, StorageError) as exc:
            if isinstance(exc, StorageError):
                _log.warning("%s failed: %s", handler.__name__, exc)
            await context.abort_with_status(to_status(exc))
        except Exception as exc:
            _log.exception("%s failed unexpectedly", handler.__name__)
            await context.abort_with_status(to_status(exc))
        finally:
            self.gate.leave()
        raise AssertionError("abort_with_status always raises")

    return wrapper


class CreditsServicer(credits_pb2_grpc.CreditsServiceServicer):
    def __init__(self, ledger: Ledger, validator: Validator, gate: CallGate) -> None:
        self._ledger = ledger
        self._validate = validator
        self.gate = gate

    @rpc
    async def Grant(self, request: pb.GrantRequest, context: Any) -> pb.GrantResponse:
        result = await self._ledger.grant(self._validate.grant(request), ANONYMOUS_PRINCIPAL)
        return pb.GrantResponse(
            entry=mapping.ledger_entry(result.entry), balance=mapping.balance(result.balance)
        )

    @rpc
    async def CheckAndReserve(
        self, request: pb.CheckAndReserveRequest, context: Any
    ) -> pb.CheckAndReserveResponse:
        command = self._validate.check_and_reserve(request)
        result = await self._ledger.check_and_reserve(command, ANONYMOUS_PRINCIPAL)
        return pb.CheckAndReserveResponse(
            reservation=mapping.reservation(result.reservation),
            balance=mapping.balance(result.balance),
        )

    @rpc
    async def Commit(self, request: pb.CommitRequest, context: Any) -> pb.CommitResponse:
        result = await self._ledger.commit(self._validate.commit(request), ANONYMOUS_PRINCIPAL)
        return pb.CommitResponse(
            reservation=mapping.reservation(result.reservation),
            entry=mapping.ledger_entry(result.entry),
            balance=mapping.balance(result.balance),
        )

    @rpc
    async def Release(self, request: pb.ReleaseRequest, context: Any) -> pb.ReleaseResponse:
        result = await self._ledger.release(self._validate.release(request), ANONYMOUS_PRINCIPAL)
        return pb.ReleaseResponse(
            reservation=mapping.reservation(result.reservation),
            balance=mapping.balance(result.balance),
        )

    @rpc
    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: Any
    ) -> pb.GetBalanceResponse:
        snapshot = await self._ledger.get_balance(self._validate.account_id(request))
        return pb.GetBalanceResponse(balance=mapping.balance(snapshot))

    @rpc
    async def History(self, request: pb.HistoryRequest, context: Any) -> pb.HistoryResponse:
        page = await self._ledger.history(self._validate.history(request))
        return pb.HistoryResponse(
            entries=[mapping.ledger_entry(entry) for entry in page.entries],
            next_page_token=page.next_page_token,
        )
