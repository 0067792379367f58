"""The ledger's own upkeep, run by workers/sweeper.py: expire reservations and lots that are
due, purge old idempotency keys, fold the usage shards of hours past. Each step is safe with
several replicas running it at once: rows are locked with SKIP LOCKED and changed by
compare-and-set (the fold deletes each row once)."""

from __future__ import annotations

from credits_service.domain.model import ReservationStatus
from credits_service.service.ports import UnitOfWork
from credits_service.service.reporting import LedgerMetrics
from credits_service.service.reservations.settling import void
from credits_service.service.transactions import Transactions
from credits_service.service.write_offs import write_off_due_lots


class Maintenance:
    def __init__(self, transactions: Transactions, metrics: LedgerMetrics) -> None:
        self._transactions = transactions
        self._metrics = metrics

    async def expire_due_reservations(self, batch_size: int) -> int:
        """Expire up to `batch_size` ACTIVE reservations past their expire_time; returns how
        many."""

        async def work(uow: UnitOfWork) -> int:
            due = await uow.reservations.lock_due(batch_size)
            if due:
                await void(uow, due, ReservationStatus.EXPIRED, self._metrics)
                uow.on_commit(lambda: self._metrics.expired(len(due)))
            return len(due)

        return await self._transactions.run(work)

    async def expire_due_lots(self, batch_size: int) -> int:
        """Write off the unheld credits of lots past expire_time, for up to `batch_size`
        accounts; returns how many accounts it handled."""

        async def work(uow: UnitOfWork) -> int:
            account_ids = await uow.lots.due_accounts(batch_size)
            if account_ids:
                await write_off_due_lots(uow, account_ids, self._metrics)
            return len(account_ids)

        return await self._transactions.run(work)

    async def purge_idempotency_keys(self, older_than_s: float, batch_size: int) -> int:
        """Delete up to `batch_size` idempotency keys older than `older_than_s`."""

        async def work(uow: UnitOfWork) -> int:
            return await uow.idempotency.purge(older_than_s, batch_size)

        return await self._transactions.run(work)

    async def compact_usage_shards(self, older_than_s: float, batch_size: int) -> int:
        """Fold the usage shards of up to `batch_size` rows of hours that ended more than
        `older_than_s` ago into one row per hour, plan and feature; returns the rows folded."""

        async def work(uow: UnitOfWork) -> int:
            return await uow.usage.compact_shards(older_than_s, batch_size)

        return await self._transactions.run(work)
