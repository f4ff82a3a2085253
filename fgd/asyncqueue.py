"""The durable queue of asynchronous invocations, behind a narrow interface.

`AsyncQueue` is what the dispatcher needs from a queue: enqueue (durable before
the API answers 202), lease due events, settle them, recover leases of a
daemon that died. `SqliteQueue` is the default; a broker (NATS JetStream,
Redis Streams) can stand behind the same methods. Delivery is at least once:
the request id stays the same across retries and recoveries, so a function
can deduplicate.

Two guards keep one event or one function from hurting the rest: a lease
counts itself in the row (`leases`, reset when the daemon settles the event),
so an event that took the daemon down or was never settled `MAX_LEASES` times
is settled FAIL instead of leased forever; and a lease takes at most
`per_function` running events of any one function.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from typing import Literal, Protocol

import msgspec

from fgd.model import AsyncInvocation, timestamp

Status = Literal["WAIT", "RUNNING", "SUCCESS", "FAIL", "DISCARD"]
FINAL = ("SUCCESS", "FAIL", "DISCARD")
Key = tuple[str, str, str]

# Leases without a settle (a crash, a hang, a lease that ran out) before the event is given up.
MAX_LEASES = 3


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
    # Leases since the daemon last settled this event (see MAX_LEASES).
    leases: int = 0
    # The version (and alias) resolved when the event was queued (fgd.versions; schema v8).
    version: str = "latest"
    alias: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.project_id, self.package, self.func_name)

    @classmethod
    def new(
        cls, key: tuple[str, str, str], request_id: str, payload: bytes, version: str = "latest", alias: str = ""
    ) -> AsyncEvent:
        """A fresh event for the function `key` (the resolved `version`, through `alias`), due now."""
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
            version=version,
            alias=alias,
        )


def invocation_answer(event: AsyncEvent) -> AsyncInvocation:
    """An event as `GET .../async-invocations` lists it, with FunctionGraph's types."""
    return AsyncInvocation(
        request_id=event.request_id,
        status=event.status,
        error_code=error_number(event.error_code),
        error_message=event.error_message,
        error_type=event.error_code,
        start_time=timestamp(event.start_time) if event.start_time else None,
        end_time=timestamp(event.end_time) if event.end_time else None,
        attempts=event.attempts,
    )


def error_number(code: str) -> int:
    """FunctionGraph's integer error_code: 0 none, <n> for the platform's FSS.<n>, 1 for a function error."""
    if not code:
        return 0
    if code.startswith("FSS.") and code[4:].isdigit():
        return int(code[4:])
    return FUNCTION_ERROR


# error_code of an invocation whose function failed (its error type is in error_type).
FUNCTION_ERROR = 1


class Lease(msgspec.Struct):
    """What one lease took: events to run, and events given up after MAX_LEASES (now FAIL).

    `only`, when not None, is what the lease proved: every event still due belongs to one of
    these functions (all at their share when it looked). The caller may pass it back to the next
    lease, which then does not look past them while they are full (see `SqliteQueue.lease`).
    """

    events: list[AsyncEvent]
    given_up: list[AsyncEvent]
    only: frozenset[Key] | None = None


class AsyncQueue(Protocol):
    def enqueue(self, event: AsyncEvent) -> None: ...
    def enqueue_many(self, events: list[AsyncEvent]) -> None: ...
    def lease(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        running: Mapping[Key, int],
        per_function: int,
        only: frozenset[Key] | None = None,
    ) -> Lease: ...
    def settle(self, event: AsyncEvent) -> None: ...
    def settle_many(self, events: list[AsyncEvent]) -> None: ...
    def settle_and_lease(
        self,
        settled: list[AsyncEvent],
        now: float,
        limit: int,
        lease_seconds: float,
        running: Mapping[Key, int],
        per_function: int,
        only: frozenset[Key] | None = None,
    ) -> Lease: ...
    def recover(self) -> tuple[int, int]: ...
    def cancel(self, key: tuple[str, str, str], request_id: str, now: float) -> bool: ...
    def find(self, key: tuple[str, str, str], request_id: str | None, status: str | None, limit: int) -> list: ...
    def depth(self) -> int: ...
    def prune(self, finished_before: float, batch: int) -> int: ...
    def prune_beyond(self, keep: int, batch: int) -> int: ...
    def purge(self, key: Key, created_before: float, batch: int) -> int: ...


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

# Schema v5: the lease counter, and an index for pruning finished events by age.
SCHEMA_LEASES = """
ALTER TABLE async_events ADD COLUMN leases INTEGER NOT NULL DEFAULT 0;
CREATE INDEX async_finished ON async_events (end_time) WHERE status IN ('SUCCESS', 'FAIL', 'DISCARD');
"""

# Schema v9: listing a function's events of one status (GET .../async-invocations?status=WAIT)
# walked every event of the function through async_by_function, finished ones included (4 ms
# at 12,000 of them, 35 ms at max_finished's 100,000, holding the store's thread): now a range
# of this index. It costs each event a few microseconds of SQLite's work as its status changes.
SCHEMA_STATUS = """
CREATE INDEX IF NOT EXISTS async_by_status ON async_events (project_id, package, func_name, status, created);
"""

# The condition of the async_finished index, written the same way so queries can use it.
_FINISHED = "status IN ('SUCCESS', 'FAIL', 'DISCARD')"

# An unfinished row whose columns do not have the types the daemon writes (edited by hand,
# or by another program) cannot be run: recover() settles it FAIL, with a reason.
_MALFORMED = """
    status NOT IN ('SUCCESS', 'FAIL', 'DISCARD') AND (
    status NOT IN ('WAIT', 'RUNNING')
    OR typeof(payload) != 'blob' OR typeof(request_id) != 'text'
    OR typeof(project_id) != 'text' OR typeof(package) != 'text' OR typeof(func_name) != 'text'
    OR typeof(attempts) != 'integer' OR typeof(leases) != 'integer'
    OR typeof(created) NOT IN ('real', 'integer') OR typeof(not_before) NOT IN ('real', 'integer')
    OR typeof(lease_until) NOT IN ('real', 'integer') OR typeof(start_time) NOT IN ('real', 'integer')
    OR typeof(end_time) NOT IN ('real', 'integer')
    OR typeof(error_code) != 'text' OR typeof(error_message) != 'text')
"""

_COLUMNS = [f for f in AsyncEvent.__struct_fields__]
_NOT_BEFORE = _COLUMNS.index("not_before")


def _row(event: AsyncEvent) -> tuple:
    return tuple(getattr(event, name) for name in _COLUMNS)


class SqliteQueue:
    """The queue in the daemon's SQLite file. Called only from the store's worker thread."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def enqueue(self, event: AsyncEvent) -> None:
        self.enqueue_many([event])

    def enqueue_many(self, events: list[AsyncEvent]) -> None:
        """Queue `events` in one transaction, on disk when this returns (the API answers 202 after).

        The store runs WAL with synchronous=NORMAL: a commit survives the daemon's death but
        not the machine's. Queued events are promises (202), so their commit is synchronous=FULL:
        SQLite syncs the WAL before it returns. Many 202s share one transaction and one sync
        (fgd.groupcommit); leases and settles stay NORMAL, since losing one reruns an event, which
        at-least-once delivery allows.
        """
        if not events:
            return
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            with self._db:
                self._db.executemany(
                    f"INSERT INTO async_events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                    [_row(event) for event in events],
                )
        finally:
            self._db.execute("PRAGMA synchronous=NORMAL")

    def lease(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        running: Mapping[Key, int],
        per_function: int,
        only: frozenset[Key] | None = None,
    ) -> Lease:
        """Up to `limit` due events, oldest first, no function past `per_function` running.

        `only`: what an earlier lease proved (`Lease.only`) and nothing has changed since: the
        due events all belong to these functions. While all of them are full there is nothing
        to take, and the lease stops instead of scanning past their backlog (a flood of one
        function's events would otherwise cost a scan of the whole backlog per event).
        """
        with self._db:
            return self._lease(now, limit, lease_seconds, running, per_function, only)

    def settle_and_lease(
        self,
        settled: list[AsyncEvent],
        now: float,
        limit: int,
        lease_seconds: float,
        running: Mapping[Key, int],
        per_function: int,
        only: frozenset[Key] | None = None,
    ) -> Lease:
        """Record the outcome of `settled` and lease up to `limit` more, in one transaction.

        The dispatcher's loop does one of these per turn: the events that finished since the
        last turn, and as many new ones as slots are free (theirs included).
        """
        with self._db:
            self._settle(settled)
            return self._lease(now, limit, lease_seconds, running, per_function, only)

    def _lease(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        running: Mapping[Key, int],
        per_function: int,
        only: frozenset[Key] | None,
    ) -> Lease:
        taken: list[AsyncEvent] = []
        given_up: list[AsyncEvent] = []
        counts = dict(running)
        while len(taken) < limit:
            # Functions at their share are left out in SQL, so a flood of one function's
            # events costs an index scan, not a Python loop over its rows.
            full = [key for key, count in counts.items() if count >= per_function]
            if only is not None and only.issubset(full):
                break  # every due event belongs to a function at its share
            wanted = limit - len(taken)
            batch = self._due(now, wanted, full)
            skipped: set[Key] = set()
            for event in batch:
                if event.leases >= MAX_LEASES:
                    given_up.append(event)
                    self._give_up(event, now)
                elif counts.get(event.key, 0) < per_function:
                    counts[event.key] = counts.get(event.key, 0) + 1
                    event.status = "RUNNING"
                    event.lease_until = now + lease_seconds
                    event.start_time = event.start_time or now
                    event.leases += 1
                    self._db.execute(
                        "UPDATE async_events SET status='RUNNING', lease_until=?, start_time=?, leases=? "
                        "WHERE request_id=?",
                        (event.lease_until, event.start_time, event.leases, event.request_id),
                    )
                    taken.append(event)
                else:
                    # Its function filled up within this batch; the next query leaves it out.
                    skipped.add(event.key)
            if len(batch) < wanted:
                # Every due event of a function with room was in this batch: what is still
                # due belongs to the functions full before it, or filled by it.
                only = frozenset(full) | skipped
                break
        return Lease(taken, given_up, only)

    def _due(self, now: float, limit: int, full: list[Key]) -> list[AsyncEvent]:
        # Two queries, each read in order from the async_due index: one with an OR between
        # them made SQLite collect and sort every due row (the whole backlog) for each lease.
        exclude, params = "", []
        if full:
            exclude = f" AND (project_id, package, func_name) NOT IN (VALUES {', '.join(['(?, ?, ?)'] * len(full))})"
            params = [part for key in full for part in key]
        columns = ", ".join(_COLUMNS)
        rows = self._db.execute(
            f"SELECT {columns} FROM async_events WHERE status='WAIT' AND not_before<=?{exclude} "
            "ORDER BY not_before LIMIT ?",
            [now, *params, limit],
        ).fetchall()
        # Leases that ran out: few (a lease outlives the longest timeout; a restart requeues them).
        rows += self._db.execute(
            f"SELECT {columns} FROM async_events WHERE status='RUNNING' AND lease_until<?{exclude} "
            "ORDER BY not_before LIMIT ?",
            [now, *params, limit],
        ).fetchall()
        rows.sort(key=lambda row: row[_NOT_BEFORE])
        return [AsyncEvent(**dict(zip(_COLUMNS, row, strict=True))) for row in rows[:limit]]

    def _give_up(self, event: AsyncEvent, now: float) -> None:
        event.status = "FAIL"
        event.end_time = now
        event.lease_until = 0.0
        event.error_code = "FSS.0500"
        event.error_message = (
            f"the daemon took this event {event.leases} times without finishing it (it crashed, or the "
            "event could not be processed); it is not tried again"
        )
        self._db.execute(
            "UPDATE async_events SET status='FAIL', lease_until=0, end_time=?, error_code=?, error_message=? "
            "WHERE request_id=?",
            (event.end_time, event.error_code, event.error_message, event.request_id),
        )

    def settle(self, event: AsyncEvent) -> None:
        self.settle_many([event])

    def settle_many(self, events: list[AsyncEvent]) -> None:
        """Record the outcome of `events`, in one transaction."""
        with self._db:
            self._settle(events)

    def _settle(self, events: list[AsyncEvent]) -> None:
        if events:
            # The daemon handled this lease: the crash counter starts over.
            self._db.executemany(
                "UPDATE async_events SET status=?, attempts=?, not_before=?, lease_until=0, end_time=?, "
                "error_code=?, error_message=?, leases=0 WHERE request_id=?",
                [
                    (
                        event.status,
                        event.attempts,
                        event.not_before,
                        event.end_time,
                        event.error_code,
                        event.error_message,
                        event.request_id,
                    )
                    for event in events
                ],
            )

    def recover(self) -> tuple[int, int]:
        """Events leased by a daemon that is gone go back to waiting (same request id).

        Rows that cannot be read back as events are settled FAIL first. Returns
        (events queued again, malformed rows failed).
        """
        with self._db:
            malformed = self._db.execute(
                "UPDATE async_events SET status='FAIL', lease_until=0, end_time=?, error_code='FSS.0500', "
                "error_message='the stored event is malformed (a column has the wrong type or status); "
                f"it cannot run' WHERE {_MALFORMED}",
                (time.time(),),
            ).rowcount
            requeued = self._db.execute(
                "UPDATE async_events SET status='WAIT', lease_until=0 WHERE status='RUNNING'"
            ).rowcount
        return requeued, malformed

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

    def prune(self, finished_before: float, batch: int) -> int:
        """Delete up to `batch` events that finished before the given time; one short transaction."""
        with self._db:
            return self._db.execute(
                "DELETE FROM async_events WHERE rowid IN (SELECT rowid FROM async_events "
                "WHERE status IN ('SUCCESS', 'FAIL', 'DISCARD') AND end_time<? LIMIT ?)",
                (finished_before, batch),
            ).rowcount

    def prune_beyond(self, keep: int, batch: int) -> int:
        """Delete up to `batch` of the oldest finished events beyond the newest `keep`; one short transaction."""
        with self._db:
            (finished,) = self._db.execute(f"SELECT count(*) FROM async_events WHERE {_FINISHED}").fetchone()
            excess = min(batch, finished - keep)
            if excess <= 0:
                return 0
            return self._db.execute(
                f"DELETE FROM async_events WHERE rowid IN (SELECT rowid FROM async_events WHERE {_FINISHED} "
                "ORDER BY end_time LIMIT ?)",
                (excess,),
            ).rowcount

    def purge(self, key: Key, created_before: float, batch: int) -> int:
        """Delete up to `batch` events of a deleted function (any status) queued before it was deleted."""
        with self._db:
            return self._db.execute(
                "DELETE FROM async_events WHERE rowid IN (SELECT rowid FROM async_events "
                "WHERE project_id=? AND package=? AND func_name=? AND created<? LIMIT ?)",
                (*key, created_before, batch),
            ).rowcount

    def depth(self) -> int:
        return self._db.execute("SELECT count(*) FROM async_events WHERE status IN ('WAIT', 'RUNNING')").fetchone()[0]
