"""Protobuf messages to the client's dataclasses (types.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from credits.v1 import credits_pb2 as pb
from credits_client import types

_STATUS = {pb.RESERVATION_STATUS_ACTIVE: "ACTIVE", pb.RESERVATION_STATUS_COMMITTED: "COMMITTED",
           pb.RESERVATION_STATUS_RELEASED: "RELEASED",
           pb.RESERVATION_STATUS_EXPIRED: "EXPIRED"}
_ACCOUNT_STATUS = {pb.ACCOUNT_STATUS_ACTIVE: "ACTIVE", pb.ACCOUNT_STATUS_FROZEN: "FROZEN",
                   pb.ACCOUNT_STATUS_CLOSED: "CLOSED"}


def time_of(message: Any) -> datetime | None:
    if not message.seconds and not message.nanos:
        return None
    return message.ToDatetime(tzinfo=UTC)


def balance(message: pb.Balance) -> types.Balance:
    return types.Balance(
        message.account_id, message.balance, message.reserved, message.available,
        message.active_reservation_count, message.lifetime_granted, message.lifetime_used,
        message.lifetime_expired, message.credit_limit, message.unlimited, message.debt)


def reservation(message: pb.Reservation) -> types.Reservation:
    return types.Reservation(
        message.reservation_id, message.account_id, message.amount,
        _STATUS.get(message.status, "UNSPECIFIED"), message.committed_amount,
        time_of(message.create_time), time_of(message.expire_time), dict(message.metadata),
        message.price.feature, message.price.units)


def account(message: pb.Account) -> types.Account:
    return types.Account(message.account_id, message.plan,
                         _ACCOUNT_STATUS.get(message.status, "UNSPECIFIED"),
                         time_of(message.create_time))


def hold(message: Any) -> types.HoldResult:
    return types.HoldResult(
        reservation(message.reservation),
        balance(message.balance)
        if "balance" in message.DESCRIPTOR.fields_by_name and message.HasField("balance")
        else None)
