"""The columns each repository reads, and the domain values it builds from a row.

Rows are asyncpg Records read by column name, never by position.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from credits_service.domain.model import (
    Account,
    AccountStatus,
    BalanceSnapshot,
    EntryType,
    GrantType,
    LedgerEntry,
    Lot,
    LotDraw,
    Reservation,
    ReservationStatus,
)
from credits_service.domain.rates import HeldPrice

Row = Any  # an asyncpg Record: read by column name

ACCOUNT = ("account_id, balance, reserved, active_reservation_count, lifetime_granted, "
           "lifetime_used, lifetime_expired, credit_limit, debt")
PROFILE = "account_id, plan, create_time, status"
# The same columns of an UPDATE's target aliased `a`, for its RETURNING clause
A_ACCOUNT = ", ".join("a." + column.strip() for column in ACCOUNT.split(","))
ENTRY = (
    "entry_id, account_id, entry_type, grant_type, amount, balance_after, "
    "reservation_id::text AS reservation_id, reason, metadata::text AS metadata, actor, "
    "create_time, lot_id, transfer_id::text AS transfer_id, feature, units, rate_card_version"
)
RESERVATION = (
    "reservation_id::text AS reservation_id, account_id, amount, status, committed_amount, "
    "create_time, expire_time, finish_time, metadata::text AS metadata, release_reason, "
    "refunded_amount, price::text AS price, member_account_id"
)
LOT = (
    "l.lot_id, l.account_id, l.grant_type, l.priority, l.expire_time, l.amount, l.remaining, "
    "l.held, l.expired_time IS NOT NULL AS expired, l.create_time, "
    "(SELECT e.entry_id FROM ledger_entries e WHERE e.lot_id = l.lot_id "
    "AND e.entry_type = 'GRANT') AS grant_entry_id"
)
# Consumption order (domain/lots.py) of lots aliased `l`; expire_time ascending puts NULLs last.
CONSUMPTION_ORDER = "l.priority, l.expire_time, l.lot_id"


def json_text(metadata: Mapping[str, str]) -> str:
    """Metadata for a jsonb parameter (which orders keys itself)."""
    return orjson.dumps(dict(metadata)).decode()


def balance(row: Row) -> BalanceSnapshot:
    return BalanceSnapshot(
        account_id=row["account_id"],
        balance=row["balance"],
        reserved=row["reserved"],
        active_reservation_count=row["active_reservation_count"],
        lifetime_granted=row["lifetime_granted"],
        lifetime_used=row["lifetime_used"],
        lifetime_expired=row["lifetime_expired"],
        credit_limit=row["credit_limit"],
        debt=row["debt"],
    )


def account(row: Row) -> Account:
    return Account(account_id=row["account_id"], plan=row["plan"],
                   create_time=row["create_time"], status=AccountStatus(row["status"]))


def entry(row: Row) -> LedgerEntry:
    grant_type = row["grant_type"]
    return LedgerEntry(
        entry_id=row["entry_id"],
        account_id=row["account_id"],
        entry_type=EntryType(row["entry_type"]),
        grant_type=GrantType(grant_type) if grant_type else None,
        amount=row["amount"],
        balance_after=row["balance_after"],
        reservation_id=row["reservation_id"],
        reason=row["reason"],
        metadata=orjson.loads(row["metadata"]),
        actor=row["actor"],
        create_time=row["create_time"],
        lot_id=row["lot_id"],
        transfer_id=row["transfer_id"],
        feature=row["feature"],
        units=row["units"],
        rate_card_version=row["rate_card_version"],
    )


def lot(row: Row) -> Lot:
    grant_type = row["grant_type"]
    return Lot(
        lot_id=row["lot_id"],
        account_id=row["account_id"],
        grant_type=GrantType(grant_type) if grant_type else None,
        priority=row["priority"],
        expire_time=row["expire_time"],
        amount=row["amount"],
        remaining=row["remaining"],
        held=row["held"],
        expired=row["expired"],
        grant_entry_id=row["grant_entry_id"],
        create_time=row["create_time"],
    )


def reservation(row: Row, draws: tuple[LotDraw, ...] = ()) -> Reservation:
    return Reservation(
        reservation_id=row["reservation_id"],
        account_id=row["account_id"],
        amount=row["amount"],
        status=ReservationStatus(row["status"]),
        committed_amount=row["committed_amount"],
        create_time=row["create_time"],
        expire_time=row["expire_time"],
        finish_time=row["finish_time"],
        metadata=orjson.loads(row["metadata"]),
        draws=draws,
        release_reason=row["release_reason"],
        refunded_amount=row["refunded_amount"],
        price=held_price(row["price"]),
        member_account_id=row.get("member_account_id"),
    )


def held_price(text: str | None) -> HeldPrice | None:
    """reservations.price, read as text."""
    return None if text is None else HeldPrice.restore(orjson.loads(text))


def price_text(price: HeldPrice | None) -> str | None:
    """reservations.price, written as text."""
    return None if price is None else orjson.dumps(price.stored()).decode()
