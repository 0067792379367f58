"""The reservation RPCs (CheckAndReserve, Commit, Release, ExtendReservation, and the batch
forms): their validation, their mapping and their servicer methods."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc

from credits.v1 import credits_pb2 as pb
from credits_service.domain.commands import (
    CommitCommand,
    CommitResult,
    ExtendCommand,
    ReleaseCommand,
    ReserveCommand,
    ReserveResult,
)
from credits_service.domain.errors import CreditsError, FieldViolation, InvalidArgument
from credits_service.service.ledger import Ledger
from credits_service.transport.grpc import fields, messages
from credits_service.transport.grpc.auth import caller
from credits_service.transport.grpc.errors import item_error, status_code_of
from credits_service.transport.grpc.fields import (
    REASON_LENGTH_MAX,
    TTL_MIN_MS,
    FieldChecker,
    RequestLimits,
    feature_name,
)

_log = logging.getLogger(__name__)


class ReservationRequests:
    """Turns each reservation request into its command, or raises InvalidArgument."""

    def __init__(self, limits: RequestLimits) -> None:
        self._ttl_max_ms = limits.reservation_ttl_max_ms
        self._batch_size_max = limits.batch_size_max

    def check_and_reserve(self, request: pb.CheckAndReserveRequest) -> ReserveCommand:
        check = FieldChecker()
        ttl_ms = None
        if request.HasField("ttl"):
            ttl_ms = check.duration_ms("ttl", request.ttl, TTL_MIN_MS, self._ttl_max_ms)
        feature = units = None
        if request.feature:  # a feature's units instead of an amount
            feature = feature_name(check, "feature", request.feature)
            units = fields.units(check, "units", request.units)
            if request.amount:
                check.fail("amount", "must be unset with a feature: its cost is the amount")
        elif request.units:
            check.fail("units", "are a feature's: set feature too, or an amount alone")
        command = ReserveCommand(
            account_id=check.identifier("account_id", request.account_id),
            amount=request.amount if feature else check.amount("amount", request.amount),
            idempotency_key=check.identifier("idempotency_key", request.idempotency_key),
            ttl_ms=ttl_ms,
            metadata=check.metadata("metadata", request.metadata),
            feature=feature,
            units=units,
        )
        check.done()
        return command

    def commit(self, request: pb.CommitRequest) -> CommitCommand:
        check = FieldChecker()
        units = None
        if request.HasField("units"):
            units = fields.units(check, "units", request.units)
            if request.HasField("amount"):
                check.fail("units", "and amount are each a way to say what to capture: "
                                    "set one of them")
        command = CommitCommand(
            reservation_id=check.reservation_id("reservation_id", request.reservation_id),
            amount=check.amount("amount", request.amount) if request.HasField("amount") else None,
            metadata=check.metadata("metadata", request.metadata),
            units=units,
        )
        check.done()
        return command

    def release(self, request: pb.ReleaseRequest) -> ReleaseCommand:
        check = FieldChecker()
        command = ReleaseCommand(
            reservation_id=check.reservation_id("reservation_id", request.reservation_id),
            reason=check.text("reason", request.reason, REASON_LENGTH_MAX),
        )
        check.done()
        return command

    def extend(self, request: pb.ExtendReservationRequest) -> ExtendCommand:
        check = FieldChecker()
        ttl_ms = 0
        if request.HasField("ttl"):
            ttl_ms = check.duration_ms("ttl", request.ttl, TTL_MIN_MS, self._ttl_max_ms)
        else:
            check.fail("ttl", "is required")
        command = ExtendCommand(
            reservation_id=check.reservation_id("reservation_id", request.reservation_id),
            ttl_ms=ttl_ms,
        )
        check.done()
        return command

    def batch(self, items: Sequence[object]) -> None:
        """A batch carries 1..batch_size_max items; each item is validated on its own."""
        if not 1 <= len(items) <= self._batch_size_max:
            raise InvalidArgument([FieldViolation(
                "items", f"must hold between 1 and {self._batch_size_max} items")])


def reserve_response(result: ReserveResult) -> pb.CheckAndReserveResponse:
    return _set_reserve_response(pb.CheckAndReserveResponse(), result)


def _set_reserve_response(
    message: pb.CheckAndReserveResponse, result: ReserveResult
) -> pb.CheckAndReserveResponse:
    messages.set_reservation(message.reservation, result.reservation)
    messages.set_balance(message.balance, result.balance)
    return message


def commit_response(result: CommitResult) -> pb.CommitResponse:
    return pb.CommitResponse(
        reservation=messages.reservation(result.reservation),
        entry=messages.ledger_entry(result.entry),
        balance=messages.balance(result.balance),
    )


class ReservationsApi:
    _ledger: Ledger
    _reservation_requests: ReservationRequests

    async def CheckAndReserve(
        self, request: pb.CheckAndReserveRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckAndReserveResponse:
        command = self._reservation_requests.check_and_reserve(request)
        return reserve_response(await self._ledger.check_and_reserve(command, caller().name))

    async def Commit(
        self, request: pb.CommitRequest, context: grpc.aio.ServicerContext
    ) -> pb.CommitResponse:
        command = self._reservation_requests.commit(request)
        return commit_response(await self._ledger.commit(command, caller().name))

    async def Release(
        self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseResponse:
        result = await self._ledger.release(self._reservation_requests.release(request))
        return pb.ReleaseResponse(reservation=messages.reservation(result.reservation),
                                  balance=messages.balance(result.balance))

    async def ExtendReservation(
        self, request: pb.ExtendReservationRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExtendReservationResponse:
        reservation = await self._ledger.extend(self._reservation_requests.extend(request))
        return pb.ExtendReservationResponse(reservation=messages.reservation(reservation))

    async def BatchCheckAndReserve(
        self, request: pb.BatchCheckAndReserveRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchCheckAndReserveResponse:
        self._reservation_requests.batch(request.items)
        answers: list[Any] = [None] * len(request.items)
        valid = []
        for i, item in enumerate(request.items):
            try:
                valid.append((i, self._reservation_requests.check_and_reserve(item)))
            except InvalidArgument as exc:
                answers[i] = exc
        actor = caller().name
        outcomes = await self._ledger.check_and_reserve_batch(
            [(command, actor) for _, command in valid]) if valid else []
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

    async def BatchCommit(
        self, request: pb.BatchCommitRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchCommitResponse:
        self._reservation_requests.batch(request.items)
        results: list[pb.CommitResult | None] = [None] * len(request.items)
        valid = []
        for i, item in enumerate(request.items):
            try:
                valid.append((i, self._reservation_requests.commit(item)))
            except InvalidArgument as exc:
                results[i] = pb.CommitResult(error=item_error(exc))
        outcomes = await self._ledger.commit_each(
            [command for _, command in valid], caller().name)
        for (i, _), outcome in zip(valid, outcomes, strict=True):
            if isinstance(outcome, Exception):
                if (not isinstance(outcome, CreditsError)
                        or status_code_of(outcome) is grpc.StatusCode.INTERNAL):
                    _log.error("BatchCommit item failed unexpectedly", exc_info=outcome)
                results[i] = pb.CommitResult(error=item_error(outcome))
            else:
                results[i] = pb.CommitResult(response=commit_response(outcome))
        return pb.BatchCommitResponse(results=results)
