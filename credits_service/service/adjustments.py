"""Adjust: an operator's correction of a balance, once per key. ADD puts credits in a new lot
(grant type ADMIN_GRANT); DEDUCT takes free credits from lots in consumption order, one
ADJUSTMENT entry per lot, so the ledger says which, and what the lots do not cover into debt
(one ADJUSTMENT entry without a lot); SET adds or deducts the difference, and with an
expected balance only if the balance is still that (compare-and-set under the account's
lock). Reserved credits are never taken: a deduction stops at available (the credit limit
counted), unless allow_negative."""

from __future__ import annotations

from credits_service.domain import errors
from credits_service.domain.commands import AdjustCommand, AdjustMode, AdjustResult, GrantResult
from credits_service.domain.model import (
    BALANCE_MAX,
    PRIORITY_DEFAULT,
    AccountStatus,
    BalanceSnapshot,
    EntryType,
    GrantType,
    LedgerEntry,
)
from credits_service.service.accounts import locked_account
from credits_service.service.crediting import credit_lot
from credits_service.service.debiting import take_free_credits
from credits_service.service.idempotency import keyed
from credits_service.service.ports import UnitOfWork
from credits_service.service.reporting import LedgerMetrics
from credits_service.service.transactions import Transactions
from credits_service.service.write_offs import write_off_due_lots

METHOD = "Adjust"


class Adjusting:
    def __init__(self, transactions: Transactions, metrics: LedgerMetrics) -> None:
        self._transactions = transactions
        self._metrics = metrics

    async def adjust(self, command: AdjustCommand, actor: str) -> AdjustResult:
        """Apply the adjustment, or raise the decline (stored with the key, and replayed,
        but for those about the account itself)."""

        async def effect(uow: UnitOfWork) -> AdjustResult | errors.Declined:
            if command.expire_time is not None and command.expire_time <= await uow.now():
                raise errors.ExpireTimePassed(command.expire_time.isoformat())
            found = await locked_account(uow, command.account_id, open_only=True)
            if isinstance(found, errors.Declined):
                return found
            account, balance = found
            expected = command.expected_balance
            if expected is not None and expected != balance.balance:
                return errors.BalanceMismatch(command.account_id, expected, balance.balance)
            balance = (await write_off_due_lots(uow, [command.account_id], self._metrics)
                       ).get(command.account_id, balance)
            change = _change(command, balance)
            if change > 0:
                return await self._add(uow, command, change, actor)
            if change < 0:
                if account.status is AccountStatus.FROZEN:
                    return errors.AccountFrozen(command.account_id)
                return await self._deduct(uow, command, -change, balance, actor)
            return AdjustResult(entries=(), balance=balance)

        return await self._transactions.run(
            keyed(METHOD, command, command.idempotency_key, actor, effect, self._metrics))

    async def _add(
        self, uow: UnitOfWork, command: AdjustCommand, amount: int, actor: str
    ) -> AdjustResult | errors.Declined:
        added = await credit_lot(
            uow,
            account_id=command.account_id,
            amount=amount,
            grant_type=GrantType.ADMIN_GRANT,
            priority=PRIORITY_DEFAULT,
            expire_time=command.expire_time,
            reason=command.reason,
            metadata=command.metadata,
            actor=actor,
            entry_type=EntryType.ADJUSTMENT,
        )
        if not isinstance(added, GrantResult):
            return added
        return AdjustResult(entries=(added.entry,), balance=added.balance, lot=added.lot)

    async def _deduct(
        self, uow: UnitOfWork, command: AdjustCommand, amount: int, balance: BalanceSnapshot,
        actor: str,
    ) -> AdjustResult | errors.Declined:
        """Take `amount` off the (locked, written-off) account: its free credits lot by lot,
        one entry each, and what they do not cover into debt (one entry without a lot),
        within its credit limit unless allow_negative."""
        if balance.available < amount and not command.allow_negative:
            return errors.InsufficientCredits(command.account_id, balance.available, amount)
        if balance.balance - amount < -BALANCE_MAX:  # the ledger's floor, allowed or not
            return errors.InsufficientCredits(
                command.account_id, balance.balance + BALANCE_MAX, amount)
        parts, owed, debited = await take_free_credits(
            uow, command.account_id, amount, into_debt=True,
            allow_negative=command.allow_negative)
        entries: list[LedgerEntry] = []
        balance_after = balance.balance
        for lot_id, part in [*parts, *([(None, owed)] if owed else [])]:
            balance_after -= part
            entries.append(await uow.entries.append(
                account_id=command.account_id,
                entry_type=EntryType.ADJUSTMENT,
                amount=-part,
                balance_after=balance_after,
                actor=actor,
                reason=command.reason,
                metadata=command.metadata,
                lot_id=lot_id,
            ))
        assert balance_after == debited.balance, "the entries add up to the debit"
        return AdjustResult(entries=tuple(entries), balance=debited)


def _change(command: AdjustCommand, balance: BalanceSnapshot) -> int:
    """The credits the adjustment adds (positive) or deducts (negative)."""
    if command.mode is AdjustMode.ADD:
        return command.amount
    if command.mode is AdjustMode.DEDUCT:
        return -command.amount
    return command.amount - balance.balance
