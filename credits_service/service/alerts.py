"""Balance alerts and expiring-soon notices (domain/alerts.py, docs/events.md): the plans'
low-balance rules given to their accounts, an account's own rule, and the sweeper's notices
of lots about to expire. The events themselves are written by migration 0018's triggers, in
the transaction of each change."""

from __future__ import annotations

from credits_service.domain import errors
from credits_service.domain.alerts import BalanceAlert, SetBalanceAlertCommand
from credits_service.domain.plans import PlanBook
from credits_service.service.ports import UnitOfWork
from credits_service.service.transactions import Transactions


class Alerts:
    def __init__(self, transactions: Transactions, plans: PlanBook) -> None:
        self._transactions = transactions
        self._plans = plans

    async def sync_plan_rules(self) -> int:
        """Give every account that follows its plan's rule the rule the plans file now has
        (at start-up); returns how many accounts changed."""

        async def work(uow: UnitOfWork) -> int:
            return await uow.alerts.sync_plan_rules(self._plans.low_balance_rules())

        return await self._transactions.run(work)

    async def set_balance_alert(self, command: SetBalanceAlertCommand) -> BalanceAlert:
        """Give the account its own rule, or its plan's again; safe to repeat. A crossing the
        new threshold makes (the account's balance now below it: LOW_BALANCE) is an event
        like any other. AccountNotFound for an unknown account."""

        async def work(uow: UnitOfWork) -> BalanceAlert | errors.Declined:
            alert = await uow.alerts.set_rule(
                command.account_id, not command.use_plan, command.rule)
            return alert if alert is not None else errors.AccountNotFound(command.account_id)

        return await self._transactions.run(work)

    async def warn_expiring(self, within_s: float, batch_size: int) -> int:
        """Write the CREDITS_EXPIRING event of up to `batch_size` lots expiring within
        `within_s` seconds, once per lot; returns how many lots were handled."""

        async def work(uow: UnitOfWork) -> int:
            return await uow.alerts.warn_expiring(within_s, batch_size)

        return await self._transactions.run(work)
