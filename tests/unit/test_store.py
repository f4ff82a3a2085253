"""The SQLite store: migrations, WAL, functions and logs."""

from __future__ import annotations

import sqlite3
import time
from unittest.mock import ANY

import trio

from fgd.config import LogConfig
from fgd.logs import LogSink
from fgd.model import CodeRef, FunctionRecord, FunctionSettings
from fgd.store import LINE_OVERHEAD, LOG_BATCH, MIGRATIONS, Store


def record(name: str, **changes: object) -> FunctionRecord:
    """A stored function named `name` in project p, package default (fields in `changes` replaced)."""
    fields: dict = {
        "project_id": "p",
        "package": "default",
        "func_name": name,
        "runtime": "Python3.11",
        "settings": FunctionSettings(handler="index.handler"),
        "code": CodeRef("a" * 64, "b" * 128, 10),
        "code_type": "zip",
        "code_filename": "",
        "revision": 1,
        "created": 1.0,
        "last_modified": 1.0,
    }
    return FunctionRecord(**{**fields, **changes})


def test_new_database_is_migrated_and_in_wal_mode(tmp_path) -> None:
    store = Store(tmp_path / "fgd.db")
    assert store.schema_version == len(MIGRATIONS)
    assert sqlite3.connect(tmp_path / "fgd.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    # Opening again applies nothing twice.
    assert Store(tmp_path / "fgd.db").schema_version == len(MIGRATIONS)


async def test_functions_persist_across_reopen(tmp_path) -> None:
    store = Store(tmp_path / "fgd.db")
    await store.put(record("a"))
    await store.put(record("b"))
    await store.delete(("p", "default", "a"))
    store.close()
    reopened = Store(tmp_path / "fgd.db")
    assert [r.func_name for r in reopened.list("p")] == ["b"]
    assert reopened.get(("p", "default", "b")) == record("b")


async def test_logs_filter_and_expire(tmp_path) -> None:
    store = Store(tmp_path / "fgd.db")
    key = ("p", "default", "f")
    rows = [(float(i), *key, f"r{i % 2}", "i", "stdout", f"m{i}") for i in range(10)]
    await store.run(store.write_logs, rows)
    odd = store.read_logs(key, request_id="r1", since=None, after_id=0, limit=100)
    assert [line.message for _, line in odd] == ["m1", "m3", "m5", "m7", "m9"]
    newest = store.read_logs(key, request_id=None, since=5.0, after_id=0, limit=2)
    assert [line.message for _, line in newest] == ["m8", "m9"]
    assert expire_all(store, 5.0) == 5
    assert len(store.read_logs(key, request_id=None, since=None, after_id=0, limit=100)) == 5


def expire_all(store: Store, older_than: float) -> int:
    after_id: int | None = 0
    removed = 0
    while after_id is not None:
        after_id, batch = store.expire_logs_batch(older_than, after_id)
        removed += sum(lines for lines, _ in batch.values())
    return removed


def lines(key: tuple[str, str, str], count: int, *, start: float = 0.0, text: str = "x" * 100) -> list:
    # Request ids of one length, so every line has the same size.
    return [(start + i, *key, f"r{i:06d}", "inst", "stdout", text) for i in range(count)]


def stored_bytes(path) -> dict:
    """What the database really holds per function, summed the slow way."""
    db = sqlite3.connect(path)
    return {
        (p, k, n): (size, count)
        for p, k, n, size, count in db.execute(
            "SELECT project_id, package, func_name, SUM(size), COUNT(*) FROM logs GROUP BY 1, 2, 3"
        )
    }


def test_log_bytes_are_counted_per_function_and_survive_reopen(tmp_path) -> None:
    store = Store(tmp_path / "fgd.db")
    a, b = ("p", "default", "a"), ("p", "default", "b")
    store.write_logs(lines(a, 10))
    store.write_logs(lines(b, 3, text="é" * 10))
    store.write_logs(lines(a, 5))
    # A line counts its UTF-8 text and names plus a fixed overhead.
    names = len("p") + len("default") + len("a") + len("r000000") + len("inst") + len("stdout")
    assert store.log_bytes[a] == 15 * (100 + names + LINE_OVERHEAD)
    assert store.log_bytes[b] == 3 * (20 + names + LINE_OVERHEAD)
    assert {k: v[0] for k, v in stored_bytes(tmp_path / "fgd.db").items()} == store.log_bytes
    store.close()
    assert Store(tmp_path / "fgd.db").log_bytes == {a: stored_bytes(tmp_path / "fgd.db")[a][0], b: ANY}


def test_log_lines_come_back_exactly_as_written_whatever_their_text(tmp_path) -> None:
    """A batch is written as one JSON array (fgd.store._INSERT_LOGS_JSON); a batch with a NUL in
    it, which SQLite's JSON text would end at, row by row: both store every character, the
    time, and the size the caps count (fgd.logs.line_size)."""
    from fgd.logs import line_size

    store = Store(tmp_path / "fgd.db")
    key = ("p", "default", "a")
    texts = ["plain", 'quotes " and \\ backslash', "tab\tline\nbreak\r", "é€😀\u2028", "", " " * 3]
    with_nul = ["before\x00after", "\x00"]
    for batch in (texts, with_nul, texts + with_nul):
        rows = [(1733100000.25 + n, *key, f"r{n}", "inst", "stdout", text) for n, text in enumerate(batch)]
        before = dict(store.log_bytes)
        store.write_logs(rows)
        read = store.read_logs(key, request_id=None, since=None, after_id=0, limit=100)[-len(rows) :]
        assert [(line.time, line.request_id, line.message) for _, line in read] == [
            (row[0], row[4], row[7]) for row in rows
        ]
        added = sum(line_size(row) for row in rows)
        assert store.log_bytes[key] - before.get(key, 0) == added
    assert {k: v[0] for k, v in stored_bytes(tmp_path / "fgd.db").items()} == store.log_bytes
    store.close()


def test_trimming_a_function_drops_only_its_oldest_lines(tmp_path) -> None:
    store = Store(tmp_path / "fgd.db")
    a, b = ("p", "default", "a"), ("p", "default", "b")
    store.write_logs(lines(a, 100))
    store.write_logs(lines(b, 100))
    before_b = store.log_bytes[b]
    per_line = store.log_bytes[a] // 100
    removed_lines, removed_bytes = store.trim_function_logs_batch(a, 30 * per_line - 5)
    assert removed_lines == 30
    assert store.log_bytes[a] == 70 * per_line == stored_bytes(tmp_path / "fgd.db")[a][0]
    assert removed_bytes == 30 * per_line
    kept = store.read_logs(a, request_id=None, since=None, after_id=0, limit=1000)
    assert [line.request_id for _, line in kept] == [f"r{i:06d}" for i in range(30, 100)]
    assert store.log_bytes[b] == before_b


def test_a_trim_never_takes_more_than_one_batch_of_lines(tmp_path) -> None:
    store = Store(tmp_path / "fgd.db")
    a = ("p", "default", "a")
    store.write_logs(lines(a, LOG_BATCH + 500, text="y"))
    removed_lines, _ = store.trim_function_logs_batch(a, store.log_bytes[a])
    assert removed_lines == LOG_BATCH
    assert stored_bytes(tmp_path / "fgd.db")[a][1] == 500


def test_trimming_the_node_drops_the_oldest_lines_of_any_function(tmp_path) -> None:
    store = Store(tmp_path / "fgd.db")
    a, b = ("p", "default", "a"), ("p", "default", "b")
    store.write_logs(lines(a, 50))
    store.write_logs(lines(b, 50))
    store.write_logs(lines(a, 50, start=100))
    per_line = store.log_bytes[b] // 50
    removed = store.trim_node_logs_batch(60 * per_line)
    # All 50 of a's first lines went, then b's 10 oldest; a's newer lines stay.
    assert removed[a][0] == 50 and removed[b][0] == 10
    assert stored_bytes(tmp_path / "fgd.db") == {a: (store.log_bytes[a], 50), b: (store.log_bytes[b], 40)}


async def test_deleting_a_chatty_function_removes_its_lines_in_batches(tmp_path) -> None:
    store = Store(tmp_path / "fgd.db")
    await store.put(record("a"))
    key = ("p", "default", "a")
    store.write_logs(lines(key, 2 * LOG_BATCH + 7, text="z"))
    calls = []
    original = store.delete_logs_batch

    def counted(k):
        calls.append(original(k))
        # An invocation finishing between two batches: its lines must not outlive the function.
        store.write_logs(lines(key, 10, text="late"))
        return calls[-1]

    store.delete_logs_batch = counted
    await store.delete(key)
    assert calls[:2] == [LOG_BATCH, LOG_BATCH]
    assert stored_bytes(tmp_path / "fgd.db") == {}
    assert key not in store.log_bytes
    assert sqlite3.connect(tmp_path / "fgd.db").execute("SELECT COUNT(*) FROM log_usage").fetchone()[0] == 0
    # A write that was queued behind the delete finds the function gone.
    store.write_logs(lines(key, 10, text="later"))
    assert stored_bytes(tmp_path / "fgd.db") == {}
    # A new function of that name logs again.
    await store.put(record("a"))
    store.write_logs(lines(key, 3))
    assert stored_bytes(tmp_path / "fgd.db")[key][1] == 3


async def test_expiring_200k_lines_takes_many_short_transactions(tmp_path) -> None:
    store = Store(tmp_path / "fgd.db")
    key = ("p", "default", "chatty")
    for chunk in range(20):
        store.write_logs(lines(key, 10_000, start=chunk * 10_000.0))
    store.write_logs(lines(key, 100, start=1e9))  # fresh lines that must stay
    after_id: int | None = 0
    durations, removed = [], 0
    while after_id is not None:
        started = time.perf_counter()
        after_id, batch = store.expire_logs_batch(500_000.0, after_id)
        durations.append(time.perf_counter() - started)
        removed += batch.get(key, (0, 0))[0]
    assert removed == 200_000
    assert len(durations) >= 200_000 // LOG_BATCH
    # Each transaction is short: the store's thread is free again within a fraction of a second.
    assert max(durations) < 0.5, max(durations)
    assert stored_bytes(tmp_path / "fgd.db")[key] == (store.log_bytes[key], 100)


async def test_other_store_work_runs_between_expiry_batches(tmp_path) -> None:
    """While 200k lines expire, a read through the store waits at most one batch."""
    store = Store(tmp_path / "fgd.db")
    await store.put(record("chatty"))
    key = ("p", "default", "chatty")
    for chunk in range(20):
        store.write_logs(lines(key, 10_000, start=chunk * 10_000.0))
    sink = LogSink(store, LogConfig())
    waits: list[float] = []
    done = trio.Event()

    async def reader() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await store.run(store.read_logs, key, request_id=None, since=None, after_id=0, limit=1)
            waits.append(time.perf_counter() - started)
            await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        started = time.perf_counter()
        assert await sink.expire(1e9) == 200_000
        total = time.perf_counter() - started
        done.set()
    assert len(waits) >= 10, (len(waits), total)
    # One batch, not the whole expiry (a single DELETE would hold the thread throughout).
    assert max(waits) < min(0.5, total / 4), (max(waits), total)
    assert sink.dropped_lines[key, "retention"] == 200_000


def test_an_old_database_is_migrated_and_converted_to_incremental_vacuum(tmp_path) -> None:
    path = tmp_path / "fgd.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    for number, script in enumerate(MIGRATIONS[:4], start=1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
    db.executemany(
        "INSERT INTO logs (time, project_id, package, func_name, request_id, instance_id, stream, message)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        lines(("p", "default", "old"), 40),
    )
    db.commit()
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    db.close()
    store = Store(path)
    assert store.schema_version == len(MIGRATIONS)
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert store.log_bytes == {("p", "default", "old"): stored_bytes(path)[("p", "default", "old")][0]}
    assert store.log_bytes[("p", "default", "old")] == 40 * (100 + 1 + 7 + 3 + 7 + 4 + 6 + LINE_OVERHEAD)


def test_removed_lines_give_their_space_back_to_the_file_system(tmp_path) -> None:
    path = tmp_path / "fgd.db"
    store = Store(path)
    key = ("p", "default", "big")
    for _ in range(10):
        store.write_logs(lines(key, 2000, text="q" * 1000))
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = path.stat().st_size
    assert full > 20_000_000
    while store.trim_function_logs_batch(key, store.log_bytes[key])[0]:
        pass
    while store.vacuum_batch(1024 * 1024) > 1024 * 1024:
        pass
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert path.stat().st_size < 3_000_000, (full, path.stat().st_size)


def sqlite_steps(store: Store, action) -> int:
    """SQLite virtual-machine work done by `action` (in units of 100 instructions)."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    store._db.set_progress_handler(count, 100)
    try:
        action()
    finally:
        store._db.set_progress_handler(None, 0)
    return steps[0]


def test_log_bookkeeping_never_scans_the_table(tmp_path) -> None:
    """Writing, trimming and expiring costs the same with 5,000 or 100,000 lines per function
    stored (an expiry pass looks at one window of LOG_BATCH lines, whatever the table)."""
    costs = {}
    a, b = ("p", "default", "a"), ("p", "default", "b")
    for stored in (LOG_BATCH, 100_000):
        store = Store(tmp_path / f"{stored}.db")
        store.write_logs(lines(a, stored, start=1000.0))
        store.write_logs(lines(b, stored, start=1000.0))
        costs[stored] = (
            sqlite_steps(store, lambda s=store: s.write_logs(lines(a, 20, start=5000.0))),
            sqlite_steps(store, lambda s=store: s.trim_node_logs_batch(1000)),
            sqlite_steps(store, lambda s=store: s.trim_function_logs_batch(b, 1000)),
            # Nothing to expire: one look at the oldest window and done.
            sqlite_steps(store, lambda s=store: s.expire_logs_batch(10.0, 0)),
        )
        store.close()
    for small, large in zip(costs[LOG_BATCH], costs[100_000], strict=True):
        assert large < 2 * small + 20, costs
