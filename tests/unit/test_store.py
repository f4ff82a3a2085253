"""The SQLite store: migrations, WAL, functions and logs."""

from __future__ import annotations

import sqlite3

from fgd.model import CodeRef, FunctionRecord, FunctionSettings
from fgd.store import MIGRATIONS, Store


def record(name: str) -> FunctionRecord:
    return FunctionRecord(
        project_id="p",
        package="default",
        func_name=name,
        runtime="Python3.11",
        settings=FunctionSettings(handler="index.handler"),
        code=CodeRef("a" * 64, "b" * 128, 10),
        code_type="zip",
        code_filename="",
        revision=1,
        created=1.0,
        last_modified=1.0,
    )


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
    assert store.expire_logs(5.0) == 5
    assert len(store.read_logs(key, request_id=None, since=None, after_id=0, limit=100)) == 5
