"""Wire frames: any chunking of a valid byte stream decodes to the same frames."""

from __future__ import annotations

import random

import pytest

from runtimes import protocol


def sample_frames() -> list[protocol.Frame]:
    return [
        protocol.Invoke("r1", b'{"a": 1}', 123.5),
        protocol.Log("r1", "INFO", "hello"),
        protocol.Result("r1", body=b"[1]", max_rss_kb=100),
        protocol.Result("r2", error=protocol.FunctionError("ValueError", "bad", ["line"])),
        protocol.Ready(1.5),
        protocol.Shutdown(),
    ]


def test_frames_survive_any_chunking() -> None:
    stream = b"".join(protocol.encode(f) for f in sample_frames())
    rng = random.Random(7)
    for _ in range(200):
        buffer = protocol.FrameBuffer()
        decoded = []
        position = 0
        while position < len(stream):
            step = rng.randint(1, 40)
            decoded += buffer.feed(stream[position : position + step])
            position += step
        assert decoded == sample_frames()


def test_garbage_is_a_protocol_error() -> None:
    buffer = protocol.FrameBuffer()
    with pytest.raises(protocol.ProtocolError):
        buffer.feed(b"\x00\x00\x00\x03abc")


def test_oversized_frame_header_is_refused_before_buffering() -> None:
    buffer = protocol.FrameBuffer()
    with pytest.raises(protocol.ProtocolError, match="exceeds"):
        buffer.feed(b"\xff\xff\xff\xff")


def test_packets_need_no_header() -> None:
    frame = protocol.Forked("abc", 42)
    assert protocol.decode(protocol.encode_packet(frame)) == frame


def _log_with_extra_field(value: bytes) -> bytes:
    """A Log frame body with one more field whose raw msgpack value is `value`."""
    body = bytearray(b"\x84")
    for text in ("type", "Log", "request_id", "r1", "level", "stdout", "extra"):
        body += bytes([0xA0 | len(text)]) + text.encode()
    return bytes(body) + value


def test_deeply_nested_frame_is_a_protocol_error_not_a_recursion_error() -> None:
    # The tag comes last, so the decoder must step over the nested value before it can refuse it.
    body = b"\x82\xa5extra" + b"\x91" * 200_000 + b"\xc0" + b"\xa4type\xa3Log"
    with pytest.raises(protocol.ProtocolError, match="nested too deeply"):
        protocol.decode(body)


def test_unknown_field_is_refused() -> None:
    with pytest.raises(protocol.ProtocolError, match="extra"):
        protocol.decode(_log_with_extra_field(b"\xc0"))


def test_unknown_tag_and_wrong_types_are_refused() -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(b"\x81\xa4type\xa5Bogus")
    with pytest.raises(protocol.ProtocolError, match="request_id"):
        protocol.decode(b"\x82\xa4type\xa6Result\xaarequest_id\x07")


def test_frame_over_the_receivers_limit_is_refused_from_its_header() -> None:
    buffer = protocol.FrameBuffer(protocol.MAX_UP_FRAME)
    with pytest.raises(protocol.FrameTooLarge) as refused:
        buffer.feed(protocol.HEADER.pack(1 << 30) + b"x")
    assert refused.value.size == 1 << 30 and refused.value.limit == protocol.MAX_UP_FRAME


def test_log_line_frame_cuts_long_messages() -> None:
    frame = protocol.log_line("r1", "INFO", "x" * (protocol.MAX_LOG_LINE + 10))
    assert frame.message.startswith("x" * protocol.MAX_LOG_LINE)
    assert frame.message.endswith("[... 10 more characters cut]")
    assert protocol.log_line("r1", "INFO", "short").message == "short"


def test_large_frames_from_an_instance_are_only_answers_with_a_body_or_log_lines() -> None:
    big = "m" * (protocol.MAX_UP_REPORT + 1)
    answer = protocol.encode(protocol.Result("r", body=big.encode(), max_rss_kb=7))
    log = protocol.encode(protocol.Log("r", "stdout", big))
    report = protocol.encode(protocol.Result("r", error=protocol.FunctionError("E", big)))
    init = protocol.encode(protocol.InitError(protocol.FunctionError("E", "m", [big])))
    buffer = protocol.FrameBuffer(protocol.MAX_UP_FRAME, from_instance=True)
    assert buffer.feed(answer) == [protocol.Result("r", body=big.encode(), max_rss_kb=7)]
    assert buffer.feed(log) == [protocol.Log("r", "stdout", big)]
    for refused in (report, init):
        with pytest.raises(protocol.ProtocolError, match="error reports and every other frame are limited"):
            protocol.FrameBuffer(protocol.MAX_UP_FRAME, from_instance=True).feed(refused)
    # Small ones of every shape decode as before, and frames down are not held to this.
    small = protocol.Result("r", error=protocol.FunctionError("E", "m", ["a"] * 200))
    assert protocol.FrameBuffer(from_instance=True).feed(protocol.encode(small)) == [small]
    assert protocol.FrameBuffer().feed(report)[0].error.error_message == big
