"""The plain request (fgd.web.plain): what it takes, h11 takes the same way; the rest it leaves.

Every request `plain_request` accepts is checked against h11 itself: same method, target,
headers (names lower-case, values stripped), body, and the same end (the next request's first
byte). A request it leaves to h11 is not checked here: h11 then answers it as before.
"""

from __future__ import annotations

import random

import h11
import pytest

from fgd.web.plain import PlainRequest, plain_request

MAX_HEAD = 16 * 1024


def request(
    body: bytes = b'{"k": 1}', *, line: bytes = b"POST /v2/p/fgs/functions/u/invocations HTTP/1.1", extra: bytes = b""
) -> bytes:
    return (
        line
        + b"\r\nHost: 127.0.0.1:8080\r\nX-Auth-Token: secret\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def h11_reading(data: bytes) -> tuple[PlainRequest, bytes] | None:
    """What h11 makes of `data`: the request as plain_request would give it and the bytes it
    holds after it; None if h11 refuses the request or needs more bytes for its head. A body
    not all in is None, the request's end where its Content-Length puts it."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(data)
    try:
        head = conn.next_event()
        if type(head) is not h11.Request:
            return None
        headers = [(name, value) for name, value in head.headers]
        body = b""
        while True:
            event = conn.next_event()
            if type(event) is h11.Data:
                body += event.data
            elif type(event) is h11.EndOfMessage:
                break
            elif event is h11.NEED_DATA:
                length = int(dict(headers)[b"content-length"])
                end = len(data) - len(body) + length  # all that came after the head is body
                return PlainRequest(head.method, head.target, headers, None, end), b""
            else:
                return None
    except h11.RemoteProtocolError:
        return None
    rest = conn.trailing_data[0]
    return PlainRequest(head.method, head.target, headers, body, len(data) - len(rest)), rest


def assert_as_h11_reads(data: bytes) -> PlainRequest | None:
    plain = plain_request(data, MAX_HEAD)
    if plain is not None:
        reading = h11_reading(data)
        assert reading is not None, f"plain took what h11 refuses: {data!r}"
        assert plain == reading[0], data
        if plain.body is not None:
            assert data[plain.end :] == reading[1]
    return plain


def test_an_invocation_as_clients_send_it_is_plain_and_read_as_h11_reads_it() -> None:
    data = request() + b"POST /next HTTP/1.1\r\n"
    plain = assert_as_h11_reads(data)
    assert plain is not None
    assert plain.method == b"POST" and plain.target == b"/v2/p/fgs/functions/u/invocations"
    assert plain.headers == [
        (b"host", b"127.0.0.1:8080"),
        (b"x-auth-token", b"secret"),
        (b"content-type", b"application/json"),
        (b"content-length", b"8"),
    ]
    assert plain.body == b'{"k": 1}'
    assert data[plain.end :] == b"POST /next HTTP/1.1\r\n"


@pytest.mark.parametrize(
    "data",
    [
        request(line=b"GET /x?q=1&r=%20 HTTP/1.1", body=b""),
        request(extra=b"X-Spaces: \t  a  b \t \r\n"),  # value stripped of its edges, not inside
        request(extra=b"X-Empty:\r\nX-Empty2:   \r\n"),
        request(extra=b"X-Obs-Text: caf\xc3\xa9\r\n"),
        request(extra=b"X-Cff-Request-Version: v1\r\n"),
        request(body=b"x" * 10_000),
        request(body=b"", extra=b""),
        request().replace(b"Content-Length: 8", b"content-LENGTH: 0008"),
        b"GET /x?a=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",  # no length: no body
        b"POST /x HTTP/1.1\r\nHost: x\r\n\r\nGET /y HTTP/1.1\r\n",  # what follows is the next request
    ],
)
def test_plain_requests_are_read_as_h11_reads_them(data: bytes) -> None:
    assert assert_as_h11_reads(data) is not None


@pytest.mark.parametrize(
    "data",
    [
        # framing that h11 decides (merged lengths, chunks, 100-continue, closes, upgrades)
        request(extra=b"Transfer-Encoding: chunked\r\n"),
        request(extra=b"Content-Length: 8\r\n"),  # the same length twice: h11 merges them
        request(extra=b"content-LENGTH: 8\r\n"),
        request(extra=b"Expect: 100-continue\r\n"),
        request(extra=b"Connection: close\r\n"),
        request(extra=b"Connection: keep-alive\r\n"),
        request(extra=b"Upgrade: websocket\r\n"),
        request(extra=b"TE: trailers\r\n"),
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n",  # head not all in
        b"POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n",  # no Host
        b"POST /x HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 0\r\n\r\n",
        # what h11 refuses or reads otherwise
        request(line=b"POST /x HTTP/1.0"),
        request(line=b"POST http://h/x HTTP/1.1"),
        request(line=b"POST * HTTP/1.1"),
        request(line=b"POST /x HTTP/1.1 "),
        request(line=b"POST  /x HTTP/1.1"),
        request(line=b"PO ST /x HTTP/1.1"),
        request(line=b"POST /x\x00 HTTP/1.1"),
        request(line=b"POST /\xc3\xa9 HTTP/1.1"),
        b"\r\n" + request(),
        request(extra=b"X-Fold: a\r\n b\r\n"),
        request(extra=b" X-Lead: a\r\n"),
        request(extra=b"X-Space : a\r\n"),
        request(extra=b"Transfer-Encoding : chunked\r\n"),
        request(extra=b"X-Ctl: a\x01b\r\n"),
        request(extra=b"X-Del: a\x7fb\r\n"),
        request(extra=b"X-Nul: a\x00b\r\n"),
        request(extra=b"X-Cr: a\rb\r\n"),
        request(extra=b"X-Lf: a\nb\r\n"),
        request(extra=b"X-Bare-Lf: a\nX-Other: b\r\n"),
        request(extra=b"No-Colon\r\n"),
        request(extra=b": no-name\r\n"),
        request(extra=b"X-\xc3\xa9: a\r\n"),
        b"POST /x HTTP/1.1\nHost: x\nContent-Length: 0\n\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n12345",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: -0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\n12345",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5,5\r\n\r\n12345",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: \xd9\xa5\r\n\r\n12345",  # a non-ASCII digit
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 30 + b"\r\n\r\n",
    ],
)
def test_requests_of_any_other_shape_are_left_to_h11(data: bytes) -> None:
    assert plain_request(data, MAX_HEAD) is None


@pytest.mark.parametrize("sent", [0, 3])
def test_a_plain_head_whose_body_is_not_all_in_says_where_the_request_will_end(sent: int) -> None:
    data = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n" + b"abcde"[:sent]
    plain = assert_as_h11_reads(data)
    assert plain is not None and plain.body is None
    assert plain.end == len(data) - sent + 5
    whole = assert_as_h11_reads(data + b"abcde"[sent:])
    assert whole is not None and whole.body == b"abcde" and whole.end == plain.end


def test_a_head_over_the_limit_is_left_to_h11_which_refuses_it_431() -> None:
    # h11's path answers 431 to a head (its blank line included) over MAX_HEAD bytes.
    base = request()
    head, _, body = base.partition(b"\r\n\r\n")
    pad = b"X-Pad: " + b"a" * (MAX_HEAD - len(head) - 4 - 9) + b"\r\n"
    exact = head.replace(b"\r\nHost:", b"\r\n" + pad[:-2] + b"\r\nHost:", 1) + b"\r\n\r\n" + body
    assert len(exact.partition(b"\r\n\r\n")[0]) + 4 == MAX_HEAD
    assert plain_request(exact, MAX_HEAD) is not None
    over = exact.replace(b"X-Pad: a", b"X-Pad: aa", 1)
    assert plain_request(over, MAX_HEAD) is None


ALPHABET = [
    b"\r",
    b"\n",
    b"\r\n",
    b" ",
    b"\t",
    b":",
    b"\x00",
    b"\x01",
    b"\x7f",
    b"\xff",
    b"a",
    b"0",
    b"9",
    b",",
    b"/",
    b"?",
    b"Host: y\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"\r\n\r\n",
    b"0\r\n\r\n",
]


def mutations(rng: random.Random, data: bytes) -> bytes:
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(0, len(data))
        choice = rng.random()
        if choice < 0.4:
            data = data[:at] + rng.choice(ALPHABET) + data[at:]
        elif choice < 0.7:
            data = data[:at] + data[at + rng.randint(1, 4) :]
        else:
            data = data[:at] + rng.choice(ALPHABET) + data[at + 1 :]
    return data


def test_thousands_of_mutated_requests_are_either_left_to_h11_or_read_as_h11_reads_them() -> None:
    rng = random.Random(15)
    seeds = [
        request(),
        request(b"", extra=b"X-A: b\r\n") + request(b"abc"),
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\n\r\n",
        b"GET /a HTTP/1.1\r\nhost:h\r\ncontent-length:0\r\n\r\n",
        b"GET /a?q HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\n\r\n",
    ]
    taken = 0
    for _ in range(20_000):
        data = mutations(rng, rng.choice(seeds))
        if assert_as_h11_reads(data) is not None:
            taken += 1
    # The mutations are not all refusals: both kinds were tried.
    assert 1_000 < taken < 19_000, taken
