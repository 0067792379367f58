"""Group commit (credits_service/service/group_commit.py), with a fake run_many."""

from __future__ import annotations

import asyncio

import pytest

from credits_service.domain.errors import DatabaseStatementTimeout, DatabaseUnavailable
from credits_service.service.group_commit import GroupCommitter


class Recorder:
    def __init__(self, fail_on: int | None = None, storage_down: bool = False) -> None:
        self.groups: list[list[int]] = []
        self.fail_on = fail_on
        self.storage_down = storage_down
        self.stuck: int | None = None
        self.release = asyncio.Event()

    async def run_many(self, items):
        self.groups.append(list(items))
        await self.release.wait()
        if self.storage_down:
            raise DatabaseUnavailable("down")
        if self.fail_on in items:
            raise RuntimeError(f"item {self.fail_on} breaks its group")
        if self.stuck in items:
            raise DatabaseStatementTimeout(f"item {self.stuck} waits on a lock")
        return [item * 10 for item in items]


async def test_a_lone_call_runs_at_once_as_a_group_of_one():
    recorder = Recorder()
    recorder.release.set()
    group = GroupCommitter(recorder.run_many, group_size_max=10, concurrency=2)
    assert await group.submit(7) == 70
    assert recorder.groups == [[7]]


async def test_calls_arriving_while_groups_run_are_decided_together_in_order():
    recorder = Recorder()
    group = GroupCommitter(recorder.run_many, group_size_max=3, concurrency=1)
    calls = [asyncio.create_task(group.submit(n)) for n in range(8)]
    await asyncio.sleep(0)
    recorder.release.set()
    assert await asyncio.gather(*calls) == [n * 10 for n in range(8)]
    assert recorder.groups == [[0], [1, 2, 3], [4, 5, 6], [7]]


async def test_an_item_that_breaks_its_group_fails_alone():
    recorder = Recorder(fail_on=2)
    group = GroupCommitter(recorder.run_many, group_size_max=10, concurrency=1)
    calls = [asyncio.create_task(group.submit(n)) for n in range(5)]
    await asyncio.sleep(0)
    recorder.release.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[:2] == [0, 10] and results[3:] == [30, 40]
    assert isinstance(results[2], RuntimeError)


async def test_a_database_failure_fails_every_item_of_the_group_without_rerunning_them():
    recorder = Recorder(storage_down=True)
    group = GroupCommitter(recorder.run_many, group_size_max=10, concurrency=1)
    calls = [asyncio.create_task(group.submit(n)) for n in range(4)]
    await asyncio.sleep(0)
    recorder.release.set()
    for call in calls:
        with pytest.raises(DatabaseUnavailable):
            await call
    assert recorder.groups == [[0], [1, 2, 3]]


async def test_a_caller_that_leaves_does_not_stop_its_group():
    recorder = Recorder()
    group = GroupCommitter(recorder.run_many, group_size_max=10, concurrency=1)
    first = asyncio.create_task(group.submit(1))
    second = asyncio.create_task(group.submit(2))
    await asyncio.sleep(0)
    second.cancel()
    recorder.release.set()
    assert await first == 10
    await asyncio.sleep(0.01)
    assert recorder.groups == [[1], [2]]  # the cancelled caller's item was still decided


async def test_a_group_that_times_out_reruns_its_items_alone_so_only_the_stuck_one_fails():
    recorder = Recorder()
    recorder.stuck = 3
    group = GroupCommitter(recorder.run_many, group_size_max=10, concurrency=1)
    calls = [asyncio.create_task(group.submit(n)) for n in range(5)]
    await asyncio.sleep(0)
    recorder.release.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[:3] == [0, 10, 20] and results[4] == 40
    assert isinstance(results[3], DatabaseStatementTimeout)
    assert recorder.groups[:2] == [[0], [1, 2, 3, 4]]
    assert sorted(recorder.groups[2:]) == [[1], [2], [3], [4]]


async def test_a_group_takes_items_up_to_a_total_size_and_always_at_least_one():
    recorder = Recorder()
    group = GroupCommitter(recorder.run_many, group_size_max=5, concurrency=1,
                           size_of=lambda item: item)
    calls = [asyncio.create_task(group.submit(n)) for n in (1, 2, 3, 9, 1, 1)]
    await asyncio.sleep(0)
    recorder.release.set()
    assert await asyncio.gather(*calls) == [10, 20, 30, 90, 10, 10]
    assert recorder.groups == [[1], [2, 3], [9], [1, 1]]


async def test_a_second_group_starts_while_one_runs_only_when_it_is_full():
    recorder = Recorder()
    group = GroupCommitter(recorder.run_many, group_size_max=3, concurrency=1,
                           concurrency_when_full=2)
    first = asyncio.create_task(group.submit(0))
    await asyncio.sleep(0)
    partial = [asyncio.create_task(group.submit(n)) for n in (1, 2)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert recorder.groups == [[0]]  # a partial group waits for the running one
    more = [asyncio.create_task(group.submit(n)) for n in (3, 4, 5)]
    await asyncio.sleep(0)  # the calls queue, and a full group's task is created
    await asyncio.sleep(0)  # which starts
    assert recorder.groups == [[0], [1, 2, 3]]  # full: it starts beside the first
    recorder.release.set()
    assert await asyncio.gather(first, *partial, *more) == [n * 10 for n in range(6)]
    assert recorder.groups == [[0], [1, 2, 3], [4, 5]]
