"""The stored form of keyed calls' outcomes: JSON text that decodes back to the same result
dataclasses, or to the same decline.

A reservation (the hot path) is stored as one array of its fields in a fixed order, a third
of the size of the same fields by name; reservations stored by name before still decode.
Stored texts outlive versions of the service: keys and their order never change, and a lot's
grant type keeps the key `source_type` it was first stored under.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from datetime import datetime
from enum import Enum
from functools import cache
from typing import Any

import orjson

from credits_service.domain import errors
from credits_service.domain.commands import (
    AdjustResult,
    GrantResult,
    RefundResult,
    ReserveResult,
    SubscriptionResult,
    TransferResult,
)
from credits_service.domain.model import (
    BalanceSnapshot,
    EntryType,
    GrantType,
    LedgerEntry,
    Lot,
    LotDraw,
    Reservation,
    ReservationStatus,
)
from credits_service.domain.rates import HeldPrice, Price, Rounding
from credits_service.domain.subscriptions import Allocation, Subscription, SubscriptionStatus

Outcome = (GrantResult | ReserveResult | AdjustResult | TransferResult | RefundResult
           | SubscriptionResult | errors.Declined)

_SCALARS = frozenset({str, int, bool, type(None)})
# A ReserveResult as one array (see _reservation_fields). Every byte of a stored response is
# written to the heap and the WAL once per item: stored by name, a reservation took more than
# twice the bytes, and batches ran slower for it (bench/README.md).
_RESERVATION = "hold"  # its key since it was first stored (a former word for a reservation)
# The key a lot's grant type was first stored under
_LOT_GRANT_TYPE = "source_type"


def encode(outcome: Outcome) -> str:
    """The stored form of an outcome: JSON text."""
    if isinstance(outcome, errors.Declined):
        stored: dict[str, Any] = {
            "error": {
                "reason": outcome.reason,
                "message": outcome.message,
                "metadata": outcome.metadata,
            }
        }
    elif isinstance(outcome, ReserveResult):
        stored = {_RESERVATION: _reservation_fields(outcome)}
    elif isinstance(outcome, SubscriptionResult):
        stored = {"subscription": _subscription_result_fields(outcome)}
    else:
        result = plain(outcome)
        if result.get("lot") is not None:
            result["lot"][_LOT_GRANT_TYPE] = result["lot"].pop("grant_type")
        stored = {_KIND_OF[type(outcome)]: result}
    return orjson.dumps(stored, default=_as_dict).decode()


# The key each other result is stored under, by name
_KIND_OF: dict[type, str] = {
    GrantResult: "grant", AdjustResult: "adjust", TransferResult: "transfer",
    RefundResult: "refund",
}


def decode(text: str) -> Outcome:
    stored = orjson.loads(text)
    if _RESERVATION in stored:
        return _reserve_result(stored[_RESERVATION])
    if "error" in stored:
        error = stored["error"]
        cls = errors.REPLAYABLE[error["reason"]]
        return cls.restore(error["message"], error["metadata"])
    if "subscription" in stored:
        return _subscription_result(stored["subscription"])
    if "refund" in stored:
        data = stored["refund"]
        return RefundResult(
            entries=tuple(_entry(entry) for entry in data["entries"]),
            balance=BalanceSnapshot(**data["balance"]),
            reservation=_reservation(data["reservation"]),
            lot=_lot(data["lot"]) if data["lot"] else None,
        )
    if "transfer" in stored:
        data = stored["transfer"]
        return TransferResult(
            transfer_id=data["transfer_id"],
            from_entries=tuple(_entry(entry) for entry in data["from_entries"]),
            to_entries=tuple(_entry(entry) for entry in data["to_entries"]),
            from_balance=BalanceSnapshot(**data["from_balance"]),
            to_balance=BalanceSnapshot(**data["to_balance"]),
        )
    if "adjust" in stored:
        data = stored["adjust"]
        return AdjustResult(
            entries=tuple(_entry(entry) for entry in data["entries"]),
            balance=BalanceSnapshot(**data["balance"]),
            lot=_lot(data["lot"]) if data["lot"] else None,
        )
    if "grant" in stored:
        data = stored["grant"]
        lot = data.get("lot")  # absent from responses stored before lots existed
        return GrantResult(
            entry=_entry(data["entry"]),
            balance=BalanceSnapshot(**data["balance"]),
            lot=_lot(lot) if lot else None,
        )
    data = stored["reserve"]  # a reservation stored by name, before _RESERVATION
    return ReserveResult(
        reservation=_reservation(data["reservation"]),
        balance=BalanceSnapshot(**data["balance"]),
    )


_KEPT = object()  # a field left out of plain() while it is this: none


@cache
def fields_of(cls: type) -> tuple[tuple[str, object], ...] | None:
    """(name, the value it is left out while it is) of a dataclass's fields: None for those
    marked hash_omit_none, False for those marked hash_omit_false, else _KEPT; None for any
    other type."""
    if not is_dataclass(cls):
        return None
    return tuple(
        (f.name, None if f.metadata.get("hash_omit_none")
         else False if f.metadata.get("hash_omit_false") else _KEPT)
        for f in fields(cls))


def plain(value: Any) -> Any:
    """`value` as JSON-ready dicts, lists and scalars: dataclasses by field name (fields
    marked hash_omit_none left out while None, hash_omit_false while False: fields added
    later, so that stored keys' hashes still match), enums by value, times in ISO 8601, sets
    sorted."""
    if type(value) in _SCALARS:  # most fields: no lookups
        return value
    described = fields_of(type(value))
    if described is not None:
        return {
            name: plain(field_value)
            for name, omitted in described
            if (field_value := getattr(value, name)) is not omitted
        }
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, str | int) or value is None:
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):  # iteration order varies between processes
        return sorted((plain(v) for v in value), key=json.dumps)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _reservation_fields(result: ReserveResult) -> list[Any]:
    """The fields of a ReserveResult in a fixed order; orjson writes the enum by value and the
    datetimes in ISO 8601. The balance's account, the reservation's own, is written as null."""
    r, b = result.reservation, result.balance
    return [r.reservation_id, r.account_id, r.amount, r.status, r.committed_amount,
            r.create_time, r.expire_time, r.finish_time, r.metadata,
            [[d.lot_id, d.held, d.consumed] for d in r.draws], r.release_reason,
            None if b.account_id == r.account_id else b.account_id, b.balance, b.reserved,
            b.active_reservation_count, b.lifetime_granted, b.lifetime_used, b.lifetime_expired,
            *_trimmed([r.refunded_amount, b.credit_limit, b.debt,
                       r.price.stored() if r.price is not None else None,
                       r.member_account_id])]


def _trimmed(optional: list[Any]) -> list[Any]:
    """Optional trailing fields without their trailing zeros and nulls (most results have
    none)."""
    while optional and not optional[-1]:
        optional.pop()
    return optional


def _reserve_result(values: list[Any]) -> ReserveResult:
    (reservation_id, account_id, amount, status, committed_amount, create_time, expire_time,
     finish_time, metadata, draws, release_reason, balance_account_id, balance, reserved,
     active_reservation_count, lifetime_granted, lifetime_used, lifetime_expired,
     *optional) = values
    # written only up to the last that is not 0
    refunded_amount, credit_limit, debt, price, member_account_id = [
        *optional, *[0, 0, 0, None, None][len(optional):]]
    return ReserveResult(
        reservation=Reservation(
            reservation_id=reservation_id, account_id=account_id, amount=amount,
            status=ReservationStatus(status), committed_amount=committed_amount,
            create_time=_time(create_time), expire_time=_time(expire_time),
            finish_time=_time(finish_time), metadata=metadata,
            draws=tuple(LotDraw(*draw) for draw in draws), release_reason=release_reason,
            refunded_amount=refunded_amount,
            price=HeldPrice.restore(price) if price is not None else None,
            member_account_id=member_account_id),
        balance=BalanceSnapshot(
            account_id=balance_account_id or account_id, balance=balance, reserved=reserved,
            active_reservation_count=active_reservation_count,
            lifetime_granted=lifetime_granted, lifetime_used=lifetime_used,
            lifetime_expired=lifetime_expired, credit_limit=credit_limit, debt=debt),
    )


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):  # a read-only mapping (metadata): orjson writes only dicts
        return dict(value)
    raise TypeError(f"cannot store {type(value).__name__}")


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
    grant_type = data.pop(_LOT_GRANT_TYPE)
    return Lot(
        **{
            **data,
            "grant_type": GrantType(grant_type) if grant_type else None,
            "expire_time": _time(data["expire_time"]),
            "create_time": _time(data["create_time"]),
        }
    )


def _reservation(data: dict[str, Any]) -> Reservation:
    price = data.get("price")  # plain() of a HeldPrice; absent from results stored before
    return Reservation(
        **{
            **data,
            "price": HeldPrice(**{**price, "price": Price(**{
                **price["price"], "rounding": Rounding(price["price"]["rounding"])})})
            if price else None,
            "draws": tuple(LotDraw(**draw) for draw in data.get("draws", ())),
            "status": ReservationStatus(data["status"]),
            "create_time": _time(data["create_time"]),
            "expire_time": _time(data["expire_time"]),
            "finish_time": _time(data["finish_time"]),
        }
    )


def _subscription_result_fields(result: SubscriptionResult) -> dict[str, Any]:
    s = result.subscription
    subscription = plain(s)
    subscription["allocation"] = s.allocation.stored()
    if s.next_allocation is not None:
        subscription["next_allocation"] = s.next_allocation.stored()
    return {"subscription": subscription, "changed": result.changed,
            "entries": [plain(entry) for entry in result.entries],
            "balance": plain(result.balance)}


def _subscription_result(data: dict[str, Any]) -> SubscriptionResult:
    s = data["subscription"]
    return SubscriptionResult(
        subscription=Subscription(**{
            **s,
            "allocation": Allocation.restore(s["allocation"]),
            "next_allocation": (Allocation.restore(s["next_allocation"])
                                if s["next_allocation"] else None),
            "anchor": _time(s["anchor"]),
            "status": SubscriptionStatus(s["status"]),
            "cancel_time": _time(s["cancel_time"]),
            "create_time": _time(s["create_time"]),
        }),
        changed=data["changed"],
        entries=tuple(_entry(entry) for entry in data["entries"]),
        balance=BalanceSnapshot(**data["balance"]),
    )
