"""Protobuf messages to the client's dataclasses (types.py)."""

from __future__ import annotations

import json
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


def enum_name(enum: Any, value: int, prefix: str) -> str:
    name = enum.Name(value) if value in enum.values() else ""
    return name.removeprefix(prefix) if name and not name.endswith("UNSPECIFIED") else ""


def entry(message: pb.LedgerEntry) -> types.LedgerEntry:
    return types.LedgerEntry(
        message.entry_id, message.account_id,
        enum_name(pb.EntryType, message.type, "ENTRY_TYPE_"), message.amount,
        message.balance_after, time_of(message.create_time),
        enum_name(pb.GrantType, message.grant_type, "GRANT_TYPE_"), message.reservation_id,
        message.reason, dict(message.metadata), message.feature, message.units)


def event(message: pb.Event) -> types.Event:
    return types.Event(
        message.event_id, message.cursor,
        enum_name(pb.EventType, message.event_type, "EVENT_TYPE_"), message.account_id,
        time_of(message.create_time), json.loads(message.data_json or "{}"))
