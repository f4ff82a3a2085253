"""Function logs: collected per invocation, written to SQLite in batches.

The invoke path only appends to a list; a background task owns the writes, so
a burst of invocations costs one transaction, not one per line.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict

import trio

from fgd.config import LogConfig
from fgd.store import Key, LogLine, LogRow, Store

log = logging.getLogger("fgd.logs")

FLUSH_INTERVAL = 0.2
FLUSH_BATCH = 2000
TAIL_BYTES = 2000
# Age expiry walks the table from its oldest line; once an hour is plenty for a cap in days.
EXPIRY_INTERVAL = 3600.0
# A trim goes down to this share of the cap, so a chatty function is trimmed (and told so)
# once per tenth of its cap written, not after every flush.
TRIM_TO = 0.9
# Free space kept in fgd.db for the next inserts; beyond it pages go back to the file system.
KEEP_FREE = 8 * 1024 * 1024

# Why lines were dropped, as the `reason` label of fgd_log_lines_dropped_total.
PER_FUNCTION = "max_bytes_per_function"
NODE = "max_bytes_total"
RETENTION = "retention"


class LogSink:
    def __init__(self, store: Store, config: LogConfig) -> None:
        self._store = store
        self._config = config
        self._pending: list[LogRow] = []
        self._wakeup = trio.Event()
        self._retention = config.retention_days * 86400
        self._flush_lock = trio.Lock()
        # Lines and bytes dropped per function and reason, for /metrics.
        self.dropped_lines: dict[tuple[Key, str], int] = defaultdict(int)
        self.dropped_bytes: dict[tuple[Key, str], int] = defaultdict(int)

    @property
    def stored_bytes(self) -> int:
        return self._store.log_bytes_total

    def add(self, key: tuple[str, str, str], lines: list[LogLine]) -> None:
        project_id, package, func_name = key
        self._pending.extend(
            (line.time, project_id, package, func_name, line.request_id, line.instance_id, line.stream, line.message)
            for line in lines
        )
        if len(self._pending) >= FLUSH_BATCH:
            self._wakeup.set()

    def discard(self, key: tuple[str, str, str]) -> None:
        """Forget pending lines and drop counts of a function that is being deleted."""
        self._pending = [row for row in self._pending if row[1:4] != key]
        for counter in (self.dropped_lines, self.dropped_bytes):
            for label in [label for label in counter if label[0] == key]:
                del counter[label]

    async def flush(self) -> None:
        async with self._flush_lock:
            rows, self._pending = self._pending, []
            # A line that arrives after its function was deleted would be kept by nobody (and
            # found by a new function of the same name): drop it here.
            functions = self._store.functions
            rows = [row for row in rows if row[1:4] in functions]
            if rows:
                await self._store.run(self._store.write_logs, rows)

    async def run(self) -> None:
        """Flush every FLUSH_INTERVAL (or sooner when a batch fills); keep the byte caps after
        each flush; expire old lines hourly. Every removal is batched (see Store)."""
        next_expiry = 0.0
        try:
            while True:
                with trio.move_on_after(FLUSH_INTERVAL):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                await self.flush()
                removed = await self.enforce_caps()
                if time.monotonic() >= next_expiry:
                    removed += await self.expire(time.time() - self._retention)
                    next_expiry = time.monotonic() + EXPIRY_INTERVAL
                if removed:
                    await self.vacuum()
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()

    async def enforce_caps(self) -> int:
        """Drop the oldest lines of each function over its cap, then the node's oldest lines
        while the node is over its cap. Returns the number of lines dropped."""
        store, config = self._store, self._config
        dropped = 0
        per_function = config.max_bytes_per_function
        for key, size in list(store.log_bytes.items()):
            if size > per_function:
                lines, freed = 0, 0
                while (excess := store.log_bytes.get(key, 0) - int(per_function * TRIM_TO)) > 0:
                    batch_lines, batch_bytes = await store.run(store.trim_function_logs_batch, key, excess)
                    if not batch_lines:
                        break
                    lines, freed = lines + batch_lines, freed + batch_bytes
                self._dropped(key, PER_FUNCTION, lines, freed, "its logs", per_function)
                dropped += lines
        if store.log_bytes_total > config.max_bytes_total:
            totals: dict[Key, list[int]] = defaultdict(lambda: [0, 0])
            while (excess := store.log_bytes_total - int(config.max_bytes_total * TRIM_TO)) > 0:
                batch = await store.run(store.trim_node_logs_batch, excess)
                if not batch:
                    break
                for key, (lines, freed) in batch.items():
                    totals[key][0] += lines
                    totals[key][1] += freed
            for key, (lines, freed) in totals.items():
                self._dropped(key, NODE, lines, freed, "the node's logs", config.max_bytes_total)
                dropped += lines
        return dropped

    async def expire(self, older_than: float) -> int:
        """Remove lines older than the retention, one batch per transaction."""
        store = self._store
        after_id: int | None = 0
        dropped = 0
        while after_id is not None:
            after_id, batch = await store.run(store.expire_logs_batch, older_than, after_id)
            for key, (lines, freed) in batch.items():
                # Counted, not logged: a line about expiry would itself expire a week later.
                if key in store.functions:
                    self.dropped_lines[key, RETENTION] += lines
                    self.dropped_bytes[key, RETENTION] += freed
                dropped += lines
        return dropped

    async def vacuum(self) -> None:
        """Give the pages freed by removals back to the file system, a few MB per transaction."""
        previous = None
        while (free := await self._store.run(self._store.vacuum_batch, KEEP_FREE)) > KEEP_FREE:
            if free == previous:
                break
            previous = free

    def _dropped(self, key: Key, reason: str, lines: int, freed: int, what: str, cap: int) -> None:
        if not lines or key not in self._store.functions:
            return
        self.dropped_lines[key, reason] += lines
        self.dropped_bytes[key, reason] += freed
        message = (
            f"fgd dropped this function's {lines:,} oldest log lines ({freed:,} bytes) to keep {what} "
            f"under logs.{reason} = {cap:,} bytes"
        )
        log.info("%s/%s:%s: %s", *key, message)
        self.add(key, [LogLine(time.time(), "", "", "platform", message)])


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
