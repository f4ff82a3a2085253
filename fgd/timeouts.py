"""Function timeouts: one task for the whole daemon instead of a cancel scope per invocation.

A trio cancel scope per invocation cost the warm path about 14 us of the event loop's CPU per
request (6 % of it, measured A/B at 16 connections: docs/performance.md). Each running
invocation is instead one entry in a heap, and one task sleeps until the earliest deadline.
When a deadline passes, its entry fires: the invoker kills the instance and wakes every task
waiting on its socket (fgd.invoker.Invoker._timed_out), so the invocation ends at once and
reports the timeout. Deadlines are as precise as a cancel scope's: the task wakes at the
earliest one, and is woken early when an invocation with an earlier deadline starts.

`watch`, `finished` and `expire` are plain code (unit-tested without an event loop); `run`
is the task.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger(__name__)

# Ended entries stay in the heap until they reach its top. When they outnumber the live ones
# (and the heap is larger than this), the heap is rebuilt from the live ones: its size stays
# within twice the invocations running, whatever the timeouts and the request rate.
REBUILD_ABOVE = 64


class Deadline:
    """One running invocation's deadline (`at`, on trio's clock)."""

    __slots__ = ("at", "done", "fired", "subject")

    def __init__(self, at: float, subject: Any) -> None:
        self.at = at
        self.subject = subject
        self.done = False  # finished, or fired
        self.fired = False


class Timeouts:
    def __init__(self, on_expiry: Callable[[Any], None]) -> None:
        self._on_expiry = on_expiry
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._live = 0
        self._wake_at = math.inf
        self._rearm = trio.Event()
        # Only while `run` runs do deadlines fire: callers use a cancel scope otherwise.
        self.running = False

    def __len__(self) -> int:
        """Entries held (live and ended)."""
        return len(self._heap)

    @property
    def live(self) -> int:
        return self._live

    def watch(self, at: float, subject: Any) -> Deadline:
        """Fire `on_expiry(subject)` at `at` unless `finished` first."""
        entry = Deadline(at, subject)
        heapq.heappush(self._heap, (at, next(self._order), entry))
        self._live += 1
        if at < self._wake_at:
            self._wake_at = at
            self._rearm.set()
        return entry

    def finished(self, entry: Deadline) -> bool:
        """The invocation ended; whether its deadline had fired."""
        if not entry.done:
            entry.done = True
            self._live -= 1
            heap = self._heap
            if len(heap) > REBUILD_ABOVE and len(heap) > 2 * self._live:
                self._heap = [item for item in heap if not item[2].done]
                heapq.heapify(self._heap)
        return entry.fired

    def expire(self, now: float) -> float:
        """Fire every live entry due by `now`; the next deadline (inf: none)."""
        heap = self._heap
        while heap:
            at, _, entry = heap[0]
            if not entry.done and at > now:
                return at
            heapq.heappop(heap)
            if entry.done:
                continue
            entry.done = entry.fired = True
            self._live -= 1
            try:
                self._on_expiry(entry.subject)
            except Exception:
                # One invocation's clean-up failing must not stop the others' timeouts.
                log.exception("ending an invocation at its timeout failed")
        return math.inf

    async def run(self) -> None:
        self.running = True
        try:
            while True:
                self._wake_at = self.expire(trio.current_time())
                self._rearm = trio.Event()
                with trio.move_on_at(self._wake_at):
                    await self._rearm.wait()
        finally:
            self.running = False
