"""BatchCheckAndReserve: many reservations in one call, each decided as if sent alone.

Items go to shards by account; each shard decides the items of concurrent batches together,
one transaction at a time (a second one starts only with a full group, while items queue
faster than one drains). Shards share no account, so their transactions never wait on each
other's account locks (but for members of one organisation, whose calls their own credits do
not cover: those shards' second transactions take the pool's lock in turn), and a transaction
decides the items of one account in order, as one by one. (BatchCommit is
Committing.commit_each.)
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence
from typing import Any

from credits_service.domain import errors
from credits_service.domain.commands import ReserveResult
from credits_service.service.group_commit import GroupCommitter
from credits_service.service.reporting import LedgerMetrics
from credits_service.service.reservations.reserve import Call, Reserving
from credits_service.settings import LedgerSettings

Answer = ReserveResult | errors.Declined


class Batches:
    def __init__(
        self, reserving: Reserving, settings: LedgerSettings, metrics: LedgerMetrics
    ) -> None:
        self._reserving = reserving
        self._shards: list[GroupCommitter[list[Call], list[Answer]]] = [
            GroupCommitter(
                self._decide_parts,
                group_size_max=settings.batch_reserve_group_items_max,
                concurrency=1,
                concurrency_when_full=settings.batch_reserve_full_groups_max,
                size_of=len,
                on_group=lambda size: metrics.grouped("BatchCheckAndReserve", size),
            )
            for _ in range(settings.batch_reserve_shards)
        ]

    @property
    def shard_count(self) -> int:
        return len(self._shards)

    async def check_and_reserve_batch(self, calls: Sequence[Call]) -> list[Answer]:
        """The answers Reserving.check_and_reserve_many gives `calls`, decided shard by shard.
        Every part is decided before this returns or raises the first part's failure."""
        parts = split_by_account(calls, len(self._shards))
        decided = await asyncio.gather(
            *(self._shards[shard].submit([calls[i] for i in indexes])
              for shard, indexes in parts),
            return_exceptions=True,
        )
        outcomes: list[Any] = [None] * len(calls)
        for (_, indexes), part in zip(parts, decided, strict=True):
            if isinstance(part, BaseException):
                raise part
            for i, outcome in zip(indexes, part, strict=True):
                outcomes[i] = outcome
        return outcomes

    async def _decide_parts(self, parts: Sequence[list[Call]]) -> list[list[Answer]]:
        """check_and_reserve_many for the parts of concurrent batches, in one transaction."""
        outcomes = await self._reserving.check_and_reserve_many(
            [call for part in parts for call in part])
        decided: list[list[Answer]] = []
        start = 0
        for part in parts:
            decided.append(outcomes[start:start + len(part)])
            start += len(part)
        return decided


def shard_of(account_id: str, shards: int) -> int:
    """The shard of an account's batch items."""
    return zlib.crc32(account_id.encode()) % shards


def split_by_account(calls: Sequence[Call], shards: int) -> list[tuple[int, list[int]]]:
    """(shard, indexes of calls in order) for each shard some call goes to. A call goes to the
    shard of its account, or, when it repeats an earlier call's idempotency key, to that
    call's shard, so the key's first use is decided first, as one by one."""
    shard_of_key: dict[tuple[str, str], int] = {}
    indexes: dict[int, list[int]] = {}
    for i, (command, actor) in enumerate(calls):
        shard = shard_of_key.setdefault(
            (actor, command.idempotency_key), shard_of(command.account_id, shards))
        indexes.setdefault(shard, []).append(i)
    return sorted(indexes.items())

