"""The CreditsService servicer: validate and map the request, call one use case, map back."""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from credits.v1 import credits_pb2 as pb
from credits.v1 import credits_pb2_grpc
from credits_service.domain.deadline import reset_call_deadline, set_call_deadline
from credits_service.domain.errors import DomainError, StorageError
from credits_service.domain.model import CommitResult, ReserveResult
from credits_service.service.ledger import Ledger
from credits_service.telemetry import Metrics
from credits_service.transport import mapping
from credits_service.transport.admission import CallGate, ShuttingDown
from credits_service.transport.auth import (
    Gatekeeper,
    PermissionDenied,
    Principal,
    RateLimited,
    Unauthenticated,
)
from credits_service.transport.errors import item_error, status_code_of, to_status
from credits_service.transport.validation import InvalidArgument, Validator

_log = logging.getLogger(__name__)
_rpc_log = logging.getLogger("credits_service.rpc")

Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[["CreditsServicer", Request, Principal], Awaitable[Response]]
ServedHandler = Callable[["CreditsServicer", Request, grpc.aio.ServicerContext],
                         Awaitable[Response]]
_REFUSALS = (Unauthenticated, PermissionDenied, RateLimited, ShuttingDown)


def rpc(handler: Handler[Request, Response]) -> ServedHandler[Request, Response]:
    """Admit the caller (token, role, rate, not draining) before anything else, then run the
    handler as that principal. Known errors become their rich status; anything else is logged
    and INTERNAL. Every call is counted, timed and logged once."""
    method = handler.__name__

    @functools.wraps(handler)
    async def wrapper(
        self: CreditsServicer, request: Request, context: grpc.aio.ServicerContext
    ) -> Response:
        started_s = time.perf_counter()
        principal: Principal | None = None
        code = grpc.StatusCode.CANCELLED  # unless the call ends another way
        try:
            try:
                principal = self.gatekeeper.admit(
                    method, context.invocation_metadata(), len(getattr(request, "items", ())) or 1
                )
                self.gate.enter()
            except _REFUSALS as exc:
                code = status_code_of(exc)
                await context.abort_with_status(to_status(exc))
            deadline_token = set_call_deadline(context.time_remaining())
            try:
                response = await handler(self, request, principal)
                code = grpc.StatusCode.OK
                return response
            except (InvalidArgument, DomainError, StorageError) as exc:
                if isinstance(exc, StorageError):
                    _log.warning("%s failed: %s", method, exc)
                code = status_code_of(exc)
                await context.abort_with_status(to_status(exc))
            except Exception as exc:
                _log.exception("%s failed unexpectedly", method)
                code = status_code_of(exc)
                await context.abort_with_status(to_status(exc))
            finally:
                reset_call_deadline(deadline_token)
                self.gate.leave()
        finally:
            self.observe(method, request, principal, code, time.perf_counter() - started_s)
        raise AssertionError("abort_with_status always raises")

    return wrapper


class CreditsServicer(credits_pb2_grpc.CreditsServiceServicer):
    """Each call acts as its authenticated principal: it scopes the idempotency keys and is
    recorded as the actor of the ledger entries the call writes."""

    def __init__(
        self,
        ledger: Ledger,
        validator: Validator,
        gatekeeper: Gatekeeper,
        gate: CallGate,
        metrics: Metrics,
    ) -> None:
        self._ledger = ledger
        self._validate = validator
        self.gatekeeper = gatekeeper
        self.gate = gate
        self._metrics = metrics
        # The labelled children, looked up once each instead of on every call
        self._counters: dict[tuple[str, grpc.StatusCode], Any] = {}
        self._timers: dict[str, Any] = {}

    def observe(
        self,
        method: str,
        request: object,
        principal: Principal | None,
        code: grpc.StatusCode,
        duration_s: float,
    ) -> None:
        """Count, time and log one finished call (never its token; the key only hashed)."""
        counter = self._counters.get((method, code))
        if counter is None:
            counter = self._counters[(method, code)] = self._metrics.rpc_requests.labels(
                method, code.name)
        counter.inc()
        timer = self._timers.get(method)
        if timer is None:
            timer = self._timers[method] = self._metrics.rpc_duration.labels(method)
        timer.observe(duration_s)
        if not _rpc_log.isEnabledFor(logging.INFO):
            return
        fields: dict[str, object] = {
            "method": method,
            "principal": principal.name if principal else None,
            "code": code.name,
            "duration_ms": round(duration_s * 1000, 3),
        }
        for name in ("account_id", "reservation_id"):
            if value := getattr(request, name, ""):
                fields[name] = value
        if key := getattr(request, "idempotency_key", ""):
            fields["idempotency_key_sha256"] = hashlib.sha256(key.encode()).hexdigest()[:16]
        _rpc_log.info("%s %s %.1fms", method, code.name, duration_s * 1000, extra=fields)

    @rpc
    async def Grant(self, request: pb.GrantRequest, principal: Principal) -> pb.GrantResponse:
        result = await self._ledger.grant(self._validate.grant(request), principal.name)
        response = pb.GrantResponse(
            entry=mapping.ledger_entry(result.entry), balance=mapping.balance(result.balance)
        )
        if result.lot is not None:
            response.lot.CopyFrom(mapping.lot(result.lot))
        return response

    @rpc
    async def CheckAndReserve(
        self, request: pb.CheckAndReserveRequest, principal: Principal
    ) -> pb.CheckAndReserveResponse:
        command = self._validate.check_and_reserve(request)
        return _reserve_response(await self._ledger.check_and_reserve(command, principal.name))

    @rpc
    async def Commit(self, request: pb.CommitRequest, principal: Principal) -> pb.CommitResponse:
        return _commit_response(
            await self._ledger.commit(self._validate.commit(request), principal.name)
        )

    @rpc
    async def BatchCheckAndReserve(
        self, request: pb.BatchCheckAndReserveRequest, principal: Principal
    ) -> pb.BatchCheckAndReserveResponse:
        self._validate.batch(request.items)
        answers: list[Any] = [None] * len(request.items)
        valid = []
        for i, item in enumerate(request.items):
            try:
                valid.append((i, self._validate.check_and_reserve(item)))
            except InvalidArgument as exc:
                answers[i] = exc
        outcomes = await self._ledger.check_and_reserve_batch(
            [(command, principal.name) for _, command in valid]
        ) if valid else []
        for (i, _), outcome in zip(valid, outcomes, strict=True):
            answers[i] = outcome
        response = pb.BatchCheckAndReserveResponse()
        for answer in answers:  # built in place: a result given to a constructor is copied
            result = response.results.add()
            if isinstance(answer, Exception):
                result.error.CopyFrom(item_error(answer))
            else:
                _set_reserve_response(result.response, answer)
        return response

    @rpc
    async def BatchCommit(
        self, request: pb.BatchCommitRequest, principal: Principal
    ) -> pb.BatchCommitResponse:
        self._validate.batch(request.items)
        results: list[pb.CommitResult | None] = [None] * len(request.items)
        valid = []
        for i, item in enumerate(request.items):
            try:
                valid.append((i, self._validate.commit(item)))
            except InvalidArgument as exc:
                results[i] = pb.CommitResult(error=item_error(exc))
        outcomes = await self._ledger.commit_each(
            [command for _, command in valid], principal.name
        )
        for (i, _), outcome in zip(valid, outcomes, strict=True):
            if isinstance(outcome, Exception):
                if not isinstance(outcome, DomainError | StorageError):
                    _log.error("BatchCommit item failed unexpectedly", exc_info=outcome)
                results[i] = pb.CommitResult(error=item_error(outcome))
            else:
                results[i] = pb.CommitResult(response=_commit_response(outcome))
        return pb.BatchCommitResponse(results=results)

    @rpc
    async def Release(self, request: pb.ReleaseRequest, principal: Principal) -> pb.ReleaseResponse:
        result = await self._ledger.release(self._validate.release(request), principal.name)
        return pb.ReleaseResponse(
            reservation=mapping.reservation(result.reservation),
            balance=mapping.balance(result.balance),
        )

    @rpc
    async def ExtendReservation(
        self, request: pb.ExtendReservationRequest, principal: Principal
    ) -> pb.ExtendReservationResponse:
        reservation = await self._ledger.extend(self._validate.extend(request))
        return pb.ExtendReservationResponse(reservation=mapping.reservation(reservation))

    @rpc
    async def GetBalance(
        self, request: pb.GetBalanceRequest, principal: Principal
    ) -> pb.GetBalanceResponse:
        report = await self._ledger.get_balance(self._validate.get_balance(request))
        return pb.GetBalanceResponse(
            balance=mapping.balance(report.balance),
            lots=[mapping.lot(lot) for lot in report.lots],
            lots_truncated=report.lots_truncated,
            expiring_amount=report.expiring_amount,
        )

    @rpc
    async def ListReservations(
        self, request: pb.ListReservationsRequest, principal: Principal
    ) -> pb.ListReservationsResponse:
        page = await self._ledger.list_reservations(self._validate.list_reservations(request))
        return pb.ListReservationsResponse(
            reservations=[mapping.reservation(hold) for hold in page.reservations],
            next_page_token=page.next_page_token,
        )

    @rpc
    async def History(self, request: pb.HistoryRequest, principal: Principal) -> pb.HistoryResponse:
        page = await self._ledger.history(self._validate.history(request))
        return pb.HistoryResponse(
            entries=[mapping.ledger_entry(entry) for entry in page.entries],
            next_page_token=page.next_page_token,
        )


def _reserve_response(result: ReserveResult) -> pb.CheckAndReserveResponse:
    return _set_reserve_response(pb.CheckAndReserveResponse(), result)


def _set_reserve_response(
    message: pb.CheckAndReserveResponse, result: ReserveResult
) -> pb.CheckAndReserveResponse:
    mapping.set_reservation(message.reservation, result.reservation)
    mapping.set_balance(message.balance, result.balance)
    return message


def _commit_response(result: CommitResult) -> pb.CommitResponse:
    return pb.CommitResponse(
        reservation=mapping.reservation(result.reservation),
        entry=mapping.ledger_entry(result.entry),
        balance=mapping.balance(result.balance),
    )
