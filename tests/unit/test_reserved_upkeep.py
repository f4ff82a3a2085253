"""The reserved instances' upkeep (fgd.reserved) against an invoker whose cold starts are timed fakes.

The upkeep's own code and the invoker's bookkeeping (discard, start failed, the real scheduler)
run as in the daemon; only the start itself is a sleep, on trio's autojump clock, so the tests
can count how many starts are under way at once and what each round starts, in milliseconds.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
from collections.abc import AsyncIterator
from types import SimpleNamespace

import msgspec
import pytest
import trio
import trio.testing

from fgd.errors import NotFound
from fgd.instance import State
from fgd.invocation import ColdStartFailure, pool_key
from fgd.invoker import Invoker
from fgd.model import FunctionRecord, FunctionSettings, StrategyConfig
from fgd.reserved import RESERVE_CHECK, RESERVED_STARTS, Reserved
from fgd.scheduler import Scheduler
from fgd.versions import qualifier_key
from runtimes.protocol import FunctionError
from tests.unit.test_store import record as stored

START_SECONDS = 0.2
NEVER = 10_000.0


class FakeInstance:
    def __init__(self, number: int, record: FunctionRecord) -> None:
        self.id = f"instance-{number}"
        self.key = record.key
        self.qualifier = qualifier_key(record)
        self.pool_key = pool_key(record)
        self.revision = record.revision
        self.reserved = False
        self.state = State.BUSY
        self.gone = False

    def exited(self) -> bool:
        return self.gone

    def end(self, token: str) -> list:
        return []

    def take_all_lines(self) -> list:
        return []


class FakeInvoker:
    """What Reserved uses of the Invoker: its bookkeeping is the Invoker's own code."""

    _discard = Invoker._discard
    _wake = Invoker._wake
    _start_failed = Invoker._start_failed
    _release = Invoker._release
    _quota = Invoker._quota

    def __init__(self, *records: FunctionRecord, budget_mb: int = 1_000_000) -> None:
        self._store = store = SimpleNamespace(functions={r.key: r for r in records}, versions={}, aliases={})
        # As Store.version: latest or a published version, as stored.
        store.version = lambda key, name: (
            store.functions.get(key) if name == "latest" else store.versions.get(key, {}).get(name)
        )
        self._config = SimpleNamespace(scheduler=SimpleNamespace(queue_length=10))
        self.scheduler = Scheduler(trio.current_time, budget_mb)
        self.instances: dict[tuple[str, str, str], list] = {}
        self.reserved_live: collections.Counter = collections.Counter()
        self._by_id: dict = {}
        self._waiters: dict = {}
        self._logs = SimpleNamespace(add=lambda key, lines: None)
        self.pool = SimpleNamespace(retire=self._retire)
        self.reserved = Reserved(self)  # type: ignore[arg-type]
        self._numbers = itertools.count()
        # Per function name: seconds a start takes, and whether it fails (then an InitError).
        self.start_seconds: dict[str, float] = collections.defaultdict(lambda: START_SECONDS)
        self.failing: set[str] = set()
        self.under_way = 0
        self.most_under_way = 0
        self.attempts: collections.Counter[str] = collections.Counter()
        self.most_instances: collections.Counter[str] = collections.Counter()

    def _retire(self, instance: FakeInstance) -> None:
        instance.state = State.DEAD

    def set(self, record: FunctionRecord) -> None:
        """The function changed (as the API does it: the store, then `reserved_changed`)."""
        self._store.functions[record.key] = record
        self.reserved.changed()

    async def _cold_start(self, record: FunctionRecord, request_id: str) -> tuple[FakeInstance, object]:
        if record.key not in self._store.functions:
            # As the real one: a function deleted while its start waited starts nothing.
            raise NotFound(f"function {record.func_name} was deleted")
        instance = FakeInstance(next(self._numbers), record)
        # As the real one: the starting instance is among the function's from the start.
        self.instances.setdefault(record.key, []).append(instance)
        name = record.func_name
        self.attempts[name] += 1
        self.most_instances[name] = max(self.most_instances[name], len(self.instances[record.key]))
        self.under_way += 1
        self.most_under_way = max(self.most_under_way, self.under_way)
        try:
            await trio.sleep(self.start_seconds[name])
        except BaseException:
            # As the real one: cancelled mid-start, the half-started instance goes.
            self._discard(record.key, instance)
            raise
        finally:
            self.under_way -= 1
        if name in self.failing:
            return instance, ColdStartFailure(FunctionError("Runtime.InitError", "it fails"), START_SECONDS)
        return instance, None

    def live(self, record: FunctionRecord) -> list[FakeInstance]:
        return [
            i
            for i in self.instances.get(record.key, [])
            if i.reserved and i.state is not State.DEAD and i.revision == record.revision
        ]


def function(name: str, reserved: int, *, max_instances: int = 1000, revision: int = 1) -> FunctionRecord:
    settings = FunctionSettings(handler="index.handler", strategy_config=StrategyConfig(concurrency=max_instances))
    return stored(name, reserved=reserved, settings=settings, revision=revision)


async def wait_for(condition, within: float) -> bool:
    deadline = trio.current_time() + within
    while trio.current_time() < deadline:
        if condition():
            return True
        await trio.sleep(0.01)
    return condition()


async def test_reserved_instances_start_a_few_at_a_time(autojump_clock: trio.testing.MockClock) -> None:
    record = function("many", 40)
    invoker = FakeInvoker(record)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(invoker.reserved.run)
        began = trio.current_time()
        invoker.reserved.changed()
        assert await wait_for(lambda: len(invoker.live(record)) == 40, 60)
        took = trio.current_time() - began
        nursery.cancel_scope.cancel()
    assert invoker.most_under_way == RESERVED_STARTS
    assert invoker.attempts["many"] == 40
    # The first alone, then RESERVED_STARTS at a time (one at a time: 40 starts' time).
    assert took <= START_SECONDS * (1 + -(-39 // RESERVED_STARTS)) + 0.1, took
    assert invoker.scheduler.instances(pool_key(record)) == 40


async def test_a_failing_start_costs_one_start_a_round(autojump_clock: trio.testing.MockClock) -> None:
    record = function("broken", 40)
    invoker = FakeInvoker(record)
    invoker.failing.add("broken")
    async with upkeep(invoker):
        await trio.sleep(20 * RESERVE_CHECK)
    # One start a round (a round every RESERVE_CHECK), not RESERVED_STARTS: never a storm.
    assert 1 <= invoker.attempts["broken"] <= 21, invoker.attempts
    assert invoker.most_under_way == 1
    assert not invoker.live(record)
    # Every failed start was given back to the scheduler: nothing is left counted as starting.
    assert invoker.scheduler.memory_used_mb == 0


async def test_starts_stop_at_the_first_failure_beyond_those_under_way(autojump_clock: trio.testing.MockClock) -> None:
    record = function("breaks", 40)
    invoker = FakeInvoker(record)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(invoker.reserved._keep, record)
        # The function breaks while its instances start (an external service its initializer needs went).
        await wait_for(lambda: invoker.attempts["breaks"] >= 8, 60)
        invoker.failing.add("breaks")
        attempts = invoker.attempts["breaks"]
    # _keep returned by itself: no new start after the first failure; those under way finished.
    assert attempts <= invoker.attempts["breaks"] <= attempts + RESERVED_STARTS
    assert invoker.under_way == 0


@contextlib.asynccontextmanager
async def upkeep(invoker: FakeInvoker) -> AsyncIterator[None]:
    """The upkeep running for the block (told of a change as it starts), stopped at its end."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(invoker.reserved.run)
        invoker.reserved.changed()
        yield
        nursery.cancel_scope.cancel()


async def run_upkeep(invoker: FakeInvoker, seconds: float) -> None:
    """The upkeep run for `seconds` (of the autojump clock) after a change."""
    async with upkeep(invoker):
        await trio.sleep(seconds)


async def change_count_mid_start(invoker: FakeInvoker, record, *, once_live: int, to: int, within: float):
    """Start `record`'s reserved instances, change the count to `to` once `once_live` run; the
    changed record, once `to` run (within `within` s) and a few more rounds passed."""
    async with upkeep(invoker):
        assert await wait_for(lambda: len(invoker.live(record)) >= once_live, 60)
        changed = msgspec.structs.replace(record, reserved=to)
        invoker.set(changed)
        assert await wait_for(lambda: len(invoker.live(changed)) == to, within)
        await trio.sleep(5 * RESERVE_CHECK)
    return changed


async def test_lowering_the_count_mid_start_converges_to_the_new_count(autojump_clock: trio.testing.MockClock) -> None:
    record = function("lowered", 1000)
    invoker = FakeInvoker(record)
    # The surplus goes at the next round; the starts under way then finish and go too.
    lowered = await change_count_mid_start(
        invoker, record, once_live=30, to=10, within=2 * (RESERVE_CHECK + START_SECONDS)
    )
    assert len(invoker.live(lowered)) == 10
    assert invoker.attempts["lowered"] <= 30 + 2 * RESERVED_STARTS, invoker.attempts
    assert invoker.scheduler.instances(pool_key(record)) == 10


async def test_raising_the_count_mid_start_reaches_the_new_count(autojump_clock: trio.testing.MockClock) -> None:
    record = function("raised", 10)
    invoker = FakeInvoker(record)
    await change_count_mid_start(invoker, record, once_live=4, to=25, within=60)
    assert invoker.attempts["raised"] == 25
    assert invoker.scheduler.instances(pool_key(record)) == 25


async def test_max_instances_is_never_exceeded(autojump_clock: trio.testing.MockClock) -> None:
    # The API caps reserved at max instances; max instances lowered later (or on-demand instances
    # running) leave fewer places: starts under way count against it as they are admitted.
    record = function("capped", 30, max_instances=7)
    invoker = FakeInvoker(record)
    await run_upkeep(invoker, 20 * (RESERVE_CHECK + START_SECONDS))
    assert len(invoker.live(record)) == 7
    assert invoker.most_instances["capped"] == 7
    assert invoker.attempts["capped"] == 7


async def test_the_memory_budget_is_never_exceeded(autojump_clock: trio.testing.MockClock) -> None:
    record = function("budget", 30)  # 128 MB instances
    invoker = FakeInvoker(record, budget_mb=128 * 5)
    await run_upkeep(invoker, 20 * (RESERVE_CHECK + START_SECONDS))
    assert len(invoker.live(record)) == 5
    assert invoker.most_instances["budget"] == 5


async def test_an_instance_started_for_an_old_revision_is_replaced(autojump_clock: trio.testing.MockClock) -> None:
    record = function("changed", 12)
    invoker = FakeInvoker(record)
    async with upkeep(invoker):
        assert await wait_for(lambda: invoker.under_way > 0 and len(invoker.live(record)) >= 3, 60)
        # The config changed while some started (Invoker.retire discards only the idle ones).
        newer = msgspec.structs.replace(record, revision=2)
        for instance in invoker.live(record):
            invoker._discard(record.key, instance)
        invoker.set(newer)
        assert await wait_for(lambda: len(invoker.live(newer)) == 12, 60)
        await trio.sleep(5 * RESERVE_CHECK)
    kept = [i for i in invoker.instances[record.key] if i.state is not State.DEAD]
    assert [i.revision for i in kept] == [2] * 12
    assert invoker.scheduler.instances(pool_key(record)) == 12


async def test_shutdown_mid_start_leaves_nothing_starting(autojump_clock: trio.testing.MockClock) -> None:
    record = function("shutdown", 50)
    invoker = FakeInvoker(record)
    async with upkeep(invoker):
        assert await wait_for(lambda: invoker.under_way == RESERVED_STARTS, 60)
    assert invoker.under_way == 0
    # No half-started instance is left, and the scheduler counts only the instances that started.
    started = [i for i in invoker.instances[record.key] if i.state is not State.DEAD]
    assert all(i.reserved for i in started)
    assert invoker.scheduler.memory_used_mb == 128 * len(started)


async def test_one_functions_exception_does_not_stop_the_others(autojump_clock: trio.testing.MockClock) -> None:
    broken, fine = function("raises", 5), function("fine", 5)
    invoker = FakeInvoker(broken, fine)
    real = invoker._cold_start

    async def cold_start(record: FunctionRecord, request_id: str):
        if record.func_name == "raises":
            raise RuntimeError("unexpected")
        return await real(record, request_id)

    invoker._cold_start = cold_start  # type: ignore[method-assign]
    async with upkeep(invoker):
        assert await wait_for(lambda: len(invoker.live(fine)) == 5, 60)


@pytest.mark.parametrize("others", [1, 3])
async def test_a_hanging_initializer_does_not_hold_up_other_functions(
    autojump_clock: trio.testing.MockClock, others: int
) -> None:
    # The attacker's initializer hangs until its timeout, then fails; the other functions'
    # reserved instances start meanwhile (its start holds one slot, not the round).
    hanging = function("hangs", 100)
    records = [function(f"other{n}", 10) for n in range(others)]
    invoker = FakeInvoker(hanging, *records)
    invoker.start_seconds["hangs"] = 300.0
    invoker.failing.add("hangs")
    async with upkeep(invoker):
        began = trio.current_time()
        assert await wait_for(lambda: all(len(invoker.live(r)) == 10 for r in records), 60)
        took = trio.current_time() - began
    assert took < 10 * others * START_SECONDS, took
    assert invoker.attempts["hangs"] == 1


async def test_a_function_deleted_before_its_start_is_given_back(autojump_clock: trio.testing.MockClock) -> None:
    # Its upkeep waited for a slot while the function was deleted: the start fails quietly (a
    # warning, no traceback) and the scheduler no longer counts it as starting.
    record = function("deleted", 3)
    invoker = FakeInvoker(record)
    del invoker._store.functions[record.key]
    await invoker.reserved._keep(record)
    assert invoker.attempts["deleted"] == 0
    assert invoker.scheduler.memory_used_mb == 0
    assert not invoker.instances
