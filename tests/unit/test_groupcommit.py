"""Grouped writes of the async queue (issue 15): many 202s per transaction, none before its commit;
settle and lease in one transaction per dispatcher turn; leases that do not scan a backlog."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import trio

from fgd.asyncqueue import AsyncEvent
from fgd.config import AsyncConfig
from fgd.dispatch import Dispatcher
from fgd.errors import Unavailable
from fgd.groupcommit import MAX_BATCH, GroupCommit
from fgd.store import Store
from tests.unit.test_dispatch import Invoker, record

KEY = ("p", "default", "fn")
OTHER = ("p", "default", "other")
LEASE = 3600.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "fgd.db")
    yield s
    s.close()


def committed(path: Path, request_id: str) -> bool:
    """Whether another connection (another process, after a crash) sees the event: only committed rows."""
    reader = sqlite3.connect(path)
    try:
        return reader.execute("SELECT 1 FROM async_events WHERE request_id=?", (request_id,)).fetchone() is not None
    finally:
        reader.close()


async def test_concurrent_enqueues_share_transactions_and_none_returns_before_its_commit(
    store: Store, tmp_path: Path
) -> None:
    dispatcher = Dispatcher(store, Invoker(), AsyncConfig(), [0], "local")  # type: ignore[arg-type]
    group = dispatcher._enqueues
    seen_before_return: list[bool] = []

    async def answer(n: int) -> None:
        event = AsyncEvent.new(KEY, f"r{n}", b"{}")
        await dispatcher.enqueue(event)
        # What the API does next is answer 202: by then the row must be readable by anyone.
        seen_before_return.append(committed(tmp_path / "fgd.db", event.request_id))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(group.run)
        async with trio.open_nursery() as clients:
            for n in range(200):
                clients.start_soon(answer, n)
        nursery.cancel_scope.cancel()
    assert seen_before_return == [True] * 200
    assert group.items == 200
    # Arriving together, they shared a few transactions (one sync of the WAL each), not 200.
    assert group.transactions <= 10, group.transactions


async def test_a_failed_commit_fails_every_caller_of_its_batch_and_stores_none() -> None:
    stored: list[list[int]] = []

    async def run(fn, *args):  # the store's runner, inline
        return fn(*args)

    def commit(items: list[int]) -> None:
        if 13 in items:
            raise sqlite3.OperationalError("database or disk is full")
        stored.append(items)

    group: GroupCommit[int] = GroupCommit(run, commit, "the event")
    outcomes: dict[int, str] = {}

    async def submit(n: int) -> None:
        try:
            await group.submit(n)
            outcomes[n] = "ok"
        except sqlite3.OperationalError as exc:
            outcomes[n] = str(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(group.run)
        async with trio.open_nursery() as clients:
            for n in range(10, 16):
                clients.start_soon(submit, n)
        nursery.cancel_scope.cancel()
    failed = {n for n, outcome in outcomes.items() if outcome != "ok"}
    assert 13 in failed and outcomes[13] == "database or disk is full"
    assert not failed & {n for batch in stored for n in batch}  # told it failed: it was not stored
    assert set(outcomes) == set(range(10, 16))


async def test_a_stopped_group_refuses_with_503() -> None:
    async def run(fn, *args):
        return fn(*args)

    group: GroupCommit[int] = GroupCommit(run, lambda items: None, "the event")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(group.run)
        await trio.sleep(0)
        nursery.cancel_scope.cancel()
    with pytest.raises(Unavailable, match="stopping"):
        await group.submit(1)


def test_queued_events_are_synced_then_the_connection_goes_back_to_normal(store: Store) -> None:
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.queue.enqueue_many([AsyncEvent.new(KEY, f"r{n}", b"{}") for n in range(3)])
    store._db.set_trace_callback(None)
    inserts = [n for n, s in enumerate(statements) if s.startswith("INSERT INTO async_events")]
    assert len(inserts) == 3
    # FULL before the transaction (SQLite syncs the WAL at its commit), NORMAL after it.
    assert statements.index("PRAGMA synchronous=FULL") < inserts[0]
    assert statements.index("COMMIT") > inserts[-1]
    assert statements.index("PRAGMA synchronous=NORMAL") > statements.index("COMMIT")
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def fill(store: Store, key: tuple, count: int, start: float = 0.0) -> None:
    events = []
    for n in range(count):
        event = AsyncEvent.new(key, f"{key[2]}-{n}", b"{}")
        event.created = event.not_before = start + n
        events.append(event)
    store.queue.enqueue_many(events)


def steps(store: Store, fn, *args):
    """SQLite virtual machine steps `fn` took (its work, whatever the machine's speed)."""
    count = [0]

    def tick() -> int:
        count[0] += 1
        return 0

    store._db.set_progress_handler(tick, 1)
    try:
        result = fn(*args)
    finally:
        store._db.set_progress_handler(None, 0)
    return result, count[0]


@pytest.mark.parametrize("backlog", [100, 10_000])
def test_a_lease_reads_the_oldest_rows_not_the_whole_backlog(store: Store, backlog: int) -> None:
    fill(store, KEY, backlog)
    lease, work = steps(store, store.queue.lease, time.time(), 4, LEASE, {}, 4)
    assert [e.request_id for e in lease.events] == ["fn-0", "fn-1", "fn-2", "fn-3"]
    # About 1,000 steps for four rows; collecting and sorting every due row took far more.
    assert work < 3_000, work


def test_a_proven_lease_does_not_scan_past_a_full_functions_backlog(store: Store) -> None:
    fill(store, KEY, 10_000)
    running = {KEY: 2}
    # The share is full: the lease has to look past the backlog once, and says what it proved.
    first, scan = steps(store, store.queue.lease, time.time(), 4, LEASE, running, 2)
    assert first.events == [] and first.only == frozenset({KEY})
    assert scan > 10_000
    # Told so, the next lease with the function still full does no reading at all...
    again, work = steps(store, store.queue.lease, time.time(), 4, LEASE, running, 2, first.only)
    assert again.events == [] and work < 50, work
    # ...and one slot free takes one event, without the scan.
    one, work = steps(store, store.queue.lease, time.time(), 4, LEASE, {KEY: 1}, 2, first.only)
    assert [e.request_id for e in one.events] == ["fn-0"] and work < 3_000, work


def test_the_proof_never_hides_another_functions_events(store: Store) -> None:
    fill(store, KEY, 50)
    fill(store, OTHER, 1, start=1000.0)
    lease = store.queue.lease(time.time(), 4, LEASE, {}, 2)
    # Two of fn (its share) and the other function's one event, behind fn's backlog; what is
    # left is all fn's.
    assert sorted(e.func_name for e in lease.events) == ["fn", "fn", "other"]
    assert lease.only == frozenset({KEY})
    # A lease that fills its limit proves nothing about what it did not look at.
    store.queue.enqueue(AsyncEvent.new(OTHER, "later", b"{}"))
    assert store.queue.lease(time.time(), 1, LEASE, {}, 4).only is None


async def test_the_dispatcher_settles_and_leases_many_events_per_transaction(store: Store) -> None:
    await store.put(record("fn"))
    invoker = Invoker()
    dispatcher = Dispatcher(store, invoker, AsyncConfig(concurrency=8, per_function=8), [0], "local")  # type: ignore[arg-type]
    # Queued after the function was saved (an older event would be its predecessor's: discarded).
    store.queue.enqueue_many([AsyncEvent.new(KEY, f"r{n}", b"{}") for n in range(2000)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatcher.run)
        with trio.fail_after(30):
            while store._db.execute("SELECT count(*) FROM async_events WHERE status='SUCCESS'").fetchone()[0] < 2000:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert len(invoker.done) == 2000
    # One transaction per turn settles what finished and leases the free slots: about one per
    # eight events here (the stand-in invoker answers at once), never one or two per event.
    assert dispatcher.turns <= 2000 / 4, dispatcher.turns


async def test_a_flood_is_committed_in_batches_of_at_most_max_batch() -> None:
    batches: list[list[int]] = []

    async def run(fn, *args):  # the store's thread, as a checkpoint
        await trio.sleep(0)
        return fn(*args)

    group: GroupCommit[int] = GroupCommit(run, batches.append, "the event")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(group.run)
        async with trio.open_nursery() as clients:
            for n in range(2500):
                clients.start_soon(group.submit, n)
        nursery.cancel_scope.cancel()
    assert sorted(n for batch in batches for n in batch) == list(range(2500))
    assert max(len(batch) for batch in batches) <= MAX_BATCH
    assert len(batches) >= 3
