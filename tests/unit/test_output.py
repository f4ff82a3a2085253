"""Instance output as log lines: every line and every invocation bounded, in linear time."""

from __future__ import annotations

import os
import time

import fgd.output
from fgd.instance_output import InstanceOutput, LogLimits
from fgd.output import LINES_PER_DRAIN, LineSplitter, OutputPipe, Transcript, cut_line
from fgd.store import LogLine
from runtimes.protocol import MAX_LOG_LINE


def test_lines_split_across_any_chunks() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"one\ntw") == ["one"]
    assert splitter.feed(b"o\n\nthree") == ["two", ""]
    assert splitter.flush() == ["three"]
    assert splitter.flush() == []


def test_a_line_without_end_is_kept_to_one_line_and_cut_with_a_count() -> None:
    splitter = LineSplitter()
    chunk = b"y" * 65536
    for _ in range(64):  # 4 MiB without a newline
        assert splitter.feed(chunk) == []
    assert len(splitter._partial) == MAX_LOG_LINE
    (line,) = splitter.feed(b"\nnext")
    assert line.startswith("y" * MAX_LOG_LINE)
    assert f"{64 * 65536 - MAX_LOG_LINE:,} more bytes cut" in line
    assert splitter.flush() == ["next"]


def test_endless_line_costs_linear_time() -> None:
    splitter = LineSplitter()
    chunk = b"z" * 65536
    started = time.perf_counter()
    for _ in range(4096):  # 256 MiB
        splitter.feed(chunk)
    # Re-copying the partial line on every read would take minutes; a linear pass takes well under a second.
    assert time.perf_counter() - started < 3


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert LineSplitter().feed(b"\xff\xfe ok\n") == ["\ufffd\ufffd ok"]


def test_cut_line_limits_bytes_not_characters() -> None:
    assert cut_line("short") == "short"
    text = "\u00e9" * MAX_LOG_LINE  # two bytes each
    cut = cut_line(text)
    assert len(cut.split(" [...")[0].encode()) <= MAX_LOG_LINE
    assert f"{MAX_LOG_LINE:,} more bytes cut" in cut


def test_transcript_keeps_first_lines_then_counts() -> None:
    transcript = Transcript()
    for n in range(10):
        transcript.add(LogLine(0.0, "r", "i", "stdout", f"line {n}"), 5, 1000)
    lines = transcript.finish("r", "i")
    assert [line.message for line in lines[:5]] == [f"line {n}" for n in range(5)]
    assert lines[5].stream == "platform" and lines[5].message.startswith("5 log lines")


def test_transcript_bounds_bytes() -> None:
    transcript = Transcript()
    for _ in range(10):
        transcript.add(LogLine(0.0, "r", "i", "stdout", "x" * 400), 100, 1000)
    lines = transcript.finish("r", "i")
    assert len(lines) == 3  # two lines of 400 fit in 1000 characters, then the count
    assert "8 log lines (3,200 characters) dropped" in lines[-1].message


def test_one_drain_splits_a_bounded_number_of_lines_and_keeps_the_rest() -> None:
    read, write = os.pipe2(os.O_NONBLOCK)
    try:
        os.write(write, b"\n" * 60_000 + b"last\npartial")
        pipe = OutputPipe(read, "stdout")
        first = pipe.drain()
        assert len(first) == LINES_PER_DRAIN
        assert pipe.pending
        lines = first
        while pipe.pending:
            lines += pipe.drain()
        assert len(lines) == 60_001 and lines[-1] == "last"
        assert pipe.flush_partial() == ["partial"]
    finally:
        os.close(read)
        os.close(write)


def _instance_output() -> tuple[InstanceOutput, list[str], int, int]:
    """An InstanceOutput over a real pipe (its write end returned), one request running."""
    running = ["r1"]
    output = InstanceOutput("i1", running, LogLimits(max_lines=100, max_bytes=100_000))
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(read_end, False)
    output.attach([OutputPipe(read_end, "stdout")])
    return output, running, read_end, write_end


async def test_a_request_end_reads_an_empty_pipe_not_at_all(monkeypatch) -> None:
    """Issue 15: one poll of the instance's pipes per request end, not a failing read of each."""
    output, _, _, write_end = _instance_output()
    reads: list[int] = []
    real_read = os.read
    monkeypatch.setattr(fgd.output.os, "read", lambda fd, n: reads.append(fd) or real_read(fd, n))
    output.collect()
    assert reads == []
    assert output.take_lines("r1") == []
    os.write(write_end, b"printed\nno newline at the end")
    output.collect()
    assert len(reads) >= 1
    assert [line.message for line in output.take_lines("r1")] == ["printed", "no newline at the end"]
    output.close()
    os.close(write_end)


async def test_a_closed_pipe_is_seen_and_its_last_line_kept() -> None:
    output, _, _, write_end = _instance_output()
    os.write(write_end, b"last words")
    os.close(write_end)
    output.collect()
    assert [line.message for line in output.take_lines("r1")] == ["last words"]
    assert output.pipes[0].closed
    output.collect()  # and nothing more comes of it
    assert output.take_lines("r1") == []
    output.close()
    output.collect()  # after close: no descriptor is polled or read
    assert output.pipes[0].fd == -1
