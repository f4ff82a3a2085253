"""The sans-IO frame demultiplexer: which request each frame from an instance belongs to."""

from __future__ import annotations

import pytest

from fgd.demux import INITIALIZER, RECENT_REQUESTS, Demultiplexer
from runtimes import protocol


def result(request_id: str, body: bytes = b"{}") -> protocol.Result:
    return protocol.Result(request_id, body)


def log(request_id: str, message: str = "hi") -> protocol.Log:
    return protocol.Log(request_id, "stdout", message)


def frames_of(demux: Demultiplexer) -> list[protocol.Frame]:
    out = []
    while (frame := demux.next_frame()) is not None:
        out.append(frame)
    return out


def test_frames_split_across_chunks_come_out_whole_and_in_order() -> None:
    demux = Demultiplexer()
    demux.begin("r1")
    data = protocol.encode(log("r1", "a")) + protocol.encode(result("r1", b'"x"'))
    for i in range(len(data)):
        demux.feed(data[i : i + 1])
    out = frames_of(demux)
    assert [type(f).__name__ for f in out] == ["Log", "Result"]
    assert out[0].message == "a" and out[1].body == b'"x"'


def test_log_for_a_request_never_given_is_a_protocol_error() -> None:
    demux = Demultiplexer()
    demux.begin("r1")
    demux.feed(protocol.encode(log("forged")))
    with pytest.raises(protocol.ProtocolError, match="forged"):
        demux.next_frame()


def test_log_for_initializer_untagged_running_or_lately_finished_is_accepted() -> None:
    demux = Demultiplexer()
    demux.begin("r1")
    demux.begin("r2")
    demux.end("r2")
    for owner in (INITIALIZER, "", "r1", "r2"):
        demux.feed(protocol.encode(log(owner)))
    assert [f.request_id for f in frames_of(demux)] == [INITIALIZER, "", "r1", "r2"]


def test_only_the_latest_finished_requests_are_remembered() -> None:
    demux = Demultiplexer()
    demux.begin("old")
    demux.end("old")
    for i in range(RECENT_REQUESTS):
        demux.begin(f"r{i}")
        demux.end(f"r{i}")
    demux.feed(protocol.encode(log(f"r{RECENT_REQUESTS - 1}")) + protocol.encode(log("old")))
    assert demux.next_frame() is not None
    with pytest.raises(protocol.ProtocolError):
        demux.next_frame()


def test_answer_for_a_request_not_running_or_twice_is_refused() -> None:
    demux = Demultiplexer()
    demux.begin("r1")
    with pytest.raises(protocol.ProtocolError, match="not given"):
        demux.check_answer(result("other"))
    demux.check_answer(result("r1"))
    demux.hold(result("r1"))
    with pytest.raises(protocol.ProtocolError, match="twice"):
        demux.check_answer(result("r1"))
    assert demux.take("r1") is not None and demux.take("r1") is None


def test_oversized_frame_is_refused_before_it_is_buffered() -> None:
    demux = Demultiplexer(max_frame=100)
    with pytest.raises(protocol.FrameTooLarge):
        demux.feed((10_000).to_bytes(4, "big") + b"x")


def test_reader_hand_over_first_come_first_served() -> None:
    demux = Demultiplexer()
    for r in ("a", "b", "c"):
        demux.begin(r)
    demux.reading = True  # "a" reads
    demux.wait("b")
    demux.wait("c")
    # "a" reads c's answer: c is woken to take it, b is next to read.
    demux.hold(result("c"))
    assert demux.answered("c") is True
    assert demux.answered("c") is False  # already woken
    assert demux.next_reader() == "b"
    assert demux.next_reader() is None


def test_a_waiter_that_leaves_is_not_handed_the_reading() -> None:
    demux = Demultiplexer()
    demux.wait("b")
    demux.wait("c")
    assert demux.stop_waiting("b") is True
    assert demux.stop_waiting("b") is False
    assert demux.next_reader() == "c"


def test_instance_gone_wakes_every_waiter() -> None:
    demux = Demultiplexer()
    for r in ("a", "b", "c"):
        demux.wait(r)
    assert demux.wake_all() == ["a", "b", "c"]
    assert demux.next_reader() is None
