"""Transfer: credits from one account to another in one transaction, once per key. The two
accounts are locked in account order (AccountRepository.lock), so transfers in opposite
directions wait for each other instead of deadlocking. Free credits leave the giver's lots in
consumption order and arrive in new lots of the receiver with the expiry, priority and grant
type they had; each part is a TRANSFER_OUT and a TRANSFER_IN entry with one transfer_id."""

from __future__ import annotations

import uuid

from credits_service.domain import errors
from credits_service.domain.commands import TransferCommand, TransferResult
from credits_service.domain.model import BALANCE_MAX, AccountStatus, EntryType, LedgerEntry
from credits_service.service import debts
from credits_service.service.accounts import AccountOpening
from credits_service.service.debiting import take_free_credits
from credits_service.service.idempotency import keyed
from credits_service.service.ports import UnitOfWork
from credits_service.service.reporting import LedgerMetrics
from credits_service.service.transactions import Transactions
from credits_service.service.write_offs import write_off_due_lots

METHOD = "Transfer"


class Transferring:
    def __init__(
        self, transactions: Transactions, opening: AccountOpening, metrics: LedgerMetrics
    ) -> None:
        self._transactions = transactions
        self._opening = opening
        self._metrics = metrics

    async def transfer(self, command: TransferCommand, actor: str) -> TransferResult:
        """Move the credits, or raise the decline (stored with the key, and replayed, but for
        those about an account itself)."""
        giver, receiver = command.from_account_id, command.to_account_id
        assert giver != receiver, "validated: an account does not transfer to itself"

        async def effect(uow: UnitOfWork) -> TransferResult | errors.Declined:
            locked = await uow.accounts.lock([giver, receiver])
            if giver not in locked:
                return errors.AccountNotFound(giver)
            if receiver not in locked:
                opened = await self._opening.on_first_use(uow, receiver, actor)
                if opened is None:
                    return errors.AccountNotFound(receiver)
            declined = await _status_declines(uow, giver, receiver)
            if declined is not None:
                return declined
            locked.update(await write_off_due_lots(uow, [giver, receiver], self._metrics))
            available = locked[giver].own_available  # never credits the giver owes
            if available < command.amount:
                return errors.InsufficientCredits(giver, available, command.amount)
            received = await uow.accounts.credit(
                receiver, command.amount, BALANCE_MAX, granted=False)
            if received is None:
                current = await uow.accounts.get(receiver)
                assert current is not None
                return errors.BalanceLimitExceeded(
                    receiver, current.balance, command.amount, BALANCE_MAX)
            repaid, received = await debts.repay(uow, receiver, received, command.amount)
            parts, _, given = await take_free_credits(uow, giver, command.amount)
            transfer_id = str(uuid.uuid4())
            sources = await uow.lots.of(lot_id for lot_id, _ in parts)
            out_entries: list[LedgerEntry] = []
            in_entries: list[LedgerEntry] = []
            giver_after = given.balance + command.amount
            receiver_after = received.balance - command.amount
            for lot_id, part in parts:
                source = sources[lot_id]
                giver_after -= part
                receiver_after += part
                out_entries.append(await uow.entries.append(
                    account_id=giver, entry_type=EntryType.TRANSFER_OUT, amount=-part,
                    balance_after=giver_after, actor=actor, reason=command.reason,
                    metadata=command.metadata, lot_id=lot_id, transfer_id=transfer_id))
                paying = min(part, repaid)  # the receiver's debt is paid first
                repaid -= paying
                lot = await uow.lots.create(
                    account_id=receiver, grant_type=source.grant_type, priority=source.priority,
                    expire_time=source.expire_time, amount=part, remaining=part - paying)
                in_entries.append(await uow.entries.append(
                    account_id=receiver, entry_type=EntryType.TRANSFER_IN, amount=part,
                    balance_after=receiver_after, actor=actor, reason=command.reason,
                    metadata=command.metadata, lot_id=lot.lot_id, transfer_id=transfer_id,
                    grant_type=source.grant_type))
            assert (giver_after, receiver_after) == (given.balance, received.balance)
            return TransferResult(transfer_id, tuple(out_entries), tuple(in_entries), given,
                                  received)

        return await self._transactions.run(
            keyed(METHOD, command, command.idempotency_key, actor, effect, self._metrics))


async def _status_declines(
    uow: UnitOfWork, giver: str, receiver: str
) -> errors.Declined | None:
    """The giver must be active; the receiver active or frozen (it may take credits)."""
    giving = await uow.accounts.profile(giver)
    receiving = await uow.accounts.profile(receiver)
    assert giving is not None and receiving is not None, "both accounts are locked"
    if giving.status is AccountStatus.CLOSED:
        return errors.AccountClosed(giver)
    if giving.status is AccountStatus.FROZEN:
        return errors.AccountFrozen(giver)
    if receiving.status is AccountStatus.CLOSED:
        return errors.AccountClosed(receiver)
    return None
