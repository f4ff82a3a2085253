"""An instance's output turned into log lines, bounded whatever the function writes.

The function controls every byte on its stdout and stderr pipes and in its Log
frames, so everything here is bounded: a line is cut at `MAX_LOG_LINE` bytes
(the rest is counted, not kept), the bytes of a line still waiting for its
newline never exceed that either, and one invocation keeps at most a configured
number of lines and bytes. A function that writes a gigabyte without a newline
costs the daemon one line's worth of memory and time linear in what it wrote.
"""

from __future__ import annotations

import os
import time

from fgd.store import LogLine
from runtimes.protocol import MAX_LOG_LINE

READ_CHUNK = 1 << 16
# What a kept log line costs beyond its text (the LogLine and its fields), so empty lines count too.
LINE_COST = 128
# Reads per wake-up of a pipe's reader: a writer that keeps the pipe full must not keep the
# event loop from everything else, so the reader yields after this many bytes.
READS_PER_DRAIN = 16
# Lines split per wake-up: each costs microseconds of Python, and a read of newlines holds
# 65,536 of them (a flood of empty lines stalled the event loop for seconds without this).
LINES_PER_DRAIN = 1024


def cut_marker(skipped: int) -> str:
    return f" [... {skipped:,} more bytes cut: log lines are limited to {MAX_LOG_LINE:,} bytes]"


def cut_line(text: str) -> str:
    """`text` cut to at most MAX_LOG_LINE bytes of UTF-8, with a marker saying how much went."""
    if len(text) * 4 <= MAX_LOG_LINE:
        return text  # cannot be over the limit: the common case costs no encoding
    data = text.encode(errors="replace")
    if len(data) <= MAX_LOG_LINE:
        return text
    return data[:MAX_LOG_LINE].decode(errors="ignore") + cut_marker(len(data) - MAX_LOG_LINE)


class LineSplitter:
    """Sans-IO: bytes in, complete lines out; keeps at most one line's worth of a partial line."""

    def __init__(self) -> None:
        self._partial = bytearray()
        self._skipped = 0

    def feed(self, data: bytes) -> list[str]:
        return self.split(data, len(data) + 1)[0]

    def split(self, data: bytes, max_lines: int) -> tuple[list[str], int]:
        """At most `max_lines` complete lines from `data`, and how many bytes of it were taken."""
        lines: list[str] = []
        start = 0
        while len(lines) < max_lines and (end := data.find(b"\n", start)) >= 0:
            self._keep(data, start, end)
            lines.append(self._take())
            start = end + 1
        if len(lines) < max_lines:
            # No newline left: the rest is the start of a line.
            self._keep(data, start, len(data))
            start = len(data)
        return lines, start

    def flush(self) -> list[str]:
        """The partial line, if any, as a line of its own (the stream ended or a request did)."""
        if not self._partial and not self._skipped:
            return []
        return [self._take()]

    def _keep(self, data: bytes, start: int, end: int) -> None:
        room = MAX_LOG_LINE - len(self._partial)
        kept = min(room, end - start)
        if kept > 0:
            self._partial += data[start : start + kept]
        self._skipped += end - start - kept

    def _take(self) -> str:
        text = self._partial.decode(errors="replace")
        if self._skipped:
            text += cut_marker(self._skipped)
        self._partial.clear()
        self._skipped = 0
        return text


class OutputPipe:
    """Non-blocking reader of one of the instance's output pipes, split into lines."""

    def __init__(self, fd: int, stream: str) -> None:
        self.fd = fd
        self.stream = stream
        self.closed = False
        self._splitter = LineSplitter()
        # Bytes read but not split yet: the rest of a read that held more than LINES_PER_DRAIN lines.
        self.pending = b""

    def drain(self) -> list[str]:
        """Complete lines from what the pipe holds now (at most READS_PER_DRAIN reads and LINES_PER_DRAIN lines)."""
        lines: list[str] = []
        for _ in range(READS_PER_DRAIN):
            if not self.pending:
                if self.closed:
                    break
                try:
                    data = os.read(self.fd, READ_CHUNK)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    self.closed = True
                    break
                self.pending = data
            got, taken = self._splitter.split(self.pending, LINES_PER_DRAIN - len(lines))
            lines += got
            self.pending = self.pending[taken:]
            if len(lines) >= LINES_PER_DRAIN:
                break
        return lines

    def flush_partial(self) -> list[str]:
        return self._splitter.flush()


class Transcript:
    """The lines one invocation keeps: at most `max_lines` lines and `max_bytes` bytes, then counted."""

    __slots__ = ("dropped_bytes", "dropped_lines", "lines", "size")

    def __init__(self) -> None:
        self.lines: list[LogLine] = []
        self.size = 0
        self.dropped_lines = 0
        self.dropped_bytes = 0

    def add(self, line: LogLine, max_lines: int, max_bytes: int) -> bool:
        """Keep `line` if the limits allow it (True), else count it."""
        size = len(line.message)
        if len(self.lines) >= max_lines or self.size + size > max_bytes:
            self.drop(line)
            return False
        self.size += size
        self.lines.append(line)
        return True

    def drop(self, line: LogLine) -> None:
        self.dropped_lines += 1
        self.dropped_bytes += len(line.message)

    def cost(self) -> int:
        """What the kept lines weigh in the daemon's memory, roughly: their text and their objects."""
        return self.size + LINE_COST * len(self.lines)

    def finish(self, request_id: str, instance_id: str) -> list[LogLine]:
        if self.dropped_lines:
            note = (
                f"{self.dropped_lines:,} log lines ({self.dropped_bytes:,} characters) dropped: an invocation "
                "keeps its first lines up to the node's per-invocation limits (and the requests running at once "
                "on one instance share a limit)"
            )
            self.lines.append(LogLine(time.time(), request_id, instance_id, "platform", note))
        return self.lines
