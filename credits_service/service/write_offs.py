"""Lots past their expire_time: their unheld credits are written off, with one EXPIRY entry
each, by whichever transaction locks the account first (a sweep, a reservation, a Commit).
Nothing a transaction does after locking an account can spend or count an expired credit."""

from __future__ import annotations

from collections.abc import Sequence

from credits_service.domain.model import BalanceSnapshot
from credits_service.domain.rows import ExpiredLot, WriteOff
from credits_service.service.ports import UnitOfWork
from credits_service.service.reporting import LedgerMetrics

SYSTEM_ACTOR = "system"  # the actor of entries the service writes on its own (expiry)


async def lock_accounts(
    uow: UnitOfWork, account_ids: Sequence[str], metrics: LedgerMetrics
) -> dict[str, BalanceSnapshot]:
    """Lock the accounts and write off their lots that are past expire_time."""
    locked = await uow.accounts.lock(account_ids)
    if locked:
        locked.update(await write_off_due_lots(uow, list(locked), metrics))
    return locked


async def write_off_due_lots(
    uow: UnitOfWork, account_ids: Sequence[str], metrics: LedgerMetrics
) -> dict[str, BalanceSnapshot]:
    """Expire the (locked) accounts' due lots; returns the balances that changed."""
    return await write_off_expired(uow, await uow.lots.expire_due(account_ids), metrics)


async def write_off_expired(
    uow: UnitOfWork, expired: Sequence[ExpiredLot], metrics: LedgerMetrics
) -> dict[str, BalanceSnapshot]:
    """Write off lots just marked expired, in expiry order; returns the balances that
    changed."""
    return await write_off(
        uow, [WriteOff(lot.account_id, lot.lot_id, lot.unheld, None) for lot in expired],
        metrics,
    )


async def write_off(
    uow: UnitOfWork, write_offs: Sequence[WriteOff], metrics: LedgerMetrics
) -> dict[str, BalanceSnapshot]:
    """Take expired credits off the balances with their EXPIRY entries, in one statement;
    returns the balances that changed."""
    write_offs = [w for w in write_offs if w.amount]
    if not write_offs:
        return {}
    balances = await uow.entries.write_off(write_offs, SYSTEM_ACTOR)
    total = sum(w.amount for w in write_offs)
    uow.on_commit(lambda: metrics.written_off(total))
    return balances
