"""Domain values -> protobuf messages shared by every API family, and the enum tables both
ways."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from credits.v1 import credits_pb2 as pb
from credits_service.domain.model import (
    Account,
    AccountStatus,
    BalanceSnapshot,
    EntryType,
    GrantType,
    LedgerEntry,
    Lot,
    Reservation,
    ReservationStatus,
)
from credits_service.domain.rates import HeldPrice, Price, Rounding

GRANT_TYPE_FROM_PROTO: dict[int, GrantType] = {
    pb.GRANT_TYPE_SIGNUP: GrantType.SIGNUP,
    pb.GRANT_TYPE_PURCHASE: GrantType.PURCHASE,
    pb.GRANT_TYPE_PROMO: GrantType.PROMO,
    pb.GRANT_TYPE_REFERRAL: GrantType.REFERRAL,
    pb.GRANT_TYPE_REFUND: GrantType.REFUND,
    pb.GRANT_TYPE_ADMIN_GRANT: GrantType.ADMIN_GRANT,
    pb.GRANT_TYPE_SUBSCRIPTION: GrantType.SUBSCRIPTION,
}
GRANT_TYPE_TO_PROTO = {value: key for key, value in GRANT_TYPE_FROM_PROTO.items()}

ENTRY_TYPE_FROM_PROTO: dict[int, EntryType] = {
    pb.ENTRY_TYPE_GRANT: EntryType.GRANT,
    pb.ENTRY_TYPE_USAGE: EntryType.USAGE,
    pb.ENTRY_TYPE_EXPIRY: EntryType.EXPIRY,
    pb.ENTRY_TYPE_ADJUSTMENT: EntryType.ADJUSTMENT,
    pb.ENTRY_TYPE_TRANSFER_OUT: EntryType.TRANSFER_OUT,
    pb.ENTRY_TYPE_TRANSFER_IN: EntryType.TRANSFER_IN,
    pb.ENTRY_TYPE_REFUND: EntryType.REFUND,
}
ENTRY_TYPE_TO_PROTO = {value: key for key, value in ENTRY_TYPE_FROM_PROTO.items()}

RESERVATION_STATUS_TO_PROTO: dict[ReservationStatus, int] = {
    ReservationStatus.ACTIVE: pb.RESERVATION_STATUS_ACTIVE,
    ReservationStatus.COMMITTED: pb.RESERVATION_STATUS_COMMITTED,
    ReservationStatus.RELEASED: pb.RESERVATION_STATUS_RELEASED,
    ReservationStatus.EXPIRED: pb.RESERVATION_STATUS_EXPIRED,
}
RESERVATION_STATUS_FROM_PROTO = {value: key for key, value in RESERVATION_STATUS_TO_PROTO.items()}

ACCOUNT_STATUS_TO_PROTO: dict[AccountStatus, int] = {
    AccountStatus.ACTIVE: pb.ACCOUNT_STATUS_ACTIVE,
    AccountStatus.FROZEN: pb.ACCOUNT_STATUS_FROZEN,
    AccountStatus.CLOSED: pb.ACCOUNT_STATUS_CLOSED,
}
ACCOUNT_STATUS_FROM_PROTO = {value: key for key, value in ACCOUNT_STATUS_TO_PROTO.items()}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def timestamp(value: datetime) -> Timestamp:
    """As Timestamp.FromDatetime (a naive time is UTC), at a fraction of its cost."""
    return _set_time(Timestamp(), value)



def _set_time(message: Timestamp, value: datetime) -> Timestamp:
    """Set `message` (a field of a message being built: no copy) to timestamp(value)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    seconds, micros = divmod((value - _EPOCH) // _MICROSECOND, 1_000_000)
    message.seconds = seconds
    message.nanos = micros * 1000
    return message


def balance(snapshot: BalanceSnapshot) -> pb.Balance:
    return set_balance(pb.Balance(), snapshot)


def set_balance(message: pb.Balance, snapshot: BalanceSnapshot) -> pb.Balance:
    """Fill an empty Balance (a field of a message being built, so nothing is copied)."""
    message.account_id = snapshot.account_id
    message.balance = snapshot.balance
    message.reserved = snapshot.reserved
    message.available = snapshot.available
    message.active_reservation_count = snapshot.active_reservation_count
    message.lifetime_granted = snapshot.lifetime_granted
    message.lifetime_used = snapshot.lifetime_used
    message.lifetime_expired = snapshot.lifetime_expired
    message.credit_limit = snapshot.credit_limit
    message.unlimited = snapshot.unlimited
    message.debt = snapshot.debt
    return message


# Grant types counted as given for free in LifetimeTotals.granted_free
_FREE_GRANT_TYPES = (GrantType.SIGNUP, GrantType.PROMO, GrantType.REFERRAL, GrantType.ADMIN_GRANT)


def lifetime_totals(balance: BalanceSnapshot, totals: Mapping[str, int]) -> pb.LifetimeTotals:
    """The account's lifetime totals: its entries' credits by kind (model.total_kind)."""
    granted = {grant_type: totals.get("GRANTED_" + grant_type.value, 0)
               for grant_type in GrantType}
    return pb.LifetimeTotals(
        granted_by_type={grant_type_name(t): credits for t, credits in granted.items() if credits},
        purchased=granted[GrantType.PURCHASE],
        granted_free=sum(granted[t] for t in _FREE_GRANT_TYPES),
        refunded=totals.get("REFUNDED", 0) + granted[GrantType.REFUND],
        used=balance.lifetime_used,
        expired=balance.lifetime_expired,
        adjusted_in=totals.get("ADJUSTED_IN", 0),
        adjusted_out=totals.get("ADJUSTED_OUT", 0),
        transferred_in=totals.get("TRANSFERRED_IN", 0),
        transferred_out=totals.get("TRANSFERRED_OUT", 0),
    )


def grant_type_name(grant_type: GrantType) -> str:
    return pb.GrantType.Name(GRANT_TYPE_TO_PROTO[grant_type])


def account(value: Account) -> pb.Account:
    return pb.Account(account_id=value.account_id, plan=value.plan,
                      create_time=timestamp(value.create_time),
                      status=ACCOUNT_STATUS_TO_PROTO[value.status])  # type: ignore[arg-type]


def lot(value: Lot) -> pb.Lot:
    grant_type = GRANT_TYPE_TO_PROTO[value.grant_type] if value.grant_type else 0
    message = pb.Lot(
        lot_id=str(value.lot_id),
        grant_type=grant_type,  # type: ignore[arg-type]
        source_type=grant_type,  # type: ignore[arg-type]  (its former name, deprecated)
        priority=value.priority,
        amount=value.amount,
        remaining=value.remaining,
        held=value.held,
        expired=value.expired,
        grant_entry_id=str(value.grant_entry_id) if value.grant_entry_id else "",
        create_time=timestamp(value.create_time),
    )
    if value.expire_time is not None:
        message.expire_time.CopyFrom(timestamp(value.expire_time))
    return message


def ledger_entry(entry: LedgerEntry) -> pb.LedgerEntry:
    return pb.LedgerEntry(
        entry_id=str(entry.entry_id),
        account_id=entry.account_id,
        type=ENTRY_TYPE_TO_PROTO[entry.entry_type],  # type: ignore[arg-type]
        grant_type=GRANT_TYPE_TO_PROTO[entry.grant_type] if entry.grant_type else 0,  # type: ignore[arg-type]
        amount=entry.amount,
        balance_after=entry.balance_after,
        reservation_id=entry.reservation_id or "",
        reason=entry.reason,
        metadata=dict(entry.metadata),
        actor=entry.actor,
        create_time=timestamp(entry.create_time),
        lot_id=str(entry.lot_id) if entry.lot_id else "",
        transfer_id=entry.transfer_id or "",
        feature=entry.feature or "",
        units=entry.units or 0,
        rate_card_version=entry.rate_card_version or "",
    )


def reservation(value: Reservation) -> pb.Reservation:
    return set_reservation(pb.Reservation(), value)


def set_reservation(message: pb.Reservation, value: Reservation) -> pb.Reservation:
    """Fill an empty Reservation (a field of a message being built, so nothing is copied)."""
    message.reservation_id = value.reservation_id
    message.account_id = value.account_id
    message.amount = value.amount
    message.status = RESERVATION_STATUS_TO_PROTO[value.status]  # type: ignore[assignment]
    if value.committed_amount:
        message.committed_amount = value.committed_amount
    _set_time(message.create_time, value.create_time)
    _set_time(message.expire_time, value.expire_time)
    if value.finish_time is not None:
        _set_time(message.finish_time, value.finish_time)
    if value.metadata:
        message.metadata.update(value.metadata)
    for draw in value.draws:
        message.draws.add(lot_id=str(draw.lot_id), held=draw.held, consumed=draw.consumed or 0)
    if value.release_reason:
        message.release_reason = value.release_reason
    if value.refunded_amount:
        message.refunded_amount = value.refunded_amount
    if value.price is not None:
        message.price.CopyFrom(held_price(value.price))
    if value.member_account_id is not None:
        message.member_account_id = value.member_account_id
    return message


ROUNDING_TO_PROTO = {
    Rounding.UP: pb.ROUNDING_UP,
    Rounding.DOWN: pb.ROUNDING_DOWN,
    Rounding.NEAREST: pb.ROUNDING_NEAREST,
}


def price_message(price: Price) -> pb.Price:
    return pb.Price(cost_per_call=price.cost_per_call,
                    units_per_credit=price.units_per_credit or 0,
                    rounding=ROUNDING_TO_PROTO[price.rounding],
                    minimum_charge=price.minimum_charge)


def held_price(price: HeldPrice) -> pb.HeldPrice:
    return pb.HeldPrice(feature=price.feature, units=price.units, cost=price.cost,
                        rate_card_version=price.version, plan=price.plan,
                        price=price_message(price.price))
