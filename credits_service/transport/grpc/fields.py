"""Field rules shared by every API family: each request is checked whole, every violation
reported at once (google.rpc.BadRequest), and nothing reaches the service layer unless the
whole request is valid."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from credits_service.domain.errors import FieldViolation, InvalidArgument
from credits_service.domain.model import AMOUNT_MAX, AMOUNT_MIN, IDENTIFIER_PATTERN
from credits_service.domain.rates import FEATURE_NAME_PATTERN, UNITS_MAX

ID_PATTERN = IDENTIFIER_PATTERN
METADATA_KEY_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
# C0 controls other than tab, newline and carriage return, and DEL (Postgres rejects NUL).
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
METADATA_PAIRS_MAX = 16
METADATA_VALUE_LENGTH_MAX = 256
REASON_LENGTH_MAX = 256
PAGE_TOKEN_LENGTH_MAX = 512
TTL_MIN_MS = 1000


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The bounds of requests that come from the settings."""

    reservation_ttl_max_ms: int
    page_size_max: int
    batch_size_max: int = 100


class FieldChecker:
    """Collects the violations of one request; done() raises them all at once."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def fail(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(field, description))

    def identifier(self, field: str, value: str) -> str:
        if not ID_PATTERN.fullmatch(value):
            self.fail(field, "must be 1-128 characters from A-Z a-z 0-9 . _ : @ -")
        return value

    def amount(self, field: str, value: int) -> int:
        if not AMOUNT_MIN <= value <= AMOUNT_MAX:
            self.fail(field, f"must be between {AMOUNT_MIN} and {AMOUNT_MAX}")
        return value

    def text(self, field: str, value: str, length_max: int) -> str:
        if len(value) > length_max:
            self.fail(field, f"must be at most {length_max} characters")
        elif _CONTROL_CHARACTERS.search(value):
            self.fail(field, "must not contain control characters")
        return value

    def metadata(self, field: str, value: Mapping[str, str]) -> dict[str, str]:
        if not value:  # most calls carry none: skip the map's (slow) items view
            return {}
        if len(value) > METADATA_PAIRS_MAX:
            self.fail(field, f"must have at most {METADATA_PAIRS_MAX} pairs")
            return {}
        for key, item in value.items():
            if not METADATA_KEY_PATTERN.fullmatch(key):
                self.fail(f"{field}[{key[:64]!r}]",
                          "key must be 1-64 characters from A-Z a-z 0-9 . _ -")
            self.text(f"{field}[{key[:64]!r}]", item, METADATA_VALUE_LENGTH_MAX)
        return dict(value)

    def reservation_id(self, field: str, value: str) -> str:
        try:
            parsed = uuid.UUID(value) if len(value) == 36 else None
        except ValueError:
            parsed = None
        if parsed is None:
            self.fail(field, "must be a reservation id (a UUID such as "
                             "'0f8fad5b-d9cb-469f-a165-70867728950e')")
            return value
        return str(parsed)

    def duration_ms(self, field: str, value: Duration, low_ms: int, high_ms: int) -> int:
        """A Duration in whole milliseconds, between `low_ms` and `high_ms`."""
        if (value.seconds < 0 or value.nanos < 0 or value.nanos >= 1_000_000_000
                or not low_ms <= value.seconds * 1000 + value.nanos // 1_000_000 <= high_ms):
            self.fail(field, f"must be between {_seconds(low_ms)} and {_seconds(high_ms)}")
        return value.seconds * 1000 + value.nanos // 1_000_000

    def timestamp(self, field: str, value: Timestamp) -> datetime | None:
        try:
            return value.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            self.fail(field, "must be a valid timestamp between years 1 and 9999")
            return None

    def page(self, page_size: int, page_token: str) -> None:
        if page_size < 0:
            self.fail("page_size", "must not be negative")
        if len(page_token) > PAGE_TOKEN_LENGTH_MAX:
            self.fail("page_token", f"must be at most {PAGE_TOKEN_LENGTH_MAX} characters")

    def done(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations)


def _seconds(ms: int) -> str:
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms / 1000}s"


def feature_name(check: FieldChecker, field: str, value: str) -> str:
    if not FEATURE_NAME_PATTERN.fullmatch(value):
        check.fail(field, "is required: a feature of the rate card, 1-64 characters from "
                          "A-Z a-z 0-9 and '._-'")
    return value


def units(check: FieldChecker, field: str, value: int) -> int:
    if not 0 <= value <= UNITS_MAX:
        check.fail(field, f"must be between 0 and {UNITS_MAX}")
    return value
