"""The CreditsService servicer: validate and map the request, call one use case, map back."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from credits_service.domain.deadline import reset_call_deadline, set_call_deadline
from credits_service.domain.errors import DomainError, StorageError
from credits_service.service.ledger import Ledger
from credits_service.transport import mapping
from credits_service.transport.admission import CallGate, ShuttingDown
from credits_service.transport.auth import (
    Gatekeeper,
    PermissionDenied,
    Principal,
    RateLimited,
    Unauthenticated,
)
from credits_service.transport.errors import to_status
from credits_service.transport.validation import InvalidArgument, Validator

_log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[["CreditsServicer", Request, Principal], Awaitable[Response]]
ServedHandler = Callable[["CreditsServicer", Request, grpc.aio.ServicerContext],
                         Awaitable[Response]]
_REFUSALS = (Unauthenticated, PermissionDenied, RateLimited, ShuttingDown)


def rpc(handler: Handler[Request, Response]) -> ServedHandler[Request, Response]:
    """Admit the caller (token, role, rate, not draining) before anything else, then run the
    handler as that principal. Known errors become their rich status; anything else is logged
    and INTERNAL."""
    method = handler.__name__

    @functools.wraps(handler)
    async def wrapper(
        self: CreditsServicer, request: Request, context: grpc.aio.ServicerContext
    ) -> Response:
        try:
            principal = self.gatekeeper.admit(method, context.invocation_metadata())
            self.gate.enter()
        except _REFUSALS as exc:
            await context.abort_with_status(to_status(exc))
        deadline_token = set_call_deadline(context.time_remaining())
        try:
            return await handler(self, request, principal)
        except (InvalidArgument, DomainError, StorageError) as exc:
            if isinstance(exc, StorageError):
                _log.warning("%s failed: %s", method, exc)
            await context.abort_with_status(to_status(exc))
        except Exception as exc:
            _log.exception("%s failed unexpectedly", method)
            await context.abort_with_status(to_status(exc))
        finally:
            reset_call_deadline(deadline_token)
            self.gate.leave()
        raise AssertionError("abort_with_status always raises")

    return wrapper


class CreditsServicer(credits_pb2_grpc.CreditsServiceServicer):
    """Each call acts as its authenticated principal: it scopes the idempotency keys and is
    recorded as the actor of the ledger entries the call writes."""

    def __init__(
        self, ledger: Ledger, validator: Validator, gatekeeper: Gatekeeper, gate: CallGate
    ) -> None:
        self._ledger = ledger
        self._validate = validator
        self.gatekeeper = gatekeeper
        self.gate = gate

    @rpc
    async def Grant(self, request: pb.GrantRequest, principal: Principal) -> pb.GrantResponse:
        result = await self._ledger.grant(self._validate.grant(request), principal.name)
        return pb.GrantResponse(
            entry=mapping.ledger_entry(result.entry), balance=mapping.balance(result.balance)
        )

    @rpc
    async def CheckAndReserve(
        self, request: pb.CheckAndReserveRequest, principal: Principal
    ) -> pb.CheckAndReserveResponse:
        command = self._validate.check_and_reserve(request)
        result = await self._ledger.check_and_reserve(command, principal.name)
        return pb.CheckAndReserveResponse(
            reservation=mapping.reservation(result.reservation),
            balance=mapping.balance(result.balance),
        )

    @rpc
    async def Commit(self, request: pb.CommitRequest, principal: Principal) -> pb.CommitResponse:
        result = await self._ledger.commit(self._validate.commit(request), principal.name)
        return pb.CommitResponse(
            reservation=mapping.reservation(result.reservation),
            entry=mapping.ledger_entry(result.entry),
            balance=mapping.balance(result.balance),
        )

    @rpc
    async def Release(self, request: pb.ReleaseRequest, principal: Principal) -> pb.ReleaseResponse:
        result = await self._ledger.release(self._validate.release(request), principal.name)
        return pb.ReleaseResponse(
            reservation=mapping.reservation(result.reservation),
            balance=mapping.balance(result.balance),
        )

    @rpc
    async def GetBalance(
        self, request: pb.GetBalanceRequest, principal: Principal
    ) -> pb.GetBalanceResponse:
        snapshot = await self._ledger.get_balance(self._validate.account_id(request))
        return pb.GetBalanceResponse(balance=mapping.balance(snapshot))

    @rpc
    async def History(self, request: pb.HistoryRequest, principal: Principal) -> pb.HistoryResponse:
        page = await self._ledger.history(self._validate.history(request))
        return pb.HistoryResponse(
            entries=[mapping.ledger_entry(entry) for entry in page.entries],
            next_page_token=page.next_page_token,
        )
