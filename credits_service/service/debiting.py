"""Credits taken off an account, lot by lot in consumption order: what Adjust DEDUCT, Transfer
and a close's write-off do. Reserved credits are never taken; the caller writes the entries."""

from __future__ import annotations

from credits_service.domain import errors
from credits_service.domain.lots import LotChange
from credits_service.domain.model import BalanceSnapshot
from credits_service.service.ports import UnitOfWork


async def take_free_credits(
    uow: UnitOfWork, account_id: str, amount: int, *, into_debt: bool = False,
    allow_negative: bool = False,
) -> tuple[list[tuple[int, int]], int, BalanceSnapshot]:
    """Take `amount` off the account (locked, its due lots written off): its free credits in
    consumption order, and, when `into_debt`, the rest as debt, within its credit limit
    unless `allow_negative`. Without `into_debt` only its own credits are taken, and the
    caller has checked they cover `amount`. Returns (lot_id, credits) per lot, the credits
    taken into debt, and the balance after."""
    free = (await uow.lots.free_in_order({account_id: amount}))[account_id]
    parts: list[tuple[int, int]] = []
    left = amount
    for lot in free:
        part = min(lot.free, left)
        parts.append((lot.lot_id, part))
        left -= part
        if not left:
            break
    if left and not into_debt:  # own_available said the free credits were there
        raise errors.LotsOutOfStep(account_id)
    await uow.lots.apply([LotChange(lot_id, 0, -part) for lot_id, part in parts])
    debited = await uow.accounts.debit(account_id, amount, left, allow_negative=allow_negative,
                                       own_credits=not into_debt)
    if debited is None:
        raise errors.LotsOutOfStep(account_id)
    return parts, left, debited
