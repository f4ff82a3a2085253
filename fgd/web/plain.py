"""The plain request: the one shape of HTTP/1.1 request that is read without h11 (sans-IO).

Almost every invocation is a request of one shape: HTTP/1.1, an origin-form target, a Host
header, a Content-Length or none (no body, as RFC 9112 frames a request without one), and no
header that changes how the connection or the body is framed. `plain_request` recognises exactly that
shape and nothing more; anything else (a chunked body, `Expect`, `Connection`, HTTP/1.0,
obs-fold, a byte h11 would refuse or a header h11 would merge) is None, and
the connection hands the same bytes to h11, which then answers or refuses them as before.

So there are not two HTTP parsers that could disagree on where a request ends (the root of
request smuggling): a request this module takes is one h11 takes the same way (same method,
target, header names and values, body and end), which `tests/unit/test_plain_request.py`
checks against h11 itself on hostile and random heads. What h11 costs per request (its state
machine, its events, its header checks: about a fifth of the daemon's CPU per warm
invocation) is then spent only on requests of any other shape.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# The request line: a method token, an origin-form target (visible ASCII, as h11's), HTTP/1.1.
_REQUEST_LINE = re.compile(rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+) (/[\x21-\x7e]*) HTTP/1\.1")
# Every header line of the head at once: a token, a colon, then visible ASCII, obs-text, spaces
# and tabs only (no control character: stricter than h11, which takes \x01-\x08 and \x7f). Any
# such value is `OWS field-value OWS` of RFC 9112, so the value is the line's rest stripped.
# Linear: the classes of each part do not overlap.
_HEADER_LINES = re.compile(rb"(?:[-!#$%&'*+.^_`|~0-9a-zA-Z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
# Headers that change how the request is framed or the connection kept: their requests go
# through h11 (which merges repeated lengths, answers 100-continue, closes when asked...).
_FRAMING = frozenset({b"transfer-encoding", b"expect", b"connection", b"upgrade", b"te", b"trailer"})
_OWS = b" \t"
# Content-Length digits at most (a larger number is no body that fits a read).
_LENGTH_DIGITS = 18


class PlainRequest(NamedTuple):
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # (lower-case name, value), in order, as h11 gives them
    body: bytes | None  # None: not all in yet
    end: int  # where the request ends in the bytes it was read from (beyond them: not all in)


def plain_request(data: bytes, max_head: int) -> PlainRequest | None:
    """The request at the start of `data` if it is a plain one; else None. Its head is whole;
    its body may not be (None: the connection then leaves it to h11, which reads the body as it
    comes)."""
    # The head, its blank line included, within max_head bytes (h11's path: 431 past it).
    head_end = data.find(b"\r\n\r\n", 0, max_head)
    if head_end < 0:
        return None
    line_end = data.find(b"\r\n", 0, head_end + 2)
    line = _REQUEST_LINE.fullmatch(data, 0, line_end)
    if line is None:
        return None
    block_start = line_end + 2
    block_end = head_end + 2
    if _HEADER_LINES.fullmatch(data, block_start, block_end) is None:
        return None
    headers = []
    length = None
    host = 0
    for field in data[block_start:head_end].split(b"\r\n"):
        name, _, value = field.partition(b":")
        name = name.lower()
        value = value.strip(_OWS)
        if name == b"content-length":
            if length is not None or not value.isdigit() or len(value) > _LENGTH_DIGITS:
                return None
            length = int(value)
        elif name == b"host":
            host += 1
        elif name in _FRAMING:
            return None
        headers.append((name, value))
    if host != 1:
        return None
    if length is None:
        length = 0  # a request with neither Content-Length nor Transfer-Encoding has no body
    body_start = head_end + 4
    end = body_start + length
    body = data[body_start:end] if end <= len(data) else None
    return PlainRequest(line[1], line[2], headers, body, end)
