"""Group commit: many small writes of the same kind share one SQLite transaction.

Each caller submits one item and waits until the transaction holding it has
committed; nobody is told "done" before that. While one transaction runs in the
store's thread, new items gather for the next, so under load one commit (and,
for queued events, one sync of the WAL) serves every request that arrived in
the meantime, and an idle daemon adds no delay: a lone item is committed at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

from fgd.errors import Unavailable

T = TypeVar("T")

# Items per transaction at most: a commit of a huge batch would hold the store's thread (and
# every API call queued behind it) for long, and its callers would all wait for the slowest part.
MAX_BATCH = 1000


class _Batch(Generic[T]):
    __slots__ = ("done", "error", "items")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.done = trio.Event()
        self.error: BaseException | None = None


class GroupCommit(Generic[T]):
    """Commits submitted items in batches with `commit(items)`, run by `run_in_store` (the store's thread)."""

    def __init__(
        self,
        run_in_store: Callable[..., Awaitable[object]],
        commit: Callable[[list[T]], object],
        what: str,
    ) -> None:
        self._run_in_store = run_in_store
        self._commit = commit
        self._what = what
        self._open: _Batch[T] = _Batch()
        # Batches that reached MAX_BATCH, oldest first, waiting for their transaction.
        self._full: list[_Batch[T]] = []
        self._wakeup = trio.Event()
        self._stopped = False
        # Committed transactions and items, shown in /metrics (fgd_async_writes) and read by bench/async_queue.py.
        self.transactions = 0
        self.items = 0

    async def submit(self, item: T) -> None:
        """Return once `item` is committed; raise what the commit raised if it failed."""
        if self._stopped:
            raise self._stopping()
        batch = self._open
        batch.items.append(item)
        if len(batch.items) >= MAX_BATCH:
            self._open = _Batch()  # the runner takes the full one next; later items wait for another
            self._full.append(batch)
        self._wakeup.set()
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error

    async def run(self) -> None:
        """Commit batches until cancelled; items not committed by then are refused (503)."""
        try:
            while True:
                if not self._full and not self._open.items:
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
                    continue
                if self._full:
                    batch = self._full.pop(0)
                else:
                    batch, self._open = self._open, _Batch()
                try:
                    # Not cancellable once the thread started (trio waits for it, and returns its
                    # result): a cancel while waiting for the store's thread means not committed.
                    await self._run_in_store(self._commit, batch.items)
                except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
                    batch.error = exc
                except BaseException:
                    batch.error = self._stopping()
                    raise
                else:
                    self.transactions += 1
                    self.items += len(batch.items)
                finally:
                    batch.done.set()
        finally:
            self._stopped = True
            for batch in [*self._full, self._open]:
                batch.error = self._stopping()
                batch.done.set()

    def _stopping(self) -> Unavailable:
        return Unavailable(f"the daemon is stopping; {self._what} was not stored, send it again")
