"""Webhook deliveries (docs/webhooks.md): each endpoint's events, in order, from where it
stands; each retried with exponential backoff for up to the retry time, then kept as a dead
letter; and an admin's redelivery of a dead letter.

One replica delivers an endpoint's events at a time (a lease in its row, renewed before each
attempt and with each step forward). Delivery is at least once: an event whose delivery
succeeded just before its replica died is delivered again by the next; receivers tell
repeats by the event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from credits_service.domain import errors
from credits_service.domain.events import Event, EventPage, Position
from credits_service.domain.webhooks import (
    DeadLetter,
    DeadLetterPage,
    DeliveryFailed,
    Endpoint,
    body_of,
)
from credits_service.service.event_ports import WebhookSender
from credits_service.service.events import Events
from credits_service.service.page_tokens import PageTokens, filters_digest
from credits_service.service.ports import UnitOfWork
from credits_service.service.transactions import Transactions

_log = logging.getLogger(__name__)
DEAD_LETTERS_PAGE_SIZE_DEFAULT = 50
DEAD_LETTERS_PAGE_SIZE_MAX = 500
WEBHOOK_PAGE_SIZE = 100  # events read per step


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    retry_for_s: float
    backoff_initial_s: float
    backoff_max_s: float
    lease_s: float
    attempt_timeout_s: float = 10.0  # the whole attempt, whatever the HTTP client's phases


_LOST = object()  # the lease went to another replica


def body(event: Event) -> bytes:
    return orjson.dumps(dict(body_of(event)))


class Webhooks:
    def __init__(
        self, transactions: Transactions, events: Events, endpoints: Sequence[Endpoint],
        sender: WebhookSender, policy: WebhookPolicy, tokens: PageTokens, owner: str,
    ) -> None:
        self._transactions = transactions
        self._events = events
        self.endpoints = {e.name: e for e in endpoints}
        self._sender = sender
        self.policy = policy
        self._tokens = tokens
        self._owner = owner

    async def claim(self, endpoint: Endpoint) -> Position | None:
        """Take the endpoint's lease (recording it at now if it is new): where its deliveries
        stand, or None while another replica holds it."""
        now = await self._events.page(None)

        async def work(uow: UnitOfWork) -> Position | None:
            await uow.webhooks.start(endpoint.name, now.position)
            return await uow.webhooks.claim(endpoint.name, self._owner, self.policy.lease_s)

        return await self._transactions.run(work)

    async def renew(self, endpoint: Endpoint) -> bool:
        """Renew the endpoint's lease; False if another replica holds it now."""

        async def work(uow: UnitOfWork) -> bool:
            held = await uow.webhooks.claim(endpoint.name, self._owner, self.policy.lease_s)
            return held is not None

        return await self._transactions.run(work)

    async def next_page(self, endpoint: Endpoint, position: Position) -> EventPage:
        """The endpoint's next events after `position` (of every type: filtered here, so the
        position moves past others' events too). An endpoint fallen behind the retention
        skips to the oldest event kept, logged."""
        try:
            return await self._events.page(position.cursor(), limit=WEBHOOK_PAGE_SIZE)
        except errors.CursorExpired as expired:
            _log.error("webhook endpoint %s fell behind the events' retention: events after "
                       "its position were purged; it goes on from the oldest kept",
                       endpoint.name)
            return await self._events.page(expired.metadata["oldestCursor"],
                                           limit=WEBHOOK_PAGE_SIZE)

    async def handle(self, endpoint: Endpoint, event: Event) -> bool:
        """Deliver the event (retrying; a dead letter once the retry time is spent) and move
        the endpoint past it; False if the lease was lost. The lease is renewed every third
        of its length while this runs, however long the retries and their waits take."""
        renewing = asyncio.create_task(self._keep_lease(endpoint))
        try:
            failure = await self._deliver(endpoint, event, renewing)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        if failure is _LOST:
            return False

        async def work(uow: UnitOfWork) -> bool:
            moved = await uow.webhooks.advance(
                endpoint.name, self._owner, event.position, self.policy.lease_s)
            if moved and isinstance(failure, tuple):  # kept once, by the lease's holder
                await uow.webhooks.bury(endpoint.name, event.event_id, event.event_type.value,
                                        event.account_id, *failure)
            return moved

        return await self._transactions.run(work)

    async def _deliver(self, endpoint: Endpoint, event: Event,
                       renewing: asyncio.Task[None]) -> object:
        """None once delivered; (body, attempts, error) once the retry time is spent; _LOST
        when the lease is."""
        sent = body(event)
        attempts = 0
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(DeliveryFailed),
            stop=stop_after_delay(self.policy.retry_for_s),
            wait=wait_exponential(multiplier=self.policy.backoff_initial_s,
                                  max=self.policy.backoff_max_s)
            + wait_random(0, self.policy.backoff_initial_s),
            reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    if renewing.done():  # the lease is another replica's now
                        return _LOST
                    attempts += 1
                    try:
                        async with asyncio.timeout(self.policy.attempt_timeout_s):
                            await self._sender.send(endpoint, sent, event.event_id,
                                                    event.event_type.value)
                    except TimeoutError:
                        raise DeliveryFailed("timed out") from None
        except DeliveryFailed as exc:
            _log.warning("webhook endpoint %s did not take event %d after %d attempts: "
                         "kept as a dead letter (%s)", endpoint.name, event.event_id,
                         attempts, exc)
            return (sent, attempts, str(exc))
        return None

    async def _keep_lease(self, endpoint: Endpoint) -> None:
        """Renew the endpoint's lease every third of its length; return when it is lost."""
        while await self.renew(endpoint):
            await asyncio.sleep(self.policy.lease_s / 3)
        _log.info("webhook endpoint %s: another replica holds it now", endpoint.name)

    async def advance(self, endpoint: Endpoint, position: Position) -> bool:
        """Move the endpoint to `position` (past events it does not want); False if the lease
        was lost."""

        async def work(uow: UnitOfWork) -> bool:
            return await uow.webhooks.advance(
                endpoint.name, self._owner, position, self.policy.lease_s)

        return await self._transactions.run(work)

    async def dead_letters(self, endpoint: str, page_size: int, page_token: str,
                           include_redelivered: bool) -> DeadLetterPage:
        """A page of dead letters (of one endpoint, or all), oldest first."""
        filters = filters_digest(["dead-letters", endpoint, include_redelivered])
        after = self._tokens.decode(page_token, filters, int) if page_token else 0
        size = min(page_size or DEAD_LETTERS_PAGE_SIZE_DEFAULT, DEAD_LETTERS_PAGE_SIZE_MAX)

        async def work(uow: UnitOfWork) -> DeadLetterPage:
            found = await uow.webhooks.dead_letters(endpoint or None, after,
                                                    include_redelivered, size + 1)
            listed = tuple(found[:size])
            token = (self._tokens.encode(listed[-1].dead_letter_id, filters)
                     if len(found) > size else "")
            return DeadLetterPage(listed, token)

        return await self._transactions.run(work)

    async def redeliver(self, dead_letter_id: int) -> DeadLetter:
        """Deliver a dead letter again, once, now: REDELIVERED, or DeliveryRefused with the
        endpoint's answer. A dead letter already redelivered is returned as it is."""

        async def find(uow: UnitOfWork) -> DeadLetter | errors.Declined:
            found = await uow.webhooks.dead_letter(dead_letter_id)
            return found if found is not None else errors.DeadLetterNotFound(dead_letter_id)

        letter = await self._transactions.run(find)
        if letter.status != "DEAD":
            return letter
        endpoint = self.endpoints.get(letter.endpoint)
        if endpoint is None:
            raise errors.WebhookEndpointNotConfigured(letter.endpoint)
        error = None
        try:
            await self._sender.send(endpoint, letter.body, letter.event_id, letter.event_type)
        except DeliveryFailed as exc:
            error = str(exc)

        async def record(uow: UnitOfWork) -> DeadLetter | None:
            return await uow.webhooks.redelivered(dead_letter_id, error)

        recorded = await self._transactions.run(record)
        if error is not None:
            raise errors.DeliveryRefused(letter.endpoint, error)
        if recorded is None:  # redelivered by another call meanwhile
            recorded = await self._transactions.run(find)
        return recorded
