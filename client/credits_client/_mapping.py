"""Protobuf messages to the client's dataclasses (types.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from credits.v1 import credits_pb2 as pb
from credits_client import types

_STATUS = {pb.RESERVATION_STATUS_ACTIVE: "ACTIVE", pb.RESERVATION_STATUS_COMMITTED: "COMMITTED",
           pb.RESERVATION_STATUS_RELEASED: "RELEASED",
           pb.RESERVATION_STATUS_EXPIRED: "EXPIRED"}
_ACCOUNT_STATUS = {pb.ACCOUNT_STATUS_ACTIVE: "ACTIVE", pb.ACCOUNT_STATUS_FROZEN: "FROZEN",
                   pb.ACCOUNT_STATUS_CLOSED: "CLOSED"}


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


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
        message.price.feature, message.price.units, time_of(message.finish_time),
        message.release_reason, message.refunded_amount, message.member_account_id,
        tuple(types.LotDraw(d.lot_id, d.held, d.consumed) for d in message.draws),
        message.price.cost, message.price.rate_card_version, message.price.plan)


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
        message.reason, dict(message.metadata), message.feature, message.units, message.actor,
        message.lot_id, message.transfer_id, message.rate_card_version)


def event(message: pb.Event) -> types.Event:
    return types.Event(
        message.event_id, message.cursor,
        enum_name(pb.EventType, message.event_type, "EVENT_TYPE_"), message.account_id,
        time_of(message.create_time), json.loads(message.data_json or "{}"))


def price(message: pb.Price) -> types.Price:
    return types.Price(message.cost_per_call, message.units_per_credit,
                       enum_name(pb.Rounding, message.rounding, "ROUNDING_"),
                       message.minimum_charge)


def rate_card(message: pb.GetRateCardResponse) -> types.RateCard:
    return types.RateCard(message.version, message.plan, tuple(
        types.FeaturePrice(f.feature, f.description, f.unit, price(f.price),
                           {plan: price(p) for plan, p in f.plan_prices.items()})
        for f in message.features))


def usage_total(message: pb.UsageTotal) -> types.UsageTotal:
    return types.UsageTotal(message.feature, message.credits, message.units, message.calls)


def usage_summary(message: pb.UsageSummaryResponse) -> types.UsageSummary:
    return types.UsageSummary(
        time_of(message.start_time), time_of(message.end_time),
        enum_name(pb.UsageBucketSize, message.bucket_size, "USAGE_BUCKET_SIZE_"),
        tuple(types.UsageBucket(time_of(b.start_time), usage_total(b.usage))
              for b in message.buckets),
        tuple(usage_total(f) for f in message.features),
        tuple(types.AccountSpend(a.account_id, a.credits, a.calls)
              for a in message.top_accounts),
        tuple(types.MemberSpend(m.pool_account_id, m.member_account_id, m.credits, m.calls)
              for m in message.members))


def subscription(message: pb.Subscription) -> types.Subscription:
    allocation = message.allocation
    return types.Subscription(
        message.subscription_id, message.account_id, message.plan,
        types.Allocation(
            allocation.credits,
            enum_name(pb.AllocationPeriod, allocation.period, "ALLOCATION_PERIOD_"),
            allocation.period_days,
            enum_name(pb.RolloverRule, allocation.rollover, "ROLLOVER_RULE_"),
            allocation.rollover_cap),
        enum_name(pb.SubscriptionStatus, message.status, "SUBSCRIPTION_STATUS_"),
        time_of(message.start_time), message.last_period, time_of(message.next_grant_time),
        message.next_plan, time_of(message.cancel_time), time_of(message.create_time))


def subscription_result(message: Any) -> types.SubscriptionResult:
    """Of a Subscribe (always a change), ChangeSubscription or CancelSubscription answer."""
    changed = message.changed if "changed" in message.DESCRIPTOR.fields_by_name else True
    return types.SubscriptionResult(subscription(message.subscription), changed,
                                    tuple(entry(e) for e in message.entries),
                                    balance(message.balance))


def organization(message: pb.Organization) -> types.Organization:
    return types.Organization(message.organization_id, message.pool_account_id,
                              time_of(message.create_time), message.member_count)


def member(message: pb.Member) -> types.Member:
    def optional(name: str) -> int | None:
        return getattr(message, name) if message.HasField(name) else None

    return types.Member(
        message.account_id, message.organization_id, message.pool_account_id,
        optional("period_cap"), optional("total_cap"), message.held, message.period_used,
        message.total_used, optional("remaining"), time_of(message.create_time))


def dead_letter(message: pb.DeadLetter) -> types.DeadLetter:
    return types.DeadLetter(
        message.dead_letter_id, message.endpoint, message.event_id,
        enum_name(pb.EventType, message.event_type, "EVENT_TYPE_"), message.account_id,
        message.attempts, message.last_error,
        enum_name(pb.DeadLetterStatus, message.status, "DEAD_LETTER_STATUS_"),
        time_of(message.create_time), time_of(message.update_time), message.body_json)


def lot(message: pb.Lot) -> types.Lot:
    return types.Lot(
        message.lot_id, enum_name(pb.GrantType, message.grant_type, "GRANT_TYPE_"),
        message.priority, time_of(message.expire_time), message.amount, message.remaining,
        message.held, message.expired, message.grant_entry_id, time_of(message.create_time))


def account_details(message: pb.GetBalanceResponse) -> types.AccountDetails:
    totals = message.totals
    return types.AccountDetails(
        balance(message.balance), account(message.account),
        tuple(lot(item) for item in message.lots), message.lots_truncated,
        message.expiring_amount,
        {field.name: getattr(totals, field.name) for field in totals.DESCRIPTOR.fields
         if field.name != "granted_by_type"},
        {name.removeprefix("GRANT_TYPE_"): amount
         for name, amount in totals.granted_by_type.items()},
        member(message.member) if message.HasField("member") else None,
        balance(message.pool_balance) if message.HasField("pool_balance") else None)


def entries_result(message: Any) -> types.EntriesResult:
    """Of an Adjust or Refund answer."""
    return types.EntriesResult(tuple(entry(e) for e in message.entries), balance(message.balance))


def account_change(message: Any) -> types.AccountChange:
    """Of a SetAccountStatus or ChangePlan answer."""
    return types.AccountChange(account(message.account), message.changed,
                               tuple(entry(e) for e in message.write_off_entries))
