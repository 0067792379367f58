"""Free credits taken off an account, lot by lot in consumption order: what Adjust DEDUCT and
Transfer do. Reserved credits are never taken; the caller writes the entries."""

from __future__ import annotations

from credits_service.domain import errors
from credits_service.domain.lots import LotChange
from credits_service.domain.model import BalanceSnapshot
from credits_service.service.ports import UnitOfWork


async def take_free_credits(
    uow: UnitOfWork, account_id: str, amount: int
) -> tuple[list[tuple[int, int]], BalanceSnapshot]:
    """Take `amount` free credits off the account (locked, its due lots written off, with at
    least `amount` available): returns (lot_id, credits) per lot in consumption order, and
    the balance after."""
    free = (await uow.lots.free_in_order({account_id: amount}))[account_id]
    parts: list[tuple[int, int]] = []
    left = amount
    for lot in free:
        part = min(lot.free, left)
        parts.append((lot.lot_id, part))
        left -= part
        if not left:
            break
    if left:  # available said the free credits were there
        raise errors.LotsOutOfStep(account_id)
    await uow.lots.apply([LotChange(lot_id, 0, -part) for lot_id, part in parts])
    debited = await uow.accounts.debit(account_id, amount)
    if debited is None:
        raise errors.LotsOutOfStep(account_id)
    return parts, debited
