"""Request hashing and the stored form of idempotent responses.

The hash covers the method and exactly what the caller sent (never derived values such as the
default TTL or the time), so a retry with the same request always matches. Stored responses are
JSON text and decode back to the same result dataclasses, or to the same DomainError for a
decline. A hold (the hot path) is stored as one array of its fields in a fixed order, a third
of the size of the same fields by name; holds stored by name before still decode.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import orjson

from credits_service.domain import errors
from credits_service.domain.model import (
    BalanceSnapshot,
    EntryType,
    GrantResult,
    GrantType,
    LedgerEntry,
    Lot,
    LotDraw,
    Reservation,
    ReservationStatus,
    ReserveCommand,
    ReserveResult,
)

Outcome = GrantResult | ReserveResult | errors.DomainError


# json.dumps(value, sort_keys=True, separators=(",", ":")), without building an encoder per call
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
_SCALARS = frozenset({str, int, bool, type(None)})


def request_hash(method: str, command: Any) -> bytes:
    """SHA-256 of the method and the command's fields, in a canonical JSON form: the bytes of
    json.dumps(..., sort_keys=True, separators=(",", ":")), as ever (stored keys keep
    matching). orjson writes the same bytes about 3 x faster for any ASCII text but DEL (which
    json escapes and orjson does not; every other ASCII character both write alike, escapes
    included). So: orjson's bytes when they are ASCII without DEL, else json's, also for any
    value orjson refuses (an integer beyond 64 bits)."""
    if type(command) is ReserveCommand:  # the hot path: _plain's result, built directly
        request: Any = {
            "account_id": command.account_id,
            "amount": command.amount,
            "idempotency_key": command.idempotency_key,
            "ttl_ms": command.ttl_ms,
            "metadata": {str(k): v for k, v in command.metadata.items()},
        }
    else:
        request = _plain(command)
    plain = {"method": method, "request": request}
    try:
        canonical = orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError
        canonical = b"\x7f"
    if not canonical.isascii() or b"\x7f" in canonical:
        canonical = _CANONICAL.encode(plain).encode()
    return hashlib.sha256(canonical).digest()


@functools.cache
def _fields_of(cls: type) -> tuple[tuple[str, bool], ...] | None:
    """(name, omitted when None) of a dataclass's fields; None for any other type."""
    if not is_dataclass(cls):
        return None
    return tuple((f.name, bool(f.metadata.get("hash_omit_none"))) for f in fields(cls))


def _plain(value: Any) -> Any:
    if type(value) in _SCALARS:  # most fields: no lookups
        return value
    described = _fields_of(type(value))
    if described is not None:
        return {
            name: _plain(field_value)
            for name, omit_none in described
            if not ((field_value := getattr(value, name)) is None and omit_none)
        }
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, str | int) or value is None:
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):  # iteration order varies between processes
        return sorted((_plain(v) for v in value), key=json.dumps)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def encode(outcome: Outcome) -> str:
    """The stored form of an outcome: JSON text."""
    if isinstance(outcome, errors.DomainError):
        stored: dict[str, Any] = {
            "error": {
                "reason": outcome.reason,
                "message": outcome.message,
                "metadata": outcome.metadata,
            }
        }
    elif isinstance(outcome, ReserveResult):
        stored = {_HOLD: _hold_fields(outcome)}
    else:
        stored = {"grant": _plain(outcome)}
    return orjson.dumps(stored, default=_as_dict).decode()


# A ReserveResult as one array (see _hold_fields). Every byte of a stored response is written
# to the heap and the WAL once per item: by name, a hold took 542 bytes, and batches of holds
# ran about 10 % slower (bench/README.md).
_HOLD = "hold"


def _hold_fields(result: ReserveResult) -> list[Any]:
    """The fields of a ReserveResult in a fixed order; orjson writes the enum by value and the
    datetimes in ISO 8601. The balance's account, the hold's own, is written as null."""
    r, b = result.reservation, result.balance
    return [r.reservation_id, r.account_id, r.amount, r.status, r.committed_amount,
            r.create_time, r.expire_time, r.finish_time, r.metadata,
            [[d.lot_id, d.held, d.consumed] for d in r.draws], r.release_reason,
            None if b.account_id == r.account_id else b.account_id, b.balance, b.reserved,
            b.active_reservation_count, b.lifetime_granted, b.lifetime_used, b.lifetime_expired]


def _hold(values: list[Any]) -> ReserveResult:
    (reservation_id, account_id, amount, status, committed_amount, create_time, expire_time,
     finish_time, metadata, draws, release_reason, balance_account_id, balance, reserved,
     active_reservation_count, lifetime_granted, lifetime_used, lifetime_expired) = values
    return ReserveResult(
        reservation=Reservation(
            reservation_id=reservation_id, account_id=account_id, amount=amount,
            status=ReservationStatus(status), committed_amount=committed_amount,
            create_time=_time(create_time), expire_time=_time(expire_time),
            finish_time=_time(finish_time), metadata=metadata,
            draws=tuple(LotDraw(*draw) for draw in draws), release_reason=release_reason),
        balance=BalanceSnapshot(
            account_id=balance_account_id or account_id, balance=balance, reserved=reserved,
            active_reservation_count=active_reservation_count,
            lifetime_granted=lifetime_granted, lifetime_used=lifetime_used,
            lifetime_expired=lifetime_expired),
    )


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):  # a read-only mapping (metadata): orjson writes only dicts
        return dict(value)
    raise TypeError(f"cannot store {type(value).__name__}")


def decode(text: str) -> Outcome:
    stored = orjson.loads(text)
    if _HOLD in stored:
        return _hold(stored[_HOLD])
    if "error" in stored:
        error = stored["error"]
        cls = errors.REPLAYABLE_ERRORS[error["reason"]]
        return cls.restore(error["message"], error["metadata"])
    if "grant" in stored:
        data = stored["grant"]
        lot = data.get("lot")  # absent from responses stored before lots existed
        return GrantResult(
            entry=_entry(data["entry"]),
            balance=BalanceSnapshot(**data["balance"]),
            lot=_lot(lot) if lot else None,
        )
    data = stored["reserve"]  # a hold stored by name, before _HOLD
    return ReserveResult(
        reservation=_reservation(data["reservation"]), balance=BalanceSnapshot(**data["balance"])
    )


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _entry(data: dict[str, Any]) -> LedgerEntry:
    return LedgerEntry(
        **{
            **data,
            "entry_type": EntryType(data["entry_type"]),
            "grant_type": GrantType(data["grant_type"]) if data["grant_type"] else None,
            "create_time": _time(data["create_time"]),
        }
    )


def _lot(data: dict[str, Any]) -> Lot:
    return Lot(
        **{
            **data,
            "source_type": GrantType(data["source_type"]) if data["source_type"] else None,
            "expire_time": _time(data["expire_time"]),
            "create_time": _time(data["create_time"]),
        }
    )


def _reservation(data: dict[str, Any]) -> Reservation:
    return Reservation(
        **{
            **data,
            "draws": tuple(LotDraw(**draw) for draw in data.get("draws", ())),
            "status": ReservationStatus(data["status"]),
            "create_time": _time(data["create_time"]),
            "expire_time": _time(data["expire_time"]),
            "finish_time": _time(data["finish_time"]),
        }
    )
