"""Group commit: concurrent calls of one kind share one transaction.

Each caller queues its item and waits. While fewer than `concurrency` groups are running, the
next group takes everything queued, up to `group_size_max` in all (items count 1 each, or
`size_of`; a group always takes at least one), and runs it as one call of `run_many`. Nothing
waits on a timer: a lone call runs at once as a group of one, and groups grow only when calls
arrive faster than transactions finish. The hot account gains most: its reservations are decided
together instead of one row-lock turn each.

With `concurrency_when_full` above `concurrency`, more groups may run, up to that many, but
only full ones: a group that could take no more (the next item would pass `group_size_max`).
Such a group is worth starting while another runs even when both wait on the same row locks:
its statements are queued in the database behind the running transaction, instead of waiting
for it to finish and for the event loop to start the next. Partial groups still wait, so that
they keep growing instead of splitting the queue into smaller, costlier transactions.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from credits_service.domain.errors import DatabaseStatementTimeout, DatabaseUnavailable

_log = logging.getLogger(__name__)
Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


class Undecided:
    """A group's answer for an item it leaves to `run_alone` (see the module's docstring)."""


UNDECIDED = Undecided()


class GroupCommitter(Generic[Item, Outcome]):
    def __init__(
        self,
        run_many: Callable[[Sequence[Item]], Awaitable[Sequence[Outcome | Undecided]]],
        *,
        run_alone: Callable[[Item], Awaitable[Outcome]] | None = None,
        group_size_max: int,
        concurrency: int,
        concurrency_when_full: int = 0,
        size_of: Callable[[Item], int] = lambda item: 1,
        on_group: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._run_many = run_many
        self._run_alone = run_alone
        self._size_of = size_of
        self._on_group = on_group
        self._group_size_max = group_size_max
        self._concurrency = concurrency
        self._concurrency_when_full = max(concurrency, concurrency_when_full)
        self._queue: list[tuple[Item, asyncio.Future[Outcome | Undecided]]] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Outcome:
        """The outcome `run_many` gave this item, or, if it left the item UNDECIDED,
        `run_alone`'s. A caller that leaves early (cancelled) does not stop its group: the
        item is decided all the same, as a lone call would be."""
        future: asyncio.Future[Outcome | Undecided] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._start_groups()
        outcome = await future
        if isinstance(outcome, Undecided):
            assert self._run_alone is not None, "a group left an item undecided: no run_alone"
            return await self._run_alone(item)
        return outcome

    def _start_groups(self) -> None:
        while self._queue and self._running < self._concurrency_when_full:
            taken = total = 0
            for item, _ in self._queue:
                size = self._size_of(item)
                if taken and total + size > self._group_size_max:
                    break
                taken += 1
                total += size
            full = taken < len(self._queue) or total >= self._group_size_max
            if self._running >= self._concurrency and not full:
                return
            group = self._queue[:taken]
            del self._queue[:taken]
            self._running += 1
            self._on_group(total)
            # A fresh context: the group must not inherit the call deadline of whichever
            # caller happened to start it (its transaction serves every caller in it).
            task = asyncio.get_running_loop().create_task(
                self._run(group), context=contextvars.Context()
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, group: list[tuple[Item, asyncio.Future[Outcome | Undecided]]]) -> None:
        try:
            await self._settle(group)
        finally:
            self._running -= 1
            self._start_groups()

    async def _settle(self, group: list[tuple[Item, asyncio.Future[Outcome | Undecided]]]) -> None:
        try:
            outcomes = await self._run_many([item for item, _ in group])
        except DatabaseStatementTimeout as exc:
            # One item may be stuck (its account locked elsewhere). The database answered, so
            # the group was rolled back and rerunning is safe. A database that does not answer
            # at all (a client-side timeout) fails the group alike instead (below): reruns
            # would only hold the pool longer.
            await self._each_alone(group, exc)
            return
        except DatabaseUnavailable as exc:  # the database failed the group: each fails alike
            for _, future in group:
                _fail(future, exc)
            return
        except Exception as exc:  # one item may have broken the group
            await self._each_alone(group, exc)
            return
        for (_, future), outcome in zip(group, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    async def _each_alone(
        self, group: list[tuple[Item, asyncio.Future[Outcome | Undecided]]], exc: Exception
    ) -> None:
        """After `exc` failed the group, decide each item alone, so it fails only itself."""
        if len(group) == 1:
            _fail(group[0][1], exc)
            return
        _log.warning("a group of %d failed (%r); running its items one by one", len(group), exc)
        await asyncio.gather(*(self._settle([member]) for member in group))


def _fail(future: asyncio.Future[object], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
