"""Group commit: concurrent callers share writes, and each learns its own batch's fate."""

from __future__ import annotations

import asyncio

import pytest

from leadflow.batching import GroupCommit


async def test_concurrent_callers_share_one_write() -> None:
    batches: list[list[int]] = []

    async def write(items: list[int]) -> None:
        batches.append(items)
        await asyncio.sleep(0.01)

    commits = GroupCommit(write)
    await asyncio.gather(*(commits.submit(i) for i in range(10)))
    assert batches == [list(range(10))]


async def test_callers_arriving_during_a_write_share_the_next_one() -> None:
    batches: list[list[int]] = []
    writing = asyncio.Event()

    async def write(items: list[int]) -> None:
        batches.append(items)
        writing.set()
        await asyncio.sleep(0.01)

    commits = GroupCommit(write)
    first = asyncio.create_task(commits.submit(0))
    await writing.wait()
    await asyncio.gather(first, *(commits.submit(i) for i in range(1, 10)))
    assert batches == [[0], list(range(1, 10))]


async def test_a_lone_caller_is_written_at_once() -> None:
    written: list[list[str]] = []

    async def write(items: list[str]) -> None:
        written.append(items)

    commits = GroupCommit(write)
    await commits.submit("a")
    await commits.submit("b")
    assert written == [["a"], ["b"]]


async def test_a_failed_write_fails_its_own_callers_only() -> None:
    writing = asyncio.Event()

    async def write(items: list[int]) -> None:
        writing.set()
        await asyncio.sleep(0.01)
        if 1 in items:
            raise RuntimeError("disk full")

    commits = GroupCommit(write)
    first = asyncio.create_task(commits.submit(0))
    await writing.wait()  # [0] is being written; 1 and 2 go in the next batch
    results = await asyncio.gather(
        first, *(commits.submit(i) for i in (1, 2)), return_exceptions=True
    )
    assert results[0] is None
    assert [type(r) for r in results[1:]] == [RuntimeError, RuntimeError]
    await commits.submit(5)  # the next batch is written as usual


async def test_batches_never_exceed_max_items() -> None:
    sizes: list[int] = []

    async def write(items: list[int]) -> None:
        sizes.append(len(items))
        await asyncio.sleep(0)

    commits = GroupCommit(write, max_items=4)
    await asyncio.gather(*(commits.submit(i) for i in range(11)))
    assert max(sizes) <= 4 and sum(sizes) == 11


async def test_a_cancelled_caller_s_item_is_still_written() -> None:
    written: list[int] = []
    started = asyncio.Event()

    async def write(items: list[int]) -> None:
        started.set()
        await asyncio.sleep(0.02)
        written.extend(items)

    commits = GroupCommit(write)
    caller = asyncio.create_task(commits.submit(7))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0.05)
    assert written == [7]
