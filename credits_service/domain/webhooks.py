"""Webhooks (docs/webhooks.md): events delivered to configured URLs, signed, retried, and
dead-lettered when an endpoint keeps failing.

An endpoint is read from the webhooks file: a name, a URL, a secret, and which events it
wants. Each delivery is a POST of the event as JSON with a `Credits-Signature` header,
`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the secret>`, which a receiver
checks (and rejects when `t` is too old, against replays).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from credits_service.domain.events import Event, EventType
from credits_service.domain.model import IDENTIFIER_PATTERN

SIGNATURE_HEADER = "Credits-Signature"
ENDPOINTS_MAX = 32
ENDPOINT_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SECRET_LENGTH_MIN = 16
_URL_LENGTH_MAX = 2048
_KEYS = {"name", "url", "secret", "event_types", "account_ids"}


class WebhooksError(ValueError):
    """The webhooks file is not valid; the message names the key and the rule."""


class DeliveryFailed(Exception):
    """One delivery attempt failed: the endpoint's answer or the transport's error."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    url: str
    secret: str
    event_types: tuple[EventType, ...] = ()  # none: all
    account_ids: tuple[str, ...] = ()  # none: all

    def __repr__(self) -> str:  # never the secret
        return f"Endpoint({self.name!r}, {self.url!r})"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event an endpoint did not take within the retry time, kept to be redelivered."""

    dead_letter_id: int
    endpoint: str
    event_id: int
    event_type: str
    account_id: str
    body: bytes
    attempts: int
    last_error: str
    status: str  # DEAD, or REDELIVERED
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    dead_letters: tuple[DeadLetter, ...]
    next_page_token: str


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The Credits-Signature header's value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def wants(endpoint: Endpoint, event: Event) -> bool:
    return ((not endpoint.event_types or event.event_type in endpoint.event_types)
            and (not endpoint.account_ids or event.account_id in endpoint.account_ids))


def read_webhooks(document: Mapping[str, Any]) -> tuple[Endpoint, ...]:
    """The endpoints of a webhooks file (`[[endpoints]]` tables), or WebhooksError."""
    unknown = sorted(set(document) - {"endpoints"})
    if unknown:
        raise WebhooksError(f"{unknown[0]}: unknown key (allowed: endpoints)")
    tables = document.get("endpoints", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise WebhooksError("endpoints: must be an array of tables ([[endpoints]])")
    if len(tables) > ENDPOINTS_MAX:
        raise WebhooksError(f"endpoints: at most {ENDPOINTS_MAX}")
    endpoints = [_endpoint(i, table) for i, table in enumerate(tables)]
    names = [e.name for e in endpoints]
    for name in names:
        if names.count(name) > 1:
            raise WebhooksError(f"endpoints: the name {name!r} is used twice")
    return tuple(endpoints)


def _endpoint(index: int, table: Mapping[str, Any]) -> Endpoint:
    where = f"endpoints[{index}]"
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise WebhooksError(f"{where}.{unknown[0]}: unknown key (allowed: "
                            f"{', '.join(sorted(_KEYS))})")
    name = table.get("name")
    if not isinstance(name, str) or not ENDPOINT_NAME_PATTERN.fullmatch(name):
        raise WebhooksError(f"{where}.name: required, 1-64 characters from A-Z a-z 0-9 ._-")
    url = table.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.netloc
            or len(url) > _URL_LENGTH_MAX):
        raise WebhooksError(f"{where}.url: required, an http:// or https:// URL")
    secret = table.get("secret")
    if not isinstance(secret, str) or len(secret) < _SECRET_LENGTH_MIN:
        raise WebhooksError(f"{where}.secret: required, at least {_SECRET_LENGTH_MIN} "
                            "characters")
    return Endpoint(name, url, secret, _event_types(where, table.get("event_types", [])),
                    _accounts(where, table.get("account_ids", [])))


def _event_types(where: str, values: Any) -> tuple[EventType, ...]:
    if not isinstance(values, list):
        raise WebhooksError(f"{where}.event_types: must be a list of event type names")
    for value in values:
        if value not in EventType.__members__:
            raise WebhooksError(f"{where}.event_types: {value!r} is not one of "
                                f"{', '.join(EventType.__members__)}")
    return tuple(dict.fromkeys(EventType[v] for v in values))


def _accounts(where: str, values: Any) -> tuple[str, ...]:
    if not isinstance(values, list) or not all(
            isinstance(v, str) and IDENTIFIER_PATTERN.fullmatch(v) for v in values):
        raise WebhooksError(f"{where}.account_ids: must be a list of account ids")
    return tuple(dict.fromkeys(values))


def body_of(event: Event) -> Sequence[tuple[str, Any]]:
    """The fields of an event's delivery body, in order."""
    return (("event_id", event.event_id), ("cursor", event.position.cursor()),
            ("event_type", event.event_type.value), ("account_id", event.account_id),
            ("create_time", event.create_time.isoformat()), ("data", event.data))
