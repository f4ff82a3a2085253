"""SQLite state: functions and logs, in WAL mode, always off the trio thread.

One connection, used by one worker thread at a time (a CapacityLimiter of 1),
so SQLite's own locking never has to arbitrate between our threads. Functions
are also cached in memory: the daemon is the only writer, and the invoke path
must not touch the database.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import msgspec
import trio

from fgd.asyncqueue import SCHEMA, SCHEMA_LEASES, SqliteQueue
from fgd.model import DependencyVersion, FunctionRecord, Trigger

T = TypeVar("T")
log = logging.getLogger("fgd.store")

# Asynchronous events deleted per transaction when their function is deleted.
PURGE_BATCH = 500

# Each entry upgrades the schema by one version; never edit a released one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE functions (
        project_id TEXT NOT NULL,
        package TEXT NOT NULL,
        func_name TEXT NOT NULL,
        record BLOB NOT NULL,
        PRIMARY KEY (project_id, package, func_name)
    );
    CREATE TABLE logs (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        project_id TEXT NOT NULL,
        package TEXT NOT NULL,
        func_name TEXT NOT NULL,
        request_id TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        stream TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX logs_by_function ON logs (project_id, package, func_name, id);
    CREATE INDEX logs_by_request ON logs (request_id);
    """,
    """
    CREATE TABLE dependency_versions (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        record BLOB NOT NULL,
        UNIQUE (project_id, name, version)
    );
    """,
    SCHEMA,
    """
    CREATE TABLE triggers (
        trigger_id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        package TEXT NOT NULL,
        func_name TEXT NOT NULL,
        record BLOB NOT NULL
    );
    """,
    SCHEMA_LEASES,
]


class LogLine(msgspec.Struct, frozen=True):
    time: float
    request_id: str
    instance_id: str
    stream: str
    message: str


# A log line as queued for writing: (time, project_id, package, func_name,
# request_id, instance_id, stream, message). Plain tuples keep the write
# thread in C (executemany) and off the GIL.
LogRow = tuple[float, str, str, str, str, str, str, str]


_record_decoder = msgspec.json.Decoder(FunctionRecord)
_dependency_decoder = msgspec.json.Decoder(DependencyVersion)
_trigger_decoder = msgspec.json.Decoder(Trigger)
_encoder = msgspec.json.Encoder()


class Store:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._limiter = trio.CapacityLimiter(1)
        self._migrate()
        self.queue = SqliteQueue(self._db)
        self.triggers: dict[str, Trigger] = self._load_triggers()
        self.functions: dict[tuple[str, str, str], FunctionRecord] = {}
        for project_id, package, func_name, blob in self._db.execute(
            "SELECT project_id, package, func_name, record FROM functions"
        ):
            # Hardening (issue 9): one unreadable record (edited by hand) is logged and left out, alone.
            try:
                r = _record_decoder.decode(blob)
            except (msgspec.DecodeError, TypeError) as exc:
                log.error(
                    "ignoring stored function %s/%s/%s: its record is unreadable: %s",
                    project_id,
                    package,
                    func_name,
                    exc,
                )
                continue
            self.functions[r.key] = r
        # Private dependency versions by id (public ones are registered at start, not stored).
        self.dependencies: dict[str, DependencyVersion] = {
            d.id: d
            for d in (
                _dependency_decoder.decode(blob)
                for (blob,) in self._db.execute("SELECT record FROM dependency_versions")
            )
        }

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")

    @property
    def schema_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    async def run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run `fn` in the store's worker thread (one at a time)."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self._limiter)

    def close(self) -> None:
        self._db.close()

    # Functions -----------------------------------------------------------

    def get(self, key: tuple[str, str, str]) -> FunctionRecord | None:
        return self.functions.get(key)

    def list(self, project_id: str) -> list[FunctionRecord]:
        return sorted((r for r in self.functions.values() if r.project_id == project_id), key=lambda r: r.key)

    async def put(self, record: FunctionRecord) -> None:
        blob = _encoder.encode(record)
        await self.run(self._put, record, blob)
        self.functions[record.key] = record

    def _put(self, record: FunctionRecord, blob: bytes) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO functions (project_id, package, func_name, record) VALUES (?, ?, ?, ?)",
                (*record.key, blob),
            )

    async def replace(self, record: FunctionRecord) -> bool:
        """Store a new state of an existing function; False (nothing written) if it was deleted meanwhile."""
        blob = _encoder.encode(record)
        if not await self.run(self._replace, record, blob):
            return False
        self.functions[record.key] = record
        return True

    def _replace(self, record: FunctionRecord, blob: bytes) -> bool:
        with self._db:
            cursor = self._db.execute(
                "UPDATE functions SET record = ? WHERE project_id = ? AND package = ? AND func_name = ?",
                (blob, *record.key),
            )
        return cursor.rowcount > 0

    async def delete(self, key: tuple[str, str, str]) -> None:
        deleted_at = time.time()
        await self.run(self._delete, key)
        self.functions.pop(key, None)
        # Its asynchronous events go too, a batch per transaction (a function may have
        # thousands); only those queued before now, so a function of the same name
        # created meanwhile keeps its own.
        while await self.run(self.queue.purge, key, deleted_at, PURGE_BATCH) == PURGE_BATCH:
            pass

    def _delete(self, key: tuple[str, str, str]) -> None:
        with self._db:
            self._db.execute("DELETE FROM functions WHERE project_id=? AND package=? AND func_name=?", key)
            self._db.execute("DELETE FROM logs WHERE project_id=? AND package=? AND func_name=?", key)

    def code_in_use(self) -> set[str]:
        return {r.code.sha256 for r in self.functions.values()} | {d.code.sha256 for d in self.dependencies.values()}

    # Triggers ------------------------------------------------------------------

    def _load_triggers(self) -> dict[str, Trigger]:
        """Every readable trigger; a row that does not decode is logged and left out, alone."""
        triggers = {}
        for trigger_id, func_name, blob in self._db.execute("SELECT trigger_id, func_name, record FROM triggers"):
            try:
                trigger = _trigger_decoder.decode(blob)
            except (msgspec.DecodeError, TypeError) as exc:
                log.error(
                    "ignoring stored trigger %s of function %s: its record is unreadable: %s",
                    trigger_id,
                    func_name,
                    exc,
                )
                continue
            triggers[trigger.trigger_id] = trigger
        return triggers

    async def put_trigger(self, trigger: Trigger) -> None:
        blob = _encoder.encode(trigger)
        await self.run(self._put_trigger, trigger, blob)
        self.triggers[trigger.trigger_id] = trigger

    def _put_trigger(self, trigger: Trigger, blob: bytes) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO triggers (trigger_id, project_id, package, func_name, record)"
                " VALUES (?, ?, ?, ?, ?)",
                (trigger.trigger_id, *trigger.key, blob),
            )

    async def delete_trigger(self, trigger_id: str) -> None:
        await self.run(self._delete_trigger, trigger_id)
        self.triggers.pop(trigger_id, None)

    def _delete_trigger(self, trigger_id: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM triggers WHERE trigger_id=?", (trigger_id,))

    # Dependencies ------------------------------------------------------------

    async def put_dependency(self, dependency: DependencyVersion) -> None:
        blob = _encoder.encode(dependency)
        await self.run(self._put_dependency, dependency, blob)
        self.dependencies[dependency.id] = dependency

    def _put_dependency(self, dependency: DependencyVersion, blob: bytes) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO dependency_versions (id, project_id, name, version, record) VALUES (?, ?, ?, ?, ?)",
                (dependency.id, dependency.project_id, dependency.name, dependency.version, blob),
            )

    async def delete_dependency(self, dependency_id: str) -> None:
        await self.run(self._delete_dependency, dependency_id)
        self.dependencies.pop(dependency_id, None)

    def _delete_dependency(self, dependency_id: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM dependency_versions WHERE id=?", (dependency_id,))

    # Logs ------------------------------------------------------------------

    def write_logs(self, rows: Iterable[LogRow]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT INTO logs (time, project_id, package, func_name, request_id, instance_id, stream, message)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def read_logs(
        self,
        key: tuple[str, str, str],
        *,
        request_id: str | None,
        since: float | None,
        after_id: int,
        limit: int,
    ) -> list[tuple[int, LogLine]]:
        query = "SELECT id, time, request_id, instance_id, stream, message FROM logs"
        query += " WHERE project_id=? AND package=? AND func_name=? AND id>?"
        params: list[object] = [*key, after_id]
        if request_id:
            query += " AND request_id=?"
            params.append(request_id)
        if since is not None:
            query += " AND time>=?"
            params.append(since)
        # The newest `limit` lines, returned oldest first.
        query = f"SELECT * FROM ({query} ORDER BY id DESC LIMIT ?) ORDER BY id"
        params.append(limit)
        return [(row[0], LogLine(*row[1:])) for row in self._db.execute(query, params)]

    def expire_logs(self, older_than: float) -> int:
        # No index on time (it would tax every insert); this runs hourly in the store thread.
        with self._db:
            return self._db.execute("DELETE FROM logs WHERE time<?", (older_than,)).rowcount
