"""Credits added as a new lot, with its GRANT entry: what Grant does, and what an account's
welcome grant does when the account is created."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime

from credits_service.domain import errors
from credits_service.domain.commands import GrantResult
from credits_service.domain.model import BALANCE_MAX, AccountStatus, EntryType, GrantType
from credits_service.service import debts
from credits_service.service.ports import UnitOfWork


async def credit_lot(
    uow: UnitOfWork,
    *,
    account_id: str,
    amount: int,
    grant_type: GrantType,
    priority: int,
    expire_time: datetime | None,
    reason: str,
    metadata: Mapping[str, str],
    actor: str,
    entry_type: EntryType = EntryType.GRANT,
) -> GrantResult | errors.BalanceLimitExceeded | errors.AccountClosed:
    """Add `amount` to the account (created if missing) as a new lot with its entry (GRANT,
    or ADJUSTMENT, which lifetime_granted does not count), what the account owes paid first
    (service/debts.py); the decline if the account is closed or its balance would pass
    BALANCE_MAX (nothing written)."""
    balance = await uow.accounts.credit(
        account_id, amount, BALANCE_MAX, granted=entry_type is EntryType.GRANT)
    if balance is None:
        current = await uow.accounts.get(account_id)
        account = await uow.accounts.profile(account_id)
        assert current is not None and account is not None, "only an account is refused"
        if account.status is AccountStatus.CLOSED:
            return errors.AccountClosed(account_id)
        return errors.BalanceLimitExceeded(account_id, current.balance, amount, BALANCE_MAX)
    repaid, balance = await debts.repay(uow, account_id, balance, amount)
    lot = await uow.lots.create(
        account_id=account_id,
        grant_type=grant_type,
        priority=priority,
        expire_time=expire_time,
        amount=amount,
        remaining=amount - repaid,
    )
    entry = await uow.entries.append(
        account_id=account_id,
        entry_type=entry_type,
        grant_type=grant_type,
        amount=amount,
        balance_after=balance.balance,
        reason=reason,
        metadata=metadata,
        actor=actor,
        lot_id=lot.lot_id,
    )
    if entry_type is EntryType.GRANT:
        lot = dataclasses.replace(lot, grant_entry_id=entry.entry_id)
    return GrantResult(entry=entry, balance=balance, lot=lot)
