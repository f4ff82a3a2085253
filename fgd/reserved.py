"""Reserved instances: kept started and warm per function (latest, each version, each alias), never reaped.

The upkeep starts what is missing, replaces instances that died and retires the surplus, whenever
the reserved counts change (`changed`) and every RESERVE_CHECK seconds (an instance may exit on its own).
It starts instances through the invoker's cold start and hands them to its scheduler.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

import trio

from fgd.errors import Unavailable
from fgd.instance import State
from fgd.invocation import pool_key
from fgd.model import FunctionRecord
from fgd.scheduler import Reject
from fgd.versions import qualifier_key, reserved_targets

if TYPE_CHECKING:
    from fgd.invoker import Invoker

RESERVE_CHECK = 0.5

log = logging.getLogger("fgd.reserved")


class Reserved:
    def __init__(self, invoker: Invoker) -> None:
        self._invoker = invoker
        self._changed = trio.Event()

    def changed(self) -> None:
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
        while True:
            if keeping:
                # Reserved instances may exit on their own: look again every RESERVE_CHECK.
                with trio.move_on_after(RESERVE_CHECK):
                    await self._changed.wait()
            else:
                # None wanted and none kept: nothing to look at until the reserved counts change.
                await self._changed.wait()
            self._changed = trio.Event()
            # latest, each published version, each alias (fgd.versions): each keeps its own.
            targets = reserved_targets(self._invoker._store)
            wanted = {qualifier_key(r) for r in targets}
            keeping = bool(targets) or any(i.reserved for v in self._invoker.instances.values() for i in v)
            for instances in list(self._invoker.instances.values()):
                for instance in list(instances):
                    # The reserved instances of a version or alias that went, or of an alias that moved.
                    if instance.reserved and instance.qualifier not in wanted and instance.state is State.IDLE:
                        self._invoker._discard(instance.key, instance)
            for record in targets:
                try:
                    await self._keep(record)
                except Exception:
                    # One function's trouble must not stop the others' reserved instances.
                    log.exception("keeping the reserved instances of %s failed", record.func_name)

    async def _keep(self, record: FunctionRecord) -> None:
        qualifier = qualifier_key(record)
        reserved = [i for i in self._invoker.instances.get(record.key, []) if i.reserved and i.qualifier == qualifier]
        for instance in reserved:
            if instance.state is State.IDLE and instance.exited():
                self._invoker._discard(record.key, instance)
        live = [i for i in reserved if i.state is not State.DEAD and i.revision == record.revision]
        for instance in live[record.reserved :]:
            if instance.state is State.IDLE:
                self._invoker._discard(record.key, instance)
        for _ in range(record.reserved - len(live)):
            if not await self._start(record):
                break

    async def _start(self, record: FunctionRecord) -> bool:
        decision = self._invoker.scheduler.reserve(pool_key(record), self._invoker._quota(record))
        if isinstance(decision, Reject):
            log.warning("cannot keep reserved instances of %s: %s", record.func_name, decision.reason)
            return False
        for token in decision.evict:
            evicted = self._invoker._by_id.get(token)
            if evicted is not None:
                self._invoker._discard(evicted.key, evicted)
        token = f"reserved-{uuid.uuid4().hex[:8]}"
        try:
            instance, failure = await self._invoker._cold_start(record, token)
        except Unavailable as exc:
            self._invoker._start_failed(pool_key(record))
            log.warning("cannot start a reserved instance of %s: %s", record.func_name, exc.message)
            return False
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
        instance.reserved = True
        self._invoker.reserved_live[record.key] += 1
        self._invoker._by_id[instance.id] = instance
        instance.state = State.IDLE
        handed = self._invoker.scheduler.started(pool_key(record), instance.id, reserved=True, for_request=False)
        if handed:
            instance.state = State.BUSY
            self._invoker._wake(handed, instance)
        return True
