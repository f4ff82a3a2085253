"""Function logs: collected per invocation, written to SQLite in batches.

The invoke path only appends to a per-function queue; a background task owns the writes,
so a burst of invocations costs a few transactions, not one per line. The task also keeps
the stored logs within their byte caps and their age (docs/api.md, Logs): oldest lines
first, each drop told in the function's logs and counted in /metrics.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections import defaultdict, deque

import trio

from fgd.config import LogConfig
from fgd.store import LINE_OVERHEAD, Key, LogLine, LogRow, Store

log = logging.getLogger("fgd.logs")

FLUSH_INTERVAL = 0.2
FLUSH_BATCH = 2000
TAIL_BYTES = 2000
# One write transaction holds at most this much, so the WAL and the store's thread are
# never taken for long by a burst.
WRITE_CHUNK_BYTES = 4 * 1024 * 1024
# Age expiry walks the table from its oldest line; once an hour is plenty for a cap in days.
EXPIRY_INTERVAL = 3600.0
# A trim goes down to this share of the cap, so a chatty function is trimmed (and told so)
# once per tenth of its cap written, not after every flush.
TRIM_TO = 0.9
# Seconds between two lines in the daemon's own log about one function's dropped lines.
LOG_INTERVAL = 10.0
# Free space kept in fgd.db for the next inserts; beyond it pages go back to the file system.
KEEP_FREE = 8 * 1024 * 1024

# Why lines were dropped, as the `reason` label of fgd_log_lines_dropped_total.
PER_FUNCTION = "max_bytes_per_function"
NODE = "max_bytes_total"
RETENTION = "retention"


def line_size(row: LogRow) -> int:
    """What a line counts for against the caps; the same sum Store.write_logs stores."""
    return sum(len(text.encode()) for text in row[1:]) + LINE_OVERHEAD


class LogSink:
    def __init__(self, store: Store, config: LogConfig) -> None:
        self._store = store
        self._config = config
        # Lines waiting to be written, per function in arrival order, with their sizes: a
        # function over its cap loses its oldest waiting lines right here, so a burst never
        # reaches the database (nor holds memory) beyond the caps.
        self._pending: dict[Key, deque[tuple[LogRow, int]]] = {}
        self._pending_bytes: dict[Key, int] = defaultdict(int)
        self._pending_total = 0
        self._pending_lines = 0
        self._wakeup = trio.Event()
        self._retention = config.retention_days * 86400
        self._flush_lock = trio.Lock()
        # Lines removed since freed pages were last given back to the file system.
        self._removed_since_vacuum = 0
        # Lines and bytes dropped per function and reason, for /metrics.
        self.dropped_lines: dict[tuple[Key, str], int] = defaultdict(int)
        self.dropped_bytes: dict[tuple[Key, str], int] = defaultdict(int)
        # Drops not yet told in the function's logs: one note per function and reason per round.
        self._unreported: dict[tuple[Key, str], list[int]] = defaultdict(lambda: [0, 0])
        self._last_logged: dict[tuple[Key, str], float] = {}

    @property
    def stored_bytes(self) -> int:
        return self._store.log_bytes_total

    def add(self, key: tuple[str, str, str], lines: list[LogLine]) -> None:
        project_id, package, func_name = key
        queue = self._pending.get(key)
        if queue is None:
            queue = self._pending[key] = deque()
        # The same sum Store.write_logs stores (line_size), cheaply: the function's part once;
        # request ids, instance ids and stream names are ASCII (fgd makes them); a message is
        # encoded only if it is not ASCII.
        fixed = sum(len(name.encode()) for name in key) + LINE_OVERHEAD
        added = 0
        append = queue.append
        for line in lines:
            message, request_id, instance_id, stream = line.message, line.request_id, line.instance_id, line.stream
            size = fixed + len(request_id) + len(instance_id) + len(stream)
            size += len(message) if message.isascii() else len(message.encode())
            append(((line.time, project_id, package, func_name, request_id, instance_id, stream, message), size))
            added += size
        self._pending_bytes[key] += added
        self._pending_total += added
        self._pending_lines += len(lines)
        cap = self._config.max_bytes_per_function
        if self._pending_bytes[key] > cap:
            self._shed_pending(key, self._pending_bytes[key] - int(cap * TRIM_TO), PER_FUNCTION)
        if self._pending_total > self._config.max_bytes_total:
            self._shed_node_pending()
        if self._pending_lines >= FLUSH_BATCH:
            self._wakeup.set()

    def _shed_pending(self, key: Key, excess: int, reason: str) -> None:
        queue = self._pending[key]
        lines, freed = 0, 0
        while queue and freed < excess:
            _, size = queue.popleft()
            lines, freed = lines + 1, freed + size
        self._pending_bytes[key] -= freed
        self._pending_total -= freed
        self._pending_lines -= lines
        self._count(key, reason, lines, freed)

    def _shed_node_pending(self) -> None:
        """Waiting lines alone exceed the node's cap: drop the oldest, whichever function's
        (a run of one function's lines at a time, up to the next function's oldest)."""
        target = int(self._config.max_bytes_total * TRIM_TO)
        while self._pending_total > target:
            heads = sorted((queue[0][0][0], key) for key, queue in self._pending.items() if queue)
            key = heads[0][1]
            until = heads[1][0] if len(heads) > 1 else math.inf
            queue = self._pending[key]
            lines, freed = 0, 0
            while queue and queue[0][0][0] <= until and self._pending_total - freed > target:
                freed += queue.popleft()[1]
                lines += 1
            self._pending_bytes[key] -= freed
            self._pending_total -= freed
            self._pending_lines -= lines
            self._count(key, NODE, lines, freed)

    def discard(self, key: tuple[str, str, str]) -> None:
        """Forget pending lines and drop counts of a function that is being deleted."""
        queue = self._pending.pop(key, None)
        self._pending_lines -= len(queue or ())
        self._pending_total -= self._pending_bytes.pop(key, 0)
        for counter in (self.dropped_lines, self.dropped_bytes, self._unreported, self._last_logged):
            for label in [label for label in counter if label[0] == key]:
                del counter[label]

    async def flush(self) -> int:
        """Write the waiting lines, first making room for them under the caps (so the file
        never holds a cap's worth of lines about to be dropped). Returns the number of stored
        lines dropped to make room."""
        async with self._flush_lock:
            pending, self._pending = self._pending, {}
            self._pending_bytes.clear()
            self._pending_total = 0
            self._pending_lines = 0
            # A line that arrives after its function was deleted would be kept by nobody (and
            # found by a new function of the same name): drop it here.
            functions = self._store.functions
            pending = {key: queue for key, queue in pending.items() if key in functions and queue}
            incoming = {key: sum(size for _, size in queue) for key, queue in pending.items()}
            dropped = await self.enforce_caps(incoming)
            chunk: list[LogRow] = []
            chunk_bytes = 0
            for queue in pending.values():
                for row, size in queue:
                    chunk.append(row)
                    chunk_bytes += size
                    if chunk_bytes >= WRITE_CHUNK_BYTES or len(chunk) >= FLUSH_BATCH:
                        await self._write(chunk)
                        chunk, chunk_bytes = [], 0
            chunk += self._notes()
            await self._write(chunk)
            self._removed_since_vacuum += dropped
            return dropped

    async def _write(self, rows: list[LogRow]) -> None:
        # Checked again: a function deleted while this flush ran keeps no lines (and
        # Store.write_logs refuses those of one being deleted).
        functions = self._store.functions
        rows = [row for row in rows if row[1:4] in functions]
        if rows:
            await self._store.run(self._store.write_logs, rows)

    async def run(self) -> None:
        """Flush every FLUSH_INTERVAL (or sooner when a batch fills), within the byte caps;
        expire old lines hourly; give freed space back. Every removal is batched (see Store)."""
        next_expiry = 0.0
        try:
            while True:
                with trio.move_on_after(FLUSH_INTERVAL):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                try:
                    await self.flush()
                    if time.monotonic() >= next_expiry:
                        self._removed_since_vacuum += await self.expire(time.time() - self._retention)
                        next_expiry = time.monotonic() + EXPIRY_INTERVAL
                    if self._removed_since_vacuum:
                        self._removed_since_vacuum = 0
                        await self.vacuum()
                except sqlite3.Error:
                    raise  # the store itself failed: that stops the daemon
                except Exception:
                    # One bad batch is lost (it was taken off the queue), the sink goes on.
                    log.exception("writing or expiring function logs failed; that batch of lines is lost")
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()

    async def enforce_caps(self, incoming: dict[Key, int] | None = None) -> int:
        """Drop the oldest stored lines of each function that would be over its cap with
        `incoming` bytes added, then the node's oldest lines likewise; tell each function what
        it lost. Returns the number of stored lines dropped."""
        store, config = self._store, self._config
        incoming = incoming or {}
        dropped = 0
        per_function = config.max_bytes_per_function
        for key, size in list(store.log_bytes.items()):
            coming = incoming.get(key, 0)
            if size + coming > per_function:
                target = max(0, int(per_function * TRIM_TO) - coming)
                while (excess := store.log_bytes.get(key, 0) - target) > 0:
                    lines, freed = await store.run(store.trim_function_logs_batch, key, excess)
                    if not lines:
                        break
                    self._count(key, PER_FUNCTION, lines, freed)
                    dropped += lines
        coming = sum(incoming.values())
        if store.log_bytes_total + coming > config.max_bytes_total:
            target = max(0, int(config.max_bytes_total * TRIM_TO) - coming)
            while (excess := store.log_bytes_total - target) > 0:
                batch = await store.run(store.trim_node_logs_batch, excess)
                if not batch:
                    break
                for key, (lines, freed) in batch.items():
                    self._count(key, NODE, lines, freed)
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
                self._count(key, RETENTION, lines, freed)
                dropped += lines
        return dropped

    async def vacuum(self) -> None:
        """Give the pages freed by removals back to the file system, a few MB per transaction."""
        previous = None
        while (free := await self._store.run(self._store.vacuum_batch, KEEP_FREE)) > KEEP_FREE:
            if free == previous:
                break
            previous = free

    def _count(self, key: Key, reason: str, lines: int, freed: int) -> None:
        if not lines or key not in self._store.functions:
            return
        self.dropped_lines[key, reason] += lines
        self.dropped_bytes[key, reason] += freed
        if reason != RETENTION:
            told = self._unreported[key, reason]
            told[0] += lines
            told[1] += freed

    def _notes(self) -> list[LogRow]:
        """A platform line per function and cap for what was dropped since its last one.

        Written right after the lines of the flush that dropped, so the newest lines of a
        function that floods its logs always include one; the daemon's own log says it at
        most every LOG_INTERVAL per function and cap."""
        unreported, self._unreported = self._unreported, defaultdict(lambda: [0, 0])
        now = time.monotonic()
        notes = []
        for (key, reason), (lines, freed) in unreported.items():
            if key not in self._store.functions:
                continue
            what = "its logs" if reason == PER_FUNCTION else "the node's logs"
            cap = getattr(self._config, reason)
            # The running total too: older notes are log lines like any other and go in turn.
            message = (
                f"fgd dropped this function's {lines:,} oldest log lines ({freed:,} bytes) to keep {what} "
                f"under logs.{reason} = {cap:,} bytes; {self.dropped_lines[key, reason]:,} lines in all "
                f"since fgd started"
            )
            notes.append((time.time(), *key, "", "", "platform", message))
            if now - self._last_logged.get((key, reason), -math.inf) >= LOG_INTERVAL:
                self._last_logged[key, reason] = now
                log.info("%s/%s:%s: %s", *key, message)
        return notes


def summary_line(
    request_id: str,
    duration_ms: float,
    memory_size: int,
    max_memory_mb: float,
    init_ms: float | None,
    version: str = "latest",
    alias: str = "",
) -> str:
    text = (
        f"Finish Invoke RequestId: {request_id}, Duration: {duration_ms:.3f} ms, "
        f"Billed Duration: {billed_ms(duration_ms)} ms, Memory Size: {memory_size} MB, "
        f"Max Memory Used: {max_memory_mb:.1f} MB"
    )
    if init_ms is not None:
        text += f", Init Duration: {init_ms:.3f} ms"
    # Which version ran, and through which alias (fgd.versions).
    text += f", Version: {version}"
    if alias:
        text += f", Alias: {alias}"
    return text


def billed_ms(duration_ms: float) -> int:
    return max(1, math.ceil(duration_ms))


def tail(lines: list[LogLine]) -> bytes:
    text = "".join(f"{line.message}\n" for line in lines).encode()
    return text[-TAIL_BYTES:]
