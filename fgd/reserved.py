"""Reserved instances: kept started and warm per function (latest, each version, each alias), never reaped.

The upkeep starts what is missing, replaces instances that died and retires the surplus, whenever
the reserved counts change (`changed`) and every RESERVE_CHECK seconds (an instance may exit on its own).
It starts instances through the invoker's cold start and hands them to its scheduler, a few at a
time (RESERVED_STARTS): a start is mostly the zygote's fork and the instance's own specialisation,
so one at a time left a core idle.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import TYPE_CHECKING

import trio

from fgd.errors import NotFound, Unavailable
from fgd.instance import State
from fgd.invocation import pool_key
from fgd.model import FunctionRecord
from fgd.scheduler import Reject
from fgd.versions import exact, qualifier_key, reserved_targets

if TYPE_CHECKING:
    from fgd.invoker import Invoker

RESERVE_CHECK = 0.5
# Issue 15: reserved instances started at once (of all functions together): one per core and one
# more. One at a time left a core idle: a start is the zygote's fork, the containment and the
# instance's specialisation (page faults of copy-on-write, imports), the daemon's part under a
# fifth of it. bench/density.py, 1,000 instances on the 2-core test host while another benchmark
# ran (median of 5-11 runs each): one at a time 20.3 s (best 13.3 s), 2 at once 13.9 s, 3 at once
# 10.2 s (best 9.6 s; the cores then 90-94 % busy, 55-60 % of it in the kernel), 4 at once 10.2 s,
# 6 at once 12.2 s: more cannot help once the cores are busy.
RESERVED_STARTS = len(os.sched_getaffinity(0)) + 1

log = logging.getLogger("fgd.reserved")


class Reserved:
    def __init__(self, invoker: Invoker) -> None:
        self._invoker = invoker
        self._changed = trio.Event()
        # Reserved starts under way, of all functions (RESERVED_STARTS).
        self._slots = trio.Semaphore(RESERVED_STARTS)
        # The qualifiers (fgd.versions.qualifier_key) whose upkeep runs; the rounds and changes so far.
        self._keeping: set[tuple] = set()
        self._rounds = 0
        self._changes = 0

    def changed(self) -> None:
        """The reserved counts or the functions changed: starts under way stop, a round looks again."""
        self._changes += 1
        self._changed.set()

    def count(self, record: FunctionRecord) -> int:
        qualifier = qualifier_key(record)
        return sum(
            1
            for i in self._invoker.instances.get(record.key, [])
            if i.reserved and i.qualifier == qualifier and i.revision == record.revision and i.state is not State.DEAD
        )

    async def run(self) -> None:
        """Start each function's reserved instances, replace those that die, retire the surplus."""
        keeping = True
        async with trio.open_nursery() as nursery:
            while True:
                if keeping:
                    # Reserved instances may exit on their own: look again every RESERVE_CHECK.
                    with trio.move_on_after(RESERVE_CHECK):
                        await self._changed.wait()
                else:
                    # None wanted and none kept: nothing to look at until the reserved counts change.
                    await self._changed.wait()
                self._changed = trio.Event()
                self._rounds += 1
                # latest, each published version, each alias (fgd.versions): each keeps its own.
                targets = reserved_targets(self._invoker._store)
                wanted = {qualifier_key(r) for r in targets}
                keeping = bool(targets) or any(i.reserved for v in self._invoker.instances.values() for i in v)
                for instances in list(self._invoker.instances.values()):
                    for instance in list(instances):
                        # The reserved instances of a version or alias that went, or of an alias that moved.
                        if instance.reserved and instance.qualifier not in wanted and instance.state is State.IDLE:
                            self._invoker._discard(instance.key, instance)
                # Each function's upkeep is a task of its own, their starts sharing the slots: one
                # whose starts hang (an initializer waiting for its timeout) holds up no round,
                # and the others start their instances meanwhile.
                for record in targets:
                    qualifier = qualifier_key(record)
                    if qualifier not in self._keeping:
                        self._keeping.add(qualifier)
                        nursery.start_soon(self._keep_safely, record, qualifier)

    async def _keep_safely(self, record: FunctionRecord, qualifier: tuple) -> None:
        began = self._rounds
        try:
            await self._keep(record)
        except Exception:
            # One function's trouble must not stop the others' reserved instances.
            log.exception("keeping the reserved instances of %s failed", record.func_name)
        finally:
            self._keeping.discard(qualifier)
            if self._rounds != began:
                # A round passed this function by while it started instances: look again now.
                self._changed.set()

    async def _keep(self, record: FunctionRecord) -> None:
        changes = self._changes
        qualifier = qualifier_key(record)
        reserved = [i for i in self._invoker.instances.get(record.key, []) if i.reserved and i.qualifier == qualifier]
        for instance in reserved:
            # Exited on its own, or started for a revision the function left while it started
            # (`Invoker.retire` saw it still starting, so not idle, and left it).
            if instance.state is State.IDLE and (instance.exited() or instance.revision != record.revision):
                self._invoker._discard(record.key, instance)
        live = [i for i in reserved if i.state is not State.DEAD and i.revision == record.revision]
        for instance in live[record.reserved :]:
            if instance.state is State.IDLE:
                self._invoker._discard(record.key, instance)
        missing = record.reserved - len(live)
        if missing <= 0:
            return
        # The first start alone: a function whose instances cannot start costs one failed start a
        # round (as when all started one at a time), not RESERVED_STARTS of them.
        async with self._slots:
            if not self._admit(record) or not await self._start(record):
                return
        await self._start_more(record, missing - 1, changes)

    async def _start_more(self, record: FunctionRecord, count: int, changes: int) -> None:
        """Start up to `count` more, RESERVED_STARTS at a time. None starts after one failed (those
        already under way finish) nor once the reserved counts changed: the next round starts
        what is then missing and retires the surplus."""
        failed = False

        async def start() -> None:
            nonlocal failed
            try:
                if not await self._start(record):
                    failed = True
            finally:
                self._slots.release()

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                # Admitted only once it has a slot: an admitted start counts against the function's
                # max instances and the memory budget, and requests wait for its spare slots.
                await self._slots.acquire()
                if failed or self._changes != changes or not self._admit(record):
                    self._slots.release()
                    break
                nursery.start_soon(start)

    def _admit(self, record: FunctionRecord) -> bool:
        """May one more start (the scheduler's max instances and memory budget)? Asked before each,
        so starts under way count; room it makes by evicting idle instances is taken now."""
        decision = self._invoker.scheduler.reserve(pool_key(record), self._invoker._quota(record))
        if isinstance(decision, Reject):
            log.warning("cannot keep reserved instances of %s: %s", record.func_name, decision.reason)
            return False
        for token in decision.evict:
            evicted = self._invoker._by_id.get(token)
            if evicted is not None:
                self._invoker._discard(evicted.key, evicted)
        return True

    async def _start(self, record: FunctionRecord) -> bool:
        """Start one admitted reserved instance; False if it could not start."""
        token = f"reserved-{uuid.uuid4().hex[:8]}"
        try:
            instance, failure = await self._invoker._cold_start(record, token)
        except (Unavailable, NotFound) as exc:
            # The node cannot start one now, or the function (or a dependency of it) went while
            # this start waited for its slot: the next round knows.
            self._invoker._start_failed(pool_key(record))
            log.warning("cannot start a reserved instance of %s: %s", record.func_name, exc.message)
            return False
        except BaseException:
            # Shutdown mid-start or anything unexpected (the cold start discarded its instance): the
            # scheduler stops counting this start too, or it would hold a place under max instances.
            self._invoker._start_failed(pool_key(record))
            raise
        lines = instance.end(token)
        if failure is not None:
            self._invoker._start_failed(pool_key(record))
            self._invoker._logs.add(record.key, lines)
            self._invoker._discard(record.key, instance)
            # The reason is the function's own text: quoted (no newline of its own) and short in our log.
            reason = failure.error.error_message[:500]
            log.warning("reserved instance of %s failed to start: %r", record.func_name, reason)
            return False
        self._invoker._logs.add(record.key, lines)
        current = exact(self._invoker._store, record)
        if current is None or current.revision != instance.revision:
            # The function changed (or went) while this instance started: it runs code the function
            # no longer has, so no request may be handed it. The requests that waited for its slot
            # ask again; the next round starts one of the new revision.
            self._invoker._start_failed(pool_key(record))
            self._invoker._discard(record.key, instance)
            return False
        instance.reserved = True
        self._invoker.reserved_live[record.key] += 1
        self._invoker._by_id[instance.id] = instance
        instance.state = State.IDLE
        handed = self._invoker.scheduler.started(pool_key(record), instance.id, reserved=True, for_request=False)
        if handed:
            instance.state = State.BUSY
            self._invoker._wake(handed, instance)
        return True
