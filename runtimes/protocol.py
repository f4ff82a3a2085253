"""Frames exchanged between the daemon and an instance, and with a zygote.

Every frame is a 4-byte big-endian length followed by a msgpack body; the body
is a tagged union so either side can decode any frame with one decoder.
Down (daemon -> instance): Contain, Specialize, Invoke, Shutdown.
Up (instance -> daemon): Contained, ContainError, Ready, InitError, Result, Log.
Zygote control: Fork down (with fds passed by SCM_RIGHTS); Forked and Exited up.
"""

from __future__ import annotations

import struct

import msgspec

from sandbox.policy import ContainPolicy, EnterPolicy

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024


class FunctionError(msgspec.Struct, frozen=True):
    """What the function side reports when user code fails."""

    error_type: str
    error_message: str
    stack_trace: list[str] = []


class FunctionIdentity(msgspec.Struct, frozen=True):
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


class Contain(msgspec.Struct, tag=True, frozen=True):
    """Sent once the daemon has put the instance into its cgroup: apply the generic sandbox."""

    policy: ContainPolicy


class Contained(msgspec.Struct, tag=True, frozen=True):
    pass


class ContainError(msgspec.Struct, tag=True, frozen=True):
    message: str


class Specialize(msgspec.Struct, tag=True, frozen=True):
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


class Invoke(msgspec.Struct, tag=True, frozen=True):
    request_id: str
    event: bytes
    # Absolute wall-clock deadline (time.time() seconds) for getRemainingTime.
    deadline: float


class Shutdown(msgspec.Struct, tag=True, frozen=True):
    pass


class Ready(msgspec.Struct, tag=True, frozen=True):
    init_ms: float


class InitError(msgspec.Struct, tag=True, frozen=True):
    error: FunctionError


class Result(msgspec.Struct, tag=True, frozen=True):
    request_id: str
    body: bytes | None = None
    error: FunctionError | None = None
    max_rss_kb: int = 0


class Log(msgspec.Struct, tag=True, frozen=True):
    request_id: str
    level: str
    message: str


class Fork(msgspec.Struct, tag=True, frozen=True):
    instance_id: str


class Forked(msgspec.Struct, tag=True, frozen=True):
    instance_id: str
    pid: int


class Exited(msgspec.Struct, tag=True, frozen=True):
    pid: int
    # os.waitstatus_to_exitcode: >= 0 exit code, < 0 killed by that signal.
    exit_code: int


Frame = (
    Contain
    | Contained
    | ContainError
    | Specialize
    | Invoke
    | Shutdown
    | Ready
    | InitError
    | Result
    | Log
    | Fork
    | Forked
    | Exited
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame."""


def encode(frame: Frame) -> bytes:
    body = _encoder.encode(frame)
    return HEADER.pack(len(body)) + body


def decode(body: bytes | memoryview) -> Frame:
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from None


class FrameBuffer:
    """Sans-IO reassembly of frames from arbitrary chunks of bytes."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME}")
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            frames.append(decode(bytes(self._buf[HEADER.size : end])))
            del self._buf[:end]
        return frames


def encode_packet(frame: Frame) -> bytes:
    """Encode a frame for a SOCK_SEQPACKET socket, where packets need no header."""
    return _encoder.encode(frame)
