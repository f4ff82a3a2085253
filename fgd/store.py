"""SQLite state: functions and logs, in WAL mode, always off the trio thread.

One connection, used by one worker thread at a time (a CapacityLimiter of 1),
so SQLite's own locking never has to arbitrate between our threads. Functions
are also cached in memory: the daemon is the only writer, and the invoke path
must not touch the database.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import msgspec
import trio

from fgd.asyncqueue import SCHEMA, SCHEMA_LEASES, SCHEMA_STATUS, SqliteQueue
from fgd.model import MAX_VERSIONS, AliasRecord, DependencyVersion, FunctionRecord, Trigger

T = TypeVar("T")
log = logging.getLogger("fgd.store")

# Asynchronous events deleted per transaction when their function is deleted.
PURGE_BATCH = 500
Key = tuple[str, str, str]

# What one stored log line counts for against the byte caps: its text columns as UTF-8 (the
# function's names too: the row and an index hold them), plus a fixed share for the time,
# the row id and the index entries. The file holds about 1.3 times the sum (docs/operations.md).
LINE_OVERHEAD = 64
LINE_TEXT_COLUMNS = ("project_id", "package", "func_name", "request_id", "instance_id", "stream", "message")


def line_size_sql(*texts: str) -> str:
    return " + ".join(f"length(CAST({text} AS BLOB))" for text in texts) + f" + {LINE_OVERHEAD}"


# Expiry and trims remove at most this many lines per transaction, so the store's single
# thread is never held for long and other requests interleave between batches.
LOG_BATCH = 5000
# Free pages handed back to the file system per transaction by PRAGMA incremental_vacuum.
VACUUM_PAGES = 2048

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
    # Logs bounded in bytes: each line carries its size, the function index covers it (a
    # trim walks a function's oldest lines without reading them), and log_usage keeps the
    # running totals per function so no write ever sums the table.
    f"""
    ALTER TABLE logs ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
    UPDATE logs SET size = {line_size_sql(*LINE_TEXT_COLUMNS)};
    DROP INDEX logs_by_function;
    CREATE INDEX logs_by_function ON logs (project_id, package, func_name, id, size);
    CREATE TABLE log_usage (
        project_id TEXT NOT NULL,
        package TEXT NOT NULL,
        func_name TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        lines INTEGER NOT NULL,
        PRIMARY KEY (project_id, package, func_name)
    );
    INSERT INTO log_usage SELECT project_id, package, func_name, SUM(size), COUNT(*)
        FROM logs GROUP BY project_id, package, func_name;
    """,
    # AK/SK access keys (fgd.keys). The secret is kept as is: verifying an HMAC needs it,
    # which is why the database is readable by root only.
    """
    CREATE TABLE access_keys (
        access TEXT PRIMARY KEY,
        secret TEXT NOT NULL,
        project_id TEXT NOT NULL,
        description TEXT NOT NULL,
        created REAL NOT NULL,
        last_used REAL NOT NULL DEFAULT 0
    );
    """,
    # Versions and aliases (fgd.versions): a published version is a frozen FunctionRecord; an
    # alias points at one. Asynchronous events carry the version (and alias) resolved when
    # they were queued; events queued before this migration ran on latest.
    """
    CREATE TABLE versions (
        project_id TEXT NOT NULL,
        package TEXT NOT NULL,
        func_name TEXT NOT NULL,
        version TEXT NOT NULL,
        created REAL NOT NULL,
        record BLOB NOT NULL,
        PRIMARY KEY (project_id, package, func_name, version)
    );
    CREATE TABLE aliases (
        project_id TEXT NOT NULL,
        package TEXT NOT NULL,
        func_name TEXT NOT NULL,
        name TEXT NOT NULL,
        record BLOB NOT NULL,
        PRIMARY KEY (project_id, package, func_name, name)
    );
    ALTER TABLE async_events ADD COLUMN version TEXT NOT NULL DEFAULT 'latest';
    ALTER TABLE async_events ADD COLUMN alias TEXT NOT NULL DEFAULT '';
    """,
    SCHEMA_STATUS,
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
_LOG_COLUMNS = "time, project_id, package, func_name, request_id, instance_id, stream, message, size"
# A batch of log lines is one statement over a JSON array of them: SQLite walks it without the
# GIL, where executemany takes the GIL back after every row (the writer thread then contends
# with the event loop some 600 times per flush under load).
_INSERT_LOGS_JSON = (
    f"INSERT INTO logs ({_LOG_COLUMNS}) SELECT t, p, k, f, r, i, s, m, "
    + line_size_sql("p", "k", "f", "r", "i", "s", "m")
    + " FROM (SELECT value->>0 AS t, value->>1 AS p, value->>2 AS k, value->>3 AS f, value->>4 AS r,"
    " value->>5 AS i, value->>6 AS s, value->>7 AS m FROM json_each(?))"
)
# SQLite's JSON text ends at an escaped NUL: a batch with one goes row by row.
_JSON_NUL = b"\\u0000"
_INSERT_LOG_ROW = (
    f"INSERT INTO logs ({_LOG_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, "
    + line_size_sql("?2", "?3", "?4", "?5", "?6", "?7", "?8")
    + ")"
)
_log_rows = msgspec.json.Encoder()


_record_decoder = msgspec.json.Decoder(FunctionRecord)
_dependency_decoder = msgspec.json.Decoder(DependencyVersion)
_trigger_decoder = msgspec.json.Decoder(Trigger)
_alias_decoder = msgspec.json.Decoder(AliasRecord)
_encoder = msgspec.json.Encoder()


class Store:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._db = sqlite3.connect(path, check_same_thread=False)
        # It holds access keys' secrets (fgd.keys): root only. SQLite gives the WAL and
        # shared-memory files the database file's mode.
        os.chmod(path, 0o600)
        # Deleted log lines leave free pages; incremental auto-vacuum lets us hand them back to
        # the file system in small steps. It must be chosen before the first table (and before
        # WAL writes the header); an older database is converted once, below.
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("PRAGMA journal_mode=WAL")
        # After a large transaction, truncate the WAL back to this size at the next checkpoint.
        self._db.execute(f"PRAGMA journal_size_limit={16 * 1024 * 1024}")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._limiter = trio.CapacityLimiter(1)
        # Functions deleted (or being deleted) since start and not created again: lines still
        # on their way for them are not written.
        self._deleted: set[Key] = set()
        self._migrate()
        self._use_incremental_vacuum()
        self.queue = SqliteQueue(self._db)
        # Stored log bytes per function, mirrored from log_usage: the sink checks its caps
        # against these after every flush without touching the database.
        self.log_bytes: dict[Key, int] = {
            (project, package, name): size
            for project, package, name, size in self._db.execute(
                "SELECT project_id, package, func_name, bytes FROM log_usage"
            )
        }
        # A row edited by hand that no longer decodes is logged and left out, alone: the daemon starts.
        self.triggers: dict[str, Trigger] = {
            t.trigger_id: t
            for t in self._readable("triggers", "trigger", "trigger_id || ' of ' || func_name", _trigger_decoder)
        }
        self.functions: dict[tuple[str, str, str], FunctionRecord] = {
            r.key: r
            for r in self._readable(
                "functions", "function", "project_id || '/' || package || '/' || func_name", _record_decoder
            )
        }
        # Published versions and aliases per function, oldest first (fgd.versions). A row that
        # decodes but does not say what its columns say (another version or function, latest
        # itself), or whose function is not loaded, is left out too: it would otherwise shadow
        # latest, or keep reserved instances for a function no route can reach.
        self.versions: dict[Key, dict[str, FunctionRecord]] = {}
        for key, name, record in self._readable_keyed(
            "(SELECT * FROM versions ORDER BY created)", "version", _record_decoder
        ):
            if self._consistent("version", key, name, (record.key, record.version), name != "latest"):
                self.versions.setdefault(key, {})[name] = record
        self.aliases: dict[Key, dict[str, AliasRecord]] = {}
        for key, name, alias in self._readable_keyed("aliases", "alias", _alias_decoder):
            if self._consistent("alias", key, name, (key, alias.name), True):
                self.aliases.setdefault(key, {})[name] = alias
        # Private dependency versions by id (public ones are registered at start, not stored).
        self.dependencies: dict[str, DependencyVersion] = {
            d.id: d for d in self._readable("dependency_versions", "dependency version", "id", _dependency_decoder)
        }

    def _readable(self, table: str, noun: str, identity: str, decoder: msgspec.json.Decoder) -> list:
        """Every decodable record of `table`; `identity` (an SQL expression) names a bad row in the log."""
        found = []
        for name, blob in self._db.execute(f"SELECT {identity}, record FROM {table}"):
            try:
                found.append(decoder.decode(blob))
            except (msgspec.DecodeError, TypeError) as exc:
                log.error("ignoring stored %s %s: its record is unreadable: %s", noun, name, exc)
        return found

    def _readable_keyed(self, table: str, noun: str, decoder: msgspec.json.Decoder) -> list:
        """(function key, name, record) of every decodable row of `table` (versions, aliases)."""
        column = "version" if noun == "version" else "name"
        found = []
        for project, package, func_name, name, blob in self._db.execute(
            f"SELECT project_id, package, func_name, {column}, record FROM {table}"
        ):
            try:
                found.append(((project, package, func_name), name, decoder.decode(blob)))
            except (msgspec.DecodeError, TypeError) as exc:
                log.error(
                    "ignoring stored %s %s/%s/%s:%s: its record is unreadable: %s",
                    noun,
                    project,
                    package,
                    func_name,
                    name,
                    exc,
                )
        return found

    def _consistent(self, noun: str, key: Key, name: str, says: tuple, allowed: bool) -> bool:
        """Whether a decoded version or alias row may be loaded (logged and left out if not)."""
        where = f"{key[0]}/{key[1]}/{key[2]}:{name}"
        if not allowed or says != (key, name):
            log.error("ignoring stored %s %s: its record says it is %r of %s", noun, where, says[1], "/".join(says[0]))
            return False
        if key not in self.functions:
            log.error("ignoring stored %s %s: its function is not stored (or its record is unreadable)", noun, where)
            return False
        return True

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")

    def _use_incremental_vacuum(self) -> None:
        """Convert a database created before incremental auto-vacuum (one VACUUM, once)."""
        (mode,) = self._db.execute("PRAGMA auto_vacuum").fetchone()
        if mode == 2:
            return
        log.info("converting %s to incremental auto-vacuum (once; rewrites the file)", self._path)
        try:
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("VACUUM")
        except sqlite3.OperationalError as exc:
            # Typically a full disk (VACUUM needs room for a copy): run on, reusing free pages.
            log.warning("could not convert %s to incremental auto-vacuum: %s", self._path, exc)

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
        self._deleted.discard(record.key)
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
        # A chatty function may have millions of lines: remove them in batches first, so the
        # store's thread is never held for seconds; the last few go with the record. Lines
        # written meanwhile or queued behind the delete (an invocation finishing) are refused,
        # so none outlive it.
        self._deleted.add(key)
        while await self.run(self.delete_logs_batch, key) == LOG_BATCH:
            pass
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
            self._db.execute("DELETE FROM log_usage WHERE project_id=? AND package=? AND func_name=?", key)
            self._db.execute("DELETE FROM versions WHERE project_id=? AND package=? AND func_name=?", key)
            self._db.execute("DELETE FROM aliases WHERE project_id=? AND package=? AND func_name=?", key)
        self.log_bytes = {k: v for k, v in self.log_bytes.items() if k != key}
        self.versions.pop(key, None)
        self.aliases.pop(key, None)

    def code_in_use(self) -> set[str]:
        # Published versions keep their code after latest's changes (fgd.versions).
        published = {r.code.sha256 for versions in self.versions.values() for r in versions.values()}
        return (
            {r.code.sha256 for r in self.functions.values()}
            | published
            | {d.code.sha256 for d in self.dependencies.values()}
        )

    # Versions and aliases (fgd.versions) -----------------------------------------

    def version(self, key: Key, name: str) -> FunctionRecord | None:
        """latest or a published version, as stored."""
        if name == "latest":
            return self.functions.get(key)
        return self.versions.get(key, {}).get(name)

    async def publish(self, record: FunctionRecord) -> str:
        """Store a new version in one transaction: "ok", "exists" or "full" (MAX_VERSIONS)."""
        blob = _encoder.encode(record)
        outcome = await self.run(self._publish, record, blob)
        if outcome == "ok":
            self.versions.setdefault(record.key, {})[record.version] = record
        return outcome

    def _publish(self, record: FunctionRecord, blob: bytes) -> str:
        with self._db:
            if not self._db.execute(
                "SELECT 1 FROM functions WHERE project_id=? AND package=? AND func_name=?", record.key
            ).fetchone():
                return "gone"
            (count,) = self._db.execute(
                "SELECT count(*) FROM versions WHERE project_id=? AND package=? AND func_name=?", record.key
            ).fetchone()
            if count >= MAX_VERSIONS - 1:
                return "full"
            try:
                self._db.execute(
                    "INSERT INTO versions (project_id, package, func_name, version, created, record)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (*record.key, record.version, record.last_modified, blob),
                )
            except sqlite3.IntegrityError:
                return "exists"
        return "ok"

    async def replace_version(self, record: FunctionRecord) -> bool:
        """A version's scaling settings changed (its code and configuration never do)."""
        blob = _encoder.encode(record)
        if not await self.run(self._replace_version, record, blob):
            return False
        self.versions.setdefault(record.key, {})[record.version] = record
        return True

    def _replace_version(self, record: FunctionRecord, blob: bytes) -> bool:
        with self._db:
            cursor = self._db.execute(
                "UPDATE versions SET record=? WHERE project_id=? AND package=? AND func_name=? AND version=?",
                (blob, *record.key, record.version),
            )
        return cursor.rowcount > 0

    async def delete_version(self, key: Key, version: str, aliases: list[str], triggers: list[str]) -> None:
        """A version, the aliases pointing at it and the triggers bound to either, in one transaction."""
        await self.run(self._delete_version, key, version, aliases, triggers)
        self.versions.get(key, {}).pop(version, None)
        for name in aliases:
            self.aliases.get(key, {}).pop(name, None)
        for trigger_id in triggers:
            self.triggers.pop(trigger_id, None)

    def _delete_version(self, key: Key, version: str, aliases: list[str], triggers: list[str]) -> None:
        with self._db:
            self._db.execute(
                "DELETE FROM versions WHERE project_id=? AND package=? AND func_name=? AND version=?", (*key, version)
            )
            self._db.executemany(
                "DELETE FROM aliases WHERE project_id=? AND package=? AND func_name=? AND name=?",
                [(*key, name) for name in aliases],
            )
            self._db.executemany("DELETE FROM triggers WHERE trigger_id=?", [(t,) for t in triggers])

    async def put_alias(self, key: Key, alias: AliasRecord) -> bool:
        """Create or change an alias; False if its function was deleted meanwhile."""
        blob = _encoder.encode(alias)
        if not await self.run(self._put_alias, key, alias.name, blob):
            return False
        self.aliases.setdefault(key, {})[alias.name] = alias
        return True

    def _put_alias(self, key: Key, name: str, blob: bytes) -> bool:
        with self._db:
            if not self._db.execute(
                "SELECT 1 FROM functions WHERE project_id=? AND package=? AND func_name=?", key
            ).fetchone():
                return False
            self._db.execute(
                "INSERT OR REPLACE INTO aliases (project_id, package, func_name, name, record) VALUES (?, ?, ?, ?, ?)",
                (*key, name, blob),
            )
        return True

    async def delete_alias(self, key: Key, name: str) -> None:
        await self.run(self._delete_alias, key, name)
        self.aliases.get(key, {}).pop(name, None)

    def _delete_alias(self, key: Key, name: str) -> None:
        with self._db:
            self._db.execute(
                "DELETE FROM aliases WHERE project_id=? AND package=? AND func_name=? AND name=?", (*key, name)
            )

    # Triggers ------------------------------------------------------------------

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

    # Access keys (fgd.keys) ----------------------------------------------------

    def load_keys(self) -> list[tuple[str, str, str, str, float, float]]:
        return self._db.execute(
            "SELECT access, secret, project_id, description, created, last_used FROM access_keys"
        ).fetchall()

    def put_key(self, row: tuple[str, str, str, str, float, float]) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO access_keys (access, secret, project_id, description, created, last_used)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )

    def delete_key(self, access: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM access_keys WHERE access=?", (access,))

    def touch_keys(self, used: list[tuple[float, str]]) -> None:
        """Record (last_used, access) pairs; one transaction for all of them."""
        with self._db:
            self._db.executemany("UPDATE access_keys SET last_used=? WHERE access=?", used)

    # Logs ------------------------------------------------------------------

    @property
    def log_bytes_total(self) -> int:
        return sum(self.log_bytes.values())

    def write_logs(self, rows: Iterable[LogRow]) -> None:
        if self._deleted:
            rows = [row for row in rows if row[1:4] not in self._deleted]
        with self._db:
            (last_id,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM logs").fetchone()
            rows = rows if isinstance(rows, list) else list(rows)
            batch = _log_rows.encode(rows)
            if _JSON_NUL not in batch:
                self._db.execute(_INSERT_LOGS_JSON, (batch,))
            else:
                self._db.executemany(_INSERT_LOG_ROW, rows)
            # Only the rows just written (a range of the primary key), summed in SQLite.
            # NOT INDEXED: else SQLite picks the function index for the GROUP BY and scans all of it.
            added = self._db.execute(
                "SELECT project_id, package, func_name, SUM(size), COUNT(*) FROM logs NOT INDEXED WHERE id>?"
                " GROUP BY project_id, package, func_name",
                (last_id,),
            ).fetchall()
            self._db.executemany(
                "INSERT INTO log_usage (project_id, package, func_name, bytes, lines) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT DO UPDATE SET bytes=bytes+excluded.bytes, lines=lines+excluded.lines",
                added,
            )
        # Replaced, not changed in place, when a key comes or goes: the trio thread iterates it.
        usage = self.log_bytes
        if any(tuple(row[:3]) not in usage for row in added):
            usage = dict(usage)
        for project, package, name, size, _ in added:
            key = (project, package, name)
            usage[key] = usage.get(key, 0) + size
        self.log_bytes = usage

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

    # Each method below is one short transaction over at most LOG_BATCH lines; the caller
    # (fgd.logs.LogSink) loops, so other store work runs between batches. Each returns what
    # it removed per function: {key: (lines, bytes)}.

    def expire_logs_batch(self, older_than: float, after_id: int) -> tuple[int | None, dict[Key, tuple[int, int]]]:
        """Remove lines older than `older_than` among the LOG_BATCH lines after `after_id`.

        Returns the id to continue after, or None once a batch held nothing to expire (ids
        follow arrival and times only lag by an invocation's length, so the old lines are at
        the front; there is no index on time, which would tax every insert).
        """
        window = self._db.execute(
            "SELECT MAX(id), MIN(time) FROM (SELECT id, time FROM logs WHERE id>? ORDER BY id LIMIT ?)",
            (after_id, LOG_BATCH),
        ).fetchone()
        last_id, oldest = window
        if last_id is None or oldest >= older_than:
            return None, {}
        return last_id, self._remove("id>? AND id<=? AND time<?", (after_id, last_id, older_than), by_id=True)

    def trim_function_logs_batch(self, key: Key, excess: int) -> tuple[int, int]:
        """Remove a function's oldest lines, at least `excess` bytes (up to LOG_BATCH lines)."""
        cut, lines, size = None, 0, 0
        # The covering index gives (id, size) in order without reading the lines themselves.
        for row_id, row_size in self._db.execute(
            "SELECT id, size FROM logs WHERE project_id=? AND package=? AND func_name=? ORDER BY id LIMIT ?",
            (*key, LOG_BATCH),
        ):
            cut, lines, size = row_id, lines + 1, size + row_size
            if size >= excess:
                break
        if cut is None:
            return 0, 0
        removed = self._remove("project_id=? AND package=? AND func_name=? AND id<=?", (*key, cut))
        return removed.get(key, (0, 0))

    def trim_node_logs_batch(self, excess: int) -> dict[Key, tuple[int, int]]:
        """Remove the node's oldest lines, whatever their function, at least `excess` bytes."""
        cut, size = None, 0
        for row_id, row_size in self._db.execute("SELECT id, size FROM logs ORDER BY id LIMIT ?", (LOG_BATCH,)):
            cut, size = row_id, size + row_size
            if size >= excess:
                break
        if cut is None:
            return {}
        return self._remove("id<=?", (cut,), by_id=True)

    def delete_logs_batch(self, key: Key) -> int:
        """Remove up to LOG_BATCH lines of a function being deleted; returns how many."""
        removed = self._remove(
            "id IN (SELECT id FROM logs WHERE project_id=? AND package=? AND func_name=? ORDER BY id LIMIT ?)",
            (*key, LOG_BATCH),
        )
        return removed.get(key, (0, 0))[0]

    def _remove(self, where: str, params: tuple, *, by_id: bool = False) -> dict[Key, tuple[int, int]]:
        # A range of ids is read by the primary key: left to itself, SQLite would scan the
        # whole function index for the GROUP BY.
        table = "logs NOT INDEXED" if by_id else "logs"
        with self._db:
            counted = self._db.execute(
                f"SELECT project_id, package, func_name, COUNT(*), SUM(size) FROM {table} WHERE {where}"
                " GROUP BY project_id, package, func_name",
                params,
            ).fetchall()
            self._db.execute(f"DELETE FROM logs WHERE {where}", params)
            self._db.executemany(
                "UPDATE log_usage SET lines=lines-?, bytes=bytes-? WHERE project_id=? AND package=? AND func_name=?",
                [(lines, size, *key) for *key, lines, size in counted],
            )
        removed = {}
        for project, package, name, lines, size in counted:
            key = (project, package, name)
            removed[key] = (lines, size)
            if key in self.log_bytes:
                self.log_bytes[key] = max(0, self.log_bytes[key] - size)
        return removed

    def vacuum_batch(self, keep_free: int) -> int:
        """Hand free pages beyond `keep_free` bytes back to the file system, VACUUM_PAGES at
        most; returns the free bytes left. A few free pages are kept for the next inserts."""
        (page_size,) = self._db.execute("PRAGMA page_size").fetchone()
        (free_pages,) = self._db.execute("PRAGMA freelist_count").fetchone()
        extra = free_pages - keep_free // page_size
        if extra > 0:
            self._db.execute(f"PRAGMA incremental_vacuum({min(extra, VACUUM_PAGES)})").fetchall()
            (free_pages,) = self._db.execute("PRAGMA freelist_count").fetchone()
        return free_pages * page_size
