"""Prices: what a call of a feature costs an account, by the rate card in force
(domain/rates.py), asked before any hold is placed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from credits_service.domain import errors
from credits_service.domain.commands import QuoteQuery, QuoteResult
from credits_service.domain.model import AccountStatus
from credits_service.domain.plans import PlanBook
from credits_service.domain.rates import RateCard
from credits_service.service.ports import UnitOfWork
from credits_service.service.reporting import LedgerMetrics, NoMetrics
from credits_service.service.transactions import Transactions

RateCardLoader = Callable[[], RateCard]  # reads the card's file again; RateCardRefused

_log = logging.getLogger(__name__)


class Pricing:
    def __init__(
        self, transactions: Transactions, card: RateCard, plans: PlanBook,
        loader: RateCardLoader | None = None, metrics: LedgerMetrics | None = None,
    ) -> None:
        self._transactions = transactions
        self._plans = plans
        self._loader = loader
        self._metrics = metrics or NoMetrics()
        self._reloading = threading.Lock()  # one reload at a time: the last read wins
        self.card = card
        self._metrics.rate_card_in_force(card.version)

    def reload(self) -> tuple[RateCard, RateCard]:
        """Read the card's file again and put it in force at once (calls priced already keep
        the card they began with); returns the previous card and the new one. A file that
        cannot be used raises RateCardRefused, listing every problem, and the card in force
        stays. Both outcomes are logged and counted."""
        with self._reloading:
            previous = self.card
            try:
                if self._loader is None:
                    raise errors.RateCardRefused("", [
                        "no --rate-card-file is set: the built-in card has nothing to reload"])
                card = self._loader()
            except errors.RateCardRefused as refused:
                _log.warning("rate card reload refused, %s stays in force: %s",
                             previous.version, "; ".join(refused.problems),
                             extra={"reason": refused.reason})
                self._metrics.rate_card_reloaded(previous.version, loaded=False)
                raise
            self.card = card
        _log.info("rate card %s from %s in force (was %s): %d features", card.version,
                  card.source, previous.version, len(card.features))
        self._metrics.rate_card_reloaded(card.version, loaded=True)
        return previous, card

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
        account could hold it now (as of the last sweep of expired lots); nothing is written
        (an unknown account is not created: AccountNotFound). Raises UnknownFeature before
        reading, CostTooLarge after (the price depends on the account's plan)."""
        card = self.card  # one card for the whole call, whatever a reload does meanwhile
        card.feature(query.feature)  # an unknown one is refused before reading

        async def work(uow: UnitOfWork) -> QuoteResult | errors.Declined:
            summary = await uow.accounts.summary(query.account_id)
            if summary is None:
                return errors.AccountNotFound(query.account_id)
            quote = card.quote(query.feature, query.units, summary.account.plan)
            affordable = (summary.account.status is AccountStatus.ACTIVE
                          and summary.balance.available >= quote.cost)
            return QuoteResult(quote, summary.balance, affordable)

        return await self._transactions.run(work)
