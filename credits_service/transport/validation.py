"""Validation of requests at the edge, turning protobuf requests into domain commands.

Every field is checked and every violation reported at once (google.rpc.BadRequest); nothing
reaches the service layer unless the whole request is valid.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from credits.v1 import credits_pb2 as pb
from credits_service.domain.model import (
    AMOUNT_MAX,
    AMOUNT_MIN,
    PRIORITY_MAX,
    PRIORITY_MIN,
    BalanceQuery,
    CommitCommand,
    ExtendCommand,
    GrantCommand,
    HistoryQuery,
    ReleaseCommand,
    ReservationsQuery,
    ReserveCommand,
)
from credits_service.transport.mapping import (
    ENTRY_TYPE_FROM_PROTO,
    GRANT_TYPE_FROM_PROTO,
    RESERVATION_STATUS_FROM_PROTO,
)

ID_PATTERN = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
METADATA_KEY_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
# C0 controls other than tab, newline and carriage return, and DEL (Postgres rejects NUL).
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
METADATA_PAIRS_MAX = 16
METADATA_VALUE_LENGTH_MAX = 256
REASON_LENGTH_MAX = 256
PAGE_TOKEN_LENGTH_MAX = 512
TTL_MIN_MS = 1000
EXPIRING_WITHIN_MAX_MS = 3650 * 86_400_000


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(Exception):
    """The request breaks one or more field rules; nothing was done."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = violations


class _Checker:
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

    def done(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations)


def _seconds(ms: int) -> str:
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms / 1000}s"


@dataclass(frozen=True, slots=True)
class RequestLimits:
    hold_ttl_max_ms: int
    page_size_max: int
    batch_size_max: int = 100


class Validator:
    """Turns each request into its command or raises InvalidArgument."""

    def __init__(self, limits: RequestLimits) -> None:
        self._limits = limits

    def grant(self, request: pb.GrantRequest) -> GrantCommand:
        check = _Checker()
        command = GrantCommand(
            account_id=check.identifier("account_id", request.account_id),
            amount=check.amount("amount", request.amount),
            grant_type=GRANT_TYPE_FROM_PROTO.get(request.type),  # type: ignore[arg-type]
            idempotency_key=check.identifier("idempotency_key", request.idempotency_key),
            reason=check.text("reason", request.reason, REASON_LENGTH_MAX),
            metadata=check.metadata("metadata", request.metadata),
            expire_time=check.timestamp("expire_time", request.expire_time)
            if request.HasField("expire_time") else None,
            priority=request.priority if request.HasField("priority") else None,
        )
        if command.priority is not None and not PRIORITY_MIN <= command.priority <= PRIORITY_MAX:
            check.fail("priority", f"must be between {PRIORITY_MIN} and {PRIORITY_MAX}")
        if command.grant_type is None:
            check.fail("type", "must be one of the GrantType values other than UNSPECIFIED")
        check.done()
        return command

    def check_and_reserve(self, request: pb.CheckAndReserveRequest) -> ReserveCommand:
        check = _Checker()
        ttl_ms = None
        if request.HasField("ttl"):
            ttl_ms = check.duration_ms("ttl", request.ttl, TTL_MIN_MS,
                                       self._limits.hold_ttl_max_ms)
        command = ReserveCommand(
            account_id=check.identifier("account_id", request.account_id),
            amount=check.amount("amount", request.amount),
            idempotency_key=check.identifier("idempotency_key", request.idempotency_key),
            ttl_ms=ttl_ms,
            metadata=check.metadata("metadata", request.metadata),
        )
        check.done()
        return command

    def batch(self, items: Sequence[object]) -> None:
        """A batch carries 1..batch_size_max items; each item is validated on its own."""
        if not 1 <= len(items) <= self._limits.batch_size_max:
            raise InvalidArgument([FieldViolation(
                "items", f"must hold between 1 and {self._limits.batch_size_max} items")])

    def commit(self, request: pb.CommitRequest) -> CommitCommand:
        check = _Checker()
        command = CommitCommand(
            reservation_id=check.reservation_id("reservation_id", request.reservation_id),
            amount=check.amount("amount", request.amount) if request.HasField("amount") else None,
            metadata=check.metadata("metadata", request.metadata),
        )
        check.done()
        return command

    def release(self, request: pb.ReleaseRequest) -> ReleaseCommand:
        check = _Checker()
        command = ReleaseCommand(
            reservation_id=check.reservation_id("reservation_id", request.reservation_id),
            reason=check.text("reason", request.reason, REASON_LENGTH_MAX),
        )
        check.done()
        return command

    def extend(self, request: pb.ExtendReservationRequest) -> ExtendCommand:
        check = _Checker()
        ttl_ms = 0
        if request.HasField("ttl"):
            ttl_ms = check.duration_ms("ttl", request.ttl, TTL_MIN_MS,
                                       self._limits.hold_ttl_max_ms)
        else:
            check.fail("ttl", "is required")
        command = ExtendCommand(
            reservation_id=check.reservation_id("reservation_id", request.reservation_id),
            ttl_ms=ttl_ms,
        )
        check.done()
        return command

    def get_balance(self, request: pb.GetBalanceRequest) -> BalanceQuery:
        check = _Checker()
        query = BalanceQuery(
            account_id=check.identifier("account_id", request.account_id),
            expiring_within_ms=check.duration_ms(
                "expiring_within", request.expiring_within, 0, EXPIRING_WITHIN_MAX_MS
            ) if request.HasField("expiring_within") else None,
        )
        check.done()
        return query

    def list_reservations(self, request: pb.ListReservationsRequest) -> ReservationsQuery:
        check = _Checker()
        self._page(check, request.page_size, request.page_token)
        statuses = set()
        for value in request.statuses:
            status = RESERVATION_STATUS_FROM_PROTO.get(value)
            if status is None:
                check.fail("statuses", "must hold ReservationStatus values other than "
                                       "UNSPECIFIED")
                break
            statuses.add(status)
        query = ReservationsQuery(
            account_id=check.identifier("account_id", request.account_id),
            page_size=max(request.page_size, 0),
            page_token=request.page_token,
            statuses=frozenset(statuses),
        )
        check.done()
        return query

    @staticmethod
    def _page(check: _Checker, page_size: int, page_token: str) -> None:
        if page_size < 0:
            check.fail("page_size", "must not be negative")
        if len(page_token) > PAGE_TOKEN_LENGTH_MAX:
            check.fail("page_token", f"must be at most {PAGE_TOKEN_LENGTH_MAX} characters")

    def history(self, request: pb.HistoryRequest) -> HistoryQuery:
        check = _Checker()
        self._page(check, request.page_size, request.page_token)
        entry_types = set()
        for value in request.types:
            entry_type = ENTRY_TYPE_FROM_PROTO.get(value)
            if entry_type is None:
                check.fail("types", "must hold EntryType values other than UNSPECIFIED")
                break
            entry_types.add(entry_type)
        start = check.timestamp("start_time", request.start_time) if request.HasField(
            "start_time") else None
        end = check.timestamp("end_time", request.end_time) if request.HasField(
            "end_time") else None
        if start is not None and end is not None and start >= end:
            check.fail("end_time", "must be after start_time")
        query = HistoryQuery(
            account_id=check.identifier("account_id", request.account_id),
            page_size=max(request.page_size, 0),
            page_token=request.page_token,
            entry_types=frozenset(entry_types),
            start_time=start,
            end_time=end,
        )
        check.done()
        return query
