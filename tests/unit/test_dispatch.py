"""The dispatcher's error boundary and share per function, with a stand-in invoker and a real store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from fgd.asyncqueue import AsyncEvent
from fgd.config import AsyncConfig
from fgd.dispatch import Dispatcher
from fgd.invoker import Outcome
from fgd.model import AsyncInvokeConfig, FunctionRecord
from fgd.store import Store
from tests.unit.test_store import record as stored_record


def record(name: str, **async_config: object) -> FunctionRecord:
    return stored_record(name, async_config=AsyncInvokeConfig(**async_config))


class Invoker:
    """Runs an event by its payload: `boom` raises as a bug in the daemon would, `slow` sleeps."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.done: list[str] = []

    async def invoke(self, record: FunctionRecord, payload: bytes, request_id: str) -> Outcome:
        name = record.func_name
        self.running[name] = self.running.get(name, 0) + 1
        self.most[name] = max(self.most.get(name, 0), self.running[name])
        try:
            if payload == b"boom":
                raise KeyError("a bug in the daemon")
            if payload == b"slow":
                await trio.sleep(0.5)
            self.done.append(request_id)
            return Outcome(request_id=request_id, body=b"ok")
        finally:
            self.running[name] -= 1


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "fgd.db")
    yield s
    s.close()


async def run_until_settled(store: Store, dispatcher: Dispatcher, ids: list[str], within: float) -> dict:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatcher.run)
        with trio.fail_after(within):
            while True:
                rows = {
                    r: (s, m)
                    for r, s, m in store._db.execute("SELECT request_id, status, error_message FROM async_events")
                }
                if all(rows[i][0] in ("SUCCESS", "FAIL", "DISCARD") for i in ids):
                    break
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    return rows


async def test_an_event_that_makes_the_daemon_raise_fails_alone(store: Store) -> None:
    await store.put(record("fn", max_async_retry_attempts=3))
    invoker = Invoker()
    dispatcher = Dispatcher(store, invoker, AsyncConfig(concurrency=2), [0], "local")  # type: ignore[arg-type]
    events = [AsyncEvent.new(("p", "default", "fn"), f"r{n}", b"boom" if n == 1 else b"{}") for n in range(4)]
    for event in events:
        store.queue.enqueue(event)
    rows = await run_until_settled(store, dispatcher, [e.request_id for e in events], within=5)
    assert rows["r1"][0] == "FAIL"
    assert "KeyError" in rows["r1"][1] and "a bug in the daemon" in rows["r1"][1]
    # Not retried: the daemon's failure is not the function's.
    assert invoker.most["fn"] >= 1 and "r1" not in invoker.done
    assert [rows[f"r{n}"][0] for n in (0, 2, 3)] == ["SUCCESS"] * 3


async def test_one_function_gets_at_most_its_share_of_the_slots(store: Store) -> None:
    await store.put(record("slow"))
    await store.put(record("fast"))
    invoker = Invoker()
    dispatcher = Dispatcher(store, invoker, AsyncConfig(concurrency=4), [0], "local")  # type: ignore[arg-type]
    assert dispatcher.per_function == 2
    slow = [AsyncEvent.new(("p", "default", "slow"), f"s{n}", b"slow") for n in range(12)]
    for event in slow:
        store.queue.enqueue(event)
    fast = AsyncEvent.new(("p", "default", "fast"), "f", b"{}")
    fast.created = fast.not_before = time.time() + 0.1  # queued behind the whole flood
    store.queue.enqueue(fast)
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatcher.run)
        with trio.fail_after(5):
            while "f" not in invoker.done:
                await trio.sleep(0.01)
        fast_latency = time.monotonic() - started
        nursery.cancel_scope.cancel()
    # Without the share, four slow events (0.5 s each) hold every slot for 1.5 s.
    assert fast_latency < 0.5, fast_latency
    assert invoker.most["slow"] == 2


async def test_an_unusable_stored_destination_does_not_stop_settling(store: Store) -> None:
    # A config edited in the database: a destination type fgd does not know.
    await store.put(record("fn", destination_config={"on_success": {"destination": "SMN", "param": {}}}))
    dispatcher = Dispatcher(store, Invoker(), AsyncConfig(), [0], "local")  # type: ignore[arg-type]
    event = AsyncEvent.new(("p", "default", "fn"), "r", b"{}")
    store.queue.enqueue(event)
    rows = await run_until_settled(store, dispatcher, ["r"], within=5)
    assert rows["r"][0] == "SUCCESS"
    assert "destination was not notified" in rows["r"][1] and "destination" in rows["r"][1]
