"""One invocation's data, apart from the machinery that runs it: the event check, the frame that
specialises an instance for a function, what comes back (Outcome) and how errors are cleaned."""

from __future__ import annotations

import os

import msgspec

from fgd.errors import InvalidParameter
from fgd.instance import Instance, InstanceGone
from fgd.model import MAX_RESPONSE_BYTES, FunctionRecord
from fgd.store import LogLine
from fgd.versions import qualifier_key
from runtimes import protocol
from runtimes.protocol import FunctionError

# An instance OOM-killed while using less than this share of its own limit was killed because
# the node (the daemon's own cgroup) ran out, not for its own use.
NODE_OOM_SHARE = 0.9


class Outcome(msgspec.Struct, kw_only=True):
    """What one invocation produced, for the HTTP layer and the logs."""

    request_id: str
    body: bytes | None = None
    error: FunctionError | None = None
    duration_ms: float = 0.0
    init_ms: float | None = None
    cold: bool = False
    max_memory_mb: float = 0.0
    memory_size: int = 0
    logs: list[LogLine] = []
    # The version that ran, and the alias it was reached through (fgd.versions).
    version: str = "latest"
    alias: str = ""
    # The interpreter that ran it ({"path", "version"}; issue 12), for the invocation summary.
    runtime_interpreter: dict | None = None
    # Issue 13: an HTTP function's answer as its server sent it (status, headers, body), for a
    # gateway route; `body` holds its APIG response for everyone else (fgd.custom).
    http_response: tuple[int, list[tuple[str, str]], bytes] | None = None


def check_event(event: bytes) -> bytes:
    """The event as the function will get it: a JSON document (an empty body is `{}`)."""
    try:
        # Checked, not built: decoding to Raw checks the syntax (and nesting) without making
        # Python objects of the document, about 6 times faster; it does not look inside
        # strings, so UTF-8 is checked apart (JSON text is UTF-8 as a whole).
        msgspec.json.decode(event or b"{}", type=msgspec.Raw)
        if not event.isascii():
            event.decode()
    except (msgspec.DecodeError, UnicodeDecodeError):
        # msgspec reports invalid UTF-8 inside a string as UnicodeDecodeError, not DecodeError.
        raise InvalidParameter("the request body must be a JSON document (the function's event)") from None
    except RecursionError:
        raise InvalidParameter("the event is JSON nested too deeply") from None
    return event or b"{}"


def pool_key(record: FunctionRecord) -> tuple:
    """Instances are interchangeable only within one function, version and alias (never across
    versions: fgd.versions) and one memory size (dynamic memory)."""
    return (*qualifier_key(record), record.settings.memory_size)


# Random bytes for request ids, fetched from the kernel 4 KiB at a time (one getrandom per
# 256 ids instead of one each: uuid.uuid4() was 4% of the daemon's time per warm invocation).
_RANDOM_BATCH = 4096
_random = memoryview(b"")


def new_request_id() -> str:
    """A random (version 4) UUID, as FunctionGraph's request ids are."""
    global _random
    if len(_random) < 16:
        _random = memoryview(os.urandom(_RANDOM_BATCH))
    raw, _random = _random[:16].hex(), _random[16:]
    # Version 4 in the 13th digit, the RFC 4122 variant (8, 9, a or b) in the 17th.
    variant = "89ab"[int(raw[16], 16) & 3]
    return f"{raw[:8]}-{raw[8:12]}-4{raw[13:16]}-{variant}{raw[17:20]}-{raw[20:32]}"


def _forget_random() -> None:
    global _random
    _random = memoryview(b"")


# A forked child must not hand out the ids its parent will.
os.register_at_fork(after_in_child=_forget_random)


def checked_answer(result: protocol.Result) -> tuple[bytes | None, FunctionError | None]:
    """A Result frame's body and error as the daemon passes them on: within the limits, clean text."""
    if result.error is not None:
        return None, clean_error(result.error)
    if result.body is not None and len(result.body) > MAX_RESPONSE_BYTES:
        return None, FunctionError(
            "Runtime.ResponseTooLarge",
            f"the response is {len(result.body):,} bytes; the limit is {MAX_RESPONSE_BYTES:,}",
        )
    return result.body, None


def clean_error(error: FunctionError) -> FunctionError:
    """An error report from user code, bounded, with a type name fit for a header."""
    error_type = "".join(c for c in error.error_type if c.isprintable())[: protocol.MAX_ERROR_TYPE] or "Error"
    message = error.error_message
    if len(message) > protocol.MAX_ERROR_MESSAGE:
        message = message[: protocol.MAX_ERROR_MESSAGE] + " [... cut]"
    stack = [line[: protocol.MAX_LOG_LINE] for line in error.stack_trace[: protocol.MAX_STACK_LINES]]
    if (error_type, message, stack) == (error.error_type, error.error_message, error.stack_trace):
        return error
    return FunctionError(error_type, message, stack)


class ColdStartFailure(msgspec.Struct):
    error: FunctionError
    init_ms: float


def gone_error(instance: Instance, gone: InstanceGone, memory_size: int) -> FunctionError:
    if instance.oom_killed():
        peak = instance.memory_peak_mb()
        if peak is not None and peak < memory_size * NODE_OOM_SHARE:
            # Killed below its own limit: the memory that ran out was the node's (the daemon's cgroup).
            return FunctionError(
                "Runtime.OutOfMemory",
                f"the node ran out of memory while the function ran (it used {peak:.0f} MB of its "
                f"{memory_size} MB): the instance was killed; try again later",
            )
        return FunctionError(
            "Runtime.OutOfMemory", f"the function ran out of memory: it used more than its {memory_size} MB"
        )
    return FunctionError("Runtime.ExitError", gone.message)
