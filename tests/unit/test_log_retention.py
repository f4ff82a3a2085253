"""LogSink's byte caps on a real Store: oldest lines first, each drop logged and counted."""

from __future__ import annotations

import re
import time

import msgspec
import pytest
import trio

from fgd.config import Config, ConfigError, LogConfig, load
from fgd.logs import LogSink
from fgd.store import LogLine, Store
from tests.unit.test_store import record

KIB = 1024


def line(n: int, text: str = "x" * 1000) -> LogLine:
    return LogLine(time.time(), f"req{n:05d}", "inst", "stdout", text)


async def sink_with(tmp_path, *names: str, **caps: int) -> tuple[Store, LogSink]:
    store = Store(tmp_path / "fgd.db")
    for name in names:
        await store.put(record(name))
    return store, LogSink(store, LogConfig(**caps))


def messages(store: Store, key) -> list[LogLine]:
    return [line for _, line in store.read_logs(key, request_id=None, since=None, after_id=0, limit=100_000)]


def dropped_in(note: LogLine) -> int:
    return int(re.search(r"dropped this function's ([\d,]+) oldest", note.message)[1].replace(",", ""))


async def test_a_function_over_its_cap_loses_its_oldest_lines_and_is_told(tmp_path) -> None:
    store, sink = await sink_with(tmp_path, "chatty", "quiet", max_bytes_per_function=100 * KIB)
    chatty, quiet = ("p", "default", "chatty"), ("p", "default", "quiet")
    sink.add(quiet, [line(n) for n in range(20)])
    stored_drops = 0
    for start in range(0, 300, 30):  # 30 KB per round, stored, then trimmed
        sink.add(chatty, [line(n) for n in range(start, start + 30)])
        # Room is made before the lines are written: the file never holds more than the cap.
        stored_drops += await sink.flush()
        # Never above the cap once a round is over.
        assert store.log_bytes[chatty] <= 100 * KIB
    assert stored_drops > 0
    await sink.flush()
    kept = messages(store, chatty)
    notes = [line for line in kept if line.stream == "platform"]
    assert notes and all("logs.max_bytes_per_function = 102,400 bytes" in note.message for note in notes)
    dropped = sink.dropped_lines[chatty, "max_bytes_per_function"]
    assert dropped == stored_drops
    # Notes are lines too and the oldest go in turn; the newest one tells the running total.
    assert all(dropped_in(note) > 0 for note in notes)
    assert f"; {dropped:,} lines in all since fgd started" in notes[-1].message
    # The newest lines are the ones kept, in order.
    numbers = [int(line.request_id[3:]) for line in kept if line.stream == "stdout"]
    assert numbers == list(range(300 - len(numbers), 300))
    # Dropped lines include older notes (at most one per round, ten rounds).
    assert 300 - dropped <= len(numbers) <= 300 - dropped + 10
    assert sink.dropped_bytes[chatty, "max_bytes_per_function"] > dropped * 1000
    assert len(messages(store, quiet)) == 20
    assert (quiet, "max_bytes_per_function") not in sink.dropped_lines


async def test_a_burst_over_the_cap_is_cut_before_it_reaches_the_database(tmp_path) -> None:
    store, sink = await sink_with(tmp_path, "burst", max_bytes_per_function=100 * KIB)
    key = ("p", "default", "burst")
    sink.add(key, [line(n) for n in range(1000)])  # 1 MB in one invocation
    written = []
    original = store.write_logs
    store.write_logs = lambda rows: (written.append(len(rows)), original(rows))[1]
    await sink.flush()
    assert store.log_bytes[key] <= 100 * KIB
    assert sum(written) < 100  # 90 lines of 1 KB and the note
    kept = messages(store, key)
    numbers = [int(line.request_id[3:]) for line in kept if line.stream == "stdout"]
    assert numbers == list(range(1000 - len(numbers), 1000))
    [note] = [line for line in kept if line.stream == "platform"]
    assert dropped_in(note) == 1000 - len(numbers) == sink.dropped_lines[key, "max_bytes_per_function"]


async def test_in_a_flood_the_newest_line_says_what_was_dropped(tmp_path) -> None:
    store, sink = await sink_with(tmp_path, "flood", max_bytes_per_function=100 * KIB)
    key = ("p", "default", "flood")
    for start in range(0, 1000, 200):  # each round twice the cap
        sink.add(key, [line(n) for n in range(start, start + 200)])
        await sink.flush()
        newest = messages(store, key)[-1]
        assert newest.stream == "platform" and newest.request_id == ""
        total = sink.dropped_lines[key, "max_bytes_per_function"]
        assert newest.message.endswith(f"; {total:,} lines in all since fgd started")
        assert store.log_bytes[key] <= 100 * KIB


async def test_the_node_cap_drops_the_oldest_lines_whoever_wrote_them(tmp_path) -> None:
    store, sink = await sink_with(
        tmp_path, "early", "late", max_bytes_per_function=1024 * KIB, max_bytes_total=200 * KIB
    )
    early, late = ("p", "default", "early"), ("p", "default", "late")
    sink.add(early, [line(n) for n in range(150)])
    await sink.flush()
    sink.add(late, [line(n) for n in range(200)])
    await sink.flush()
    assert store.log_bytes_total <= 200 * KIB
    # All of the early function's lines went before any of the late one's.
    assert sink.dropped_lines[early, "max_bytes_total"] == 150
    assert sink.dropped_lines[late, "max_bytes_total"] > 0
    await sink.flush()
    assert [line.stream for line in messages(store, early)] == ["platform"]
    assert "logs.max_bytes_total = 204,800 bytes" in messages(store, early)[0].message


async def test_under_the_caps_nothing_is_dropped(tmp_path) -> None:
    store, sink = await sink_with(tmp_path, "f", max_bytes_per_function=100 * KIB)
    key = ("p", "default", "f")
    sink.add(key, [line(n) for n in range(80)])
    assert await sink.flush() == 0
    assert len(messages(store, key)) == 80
    assert not sink.dropped_lines


async def test_lines_of_a_deleted_function_are_not_written(tmp_path) -> None:
    store, sink = await sink_with(tmp_path, "gone")
    key = ("p", "default", "gone")
    await store.delete(key)
    sink.add(key, [line(1)])
    await sink.flush()
    assert messages(store, key) == []
    assert key not in store.log_bytes


async def test_expired_lines_are_counted_under_retention(tmp_path) -> None:
    store, sink = await sink_with(tmp_path, "f")
    key = ("p", "default", "f")
    sink.add(key, [LogLine(1000.0 + n, "r", "i", "stdout", "old") for n in range(10)])
    sink.add(key, [line(1)])
    await sink.flush()
    assert await sink.expire(time.time() - 60) == 10
    assert [line.message for line in messages(store, key)] == ["x" * 1000]
    assert sink.dropped_lines[key, "retention"] == 10


@pytest.mark.parametrize(
    "text",
    ["[logs]\nmax_bytes_total = 1000\n", "[logs]\nmax_bytes_per_function = -1\n", "[logs]\nretention_days = 0\n"],
)
def test_byte_caps_too_small_to_be_meant_are_refused(tmp_path, text: str) -> None:
    path = tmp_path / "fgd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="logs"):
        load(str(path))


def test_default_caps() -> None:
    config = msgspec.toml.decode(b"", type=Config)
    assert config.logs.max_bytes_per_function == 64 * 1024 * 1024
    assert config.logs.max_bytes_total == 512 * 1024 * 1024


async def test_waiting_lines_are_sized_as_the_store_counts_them(tmp_path) -> None:
    store, sink = await sink_with(tmp_path, "f")
    key = ("p", "default", "f")
    sink.add(key, [LogLine(time.time(), "req", "inst", "stderr", text) for text in ("ascii", "é" * 10, "日本", "")])
    waiting = sink._pending_total
    await sink.flush()
    assert store.log_bytes[key] == waiting


async def test_waiting_lines_over_the_node_cap_lose_the_oldest_first(tmp_path) -> None:
    store, sink = await sink_with(
        tmp_path, "early", "late", max_bytes_per_function=1024 * KIB, max_bytes_total=200 * KIB
    )
    early, late = ("p", "default", "early"), ("p", "default", "late")
    sink.add(early, [line(n) for n in range(100)])
    sink.add(late, [line(n) for n in range(150)])  # 260 KB waiting in all
    assert sink.dropped_lines[early, "max_bytes_total"] > 0
    assert (late, "max_bytes_total") not in sink.dropped_lines
    await sink.flush()
    assert len([line for line in messages(store, late) if line.stream == "stdout"]) == 150
    kept_early = [int(line.request_id[3:]) for line in messages(store, early) if line.stream == "stdout"]
    assert kept_early == list(range(100 - len(kept_early), 100))
    assert store.log_bytes_total <= 200 * KIB


async def test_a_batch_that_fails_to_write_is_dropped_and_the_sink_goes_on(tmp_path, monkeypatch) -> None:
    store, sink = await sink_with(tmp_path, "f")
    key = ("p", "default", "f")
    real_write = store.write_logs
    calls = []

    def failing_once(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise TypeError("a row the store cannot take")
        return real_write(rows)

    monkeypatch.setattr(store, "write_logs", failing_once)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.run)
        sink.add(key, [line(1)])
        await trio.sleep(0.5)
        sink.add(key, [line(2)])
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert len(calls) >= 2
    assert [stored.request_id for stored in messages(store, key)] == ["req00002"]
