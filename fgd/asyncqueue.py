"""The durable queue of asynchronous invocations, behind a narrow interface.

`AsyncQueue` is what the dispatcher needs from a queue: enqueue (durable before
the API answers 202), lease due events, settle them, recover leases of a
daemon that died. `SqliteQueue` is the default; a broker (NATS JetStream,
Redis Streams) can stand behind the same methods. Delivery is at least once:
the request id stays the same across retries and recoveries, so a function
can deduplicate.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Literal, Protocol

import msgspec

Status = Literal["WAIT", "RUNNING", "SUCCESS", "FAIL", "DISCARD"]
FINAL = ("SUCCESS", "FAIL", "DISCARD")


class AsyncEvent(msgspec.Struct, kw_only=True):
    request_id: str
    project_id: str
    package: str
    func_name: str
    payload: bytes
    status: Status = "WAIT"
    attempts: int = 0
    created: float
    not_before: float
    lease_until: float = 0.0
    start_time: float = 0.0
    end_time: float = 0.0
    error_code: str = ""
    error_message: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.project_id, self.package, self.func_name)

    @classmethod
    def new(cls, key: tuple[str, str, str], request_id: str, payload: bytes) -> AsyncEvent:
        """A fresh event for the function `key`, due now."""
        now = time.time()
        project_id, package, func_name = key
        return cls(
            request_id=request_id,
            project_id=project_id,
            package=package,
            func_name=func_name,
            payload=payload,
            created=now,
            not_before=now,
        )


class AsyncQueue(Protocol):
    def enqueue(self, event: AsyncEvent) -> None: ...
    def lease(self, now: float, limit: int, lease_seconds: float) -> list[AsyncEvent]: ...
    def settle(self, event: AsyncEvent) -> None: ...
    def recover(self) -> int: ...
    def cancel(self, key: tuple[str, str, str], request_id: str, now: float) -> bool: ...
    def find(self, key: tuple[str, str, str], request_id: str | None, status: str | None, limit: int) -> list: ...
    def depth(self) -> int: ...


SCHEMA = """
CREATE TABLE async_events (
    request_id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    package TEXT NOT NULL,
    func_name TEXT NOT NULL,
    payload BLOB NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created REAL NOT NULL,
    not_before REAL NOT NULL,
    lease_until REAL NOT NULL,
    start_time REAL NOT NULL,
    end_time REAL NOT NULL,
    error_code TEXT NOT NULL,
    error_message TEXT NOT NULL
);
CREATE INDEX async_due ON async_events (status, not_before);
CREATE INDEX async_by_function ON async_events (project_id, package, func_name, created);
"""

_COLUMNS = [f for f in AsyncEvent.__struct_fields__]


def _row(event: AsyncEvent) -> tuple:
    return tuple(getattr(event, name) for name in _COLUMNS)


class SqliteQueue:
    """The queue in the daemon's SQLite file. Called only from the store's worker thread."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def enqueue(self, event: AsyncEvent) -> None:
        with self._db:
            self._db.execute(
                f"INSERT INTO async_events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                _row(event),
            )

    def lease(self, now: float, limit: int, lease_seconds: float) -> list[AsyncEvent]:
        with self._db:
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM async_events WHERE (status='WAIT' AND not_before<=?) "
                "OR (status='RUNNING' AND lease_until<?) ORDER BY not_before LIMIT ?",
                (now, now, limit),
            ).fetchall()
            events = [AsyncEvent(**dict(zip(_COLUMNS, row, strict=True))) for row in rows]
            for event in events:
                event.status = "RUNNING"
                event.lease_until = now + lease_seconds
                event.start_time = event.start_time or now
            self._db.executemany(
                "UPDATE async_events SET status='RUNNING', lease_until=?, start_time=? WHERE request_id=?",
                [(e.lease_until, e.start_time, e.request_id) for e in events],
            )
        return events

    def settle(self, event: AsyncEvent) -> None:
        with self._db:
            self._db.execute(
                "UPDATE async_events SET status=?, attempts=?, not_before=?, lease_until=0, end_time=?, "
                "error_code=?, error_message=? WHERE request_id=?",
                (
                    event.status,
                    event.attempts,
                    event.not_before,
                    event.end_time,
                    event.error_code,
                    event.error_message,
                    event.request_id,
                ),
            )

    def recover(self) -> int:
        """Events leased by a daemon that is gone go back to waiting (same request id)."""
        with self._db:
            return self._db.execute(
                "UPDATE async_events SET status='WAIT', lease_until=0 WHERE status='RUNNING'"
            ).rowcount

    def cancel(self, key: tuple[str, str, str], request_id: str, now: float) -> bool:
        with self._db:
            return (
                self._db.execute(
                    "UPDATE async_events SET status='DISCARD', end_time=?, error_code='FSS.0409', "
                    "error_message='cancelled' WHERE request_id=? AND status='WAIT' "
                    "AND project_id=? AND package=? AND func_name=?",
                    (now, request_id, *key),
                ).rowcount
                == 1
            )

    def find(self, key: tuple[str, str, str], request_id: str | None, status: str | None, limit: int) -> list:
        query = f"SELECT {', '.join(_COLUMNS)} FROM async_events WHERE project_id=? AND package=? AND func_name=?"
        params: list = [*key]
        if request_id:
            query += " AND request_id=?"
            params.append(request_id)
        if status:
            query += " AND status=?"
            params.append(status)
        query += " ORDER BY created DESC LIMIT ?"
        params.append(limit)
        return [AsyncEvent(**dict(zip(_COLUMNS, row, strict=True))) for row in self._db.execute(query, params)]

    def depth(self) -> int:
        return self._db.execute("SELECT count(*) FROM async_events WHERE status IN ('WAIT', 'RUNNING')").fetchone()[0]
