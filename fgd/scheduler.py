"""Which instance serves a request: a pure state machine with an injected clock.

The I/O side (`fgd.invoker`) asks and obeys; nothing here sleeps, forks or
reads a socket, so the tests drive thousands of random sequences through it
in milliseconds and check the invariants after every step:

- an instance never has more busy slots than its capacity (`concurrent_num`);
- a function never has more instances (running or starting) than its maximum;
- no request waits in a queue while a slot it could use is free;
- requests arriving while instances start wait for those instances' spare slots (within the
  queue's length) rather than starting one instance each; given back by a failed start, they
  do not ride again (`acquire(ride=False)`);
- the memory of live and starting instances never exceeds the node's budget;
- one function's instances never take more than its share of that budget (beyond its first instance).

Requests and instances are named by opaque hashable tokens the caller picks.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

Key = tuple[str, str, str]


@dataclass(frozen=True)
class Quota:
    """What the function's config lets the scheduler give it (not the cgroup limits of an instance,
    `sandbox.cgroups.Limits`): -1 instances means unlimited."""

    max_instances: int
    slots: int
    memory_mb: int
    queue_length: int


@dataclass(frozen=True)
class Assign:
    """Run the request on this instance (a slot is now taken for it)."""

    instance: Hashable


@dataclass(frozen=True)
class Start:
    """Start a new instance for this request; first evict these idle instances to make room."""

    evict: tuple[Hashable, ...] = ()


@dataclass(frozen=True)
class Wait:
    """Queued: the request is handed a slot by a later `release` or `started`."""


@dataclass(frozen=True)
class Reject:
    """Refuse: `kind` is "disabled", "throttled" (429), "capacity" (503) or "oversized" (400: the
    instance needs more memory than the node's whole budget, so waiting cannot help)."""

    kind: str
    reason: str


Decision = Assign | Start | Wait | Reject


@dataclass
class _Instance:
    key: Key
    capacity: int
    memory_mb: int
    busy: int = 0
    last_used: float = 0.0
    reserved: bool = False
    # Bumped on every change: an index entry with an older version is stale.
    version: int = 0


@dataclass
class _Function:
    limits: Quota
    instances: dict[Hashable, _Instance] = field(default_factory=dict)
    starting: int = 0
    queue: deque[Hashable] = field(default_factory=deque)
    # Issue 15: the index of instances with a free slot, best first (reserved, then busy, then most
    # recently used): a heap of (rank..., seq, token, version) whose stale entries (the instance
    # changed or went since) are dropped when they surface, and all at once when they outnumber
    # the instances. A decision is O(log n), not a scan of the function's instances.
    free: list[tuple] = field(default_factory=list)
    pushes: int = 0

    def index(self, token: Hashable, record: _Instance) -> None:
        """`record` changed: its old entry is stale; a new one if it has a free slot."""
        record.version += 1
        if record.busy >= record.capacity:
            return
        self.pushes += 1
        entry = (not record.reserved, record.busy == 0, -record.last_used, self.pushes, token, record.version)
        heapq.heappush(self.free, entry)
        if len(self.free) > 2 * len(self.instances) + 16:
            self.free = [e for e in self.free if self._current(e)]
            heapq.heapify(self.free)

    def _current(self, entry: tuple) -> bool:
        record = self.instances.get(entry[4])
        return record is not None and record.version == entry[5] and record.busy < record.capacity

    def best_free(self) -> tuple[Hashable, _Instance] | None:
        """The instance a request should take, or None if none has a free slot."""
        while self.free:
            entry = self.free[0]
            if self._current(entry):
                return entry[4], self.instances[entry[4]]
            heapq.heappop(self.free)
        return None


class Scheduler:
    def __init__(self, clock: Callable[[], float], memory_budget_mb: int, function_share: float = 1.0) -> None:
        self._clock = clock
        self.memory_budget_mb = memory_budget_mb
        # No function may hold more than this much of the budget, so one cannot starve the rest.
        self.function_cap_mb = int(memory_budget_mb * function_share)
        self._functions: dict[Key, _Function] = {}
        self._starting_memory = 0
        # The memory of live instances, kept as they come and go (not summed per decision).
        self._live_memory = 0
        self._owner: dict[Hashable, Key] = {}

    # Queries ------------------------------------------------------------------

    @property
    def memory_used_mb(self) -> int:
        return self._live_memory + self._starting_memory

    def instances(self, key: Key) -> int:
        function = self._functions.get(key)
        return len(function.instances) if function else 0

    def queued(self, key: Key) -> int:
        function = self._functions.get(key)
        return len(function.queue) if function else 0

    def busy_slots(self, instance: Hashable) -> int:
        key = self._owner.get(instance)
        return self._functions[key].instances[instance].busy if key else 0

    # Decisions ----------------------------------------------------------------

    def acquire(self, key: Key, limits: Quota, request: Hashable, *, ride: bool = True) -> Decision:
        """`ride=False`: the request was given back by a failed start (`start_failed`) and asks
        again; it may not ride on a start once more, but starts one itself (or queues as usual).
        Riding again, the riders of an initializer that hangs until its timeout went one start
        at a time, each start taking one of them, until max_wait told the rest (429) that the
        function's instances "stayed busy" (the attacker pass found it)."""
        function = self._functions.setdefault(key, _Function(limits))
        function.limits = limits
        if limits.max_instances == 0:
            return Reject("disabled", "the function is disabled: its maximum number of instances is 0")
        if limits.memory_mb > self.memory_budget_mb:
            return self._oversized(limits)
        free = function.best_free()
        if free is not None:
            # Reserved instances first, then most recently used, so on-demand ones can go idle and be reaped.
            token, instance = free
            instance.busy += 1
            instance.last_used = self._clock()
            function.index(token, instance)
            return Assign(token)
        if ride and len(function.queue) < min(function.starting * (limits.slots - 1), limits.queue_length):
            # The instances starting now take queued requests into their spare slots as they join
            # (`started`): a burst of requests rides on them rather than starting an instance
            # each (64 requests at once for 16 slots an instance: 4 starts, not 64).
            function.queue.append(request)
            return Wait()
        total = len(function.instances) + function.starting
        if (limits.max_instances < 0 or total < limits.max_instances) and self._within_share(total, limits):
            evict = self._make_room(limits.memory_mb)
            if evict is not None:
                function.starting += 1
                self._starting_memory += limits.memory_mb
                return Start(evict)
            if not function.instances and not function.starting:
                return Reject(
                    "capacity",
                    f"the node's memory budget ({self.memory_budget_mb} MB) is taken by busy instances; "
                    "try again shortly",
                )
        if len(function.queue) < limits.queue_length:
            function.queue.append(request)
            return Wait()
        if limits.max_instances > 0 and total >= limits.max_instances:
            return Reject(
                "throttled",
                f"all {limits.max_instances} instances of the function (strategy_config.concurrency) are busy "
                f"and its queue of {limits.queue_length} is full",
            )
        if not self._within_share(total, limits):
            return Reject(
                "throttled",
                f"the function's {total} busy instances hold its share of the node's memory "
                f"({self.function_cap_mb} MB of {self.memory_budget_mb} MB) and its queue of "
                f"{limits.queue_length} is full",
            )
        return Reject("capacity", f"the node's memory budget ({self.memory_budget_mb} MB) is full and its queue too")

    def reserve(self, key: Key, limits: Quota) -> Start | Reject:
        """May one more reserved instance start now (within max instances and the memory budget)?"""
        function = self._functions.setdefault(key, _Function(limits))
        function.limits = limits
        total = len(function.instances) + function.starting
        if limits.max_instances == 0 or (limits.max_instances > 0 and total >= limits.max_instances):
            return Reject("throttled", f"reserved instances are capped by max instances ({limits.max_instances})")
        if limits.memory_mb > self.memory_budget_mb:
            return self._oversized(limits)
        if not self._within_share(total, limits):
            return Reject(
                "throttled",
                f"reserved instances are capped by the function's share of memory ({self.function_cap_mb} MB)",
            )
        evict = self._make_room(limits.memory_mb)
        if evict is None:
            return Reject("capacity", f"the node's memory budget ({self.memory_budget_mb} MB) is full")
        function.starting += 1
        self._starting_memory += limits.memory_mb
        return Start(evict)

    def _oversized(self, limits: Quota) -> Reject:
        return Reject(
            "oversized",
            f"its instances need {limits.memory_mb} MB, more than the node's whole memory budget for instances "
            f"({self.memory_budget_mb} MB), so none can start here; use a smaller memory_size "
            "(or X-Cff-Instance-Memory)",
        )

    def _within_share(self, total: int, limits: Quota) -> bool:
        """May a function with `total` instances (running or starting) start one more? Its first always may."""
        return total == 0 or (total + 1) * limits.memory_mb <= self.function_cap_mb

    def _make_room(self, memory_mb: int) -> tuple[Hashable, ...] | None:
        """Idle instances (least recently used first) to evict so `memory_mb` fits; None if it cannot."""
        free = self.memory_budget_mb - self.memory_used_mb
        if free >= memory_mb:
            return ()
        idle = sorted(
            (i.last_used, token, i)
            for f in self._functions.values()
            for token, i in f.instances.items()
            if i.busy == 0 and not i.reserved
        )
        evict = []
        for _last, token, instance in idle:
            if free >= memory_mb:
                break
            evict.append(token)
            free += instance.memory_mb
        if free < memory_mb:
            return None
        for token in evict:
            self.gone(token)
        return tuple(evict)

    def started(self, key: Key, instance: Hashable, *, reserved: bool = False, for_request: bool = True) -> list:
        """A started instance joins; its first slot is the starter's. Returns queued requests it now serves."""
        function = self._functions[key]
        function.starting -= 1
        self._starting_memory -= function.limits.memory_mb
        record = _Instance(key, function.limits.slots, function.limits.memory_mb, reserved=reserved)
        record.busy = 1 if for_request else 0
        record.last_used = self._clock()
        function.instances[instance] = record
        self._owner[instance] = key
        self._live_memory += record.memory_mb
        return self._hand_out(function, instance)

    def start_failed(self, key: Key) -> list:
        """A start failed. Returns the queued requests that were to ride on it (beyond what the
        starts still under way will take): they must ask again, and may start an instance now."""
        function = self._functions[key]
        function.starting -= 1
        self._starting_memory -= function.limits.memory_mb
        riding = function.starting * (function.limits.slots - 1)
        retry = []
        while len(function.queue) > riding:
            retry.append(function.queue.pop())
        return retry

    def release(self, instance: Hashable) -> list:
        """A request finished on `instance`; returns the queued requests now given its slot."""
        key = self._owner.get(instance)
        if key is None:
            return []
        function = self._functions[key]
        record = function.instances[instance]
        record.busy -= 1
        record.last_used = self._clock()
        return self._hand_out(function, instance)

    def _hand_out(self, function: _Function, instance: Hashable) -> list:
        record = function.instances[instance]
        handed = []
        while function.queue and record.busy < record.capacity:
            handed.append(function.queue.popleft())
            record.busy += 1
        function.index(instance, record)
        return handed

    def cancel(self, key: Key, request: Hashable) -> bool:
        """A queued request gave up waiting; False if it was already handed a slot."""
        function = self._functions.get(key)
        if function is None or request not in function.queue:
            return False
        function.queue.remove(request)
        return True

    def gone(self, instance: Hashable) -> None:
        """The instance died or was retired; its slots are gone with it."""
        key = self._owner.pop(instance, None)
        if key is not None:
            record = self._functions[key].instances.pop(instance, None)
            if record is not None:
                self._live_memory -= record.memory_mb

    def set_busy(self, instance: Hashable) -> None:
        """Take every slot of an instance that must take no more work (it is being retired)."""
        key = self._owner.get(instance)
        if key is not None:
            function = self._functions[key]
            record = function.instances[instance]
            record.busy = max(record.busy, record.capacity)
            function.index(instance, record)

    def idle_since(self, before: float) -> list[Hashable]:
        """Idle on-demand instances last used before `before` (for the reaper)."""
        return [
            token
            for f in self._functions.values()
            for token, i in f.instances.items()
            if i.busy == 0 and not i.reserved and i.last_used < before
        ]

    def waiting_with_nothing_coming(self, key: Key) -> list:
        """Queued requests of a function that has no instance and none starting (they must retry)."""
        function = self._functions.get(key)
        if function is None or function.instances or function.starting:
            return []
        waiting = list(function.queue)
        function.queue.clear()
        return waiting
