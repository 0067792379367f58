"""What an account owes: credits it used beyond its lots (a reservation or deduction under a
credit limit, or an unlimited account's usage). Its balance is its lots' remaining credits
less its debt, so credits added to an account with debt pay the debt first and only the rest
goes into a lot: the lot records the whole credit, with less remaining, and credits added
never wait in a lot that could expire while the account owes. (Credits a release gives back
to a lot do stay there: the account's next holds and commits take them first.)

An unlimited account's usage never touches its lots and credits added to it do not pay its
debt: the plan covers it, and it is forgiven when the account leaves the plan (its lots,
credits bought meanwhile included, are still there then). A refund of usage is the
exception: it takes back what the plan covered."""

from __future__ import annotations

from collections.abc import Mapping

from credits_service.domain import errors
from credits_service.domain.model import BALANCE_MAX, BalanceSnapshot, EntryType, LedgerEntry
from credits_service.service.ports import UnitOfWork


async def repay(
    uow: UnitOfWork, account_id: str, credited: BalanceSnapshot, credits: int, *,
    usage_refund: bool = False,
) -> tuple[int, BalanceSnapshot]:
    """Of `credits` just added to the (locked) account, balance `credited`, the part that pays
    its debt (none on an unlimited account, unless they refund usage), taken off the debt;
    returns it and the balance after."""
    pays = usage_refund or not credited.unlimited
    repaid = min(credits, credited.debt) if pays else 0
    if not repaid:
        return 0, credited
    balance = await uow.accounts.repay(account_id, repaid)
    if balance is None:
        raise errors.LotsOutOfStep(account_id)
    return repaid, balance


async def forgive(
    uow: UnitOfWork, account_id: str, balance: BalanceSnapshot, *, reason: str,
    metadata: Mapping[str, str], actor: str,
) -> tuple[LedgerEntry | None, BalanceSnapshot]:
    """Write off the (locked) account's whole debt with one ADJUSTMENT entry (no lot): what
    closing an account that owes, or leaving an unlimited plan, does. Returns the entry (None
    when it owes nothing) and the balance after."""
    if not balance.debt:
        return None, balance
    credited = await uow.accounts.credit(account_id, balance.debt, BALANCE_MAX, granted=False)
    if credited is None:
        raise errors.LotsOutOfStep(account_id)
    after = await uow.accounts.repay(account_id, balance.debt)  # unlimited or not
    if after is None or after.debt:
        raise errors.LotsOutOfStep(account_id)
    entry = await uow.entries.append(
        account_id=account_id, entry_type=EntryType.ADJUSTMENT, amount=balance.debt,
        balance_after=after.balance, actor=actor, reason=reason, metadata=metadata)
    return entry, after
