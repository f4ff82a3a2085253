"""Frames exchanged between the daemon and an instance, and with a zygote.

Every frame is a 4-byte big-endian length followed by a msgpack body; the body
is a tagged union so either side can decode any frame with one decoder.
Down (daemon -> instance): Contain, Specialize, Invoke, Shutdown.
Up (instance -> daemon): Contained, ContainError, Ready, InitError, Result, Log.
Issue 13 (nodejs): Launch down after Contain (start the language's own process under the drop
half of the sandbox), Launched up from that process once it waits for its function.
Zygote control: Fork down (with fds passed by SCM_RIGHTS); Forked and Exited up.
"""

from __future__ import annotations

import re
import struct
from typing import Annotated, Union

import msgspec

from sandbox.policy import ContainPolicy, EnterPolicy

HEADER = struct.Struct(">I")
# Frames down (events, policies) may be large; frames up come from user code and are held to
# what a legitimate answer needs: the response limit plus room for an error report.
MAX_FRAME = 64 * 1024 * 1024
# FunctionGraph's 6 MB limit on a synchronous invocation's payload, both ways: the event the daemon
# accepts (fgd.web.front) and the response body (RUNTIME_MAX_RESP_BODY_SIZE). Defined here only.
MAX_PAYLOAD = 6 * 1024 * 1024
MAX_RESPONSE = MAX_PAYLOAD
MAX_UP_FRAME = MAX_RESPONSE + 1024 * 1024
# One log line (bytes of UTF-8); longer lines are cut with a marker, on both sides.
MAX_LOG_LINE = 64 * 1024
# What an error report may carry: a type name, a message and a few stack lines.
MAX_ERROR_TYPE = 128
MAX_ERROR_MESSAGE = 64 * 1024
MAX_STACK_LINES = 200
SURROGATES = re.compile("[\ud800-\udfff]")


# Issue 13: an HTTP function's response headers, bounded so decoding one costs little.
MAX_HTTP_HEADERS = 1024
HttpHeaders = Annotated[list[tuple[str, str]], msgspec.Meta(max_length=MAX_HTTP_HEADERS)]
# Their names and values together: with a 6 MB body they must still fit one frame up
# (MAX_UP_FRAME leaves 1 MiB beside the body).
MAX_HTTP_HEADER_BYTES = 256 * 1024


class FunctionError(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the function side reports when user code fails."""

    error_type: str
    error_message: str
    stack_trace: list[str] = []


class FunctionIdentity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Facts about the function that the `context` object exposes."""

    project_id: str
    package: str
    func_name: str
    version: str
    alias: str
    memory_size: int
    cpu: int
    timeout: int
    user_data: dict[str, str] = {}
    credentials: dict[str, str] = {}


class Contain(msgspec.Struct, tag=True, frozen=True, forbid_unknown_fields=True):
    """Sent once the daemon has put the instance into its cgroup: apply the generic sandbox."""

    policy: ContainPolicy


class Contained(msgspec.Struct, tag=True, frozen=True, forbid_unknown_fields=True):
    pass


class ContainError(msgspec.Struct, tag=True, frozen=True, forbid_unknown_fields=True):
    message: str


class Specialize(msgspec.Struct, tag=True, frozen=True, forbid_unknown_fields=True):
    code_dir: str
    handler: str
    initializer: str
    initializer_timeout: int
    environ: dict[str, str]
    identity: FunctionIdentity
    dependency_dirs: list[str] = []
    sandbox: EnterPolicy | None = None
    # Requests served at once (FunctionGraph's concurrent_num).
    concurrency: int = 1
    # Issue 12: the root of the bundled-library trees (python<X.Y>/ each) as the instance
    # sees it; "" when switched off. The instance picks its own interpreter's tree.
    bundled_dir: str = ""
    # Issue 12: the id the initializer's context and log lines carry: the request (or reserved
    # start) the instance is being started for.
    initializer_request_id: str = ""
    # Issue 13 (Custom/http): what the instance becomes. "python" imports the handler;
    # "custom" runs the agent serving the runtime API to `bootstrap`; "http" runs the agent
    # forwarding invocations to the server `bootstrap` starts (runtimes/custom/).
    mode: str = "python"
    # Issue 13: the node's region (HTTP functions' X-CFF-Region header).
    region: str = ""


class Invoke(msgspec.Struct, tag=True, frozen=True, forbid_unknown_fields=True):
    request_id: str
    event: bytes
    # Absolute wall-clock deadline (time.time() seconds) for getRemainingTime.
    deadline: float
    # Issue 12: new agency credentials when they changed since the instance got them (a
    # rotated credential file); None = keep the ones it has.
    credentials: dict[str, str] | None = None


class Shutdown(msgspec.Struct, tag=True, frozen=True, forbid_unknown_fields=True):
    pass


class Ready(msgspec.Struct, tag=True, frozen=True, forbid_unknown_fields=True):
    init_ms: float
    # Issue 15: milliseconds of each step of specialisation as the instance saw them (sandbox
    # entry, environment, loading the handler, the initializer), for bench/cold_start.py.
    timings: dict[str, float] = {}


class InitError(msgspec.Struct, tag=True, frozen=True, forbid_unknown_fields=True):
    error: FunctionError


class Result(msgspec.Struct, tag=True, frozen=True, forbid_unknown_fields=True):
    request_id: str
    body: bytes | None = None
    error: FunctionError | None = None
    max_rss_kb: int = 0
    # Issue 13: the instance cannot serve again (a Custom/http `bootstrap` exited): the daemon
    # retires it instead of handing it the next request.
    fatal: bool = False
    # Issue 13: an HTTP function's answer as its server sent it: `body` is the response body,
    # these its status and headers (0: not an HTTP answer).
    http_status: int = 0
    http_headers: HttpHeaders = []


class Log(msgspec.Struct, tag=True, frozen=True, forbid_unknown_fields=True):
    request_id: str
    level: str
    message: str


def utf8(text: str) -> str:
    """`text` encodable as msgpack: a Python str may hold lone surrogates (os.fsdecode), msgpack may not."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return SURROGATES.sub("\ufffd", text)
    return text


# Characters of stack lines one report carries: with the message's 64K, a report stays well
# under MAX_UP_REPORT bytes even in 4-byte UTF-8.
MAX_STACK_CHARS = 128 * 1024


def bounded(error: FunctionError) -> FunctionError:
    """`error` cut to fit a report the daemon accepts: message, number and total size of stack lines."""
    message = utf8(error.error_message[:MAX_ERROR_MESSAGE])
    stack: list[str] = []
    room = MAX_STACK_CHARS
    # The innermost lines (the end of the trace) are the ones worth keeping.
    for line in reversed(error.stack_trace[-MAX_STACK_LINES:]):
        if room <= 0:
            break
        cut = line[: min(MAX_LOG_LINE, room)]
        stack.append(utf8(cut))
        room -= len(cut)
    stack.reverse()
    return FunctionError(utf8(error.error_type[:MAX_ERROR_TYPE]), message, stack)


def log_line(request_id: str, level: str, message: str) -> Log:
    """A Log frame whose message fits the daemon's line limit (it cuts longer ones; this keeps the frame small)."""
    if len(message) > MAX_LOG_LINE:
        message = message[:MAX_LOG_LINE] + f" [... {len(message) - MAX_LOG_LINE:,} more characters cut]"
    return Log(request_id, level, utf8(message))


class Launch(msgspec.Struct, tag=True, frozen=True, forbid_unknown_fields=True):
    """Issue 13 (nodejs): the contained worker forks a child that takes `sandbox`'s drop half
    (uid, no capabilities, rlimits, closed descriptors, seccomp) and execs `argv` with `environ`,
    the protocol socket as fd 3 and a private channel to the worker (its keeper) as fd 4."""

    argv: list[str]
    environ: dict[str, str]
    sandbox: EnterPolicy | None = None


class Launched(msgspec.Struct, tag=True, frozen=True, forbid_unknown_fields=True):
    """Issue 13 (nodejs): the launched process runs and waits for its Specialize."""

    pid: int = 0


class Fork(msgspec.Struct, tag=True, frozen=True, forbid_unknown_fields=True):
    instance_id: str
    # Issue 15: the child is forked as PID 1 of a new pid namespace (the sandbox's reaper), so
    # the zygote reaps and reports it directly, with no waiter process outside the namespace.
    pid_namespace: bool = False


class Forked(msgspec.Struct, tag=True, frozen=True, forbid_unknown_fields=True):
    instance_id: str
    pid: int


class Exited(msgspec.Struct, tag=True, frozen=True, forbid_unknown_fields=True):
    pid: int
    # os.waitstatus_to_exitcode: >= 0 exit code, < 0 killed by that signal.
    exit_code: int


# typing.Union rather than `|`: classes support `|` only from Python 3.10, and this module
# runs in every interpreter that serves a runtime.
Frame = Union[
    Contain,
    Contained,
    ContainError,
    Specialize,
    Invoke,
    Shutdown,
    Ready,
    InitError,
    Result,
    Log,
    Fork,
    Forked,
    Exited,
    Launch,
    Launched,
]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)

# A frame up larger than this may only be a Result carrying a body, or a Log line (one string
# each, copied at memory speed). Decoding costs per element: an error report whose stack trace
# was a list of 7 million empty strings held the daemon's event loop for 94 ms, and a function
# may send one with every answer. Over this size, anything else is refused before decoding.
MAX_UP_REPORT = 1024 * 1024


class _BodyResult(msgspec.Struct, tag="Result", frozen=True, forbid_unknown_fields=True):
    """A Result as a large frame may hold it: no error report (a non-nil `error` fails at once)."""

    request_id: str
    body: bytes | None = None
    error: None = None
    max_rss_kb: int = 0
    fatal: bool = False
    http_status: int = 0
    http_headers: HttpHeaders = []


_large_up_decoder = msgspec.msgpack.Decoder(Union[_BodyResult, Log])


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame."""


class FrameTooLarge(ProtocolError):
    """A frame's header announces more bytes than the receiver accepts."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a frame of {size:,} bytes exceeds the limit of {limit:,}")
        self.size = size
        self.limit = limit


def encode(frame: Frame) -> bytes:
    body = _encoder.encode(frame)
    return HEADER.pack(len(body)) + body


def decode(body: bytes | memoryview) -> Frame:
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from None
    except RecursionError:
        # Unknown fields are refused, but a value is still parsed before its field is judged.
        raise ProtocolError("undecodable frame: nested too deeply") from None


def decode_up(body: bytes | memoryview) -> Frame:
    """`decode` for a frame from an instance (user code): large frames only of the shapes that need it."""
    if len(body) <= MAX_UP_REPORT:
        return decode(body)
    try:
        frame = _large_up_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise ProtocolError(
            f"a frame of {len(body):,} bytes may only be a Result with a body or a Log line "
            f"(error reports and every other frame are limited to {MAX_UP_REPORT:,} bytes)"
        ) from None
    if isinstance(frame, _BodyResult):
        return Result(
            frame.request_id, frame.body, None, frame.max_rss_kb, frame.fatal, frame.http_status, frame.http_headers
        )
    return frame


class FrameBuffer:
    """Sans-IO reassembly of frames from arbitrary chunks of bytes."""

    def __init__(self, max_frame: int = MAX_FRAME, *, from_instance: bool = False) -> None:
        self._buf = bytearray()
        self._max_frame = max_frame
        self._decode = decode_up if from_instance else decode

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > self._max_frame:
                raise FrameTooLarge(size, self._max_frame)
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            frames.append(self._decode(bytes(self._buf[HEADER.size : end])))
            del self._buf[:end]
        return frames


def encode_packet(frame: Frame) -> bytes:
    """Encode a frame for a SOCK_SEQPACKET socket, where packets need no header."""
    return _encoder.encode(frame)
