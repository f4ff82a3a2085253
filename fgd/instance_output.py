"""What one instance prints: its stdout and stderr pipes and the transcripts of its requests.

The pipes are read by the daemon, so output of any process the function starts is attributed to
the request that was running when the bytes arrived; tagged Log frames name their request. Each
request's lines are kept (bounded) until it ends; output that belongs to no running request goes
to the function's log straight away, within an allowance, and the pipes are left unread when
there is nothing to keep, so the instance's writers block and cost the daemon nothing.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

import msgspec
import trio

from fgd.demux import INITIALIZER
from fgd.output import LINE_COST, LINES_PER_DRAIN, OutputPipe, Transcript, cut_line
from fgd.store import LogLine

# What the transcripts of all requests running on one instance hold together (Transcript.cost):
# up to 1,000 requests share an instance, and each must not bring its own per-invocation limit.
INSTANCE_LOG_BYTES = 16 * 1024 * 1024
# Drains of each pipe when a request ends: up to 10,240 lines, the default transcript's 10,000.
DRAINS_AT_END = 10


class LogLimits(msgspec.Struct, frozen=True):
    """What one invocation's transcript may hold, and what a function may print between requests."""

    max_lines: int
    max_bytes: int


class InstanceOutput:
    def __init__(self, instance_id: str, running: list[str], log_limits: LogLimits) -> None:
        self._instance_id = instance_id
        # The requests running on the instance now (the demultiplexer's list, shared).
        self._running = running
        self._log_limits = log_limits
        self.pipes: list[OutputPipe] = []
        # Both pipes in one poll set: a request's end asks once whether either holds anything
        # (almost always not) instead of a failing read of each (issue 15).
        self._poll = select.poll()
        self._transcripts: dict[str, Transcript] = {}
        # Transcript.cost of every transcript held now, against INSTANCE_LOG_BYTES.
        self._held = 0
        # The request that ended last with no other running: output while none runs is its.
        self._ended_alone = ""
        # Output that belongs to no running request (printed after its request ended, or by
        # concurrent requests without a tag) goes straight to the function's log through
        # `on_late`, at most `log_limits.max_lines` lines between two requests; the rest is counted.
        self.on_late: Callable[[list[LogLine]], None] | None = None
        self._late_budget = log_limits.max_lines
        # Set by begin() and close(): the pipes are read again after a pause. With no request
        # running and the late allowance used up, output would only be counted: the pipes are left
        # unread instead.
        self._wanted = trio.Event()
        # Pumps waiting on _wanted: begin() replaces the event only when one waits (issue 15).
        self._parked = 0
        self._late_dropped = 0

    # Pipes --------------------------------------------------------------------------

    def attach(self, pipes: list[OutputPipe]) -> None:
        """The instance's stdout and stderr pipes (non-blocking read ends)."""
        self.pipes = pipes
        for pipe in pipes:
            self._poll.register(pipe.fd, select.POLLIN)

    async def pump(self) -> None:
        """Read the output pipes until both are closed (run in the pool's nursery)."""
        async with trio.open_nursery() as nursery:
            for pipe in self.pipes:
                nursery.start_soon(self._pump, pipe)

    async def _pump(self, pipe: OutputPipe) -> None:
        while not pipe.closed or pipe.pending:
            if not pipe.closed and not self._running and self._late_budget <= 0:
                self._parked += 1
                try:
                    await self._wanted.wait()
                finally:
                    self._parked -= 1
                continue
            if pipe.pending:
                # Lines already read wait for their turn: let the rest of the daemon run first.
                await trio.lowlevel.checkpoint()
            else:
                try:
                    await trio.lowlevel.wait_readable(pipe.fd)
                except (trio.ClosedResourceError, OSError):
                    return
            self._collect(pipe.stream, pipe.drain())

    def collect(self) -> None:
        """Take in what the pipes hold right now (called when a request ends)."""
        # Readable, closed by their writers, or with lines read but not split yet.
        ready = {fd for fd, _ in self._poll.poll(0)}
        for pipe in self.pipes:
            if pipe.fd in ready or pipe.pending:
                # What the request printed last is still its own: take up to about one transcript's
                # worth of lines now (a few ms at worst), not just one turn's.
                for _ in range(DRAINS_AT_END):
                    if pipe.closed and not pipe.pending:
                        break
                    lines = pipe.drain()
                    self._collect(pipe.stream, lines)
                    if len(lines) < LINES_PER_DRAIN:
                        break  # the pipe is empty (or held only long lines, bounded by the reads of one drain)
            if not pipe.pending:
                # (With lines still pending, the partial line is not the last one: it waits for them.)
                self._collect(pipe.stream, pipe.flush_partial())

    def _collect(self, stream: str, lines: list[str]) -> None:
        for text in lines:
            self.add_line(stream, text)

    def close(self) -> None:
        """Wake the pumps and close the pipes."""
        self._wanted.set()
        for pipe in self.pipes:
            if pipe.fd >= 0:
                # Wake a pump blocked on this fd before closing it.
                trio.lowlevel.notify_closing(pipe.fd)
                self._poll.unregister(pipe.fd)
                os.close(pipe.fd)
                pipe.fd = -1
                pipe.closed = True

    # Transcripts ----------------------------------------------------------------------

    @property
    def request_id(self) -> str:
        """The request untagged output belongs to: the only one running; with none running, the
        last one to end if it was running alone then (a background thread it left); else none."""
        if not self._running:
            return self._ended_alone
        return self._running[0] if len(self._running) == 1 else ""

    def begin(self) -> None:
        """A request starts running: output is kept again, and what was dropped meanwhile is said."""
        self._late_budget = self._log_limits.max_lines
        if self._parked:
            self._wanted.set()
            self._wanted = trio.Event()
        if self._late_dropped and self.on_late is not None:
            note = f"{self._late_dropped:,} log lines printed outside any request were dropped"
            self.on_late([LogLine(time.time(), "", self._instance_id, "platform", note)])
            self._late_dropped = 0

    def end(self, request_id: str) -> list[LogLine]:
        """`request_id` finished (and left the running list): its transcript."""
        self._ended_alone = "" if self._running else request_id
        return self.take_lines(request_id)

    def add_line(self, stream: str, text: str, request_id: str | None = None) -> None:
        # The initializer runs for the request that caused the cold start: its lines are that request's.
        owner = self.request_id if request_id is None or request_id == INITIALIZER else request_id
        line = LogLine(time.time(), owner, self._instance_id, stream, cut_line(text))
        if owner in self._running:
            transcript = self._transcripts.get(owner)
            if transcript is None:
                transcript = self._transcripts[owner] = Transcript()
            # (The platform's one summary line per request is never crowded out by the others' output.)
            if stream != "platform" and self._held + len(line.message) + LINE_COST > INSTANCE_LOG_BYTES:
                transcript.drop(line)
            elif transcript.add(line, self._log_limits.max_lines, self._log_limits.max_bytes):
                self._held += len(line.message) + LINE_COST
        elif self.on_late is not None and self._late_budget > 0:
            self._late_budget -= 1
            self.on_late([line])
        else:
            self._late_dropped += 1

    def take_lines(self, request_id: str = "") -> list[LogLine]:
        transcript = self._transcripts.pop(request_id, None)
        if transcript is None:
            return []
        self._held -= transcript.cost()
        return transcript.finish(request_id, self._instance_id)

    def take_all_lines(self) -> list[LogLine]:
        return [line for owner in list(self._transcripts) for line in self.take_lines(owner)]
