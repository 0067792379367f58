"""The ports of events, balance alerts and webhooks (service/ports.py has the rest, and the
unit of work that carries these repositories)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from credits_service.domain.alerts import BalanceAlert, LowBalanceRule
from credits_service.domain.events import EventPage, EventType, Position
from credits_service.domain.webhooks import DeadLetter, Endpoint


class EventRepository(Protocol):
    """The events outbox, read in commit order."""

    async def after(
        self, position: Position, event_types: Sequence[EventType],
        account_ids: Sequence[str], limit: int,
    ) -> EventPage:
        """Up to `limit` events after `position`, of ended transactions, in commit order."""

    async def purge(self, older_than_s: float, limit: int) -> int:
        """Delete up to `limit` of the oldest events while older than `older_than_s`, in
        position order, moving the purge's watermark; returns how many."""


class AlertRepository(Protocol):
    """Balance alerts' rules and expiring-soon notices (migration 0018)."""

    async def sync_plan_rules(self, rules: Mapping[str, LowBalanceRule]) -> int:
        """The plans' rules recorded and given to the accounts that follow them; how many
        accounts changed."""

    async def set_rule(
        self, account_id: str, custom: bool, rule: LowBalanceRule | None
    ) -> BalanceAlert | None:
        """The account's own rule (`custom`), or its plan's; None for no such account."""

    async def warn_expiring(self, within_s: float, limit: int) -> int:
        """CREDITS_EXPIRING for up to `limit` lots expiring within `within_s`, once each."""


class WebhookRepository(Protocol):
    """Webhook endpoints' positions and leases, and their dead letters (migration 0019)."""

    async def start(self, name: str, position: Position) -> None:
        """Record the endpoint at `position` unless it is recorded already."""

    async def claim(self, name: str, owner: str, lease_s: float) -> Position | None:
        """Take or renew the lease: the endpoint's position, or None if another holds it."""

    async def advance(self, name: str, owner: str, position: Position, lease_s: float) -> bool:
        """Move the endpoint to `position`; False if `owner` lost the lease."""

    async def bury(self, endpoint: str, event_id: int, event_type: str, account_id: str,
                   body: bytes, attempts: int, last_error: str) -> None:
        """Keep an event the endpoint did not take."""

    async def dead_letters(self, endpoint: str | None, after_id: int, include_redelivered: bool,
                           limit: int) -> list[DeadLetter]:
        """Dead letters after `after_id`, in id order."""

    async def dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        """One dead letter, or None."""

    async def redelivered(self, dead_letter_id: int, error: str | None) -> DeadLetter | None:
        """Record a redelivery (None `error`: delivered); None if redelivered meanwhile."""


class WebhookSender(Protocol):
    """Delivers one event's body to an endpoint, signed; DeliveryFailed if it is not taken."""

    async def send(self, endpoint: Endpoint, body: bytes, event_id: int,
                   event_type: str) -> None: ...


class EventSignals(Protocol):
    """Wake-ups for streams that have read every event: a notification per committed
    transaction that wrote events (the highest transaction id notified), or a poll interval."""

    @property
    def latest_xid(self) -> int:
        """The highest transaction id notified so far (0: none)."""

    async def wait_beyond(self, xid: int, timeout_s: float) -> None:
        """Return when a transaction above `xid` is notified, or after `timeout_s`."""
