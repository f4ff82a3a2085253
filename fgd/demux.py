"""Sans-IO demultiplexer of the frames one instance sends up its socket.

Several requests may run on one instance at once (`concurrent_num` > 1); their Result and Log
frames arrive interleaved on one socket. This class knows which requests run, which finished
lately, which answers arrived for whom and who waits to read next; it does no I/O, so it is tested
on its own (tests/unit/test_demux.py), and fgd.instance only moves bytes and wakes tasks.
"""

from __future__ import annotations

import collections

from runtimes import protocol

# Request ids an instance finished lately: a Log frame for one of them is late, not forged.
RECENT_REQUESTS = 256
# The request id the runtime gives its initializer's context.
INITIALIZER = "initializer"


class Demultiplexer:
    def __init__(self, max_frame: int = protocol.MAX_UP_FRAME) -> None:
        self._buffer = protocol.FrameBuffer(max_frame, from_instance=True)
        self._frames: collections.deque[protocol.Frame] = collections.deque()
        # Requests running on the instance now, in the order they began.
        self.running: list[str] = []
        # Requests finished lately, oldest first (a dict as an ordered set).
        self._finished: dict[str, None] = {}
        # Answers read by one request's task for another, until that one takes them.
        self._results: dict[str, protocol.Result] = {}
        # Requests waiting for their answer while another reads, in the order they came.
        self._waiting: dict[str, None] = {}
        # Whether a task reads the socket now (only one does; it hands over when its answer came).
        self.reading = False

    # Requests ------------------------------------------------------------------

    def begin(self, request_id: str) -> None:
        if request_id not in self.running:
            self.running.append(request_id)

    def end(self, request_id: str) -> None:
        if request_id in self.running:
            self.running.remove(request_id)
        self._finished[request_id] = None
        if len(self._finished) > RECENT_REQUESTS:
            del self._finished[next(iter(self._finished))]

    # Bytes in, frames out ------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes read from the socket; raises protocol.ProtocolError on a malformed frame."""
        self._frames.extend(self._buffer.feed(data))

    def next_frame(self) -> protocol.Frame | None:
        """The next complete frame (None until more bytes come).

        Raises protocol.ProtocolError for a Log frame naming a request the instance was never given."""
        if not self._frames:
            return None
        frame = self._frames.popleft()
        if isinstance(frame, protocol.Log):
            owner = frame.request_id
            if owner and owner != INITIALIZER and owner not in self.running and owner not in self._finished:
                raise protocol.ProtocolError(f"it sent a log line for request {owner[:64]!r}, which it was not given")
        return frame

    def check_answer(self, result: protocol.Result) -> None:
        """Raises protocol.ProtocolError for an answer to a request not running, or a second one."""
        if result.request_id not in self.running or result.request_id in self._results:
            raise protocol.ProtocolError(
                f"it answered request {result.request_id[:64]!r}, which it was not given (or answered it twice)"
            )

    # Answers and the reader hand-over -------------------------------------------

    def hold(self, result: protocol.Result) -> None:
        """Keep an answer read for another request until its task takes it."""
        self._results[result.request_id] = result

    def take(self, request_id: str) -> protocol.Result | None:
        return self._results.pop(request_id, None)

    def wait(self, request_id: str) -> None:
        """`request_id` waits while another task reads."""
        self._waiting[request_id] = None

    def stop_waiting(self, request_id: str) -> bool:
        """`request_id` left while waiting; False if it had already been woken."""
        return self._waiting.pop(request_id, 0) is None

    def answered(self, request_id: str) -> bool:
        """An answer for `request_id` was held: wake it if it waits (True then)."""
        return self._waiting.pop(request_id, 0) is None

    def next_reader(self) -> str | None:
        """The reader stopped: the waiter to wake to read next, first come first."""
        if not self._waiting:
            return None
        request_id = next(iter(self._waiting))
        del self._waiting[request_id]
        return request_id

    def wake_all(self) -> list[str]:
        """The instance is gone: every waiter, to be woken to learn it."""
        waiting = list(self._waiting)
        self._waiting.clear()
        return waiting
