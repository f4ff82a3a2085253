"""The SQLite queue's guards: per-function share of a lease, crash-loop give-up, malformed rows, pruning."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from fgd.asyncqueue import MAX_LEASES, AsyncEvent
from fgd.store import MIGRATIONS, Store
from tests.unit.test_store import sqlite_steps

SLOW = ("p", "default", "slow")
FAST = ("p", "default", "fast")
LEASE = 3600.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "fgd.db")
    yield s
    s.close()


def queue_events(store: Store, key: tuple, count: int, start: float = 0.0) -> list[str]:
    ids = []
    for n in range(count):
        event = AsyncEvent.new(key, f"{key[2]}-{n}", b"{}")
        event.created = event.not_before = start + n
        store.queue.enqueue(event)
        ids.append(event.request_id)
    return ids


def statuses(store: Store) -> dict[str, tuple]:
    rows = store._db.execute("SELECT request_id, status, error_message, leases FROM async_events")
    return {request_id: (status, message, leases) for request_id, status, message, leases in rows}


def test_a_flood_of_one_function_leaves_slots_for_another(store: Store) -> None:
    queue_events(store, SLOW, 1000)
    queue_events(store, FAST, 1, start=5000.0)  # queued last, behind the whole flood
    lease = store.queue.lease(time.time(), 4, LEASE, {}, 2)
    assert [e.key for e in lease.events].count(SLOW) == 2
    assert [e.request_id for e in lease.events if e.key == FAST] == ["fast-0"]


def test_running_events_count_against_the_share(store: Store) -> None:
    queue_events(store, SLOW, 10)
    assert store.queue.lease(time.time(), 4, LEASE, {SLOW: 2}, 2).events == []
    assert len(store.queue.lease(time.time(), 4, LEASE, {SLOW: 1}, 2).events) == 1


def test_the_share_fills_within_one_batch_and_the_lease_looks_further(store: Store) -> None:
    # Three functions interleaved; share 1: one of each, never two of the first.
    for n in range(30):
        for key in (SLOW, FAST, ("p", "default", "third")):
            event = AsyncEvent.new(key, f"{key[2]}-{n}", b"{}")
            event.created = event.not_before = float(n)
            store.queue.enqueue(event)
    taken = store.queue.lease(time.time(), 8, LEASE, {}, 1).events
    assert sorted(e.func_name for e in taken) == ["fast", "slow", "third"]


def test_an_event_leased_max_times_without_settling_is_given_up(store: Store) -> None:
    (request_id,) = queue_events(store, SLOW, 1)
    for _ in range(MAX_LEASES):
        (event,) = store.queue.lease(time.time(), 1, LEASE, {}, 4).events
        assert event.request_id == request_id
        # The daemon dies while it runs: the next daemon recovers the lease.
        assert store.queue.recover() == (1, 0)
    lease = store.queue.lease(time.time(), 1, LEASE, {}, 4)
    assert lease.events == []
    assert [e.request_id for e in lease.given_up] == [request_id]
    status, message, _ = statuses(store)[request_id]
    assert status == "FAIL"
    assert f"{MAX_LEASES} times" in message


def test_settling_starts_the_count_again(store: Store) -> None:
    (request_id,) = queue_events(store, SLOW, 1)
    for _ in range(MAX_LEASES + 2):
        (event,) = store.queue.lease(time.time(), 1, LEASE, {}, 4).events
        event.status, event.not_before = "WAIT", 0.0  # a retry, settled by the daemon
        store.queue.settle(event)
    assert statuses(store)[request_id][0] == "WAIT"
    assert statuses(store)[request_id][2] == 0


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("status", "BOGUS"),
        ("payload", "text, not bytes"),
        ("created", "yesterday"),
        ("not_before", "soon"),
        ("attempts", "many"),
        ("leases", 1.5),
        ("func_name", b"bytes, not text"),
    ],
)
def test_a_malformed_row_is_settled_fail_at_recovery(store: Store, column: str, value: object) -> None:
    good, bad = queue_events(store, SLOW, 2)
    store._db.execute(f"UPDATE async_events SET {column}=? WHERE request_id=?", (value, bad))
    store._db.commit()
    assert store.queue.recover() == (0, 1)
    rows = statuses(store)
    assert rows[bad][0] == "FAIL" and "malformed" in rows[bad][1]
    assert rows[good][0] == "WAIT"
    # Settled once: the next start finds nothing more to fix.
    assert store.queue.recover() == (0, 0)


def test_prune_takes_only_old_finished_events_in_batches(store: Store) -> None:
    ids = queue_events(store, SLOW, 25)
    for n, request_id in enumerate(ids):
        status = ("SUCCESS", "FAIL", "DISCARD", "WAIT", "RUNNING")[n % 5]
        end_time = 100.0 if n < 20 else 900.0
        store._db.execute(
            "UPDATE async_events SET status=?, end_time=? WHERE request_id=?", (status, end_time, request_id)
        )
    store._db.commit()
    assert store.queue.prune(500.0, 5) == 5
    assert store.queue.prune(500.0, 5) == 5
    assert store.queue.prune(500.0, 5) == 2  # 12 finished before 500 in all
    assert store.queue.prune(500.0, 5) == 0
    left = statuses(store)
    assert len(left) == 13
    assert {s for s, _, _ in left.values()} == {"SUCCESS", "FAIL", "DISCARD", "WAIT", "RUNNING"}


def test_finished_events_beyond_the_cap_go_oldest_first_in_batches(store: Store) -> None:
    ids = queue_events(store, SLOW, 20)
    for n, request_id in enumerate(ids):
        status = "WAIT" if n % 4 == 3 else "SUCCESS"  # 15 finished, 5 waiting
        store._db.execute(
            "UPDATE async_events SET status=?, end_time=? WHERE request_id=?", (status, float(n), request_id)
        )
    store._db.commit()
    assert store.queue.prune_beyond(6, 4) == 4
    assert store.queue.prune_beyond(6, 4) == 4
    assert store.queue.prune_beyond(6, 4) == 1  # 15 finished, 6 kept
    assert store.queue.prune_beyond(6, 4) == 0
    left = statuses(store)
    finished = sorted(int(r.split("-")[1]) for r, (s, _, _) in left.items() if s == "SUCCESS")
    # The newest six stay; nothing waiting is touched.
    assert finished == [12, 13, 14, 16, 17, 18]
    assert sum(1 for s, _, _ in left.values() if s == "WAIT") == 5


def test_purge_removes_a_deleted_functions_events_of_every_status(store: Store) -> None:
    queue_events(store, SLOW, 7)
    queue_events(store, FAST, 3)
    assert store.queue.purge(SLOW, time.time(), 5) == 5
    assert store.queue.purge(SLOW, time.time(), 5) == 2
    assert sorted(statuses(store)) == ["fast-0", "fast-1", "fast-2"]


def test_old_databases_gain_the_lease_counter(tmp_path: Path) -> None:
    # A database made by the previous schema (version 4) with an event in it.
    path = tmp_path / "fgd.db"
    db = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:4], start=1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
    db.close()
    store = Store(path)
    queue_events(store, SLOW, 1)
    assert statuses(store)["slow-0"] == ("WAIT", "", 0)
    store.close()


def test_listing_one_status_reads_a_range_not_every_event_of_the_function(store: Store) -> None:
    # What GET .../async-invocations?status=... asks. With 20,000 finished events of the function,
    # finding its one waiting event, that none is running or failed, does about as much work
    # (SQLite's virtual-machine steps) as with none: it used to walk all 20,000.
    def steps(status: str) -> tuple[list[str], int]:
        found: list[str] = []
        count = sqlite_steps(
            store, lambda: found.extend(e.request_id for e in store.queue.find(SLOW, None, status, 10))
        )
        return found, count

    queue_events(store, SLOW, 1)
    alone = {status: steps(status) for status in ("WAIT", "RUNNING", "FAIL")}
    assert alone["WAIT"][0] == ["slow-0"] and alone["RUNNING"][0] == alone["FAIL"][0] == []
    finished = [AsyncEvent.new(SLOW, f"done-{n}", b"{}") for n in range(20_000)]
    for event in finished:
        event.status, event.end_time = "SUCCESS", event.created
    store.queue.enqueue_many(finished)
    for status, (found, before) in alone.items():
        now_found, now = steps(status)
        assert now_found == found
        assert now <= before + 2, (status, before, now)
    # The finished ones are listed as before, newest first.
    assert [event.request_id for event in store.queue.find(SLOW, None, "SUCCESS", 2)] == ["done-19999", "done-19998"]


@pytest.mark.parametrize("made_by_hand", [False, True])
def test_a_version_8_database_gains_the_status_index_and_keeps_its_events(tmp_path: Path, made_by_hand: bool) -> None:
    # A store of the previous schema with events in it; one whose operator already made an index
    # of that name (by hand, or a start that stopped midway) opens as well.
    path = tmp_path / "fgd.db"
    store = Store(path)
    queue_events(store, SLOW, 3)
    (done,) = store.queue.find(SLOW, "slow-1", None, 1)
    done.status = "SUCCESS"
    store.queue.settle(done)
    store.close()
    db = sqlite3.connect(path)
    db.executescript("BEGIN; DROP INDEX async_by_status; PRAGMA user_version=8; COMMIT;")
    if made_by_hand:
        db.execute("CREATE INDEX async_by_status ON async_events (status)")
    db.close()
    store = Store(path)
    assert store.schema_version == len(MIGRATIONS)
    assert [event.request_id for event in store.queue.find(SLOW, None, "WAIT", 10)] == ["slow-2", "slow-0"]
    assert [event.request_id for event in store.queue.find(SLOW, None, "SUCCESS", 10)] == ["slow-1"]
    store.close()
