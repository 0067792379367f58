"""The webhook dead-letter RPCs (ListDeadLetters, RedeliverDeadLetter): their validation,
their mapping and their servicer methods (docs/webhooks.md)."""

from __future__ import annotations

import grpc

from credits.v1 import credits_pb2 as pb
from credits_service.domain.events import EventType
from credits_service.domain.webhooks import ENDPOINT_NAME_PATTERN, DeadLetter
from credits_service.service.webhooks import Webhooks
from credits_service.transport.grpc import messages
from credits_service.transport.grpc.events import EVENT_TYPE_TO_PROTO
from credits_service.transport.grpc.fields import PAGE_TOKEN_LENGTH_MAX, FieldChecker

_STATUS_TO_PROTO = {"DEAD": pb.DEAD_LETTER_STATUS_DEAD,
                    "REDELIVERED": pb.DEAD_LETTER_STATUS_REDELIVERED}
_ID_MAX = 2**63 - 1
_ID_DIGITS_MAX = 19


def to_dead_letter(letter: DeadLetter) -> pb.DeadLetter:
    event_type = EventType.__members__.get(letter.event_type)
    return pb.DeadLetter(
        dead_letter_id=str(letter.dead_letter_id), endpoint=letter.endpoint,
        event_id=letter.event_id,
        event_type=EVENT_TYPE_TO_PROTO[event_type] if event_type else pb.EVENT_TYPE_UNSPECIFIED,
        account_id=letter.account_id, attempts=letter.attempts, last_error=letter.last_error,
        status=_STATUS_TO_PROTO[letter.status],
        create_time=messages.timestamp(letter.create_time),
        update_time=messages.timestamp(letter.update_time),
        body_json=letter.body.decode())


class WebhooksApi:
    _webhooks: Webhooks | None

    async def _webhooks_or_abort(self, context: grpc.aio.ServicerContext) -> Webhooks:
        if self._webhooks is None:  # bench/memory_server.py: a ledger without webhooks
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server has no webhooks")
        assert self._webhooks is not None
        return self._webhooks

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeadLettersResponse:
        check = FieldChecker()
        if request.endpoint and not ENDPOINT_NAME_PATTERN.fullmatch(request.endpoint):
            check.fail("endpoint", "must be an endpoint's name: 1-64 characters from "
                       "A-Z a-z 0-9 . _ -")
        if request.page_size < 0:
            check.fail("page_size", "must not be negative")
        if len(request.page_token) > PAGE_TOKEN_LENGTH_MAX:
            check.fail("page_token", "is not a page token this service handed out")
        check.done()
        webhooks = await self._webhooks_or_abort(context)
        page = await webhooks.dead_letters(
            request.endpoint, request.page_size, request.page_token,
            request.include_redelivered)
        return pb.ListDeadLettersResponse(
            dead_letters=[to_dead_letter(d) for d in page.dead_letters],
            next_page_token=page.next_page_token)

    async def RedeliverDeadLetter(
        self, request: pb.RedeliverDeadLetterRequest, context: grpc.aio.ServicerContext
    ) -> pb.RedeliverDeadLetterResponse:
        check = FieldChecker()
        value = request.dead_letter_id
        dead_letter_id = int(value) if value.isascii() and value.isdigit() and len(
            value) <= _ID_DIGITS_MAX else 0
        if not 1 <= dead_letter_id <= _ID_MAX:
            check.fail("dead_letter_id", "must be the id of a dead letter ListDeadLetters shows")
        check.done()
        webhooks = await self._webhooks_or_abort(context)
        letter = await webhooks.redeliver(dead_letter_id)
        return pb.RedeliverDeadLetterResponse(dead_letter=to_dead_letter(letter))
