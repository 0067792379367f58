"""The ledger: one facade that wires the use cases together and exposes them. Each use case
lives in its own module; each runs in one transaction that includes its idempotency record
(transactions.py, idempotency.py)."""

from __future__ import annotations

from credits_service.domain.commands import AccountChangeResult, ChangePlanCommand
from credits_service.domain.plans import BUILT_IN, PlanBook
from credits_service.domain.rates import BUILT_IN as BUILT_IN_RATE_CARD
from credits_service.domain.rates import RateCard
from credits_service.domain.subscriptions import CatchUp
from credits_service.service.accounts import AccountOpening, Accounts
from credits_service.service.adjustments import Adjusting
from credits_service.service.alerts import Alerts
from credits_service.service.events import Events
from credits_service.service.grants import Granting
from credits_service.service.maintenance import Maintenance
from credits_service.service.organizations import Organizations
from credits_service.service.page_tokens import PageTokens
from credits_service.service.ports import UnitOfWorkFactory
from credits_service.service.pricing import Pricing, RateCardLoader
from credits_service.service.queries import Queries
from credits_service.service.refunds import Refunding
from credits_service.service.reporting import LedgerMetrics, NoMetrics
from credits_service.service.reservations.batch import Batches
from credits_service.service.reservations.commit import Committing
from credits_service.service.reservations.extend import Extending
from credits_service.service.reservations.release import Releasing
from credits_service.service.reservations.reserve import Reserving
from credits_service.service.subscriptions import Subscriptions
from credits_service.service.transactions import Transactions
from credits_service.service.transfers import Transferring
from credits_service.service.usage import Usage
from credits_service.settings import LedgerSettings


class Ledger:
    """The use cases of the credits ledger. Safe to share between concurrent calls."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        settings: LedgerSettings,
        page_token_key: bytes,
        metrics: LedgerMetrics | None = None,
        *,
        plans: PlanBook = BUILT_IN,
        auto_create_accounts: bool = True,
        rate_card: RateCard = BUILT_IN_RATE_CARD,
        rate_card_loader: RateCardLoader | None = None,
        catch_up: CatchUp = CatchUp.EACH,
    ) -> None:
        metrics = metrics or NoMetrics()
        self.transactions = Transactions(
            uow_factory, attempts_max=settings.transaction_attempts_max, metrics=metrics)
        self.opening = AccountOpening(plans, auto_create_accounts, metrics)
        self.accounts = Accounts(self.transactions, self.opening, metrics)
        self.pricing = Pricing(self.transactions, rate_card, plans, rate_card_loader, metrics)
        self.reserving = Reserving(
            self.transactions, settings, self.opening, metrics, self.pricing)
        self.batches = Batches(self.reserving, settings, metrics)
        self.committing = Committing(self.transactions, settings, metrics)
        self.releasing = Releasing(self.transactions, settings, metrics)
        self.extending = Extending(self.transactions, settings, metrics)
        self.granting = Granting(self.transactions, self.opening, metrics)
        self.adjusting = Adjusting(self.transactions, metrics)
        self.transferring = Transferring(self.transactions, self.opening, metrics)
        self.refunding = Refunding(self.transactions, settings, metrics)
        self.queries = Queries(
            self.transactions, settings, PageTokens(page_token_key), self.opening)
        self.maintenance = Maintenance(self.transactions, metrics)
        self.usage = Usage(self.transactions)
        self.events = Events(self.transactions)
        self.alerts = Alerts(self.transactions, plans)
        self.subscriptions = Subscriptions(self.transactions, self.opening, catch_up, metrics)
        self.organizations = Organizations(
            self.transactions, self.opening, PageTokens(page_token_key))

        self.ensure_account = self.accounts.ensure_account
        self.set_account_status = self.accounts.set_status
        self.change_plan = self._change_plan
        self.sync_credit_limits = self.accounts.sync_credit_limits
        self.grant = self.granting.grant
        self.adjust = self.adjusting.adjust
        self.transfer = self.transferring.transfer
        self.refund = self.refunding.refund
        self.check_and_reserve = self.reserving.check_and_reserve
        self.check_and_reserve_batch = self.batches.check_and_reserve_batch
        self.commit = self.committing.commit
        self.commit_each = self.committing.commit_each
        self.release = self.releasing.release
        self.extend = self.extending.extend
        self.quote = self.pricing.quote
        self.rate_card = self.pricing.rate_card
        self.reload_rate_card = self.pricing.reload
        self.usage_summary = self.usage.summary
        self.subscribe = self.subscriptions.subscribe
        self.change_subscription = self.subscriptions.change
        self.cancel_subscription = self.subscriptions.cancel
        self.get_subscription = self.subscriptions.get
        self.create_organization = self.organizations.create
        self.add_member = self.organizations.add_member
        self.set_member_caps = self.organizations.set_caps
        self.remove_member = self.organizations.remove_member
        self.get_organization = self.organizations.get
        self.get_balance = self.queries.get_balance
        self.history = self.queries.history
        self.list_reservations = self.queries.list_reservations
        self.drain = self.transactions.drain

    async def _change_plan(self, command: ChangePlanCommand, actor: str) -> AccountChangeResult:
        """ChangePlan, once a subscription that has ended by now is ended (its account's plan
        is its subscription's until then: SubscriptionActive)."""
        await self.subscriptions.settle(command.account_id)
        return await self.accounts.change_plan(command, actor)
