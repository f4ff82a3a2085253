"""Function logs: collected per invocation, written to SQLite in batches.

The invoke path only appends to a list; a background task owns the writes, so
a burst of invocations costs one transaction, not one per line.
"""

from __future__ import annotations

import math
import time

import trio

from fgd.store import LogLine, LogRow, Store

FLUSH_INTERVAL = 0.2
FLUSH_BATCH = 2000
TAIL_BYTES = 2000


class LogSink:
    def __init__(self, store: Store, retention_days: float) -> None:
        self._store = store
        self._pending: list[LogRow] = []
        self._wakeup = trio.Event()
        self._retention = retention_days * 86400
        self._flush_lock = trio.Lock()

    def add(self, key: tuple[str, str, str], lines: list[LogLine]) -> None:
        project_id, package, func_name = key
        self._pending.extend(
            (line.time, project_id, package, func_name, line.request_id, line.instance_id, line.stream, line.message)
            for line in lines
        )
        if len(self._pending) >= FLUSH_BATCH:
            self._wakeup.set()

    def discard(self, key: tuple[str, str, str]) -> None:
        """Forget pending lines of a function that is being deleted."""
        self._pending = [row for row in self._pending if row[1:4] != key]

    async def flush(self) -> None:
        async with self._flush_lock:
            rows, self._pending = self._pending, []
            if rows:
                await self._store.run(self._store.write_logs, rows)

    async def run(self) -> None:
        """Flush every FLUSH_INTERVAL (or sooner when a batch fills); expire old lines hourly."""
        next_expiry = 0.0
        try:
            while True:
                with trio.move_on_after(FLUSH_INTERVAL):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                await self.flush()
                if time.monotonic() >= next_expiry:
                    await self._store.run(self._store.expire_logs, time.time() - self._retention)
                    next_expiry = time.monotonic() + 3600
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()


def summary_line(
    request_id: str,
    duration_ms: float,
    memory_size: int,
    max_memory_mb: float,
    init_ms: float | None,
) -> str:
    text = (
        f"Finish Invoke RequestId: {request_id}, Duration: {duration_ms:.3f} ms, "
        f"Billed Duration: {billed_ms(duration_ms)} ms, Memory Size: {memory_size} MB, "
        f"Max Memory Used: {max_memory_mb:.1f} MB"
    )
    if init_ms is not None:
        text += f", Init Duration: {init_ms:.3f} ms"
    return text


def billed_ms(duration_ms: float) -> int:
    return max(1, math.ceil(duration_ms))


def tail(lines: list[LogLine]) -> bytes:
    text = "".join(f"{line.message}\n" for line in lines).encode()
    return text[-TAIL_BYTES:]
