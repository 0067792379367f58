"""Accounts: created on a plan with the plan's welcome credits, exactly once, whichever call
comes first (EnsureAccount, Grant, or with auto_create_accounts a first CheckAndReserve or
GetBalance)."""

from __future__ import annotations

from datetime import timedelta

from credits_service.domain import errors
from credits_service.domain.commands import (
    AccountChangeResult,
    ChangePlanCommand,
    EnsureAccountCommand,
    EnsureAccountResult,
    GrantResult,
    SetAccountStatusCommand,
)
from credits_service.domain.model import (
    Account,
    AccountStatus,
    BalanceSnapshot,
    EntryType,
    LedgerEntry,
)
from credits_service.domain.plans import Plan, PlanBook
from credits_service.service import debts
from credits_service.service.crediting import credit_lot
from credits_service.service.debiting import take_free_credits
from credits_service.service.ports import UnitOfWork
from credits_service.service.reporting import LedgerMetrics
from credits_service.service.transactions import Transactions
from credits_service.service.write_offs import write_off_due_lots


class AccountOpening:
    """Creates accounts. The account's row is inserted first: of concurrent transactions
    creating one account, one inserts it and the others wait for it to commit and then find
    it, so the welcome grant is written once."""

    def __init__(self, plans: PlanBook, auto_create: bool, metrics: LedgerMetrics) -> None:
        self.plans = plans
        self.auto_create = auto_create
        self._metrics = metrics

    def plan(self, name: str) -> Plan:
        """The plan called `name` (the default plan when empty), or PlanNotFound."""
        plan = self.plans.get(name)
        if plan is None:
            raise errors.PlanNotFound(name)
        return plan

    async def open(
        self, uow: UnitOfWork, account_id: str, plan_name: str, actor: str
    ) -> tuple[BalanceSnapshot, GrantResult | None] | None:
        """Create the account on the plan, with its welcome grant if it has one (the account
        and the grant locked in this transaction); None if the account exists."""
        plan = self.plan(plan_name)
        created = await uow.accounts.create(account_id, plan.name, plan.account_credit_limit)
        if created is None:
            return None
        uow.on_commit(lambda: self._metrics.account_created(plan.name))
        welcome = plan.welcome
        if welcome is None:
            return created, None
        expire_time = None
        if welcome.expire_after_s is not None:
            expire_time = await uow.now() + timedelta(seconds=welcome.expire_after_s)
        granted = await credit_lot(
            uow,
            account_id=account_id,
            amount=welcome.amount,
            grant_type=welcome.grant_type,
            priority=welcome.priority,
            expire_time=expire_time,
            reason=f"welcome credits of plan {plan.name}",
            metadata={"plan": plan.name},
            actor=actor,
        )
        assert isinstance(granted, GrantResult), "a new account is far below the balance cap"
        uow.on_commit(lambda: self._metrics.granted(welcome.amount))
        return granted.balance, granted

    async def on_first_use(
        self, uow: UnitOfWork, account_id: str, actor: str
    ) -> BalanceSnapshot | None:
        """The account of a call that found none, created on the default plan and locked; None
        when auto_create_accounts is off."""
        if not self.auto_create:
            return None
        opened = await self.open(uow, account_id, "", actor)
        if opened is not None:
            return opened[0]
        # Created by a transaction that committed while ours waited to insert it.
        return (await uow.accounts.lock([account_id])).get(account_id)


class Accounts:
    def __init__(
        self, transactions: Transactions, opening: AccountOpening, metrics: LedgerMetrics
    ) -> None:
        self._transactions = transactions
        self._opening = opening
        self._metrics = metrics

    async def ensure_account(
        self, command: EnsureAccountCommand, actor: str
    ) -> EnsureAccountResult:
        """The account, created first on the plan asked for (the default plan when none) if
        it does not exist; an existing account is returned as it is, on its own plan. Raises
        PlanNotFound, writing nothing, for a plan the plans file does not define."""
        self._opening.plan(command.plan)

        async def work(uow: UnitOfWork) -> EnsureAccountResult:
            opened = await self._opening.open(uow, command.account_id, command.plan, actor)
            account = await uow.accounts.profile(command.account_id)
            assert account is not None, "the account exists once created or found"
            if opened is not None:
                balance, welcome = opened
                return EnsureAccountResult(account, True, balance, welcome)
            balance_now = await uow.accounts.get(command.account_id)
            assert balance_now is not None
            return EnsureAccountResult(account, False, balance_now, None)

        return await self._transactions.run(work)

    async def set_status(
        self, command: SetAccountStatusCommand, actor: str
    ) -> AccountChangeResult:
        """Move the account to the status, recording who did it and why. CLOSED is final, and
        only for an account without balance and reservations (AccountNotEmpty otherwise)."""

        async def work(uow: UnitOfWork) -> AccountChangeResult | errors.Declined:
            found = await locked_account(uow, command.account_id)
            if isinstance(found, errors.Declined):
                return found
            account, balance = found
            if account.status is command.status:
                return AccountChangeResult(account, changed=False)
            if account.status is AccountStatus.CLOSED:
                return errors.AccountClosed(command.account_id)
            entries: tuple[LedgerEntry, ...] = ()
            if command.status is AccountStatus.CLOSED and command.write_off_balance and (
                    not balance.reserved):
                entries, balance = await self._write_off_balance(uow, command, balance, actor)
            if command.status is AccountStatus.CLOSED and (
                    balance.balance or balance.reserved or balance.debt):
                raise errors.AccountNotEmpty(command.account_id, balance.balance, balance.reserved)
            changed = await uow.accounts.set_status(
                command.account_id, account.status, command.status, command.reason, actor)
            assert changed is not None, "the account is locked"
            return AccountChangeResult(changed, changed=True, write_off_entries=entries)

        return await self._transactions.run(work)

    async def _write_off_balance(
        self, uow: UnitOfWork, command: SetAccountStatusCommand, balance: BalanceSnapshot,
        actor: str,
    ) -> tuple[tuple[LedgerEntry, ...], BalanceSnapshot]:
        """Take a closing (locked) account's whole balance off its lots, none reserved: due
        lots are written off as expired first, what it owes is forgiven (one ADJUSTMENT
        entry without a lot), the rest goes with one ADJUSTMENT entry per lot. Returns the
        entries and the balance after."""
        written = await write_off_due_lots(uow, [command.account_id], self._metrics)
        balance = written.get(command.account_id, balance)
        forgiven, balance = await debts.forgive(
            uow, command.account_id, balance, reason=f"closed: {command.reason}",
            metadata={"write_off": "true"}, actor=actor)
        entries = [forgiven] if forgiven is not None else []
        if not balance.balance:
            return tuple(entries), balance
        parts, _, debited = await take_free_credits(uow, command.account_id, balance.balance)
        after = balance.balance
        for lot_id, part in parts:
            after -= part
            entries.append(await uow.entries.append(
                account_id=command.account_id, entry_type=EntryType.ADJUSTMENT, amount=-part,
                balance_after=after, actor=actor, reason=f"closed: {command.reason}",
                metadata={"write_off": "true"}, lot_id=lot_id))
        assert after == debited.balance == 0
        return tuple(entries), debited

    async def sync_credit_limits(self) -> int:
        """Give every account its plan's credit limit, as the plans file now says (at
        start-up: an edited plan's limits take effect for its accounts at once). Accounts on
        plans the file no longer has keep theirs. Returns how many changed."""

        async def work(uow: UnitOfWork) -> int:
            return await uow.accounts.sync_credit_limits(self._opening.plans.credit_limits())

        return await self._transactions.run(work)

    async def change_plan(self, command: ChangePlanCommand, actor: str) -> AccountChangeResult:
        """Move the account to another plan, recording who did it and why. Its terms change
        at once: its credit limit is the new plan's (a lower one declines new holds until the
        balance is above it again), and what it used beyond its lots while unlimited is
        forgiven when it leaves an unlimited plan (one ADJUSTMENT entry). Welcome credits are
        for new accounts only."""
        plan = self._opening.plan(command.plan)

        async def work(uow: UnitOfWork) -> AccountChangeResult | errors.Declined:
            found = await locked_account(uow, command.account_id, open_only=True)
            if isinstance(found, errors.Declined):
                return found
            account, balance = found
            if account.plan == plan.name:
                return AccountChangeResult(account, changed=False)
            subscription = await uow.subscriptions.active(command.account_id)
            if subscription is not None:
                raise errors.SubscriptionActive(command.account_id, subscription.plan)
            changed, entries = await move_to_plan(
                uow, account, balance, plan, command.reason, actor)
            return AccountChangeResult(changed, changed=True, write_off_entries=entries)

        return await self._transactions.run(work)


async def move_to_plan(
    uow: UnitOfWork, account: Account, balance: BalanceSnapshot, plan: Plan, reason: str,
    actor: str,
) -> tuple[Account, tuple[LedgerEntry, ...]]:
    """Move the (locked) account to another plan, recording the change: its credit limit is
    the plan's at once, and leaving an unlimited plan forgives what it used beyond its lots
    (the ADJUSTMENT entry returned)."""
    entries: tuple[LedgerEntry, ...] = ()
    if balance.unlimited and not plan.unlimited:
        forgiven, _ = await debts.forgive(
            uow, account.account_id, balance,
            reason=f"left unlimited plan {account.plan}: {reason}",
            metadata={"plan": plan.name}, actor=actor)
        entries = (forgiven,) if forgiven is not None else ()
    changed = await uow.accounts.set_plan(
        account.account_id, account.plan, plan.name, plan.account_credit_limit, reason, actor)
    assert changed is not None, "the account is locked"
    return changed, entries


async def locked_account(
    uow: UnitOfWork, account_id: str, *, open_only: bool = False
) -> tuple[Account, BalanceSnapshot] | errors.Declined:
    """The account's terms and balance, its row locked for the transaction; AccountNotFound
    when there is none, and AccountClosed for a closed one when `open_only`."""
    balance = (await uow.accounts.lock([account_id])).get(account_id)
    if balance is None:
        return errors.AccountNotFound(account_id)
    account = await uow.accounts.profile(account_id)
    assert account is not None, "a locked account exists"
    if open_only and account.status is AccountStatus.CLOSED:
        return errors.AccountClosed(account_id)
    return account, balance
