"""Prices: what a call of a feature costs an account, by the rate card in force
(domain/rates.py), asked before any hold is placed."""

from __future__ import annotations

from credits_service.domain import errors
from credits_service.domain.commands import QuoteQuery, QuoteResult
from credits_service.domain.model import AccountStatus
from credits_service.domain.plans import PlanBook
from credits_service.domain.rates import RateCard
from credits_service.service.ports import UnitOfWork
from credits_service.service.transactions import Transactions


class Pricing:
    def __init__(self, transactions: Transactions, card: RateCard, plans: PlanBook) -> None:
        self._transactions = transactions
        self._plans = plans
        self.card = card

    async def rate_card(self, plan: str = "", account_id: str = "") -> tuple[RateCard, str]:
        """The card in force and the plan whose prices to show: `plan` (PlanNotFound when the
        plans file has none of that name), `account_id`'s plan (AccountNotFound), or none."""
        card = self.card
        if plan:
            if plan not in self._plans.plans:
                raise errors.PlanNotFound(plan)
            return card, plan
        if not account_id:
            return card, ""

        async def work(uow: UnitOfWork) -> str | errors.Declined:
            account = await uow.accounts.profile(account_id)
            return errors.AccountNotFound(account_id) if account is None else account.plan

        return card, await self._transactions.run(work)

    async def quote(self, query: QuoteQuery) -> QuoteResult:
        """The cost of the feature and units at the account's plan's prices, and whether the
        account could hold it now; nothing is written (an unknown account is not created:
        AccountNotFound). Raises UnknownFeature or CostTooLarge first, without reading."""
        card = self.card  # one card for the whole call, whatever a reload does meanwhile
        if query.feature not in card.features:
            card.quote(query.feature, query.units, "")  # raises UnknownFeature

        async def work(uow: UnitOfWork) -> QuoteResult | errors.Declined:
            summary = await uow.accounts.summary(query.account_id)
            if summary is None:
                return errors.AccountNotFound(query.account_id)
            quote = card.quote(query.feature, query.units, summary.account.plan)
            affordable = (summary.account.status is AccountStatus.ACTIVE
                          and summary.balance.available >= quote.cost)
            return QuoteResult(quote, summary.balance, affordable)

        return await self._transactions.run(work)
