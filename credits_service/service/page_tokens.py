"""Page tokens: opaque keyset positions, signed so that a token this service did not make
is refused before it is read.

A token is the base64url JSON of {"v": 1, "after": position, "f": digest of the filters}, a
dot, and the base64url first 16 bytes of its HMAC-SHA256 under a key every replica shares
(stored in the database, persistence/keys.py). A token made for other filters, or whose
position does not parse, is refused alike: INVALID_PAGE_TOKEN.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any, TypeVar

from credits_service.domain.errors import InvalidPageToken

T = TypeVar("T")
_SIGNATURE_BYTES = 16


class PageTokens:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a page token key has at least 16 bytes")
        self._key = key

    def encode(self, position: Any, filters: str) -> str:
        raw = json.dumps({"v": 1, "after": position, "f": filters}, separators=(",", ":"))
        body = _b64(raw.encode())
        return f"{body}.{self._signature(body)}"

    def decode(self, token: str, filters: str, check: Callable[[Any], T]) -> T:
        """The position in a token this service made for these filters, as `check` parses it;
        any other token raises InvalidPageToken."""
        body, _, signature = token.rpartition(".")
        if not token.isascii() or not hmac.compare_digest(self._signature(body), signature):
            raise InvalidPageToken()
        try:
            data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            if data["v"] != 1 or data["f"] != filters:
                raise ValueError(token)
            return check(data["after"])
        except Exception as exc:  # whatever a bad position raises, it is the token's fault
            raise InvalidPageToken() from exc

    def _signature(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return _b64(digest[:_SIGNATURE_BYTES])


def filters_digest(parts: list[Any]) -> str:
    """A short digest of a query's filters, so a token is refused with other filters."""
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
