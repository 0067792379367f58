"""Grant: add credits to an account as a new lot (creating the account), once per key."""

from __future__ import annotations

import dataclasses

from credits_service.domain import errors
from credits_service.domain.commands import GrantCommand, GrantResult
from credits_service.domain.model import BALANCE_MAX, PRIORITY_DEFAULT, EntryType
from credits_service.service.idempotency import keyed
from credits_service.service.ports import LedgerMetrics, UnitOfWork
from credits_service.service.transactions import Transactions

METHOD = "Grant"


class Granting:
    def __init__(self, transactions: Transactions, metrics: LedgerMetrics) -> None:
        self._transactions = transactions
        self._metrics = metrics

    async def grant(self, command: GrantCommand, actor: str) -> GrantResult:
        """Add the credits, or raise the decline (stored with the key, and replayed)."""

        async def effect(uow: UnitOfWork) -> GrantResult | errors.Declined:
            if command.expire_time is not None and command.expire_time <= await uow.now():
                # Raised, not returned: the transaction rolls back and the key stays unused,
                # as for any other invalid argument.
                raise errors.ExpireTimePassed(command.expire_time.isoformat())
            balance = await uow.accounts.credit(command.account_id, command.amount, BALANCE_MAX)
            if balance is None:
                current = await uow.accounts.get(command.account_id)
                assert current is not None, "only an existing account can be at its cap"
                return errors.BalanceLimitExceeded(
                    command.account_id, current.balance, command.amount, BALANCE_MAX)
            lot = await uow.lots.create(
                account_id=command.account_id,
                grant_type=command.grant_type,
                priority=PRIORITY_DEFAULT if command.priority is None else command.priority,
                expire_time=command.expire_time,
                amount=command.amount,
            )
            entry = await uow.entries.append(
                account_id=command.account_id,
                entry_type=EntryType.GRANT,
                grant_type=command.grant_type,
                amount=command.amount,
                balance_after=balance.balance,
                reason=command.reason,
                metadata=command.metadata,
                actor=actor,
                lot_id=lot.lot_id,
            )
            uow.on_commit(lambda: self._metrics.granted(command.amount))
            lot = dataclasses.replace(lot, grant_entry_id=entry.entry_id)
            return GrantResult(entry=entry, balance=balance, lot=lot)

        return await self._transactions.run(
            keyed(METHOD, command, command.idempotency_key, actor, effect, self._metrics))
