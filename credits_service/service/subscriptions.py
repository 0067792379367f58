"""Subscriptions: a plan's allocation granted every period, exactly once (docs/
subscriptions.md).

Each call that changes a subscription, and the scheduler, first grants what has fallen due
(`_settle`), in the same transaction: the subscription's row is locked, then its account's,
so a period's allocation is granted by whichever comes first and by no other (the row says
which period was granted last, and subscription_grants' unique index refuses a second grant
of a period however the row was reached). Periods are measured on the database clock.

A period's allocation is one lot, expiring when the period ends, of the plan's credits plus
what the rollover rule carries from the period granted before: the credits its lots had left
when they were written off. So the lots of the period before are written off first (each with
its EXPIRY entry), and what carries is granted again inside the new lot.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import datetime

from credits_service.domain import errors
from credits_service.domain.commands import (
    CancelSubscriptionCommand,
    ChangeSubscriptionCommand,
    GrantResult,
    SubscribeCommand,
    SubscriptionReport,
    SubscriptionResult,
)
from credits_service.domain.model import (
    PRIORITY_DEFAULT,
    AccountStatus,
    BalanceSnapshot,
    GrantType,
    LedgerEntry,
)
from credits_service.domain.plans import Plan
from credits_service.domain.subscriptions import (
    CatchUp,
    Period,
    PeriodKind,
    Subscription,
    SubscriptionStatus,
    periods_due,
    prorated_upgrade,
)
from credits_service.service.accounts import AccountOpening, locked_account, move_to_plan
from credits_service.service.crediting import credit_lot
from credits_service.service.idempotency import keyed
from credits_service.service.ports import UnitOfWork
from credits_service.service.reporting import LedgerMetrics
from credits_service.service.transactions import Transactions
from credits_service.service.write_offs import SYSTEM_ACTOR, write_off_due_lots

SUBSCRIBE, CHANGE, CANCEL = "Subscribe", "ChangeSubscription", "CancelSubscription"
# Periods one scheduler transaction grants before it stops taking subscriptions (one may owe
# up to CATCH_UP_PERIODS_MAX, each a lot, an entry and a write-off)
GRANTS_PER_TRANSACTION_MAX = 1000
_log = logging.getLogger(__name__)
PERIOD, UPGRADE = "PERIOD", "UPGRADE"  # subscription_grants.kind
_REASON_LENGTH_MAX = 256  # account_changes.reason


class Subscriptions:
    def __init__(
        self, transactions: Transactions, opening: AccountOpening, catch_up: CatchUp,
        metrics: LedgerMetrics,
    ) -> None:
        self._transactions = transactions
        self._opening = opening
        self._catch_up = catch_up
        self._metrics = metrics

    def _allocating_plan(self, name: str) -> Plan:
        plan = self._opening.plan(name)
        if plan.allocation is None:
            raise errors.PlanWithoutAllocation(plan.name, sorted(
                p.name for p in self._opening.plans.plans.values() if p.allocation))
        return plan

    async def subscribe(self, command: SubscribeCommand, actor: str) -> SubscriptionResult:
        """Subscribe the account (created on the plan, with its welcome credits, if it does
        not exist) to the plan's allocation: the account moves to the plan, and period 0,
        starting now, is granted at once. Raises PlanNotFound, PlanWithoutAllocation,
        AlreadySubscribed or AccountClosed, writing nothing."""
        plan = self._allocating_plan(command.plan)
        assert plan.allocation is not None
        await self.settle(command.account_id)  # one that has ended by now is ended first

        async def effect(uow: UnitOfWork) -> SubscriptionResult:
            entries: list[LedgerEntry] = []
            opened = await self._opening.open(uow, command.account_id, plan.name, actor)
            if opened is not None and opened[1] is not None:
                entries.append(opened[1].entry)
            found = await locked_account(uow, command.account_id, open_only=True)
            if isinstance(found, errors.Declined):
                raise found
            account, balance = found
            existing = await uow.subscriptions.active(command.account_id)
            if existing is not None:
                raise errors.AlreadySubscribed(command.account_id, existing.plan)
            if account.plan != plan.name:
                _, forgiven = await move_to_plan(
                    uow, account, balance, plan,
                    _reason("subscribed", command.reason), actor)
                entries.extend(forgiven)
            now = await uow.now()
            subscription = await uow.subscriptions.create(
                command.account_id, plan.name, plan.allocation, now)
            subscription, granted = await self._settle(uow, subscription, now, actor)
            return await _result(uow, subscription, True, [*entries, *granted])

        return await self._transactions.run(keyed(
            SUBSCRIBE, command, command.idempotency_key, actor, effect, self._metrics))

    async def change(
        self, command: ChangeSubscriptionCommand, actor: str
    ) -> SubscriptionResult:
        """Move the subscription (and its account) to another plan of the same period. An
        upgrade (more credits a period) applies at once, granting the difference for the share
        of the current period left (domain/subscriptions.prorated_upgrade); any other change
        applies when the next period begins. Any change undoes a pending cancellation;
        changing to the plan it is on undoes a pending downgrade too."""
        plan = self._allocating_plan(command.plan)
        allocation = plan.allocation
        assert allocation is not None
        await self.settle(command.account_id)  # one that has ended by now is ended first

        async def effect(uow: UnitOfWork) -> SubscriptionResult:
            subscription, now = await self._locked(uow, command.account_id)
            subscription, entries = await self._settle(uow, subscription, now, actor)
            if subscription.status is not SubscriptionStatus.ACTIVE:
                # ended between the settling above and this (the clock passed its end)
                raise errors.SubscriptionNotFound(command.account_id)
            current = subscription.allocation
            if allocation.period != current.period:
                raise errors.SubscriptionPeriodMismatch(
                    plan.name, _period_name(allocation.period), _period_name(current.period))
            if plan.name == subscription.plan:
                if subscription.next_plan is None and subscription.cancel_time is None:
                    return await _result(uow, subscription, False, entries)
                subscription = dataclasses.replace(
                    subscription, next_plan=None, next_allocation=None, cancel_time=None)
            elif allocation.credits > current.credits:
                entries += await self._upgrade(uow, subscription, plan, now, command, actor)
                subscription = dataclasses.replace(
                    subscription, plan=plan.name, allocation=allocation, next_plan=None,
                    next_allocation=None, cancel_time=None)
            else:
                subscription = dataclasses.replace(
                    subscription, next_plan=plan.name, next_allocation=allocation,
                    cancel_time=None)
            subscription = await uow.subscriptions.save(subscription)
            return await _result(uow, subscription, True, entries)

        return await self._transactions.run(keyed(
            CHANGE, command, command.idempotency_key, actor, effect, self._metrics))

    async def _upgrade(
        self, uow: UnitOfWork, subscription: Subscription, plan: Plan, now: datetime,
        command: ChangeSubscriptionCommand, actor: str,
    ) -> list[LedgerEntry]:
        """Move the account to the plan and grant the upgrade's share of the current period
        (a lot expiring with it)."""
        assert plan.allocation is not None
        found = await locked_account(uow, subscription.account_id)
        assert not isinstance(found, errors.Declined), "a subscription's account exists"
        account, balance = found
        _, entries = await move_to_plan(
            uow, account, balance, plan, _reason(f"upgraded from {subscription.plan}",
                                                 command.reason), actor)
        period = subscription.last_period
        start, end = subscription.period_start(period), subscription.period_start(period + 1)
        credits = prorated_upgrade(
            subscription.allocation.credits, plan.allocation.credits, start, end, now)
        if not credits:
            return list(entries)
        granted = await credit_lot(
            uow, account_id=subscription.account_id, amount=credits,
            grant_type=GrantType.SUBSCRIPTION, priority=PRIORITY_DEFAULT, expire_time=end,
            reason=f"upgrade to plan {plan.name}: the rest of period {period}",
            metadata=_metadata(subscription, period, plan.name, 0), actor=actor)
        if not isinstance(granted, GrantResult):
            raise granted  # the balance at its maximum: nothing is changed
        await uow.subscriptions.record_grant(
            subscription.subscription_id, period, UPGRADE, plan.name, credits, 0,
            granted.lot.lot_id if granted.lot else None, plan.allocation.rollover)
        uow.on_commit(lambda: self._metrics.granted(credits))
        return [*entries, granted.entry]

    async def cancel(
        self, command: CancelSubscriptionCommand, actor: str
    ) -> SubscriptionResult:
        """End the subscription at the end of the current period (nothing is granted after
        it), or at once; either way the account moves to the default plan when it ends.
        Credits already granted stay until their lots expire."""
        await self.settle(command.account_id)  # one that has ended by now is ended first

        async def effect(uow: UnitOfWork) -> SubscriptionResult:
            subscription, now = await self._locked(uow, command.account_id, open_only=False)
            subscription, entries = await self._settle(uow, subscription, now, actor)
            if subscription.status is not SubscriptionStatus.ACTIVE:
                raise errors.SubscriptionNotFound(command.account_id)
            reason = _reason("canceled", command.reason)
            if command.immediately:
                subscription, moved = await self._end(uow, subscription, now, reason, actor)
                return await _result(uow, subscription, True, [*entries, *moved])
            end = subscription.next_grant_time
            if subscription.cancel_time == end:
                return await _result(uow, subscription, False, entries)
            subscription = await uow.subscriptions.save(dataclasses.replace(
                subscription, cancel_time=end, next_plan=None, next_allocation=None))
            return await _result(uow, subscription, True, entries)

        return await self._transactions.run(keyed(
            CANCEL, command, command.idempotency_key, actor, effect, self._metrics))

    async def get(self, account_id: str) -> SubscriptionReport:
        """The account's subscription (ACTIVE, or the last one CANCELED) with the period
        granted last; SubscriptionNotFound if it never had one."""

        async def work(uow: UnitOfWork) -> SubscriptionReport:
            subscription = await uow.subscriptions.latest(account_id)
            if subscription is None:
                raise errors.SubscriptionNotFound(account_id, active=False)
            period = max(subscription.last_period, 0)
            granted = await uow.subscriptions.granted_in(subscription.subscription_id, period)
            return SubscriptionReport(subscription, subscription.period_start(period),
                                      subscription.period_start(period + 1), granted)

        return await self._transactions.run(work)

    async def settle(self, account_id: str) -> None:
        """Grant the account's ACTIVE subscription what has fallen due (and end it if its
        cancellation has come), in a transaction of its own; nothing without one."""

        async def work(uow: UnitOfWork) -> None:
            subscription = await uow.subscriptions.active(account_id, lock=True)
            if subscription is not None:
                await uow.accounts.lock([account_id])
                await self._settle(uow, subscription, await uow.now(), SYSTEM_ACTOR)

        await self._transactions.run(work)

    async def grant_due(self, batch_size: int) -> int:
        """Grant what has fallen due to at most `batch_size` subscriptions, in one
        transaction (those another transaction holds are skipped), stopping early once it
        granted GRANTS_PER_TRANSACTION_MAX periods; returns how many subscriptions it took
        (a full batch: call again). If the batch fails, each of its subscriptions is settled
        in a transaction of its own, so that one that cannot be granted holds up no other."""

        async def work(uow: UnitOfWork) -> list[str]:
            due = await uow.subscriptions.lock_due(batch_size)
            if not due:
                return []
            await uow.accounts.lock(sorted({s.account_id for s in due}))
            now = await uow.now()
            granted = 0
            for subscription in due:
                before = subscription.last_period
                settled, _ = await self._settle(uow, subscription, now, SYSTEM_ACTOR)
                granted += max(0, settled.last_period - before)
                if granted >= GRANTS_PER_TRANSACTION_MAX:
                    break  # the rest stay due, for the next call
            return [s.account_id for s in due]

        try:
            return len(await self._transactions.run(work))
        except errors.DatabaseUnavailable:
            raise
        except Exception:
            _log.exception("granting a batch of subscriptions failed: settling them one by one")
        return await self._settle_each(batch_size)

    async def _settle_each(self, batch_size: int) -> int:
        """Settle the due subscriptions one transaction each, logging those that fail."""

        async def due(uow: UnitOfWork) -> list[str]:
            return [s.account_id for s in await uow.subscriptions.lock_due(batch_size)]

        account_ids = await self._transactions.run(due)
        for account_id in account_ids:
            try:
                await self.settle(account_id)
            except errors.DatabaseUnavailable:
                raise
            except Exception:
                _log.exception("granting the subscription of account %r failed", account_id)
        return len(account_ids)

    async def _locked(
        self, uow: UnitOfWork, account_id: str, *, open_only: bool = True
    ) -> tuple[Subscription, datetime]:
        """The account's ACTIVE subscription, its row and then its account's locked; raises
        SubscriptionNotFound, or AccountClosed for a closed account when `open_only`."""
        subscription = await uow.subscriptions.active(account_id, lock=True)
        if subscription is None:
            raise errors.SubscriptionNotFound(account_id)
        found = await locked_account(uow, account_id, open_only=open_only)
        if isinstance(found, errors.Declined):
            raise found
        return subscription, await uow.now()

    async def _settle(
        self, uow: UnitOfWork, subscription: Subscription, now: datetime, actor: str
    ) -> tuple[Subscription, list[LedgerEntry]]:
        """Grant the (locked) subscription the periods due at `now` by the catch-up rule,
        applying a pending downgrade or cancellation where its period begins; returns it
        saved, with the entries written."""
        due = periods_due(subscription.anchor, subscription.allocation.period,
                          subscription.last_period, now, self._catch_up)
        if not due:
            return subscription, []
        entries: list[LedgerEntry] = []
        await write_off_due_lots(uow, [subscription.account_id], self._metrics)
        for period in due:
            start = subscription.period_start(period)
            if subscription.cancel_time is not None and subscription.cancel_time <= start:
                subscription, moved = await self._end(
                    uow, subscription, subscription.cancel_time, "subscription ended", actor)
                return subscription, [*entries, *moved]
            if subscription.next_plan is not None:
                subscription, moved = await self._take_next_plan(uow, subscription, actor)
                entries.extend(moved)
            carried = 0
            if subscription.last_period >= 0:  # each lot by the rule it was granted under
                carried = sum(rule.carried(unused) for unused, rule in
                              await uow.subscriptions.left_over(
                                  subscription.subscription_id, subscription.last_period))
            granted = await self._grant_period(uow, subscription, period, carried, actor)
            if isinstance(granted, errors.AccountClosed):
                subscription, _ = await self._end(uow, subscription, now, "account closed",
                                                  actor, move_account=False)
                return subscription, entries
            if granted is not None:
                entries.append(granted)
            subscription = dataclasses.replace(subscription, last_period=period)
            if subscription.period_start(period + 1) <= now:  # a missed period: over already
                await write_off_due_lots(uow, [subscription.account_id], self._metrics)
        return await uow.subscriptions.save(subscription), entries

    async def _grant_period(
        self, uow: UnitOfWork, subscription: Subscription, period: int, carried: int,
        actor: str,
    ) -> LedgerEntry | errors.AccountClosed | None:
        """The period's allocation and what carries into it, as one lot expiring with the
        period, recorded once; None if the account's balance is at its maximum (recorded
        as granted, without a lot)."""
        credits = subscription.allocation.credits
        granted = await credit_lot(
            uow, account_id=subscription.account_id, amount=credits + carried,
            grant_type=GrantType.SUBSCRIPTION, priority=PRIORITY_DEFAULT,
            expire_time=subscription.period_start(period + 1),
            reason=f"plan {subscription.plan}: allocation of period {period}",
            metadata=_metadata(subscription, period, subscription.plan, carried), actor=actor)
        if isinstance(granted, errors.AccountClosed):
            return granted
        lot_id = None
        if isinstance(granted, GrantResult):
            lot_id = granted.lot.lot_id if granted.lot else None
            uow.on_commit(lambda: self._metrics.granted(credits + carried))
        await uow.subscriptions.record_grant(
            subscription.subscription_id, period, PERIOD, subscription.plan, credits, carried,
            lot_id, subscription.allocation.rollover)
        return granted.entry if isinstance(granted, GrantResult) else None

    async def _take_next_plan(
        self, uow: UnitOfWork, subscription: Subscription, actor: str
    ) -> tuple[Subscription, Sequence[LedgerEntry]]:
        """A downgrade's new period: the subscription and its account move to the plan."""
        assert subscription.next_plan is not None and subscription.next_allocation is not None
        entries: Sequence[LedgerEntry] = ()
        plan = self._opening.plans.get(subscription.next_plan)
        found = await locked_account(uow, subscription.account_id)
        assert not isinstance(found, errors.Declined), "a subscription's account exists"
        account, balance = found
        if plan is not None and account.status is not AccountStatus.CLOSED:
            _, entries = await move_to_plan(
                uow, account, balance, plan, f"subscription moved from plan "
                f"{subscription.plan} with the new period", actor)
        return dataclasses.replace(
            subscription, plan=subscription.next_plan, allocation=subscription.next_allocation,
            next_plan=None, next_allocation=None), entries

    async def _end(
        self, uow: UnitOfWork, subscription: Subscription, when: datetime, reason: str,
        actor: str, *, move_account: bool = True,
    ) -> tuple[Subscription, Sequence[LedgerEntry]]:
        """CANCEL the subscription as of `when`; its account moves to the default plan."""
        entries: Sequence[LedgerEntry] = ()
        found = await locked_account(uow, subscription.account_id)
        assert not isinstance(found, errors.Declined), "a subscription's account exists"
        account, balance = found
        default = self._opening.plans.default
        if move_account and account.status is not AccountStatus.CLOSED and (
                account.plan != default.name):
            _, entries = await move_to_plan(uow, account, balance, default, reason, actor)
        ended = await uow.subscriptions.save(dataclasses.replace(
            subscription, status=SubscriptionStatus.CANCELED, cancel_time=when, next_plan=None,
            next_allocation=None))
        return ended, entries


async def _result(
    uow: UnitOfWork, subscription: Subscription, changed: bool, entries: list[LedgerEntry]
) -> SubscriptionResult:
    balance = await uow.accounts.get(subscription.account_id)
    assert isinstance(balance, BalanceSnapshot), "a subscription's account exists"
    return SubscriptionResult(subscription, changed, tuple(entries), balance)


def _metadata(subscription: Subscription, period: int, plan: str, carried: int) -> dict[str, str]:
    metadata = {"subscription_id": str(subscription.subscription_id), "period": str(period),
                "plan": plan}
    if carried:
        metadata["carried"] = str(carried)
    return metadata


def _reason(what: str, reason: str) -> str:
    return (f"{what}: {reason}" if reason else what)[:_REASON_LENGTH_MAX]


def _period_name(period: Period) -> str:
    return f"{period.days} days" if period.kind is PeriodKind.DAYS else "month"
