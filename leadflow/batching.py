"""Group commit: concurrent callers' writes share one transaction.

A commit costs far more than the rows in it (an fsync on SQLite, a round trip on PostgreSQL). While
one batch is being written, the items that arrive wait and go together in the next, so N callers
under load cost a handful of transactions instead of N, and a lone caller waits for nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    def __init__(self, write: Callable[[list[T]], Awaitable[None]], max_items: int = 500) -> None:
        self._write = write
        self._max_items = max_items
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        """Return once `item` is written (with whatever else was waiting); raise what the write
        of its batch raised. A cancelled caller's item is still written: it was handed over."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self._max_items], self._queue[self._max_items :]
            try:
                await self._write([item for item, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    # Cancelled (the process is stopping): nobody will write what still waits.
                    for _, future in self._queue:
                        future.set_exception(exc)
                    self._queue = []
                    raise
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
