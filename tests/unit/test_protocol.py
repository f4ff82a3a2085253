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
