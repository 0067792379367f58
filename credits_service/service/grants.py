"""Grant: add credits to an account as a new lot (creating the account on the default plan,
with its welcome credits, if it does not exist), once per key."""

from __future__ import annotations

from credits_service.domain import errors
from credits_service.domain.commands import GrantCommand, GrantResult
from credits_service.domain.model import PRIORITY_DEFAULT
from credits_service.service.accounts import AccountOpening
from credits_service.service.crediting import credit_lot
from credits_service.service.idempotency import keyed
from credits_service.service.ports import UnitOfWork
from credits_service.service.reporting import LedgerMetrics
from credits_service.service.transactions import Transactions

METHOD = "Grant"


class Granting:
    def __init__(
        self, transactions: Transactions, opening: AccountOpening, metrics: LedgerMetrics
    ) -> None:
        self._transactions = transactions
        self._opening = opening
        self._metrics = metrics

    async def grant(self, command: GrantCommand, actor: str) -> GrantResult:
        """Add the credits, or raise the decline (stored with the key, and replayed)."""

        async def effect(uow: UnitOfWork) -> GrantResult | errors.Declined:
            if command.expire_time is not None and command.expire_time <= await uow.now():
                # Raised, not returned: the transaction rolls back and the key stays unused,
                # as for any other invalid argument.
                raise errors.ExpireTimePassed(command.expire_time.isoformat())
            if await uow.accounts.get(command.account_id) is None:
                await self._opening.open(uow, command.account_id, "", actor)
            outcome = await credit_lot(
                uow,
                account_id=command.account_id,
                amount=command.amount,
                grant_type=command.grant_type,
                priority=PRIORITY_DEFAULT if command.priority is None else command.priority,
                expire_time=command.expire_time,
                reason=command.reason,
                metadata=command.metadata,
                actor=actor,
            )
            if isinstance(outcome, GrantResult):
                uow.on_commit(lambda: self._metrics.granted(command.amount))
            return outcome

        return await self._transactions.run(
            keyed(METHOD, command, command.idempotency_key, actor, effect, self._metrics))
