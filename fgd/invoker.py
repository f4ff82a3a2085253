"""Running invocations: pick or start an instance, enforce the deadline, report.

Instances are kept per function; a warm idle instance of the function's
current revision is reused (most recently used first, so the others can age
out and be reaped), otherwise a cold start forks a new one from the runtime's
zygote and specialises it.
"""

from __future__ import annotations

import collections
import functools
import logging
import time

import msgspec
import psutil
import trio

from fgd import custom
from fgd.agencies import Agencies
from fgd.codestore import CodeStore
from fgd.config import Config
from fgd.dependencies import Dependencies
from fgd.errors import InvalidParameter, NotFound, Throttled, Unavailable
from fgd.instance import Instance, InstanceGone, State
from fgd.invocation import (
    ColdStartFailure,
    Outcome,
    check_event,
    checked_answer,
    clean_error,
    gone_error,
    new_request_id,
    pool_key,
)
from fgd.logs import LogSink, summary_line
from fgd.model import FunctionRecord
from fgd.network import Network
from fgd.pool import Pool
from fgd.reserved import Reserved
from fgd.sandboxing import HostSandbox
from fgd.scheduler import Assign, Quota, Reject, Scheduler, Start
from fgd.specialize import Specializer
from fgd.store import LogLine, Store
from fgd.timeouts import Timeouts
from fgd.versions import exact, qualifier_key
from fgd.zygote import Zygotes
from runtimes import protocol
from runtimes.protocol import FunctionError
from sandbox.cgroups import memory_limit as cgroup_memory_limit

REAP_INTERVAL = 1.0

log = logging.getLogger("fgd.invoker")

# Imported from here by the HTTP layer, the dispatcher and the metrics (fgd.invocation holds them).
__all__ = ["Invoker", "Outcome", "check_event", "new_request_id"]


# The steps of specialisation the runtimes time and report in Ready.timings.
INSTANCE_STEPS = frozenset({"enter_sandbox", "environment", "load_handler", "initializer"})


class Invoker:
    def __init__(
        self,
        config: Config,
        zygotes: Zygotes,
        logs: LogSink,
        store: Store,
        code: CodeStore,
        sandbox: HostSandbox | None,
        dependencies: Dependencies,
        agencies: Agencies | None = None,
    ) -> None:
        self._dependencies = dependencies
        self.specializer = Specializer(config, code, sandbox, agencies or Agencies({}))
        self._config = config
        self.zygotes = zygotes
        self._logs = logs
        self._store = store
        self._code = code
        self.sandbox = sandbox
        self.instances: dict[tuple[str, str, str], list[Instance]] = {}
        # Per function: requests running (a slot taken, on a warm or starting instance) and live
        # reserved instances, kept as they change so the statistics' sample of every invocation
        # (fgd.metrics) does not walk the function's instances.
        self.running: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.reserved_live: collections.Counter[tuple[str, str, str]] = collections.Counter()
        # Generic instances forked and contained before a function needs them (fgd.pool).
        self.pool = Pool(config, zygotes, sandbox)
        self.reserved = Reserved(self)
        self._nursery: trio.Nursery | None = None
        scheduling = config.scheduler
        # What the daemon may really use: the host's memory, or less if its cgroup says so.
        usable = min(psutil.virtual_memory().total, cgroup_memory_limit() or psutil.virtual_memory().total)
        budget = scheduling.memory_budget_mb or int(usable / 2**20 * scheduling.memory_budget_fraction)
        self.scheduler = Scheduler(time.monotonic, budget, scheduling.function_memory_share)
        self._by_id: dict[str, Instance] = {}
        self._waiters: dict[str, _Waiter] = {}
        # Issue 15: the steps of the last successful cold start, in ms, as the daemon and the
        # instance saw them (served on /healthz for bench/cold_start.py).
        self.last_cold_start: dict[str, dict[str, float]] = {}
        # Issue 15: every invocation's timeout, kept by one task (fgd.timeouts).
        self.timeouts = Timeouts(self._timed_out)

    @property
    def network(self) -> Network | None:
        """Issue 14: the instances' network (fgd.network), set by the daemon; None: loopback only."""
        return self.pool.network

    @network.setter
    def network(self, network: Network | None) -> None:
        self.pool.network = network

    @property
    def agencies(self) -> Agencies:
        """Issue 12: credential sets of the functions' agencies."""
        return self.specializer.agencies

    @agencies.setter
    def agencies(self, agencies: Agencies) -> None:
        self.specializer.agencies = agencies

    @property
    def bundled_root(self) -> str | None:
        """The bundled libraries' root (host path; None when switched off or not built), set by the daemon."""
        return self.specializer.bundled_root

    @bundled_root.setter
    def bundled_root(self, root: str | None) -> None:
        self.specializer.bundled_root = root

    @property
    def pools(self) -> dict[str, list[Instance]]:
        return self.pool.pools

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every instance's background task; reap idle ones. Kills all on exit."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.pool.run(nursery)
                nursery.start_soon(self.reserved.run)
                nursery.start_soon(self.timeouts.run)
                task_status.started()
                while True:
                    await trio.sleep(REAP_INTERVAL)
                    self.reap_idle(time.monotonic() - self._config.instances.idle_keepalive)
        finally:
            self._nursery = None
            self.pool.stop()
            self.kill_all()
            await self.pool.drain()

    # Instance bookkeeping --------------------------------------------------

    def reap_idle(self, idle_since: float) -> None:
        for token in self.scheduler.idle_since(idle_since):
            instance = self._by_id.get(token)
            if instance is not None:
                self._discard(instance.key, instance)

    def reserved_changed(self) -> None:
        self.reserved.changed()

    def reserved_count(self, record: FunctionRecord) -> int:
        return self.reserved.count(record)

    def _late_lines(self, key: tuple[str, str, str], lines: list[LogLine]) -> None:
        """Output printed outside any running request: kept in the function's log, if it still exists."""
        if self._store.get(key) is not None:
            self._logs.add(key, lines)

    def stop(self, key: tuple[str, str, str], reason: str) -> None:
        """The function is gone: every instance goes now, and requests running on them end with `reason`."""
        self.reserved_changed()
        for instance in list(self.instances.get(key, [])):
            instance.kill_reason = reason
            if instance.state is State.IDLE:
                self._discard(key, instance)
            else:
                # Its requests see the instance close and finish it through the usual path.
                self.scheduler.set_busy(instance.id)
                instance.close()

    def retire(self, key: tuple[str, str, str], version: str | None = None) -> None:
        """The function (or one `version` of it) changed or was deleted: idle instances go now,
        busy ones after their request."""
        self.reserved_changed()
        for instance in list(self.instances.get(key, [])):
            if version is not None and instance.qualifier[3] != version:
                continue
            if instance.state is State.IDLE:
                self._discard(key, instance)
            else:
                self.scheduler.set_busy(instance.id)

    def stop_qualifier(self, key: tuple[str, str, str], version: str | None, alias: str | None) -> None:
        """A version (any alias's instances of it too) or an alias went or moved: its idle
        instances go now, busy ones after their request (fgd.versions)."""
        self.reserved_changed()
        for instance in list(self.instances.get(key, [])):
            _, _, _, its_version, its_alias = instance.qualifier
            if (version is not None and its_version == version) or (alias is not None and its_alias == alias):
                instance.retired = True
                if instance.state is State.IDLE:
                    self._discard(key, instance)
                else:
                    self.scheduler.set_busy(instance.id)

    def kill_all(self) -> None:
        for key, instances in list(self.instances.items()):
            for instance in list(instances):
                self._discard(key, instance)
        self.pool.retire_all()

    def _discard(self, key: tuple[str, str, str], instance: Instance) -> None:
        self.scheduler.gone(instance.id)
        self._by_id.pop(instance.id, None)
        self._wake(self.scheduler.waiting_with_nothing_coming(instance.pool_key), None)
        self.pool.retire(instance)
        lines = instance.take_all_lines()
        if lines:
            self._logs.add(key, lines)
        instances = self.instances.get(key)
        if instances and instance in instances:
            instances.remove(instance)
            if instance.reserved:
                self.reserved_live[key] -= 1
                if self.reserved_live[key] <= 0:
                    del self.reserved_live[key]
            if not instances:
                del self.instances[key]

    def queued(self) -> int:
        return len(self._waiters)

    def code_in_use(self) -> set[str]:
        """Packages (code and dependencies) mounted by a live instance, which must not be collected."""
        return {sha for instances in self.instances.values() for i in instances for sha in i.packages}

    def count(self, key: tuple[str, str, str] | None = None) -> int:
        if key is None:
            return sum(len(v) for v in self.instances.values())
        return len(self.instances.get(key, ()))

    # Scheduling ----------------------------------------------------------------

    def _quota(self, record: FunctionRecord) -> Quota:
        return Quota(
            max_instances=record.effective_max_instances,
            slots=record.settings.strategy_config.concurrent_num,
            memory_mb=record.settings.memory_size,
            queue_length=self._config.scheduler.queue_length,
        )

    async def _acquire(self, record: FunctionRecord, request_id: str) -> Instance | None:
        """A warm instance with a slot taken for this request, or None: start one (the slot is its first)."""
        limits = self._quota(record)
        deadline = trio.current_time() + self._config.scheduler.max_wait
        # Given back once (the start it waited for failed): it starts its own from then on.
        ride = True
        while True:
            decision = self.scheduler.acquire(pool_key(record), limits, request_id, ride=ride)
            if isinstance(decision, Assign):
                instance = self._by_id[decision.instance]
                if instance.unusable():
                    # Its zygote died and took it along (or it exited): drop it and ask again.
                    self._discard(instance.key, instance)
                    continue
                instance.state = State.BUSY
                return instance
            if isinstance(decision, Start):
                for token in decision.evict:
                    evicted = self._by_id.get(token)
                    if evicted is not None:
                        self._discard(evicted.key, evicted)
                return None
            if isinstance(decision, Reject):
                if decision.kind == "oversized":
                    # Not a busy node: no retry can succeed, so not a 503 (issue 10's fuzzer found it).
                    raise InvalidParameter(f"the node cannot run {record.func_name}: {decision.reason}")
                if decision.kind == "capacity":
                    raise Unavailable(f"the node cannot run {record.func_name} now: {decision.reason}")
                raise Throttled(f"function {record.func_name} is throttled: {decision.reason}")
            instance = await self._wait_for_slot(record, request_id, deadline)
            if instance is not None:
                return instance
            ride = False

    async def _wait_for_slot(self, record: FunctionRecord, request_id: str, deadline: float) -> Instance | None:
        """Queued: the instance we are handed, or None to ask again (what we waited for went away)."""
        waiter = self._waiters[request_id] = _Waiter()
        try:
            with trio.move_on_at(deadline):
                await waiter.event.wait()
        except BaseException:
            # Cancelled (the client went away, shutdown): give back what we were handed, or leave the queue.
            self._waiters.pop(request_id, None)
            if waiter.instance is not None:
                self._release(waiter.instance)
            elif not waiter.event.is_set():
                self.scheduler.cancel(pool_key(record), request_id)
            raise
        self._waiters.pop(request_id, None)
        if waiter.event.is_set():
            return waiter.instance
        self.scheduler.cancel(pool_key(record), request_id)
        raise Throttled(
            f"function {record.func_name} is throttled: waited {self._config.scheduler.max_wait:g} s and all its "
            f"instances (strategy_config.concurrency = {record.settings.strategy_config.concurrency}) stayed busy"
        )

    def _wake(self, tokens: list, instance: Instance | None) -> None:
        for token in tokens:
            waiter = self._waiters.get(token)
            if waiter is None:
                if instance is not None:
                    self._release(instance)  # its requester is gone: pass the slot on
                continue
            waiter.instance = instance
            waiter.event.set()

    def _start_failed(self, key: tuple) -> None:
        """A start failed: the requests queued for its slots ask again (fgd.scheduler)."""
        self._wake(self.scheduler.start_failed(key), None)
        self._wake(self.scheduler.waiting_with_nothing_coming(key), None)

    def _release(self, instance: Instance) -> None:
        handed = self.scheduler.release(instance.id)
        self._wake(handed, instance)
        if self.scheduler.busy_slots(instance.id):
            instance.state = State.BUSY
        else:
            instance.state = State.IDLE
            instance.last_used = time.monotonic()

    # Invocation ---------------------------------------------------------------

    async def invoke(
        self, record: FunctionRecord, event: bytes, request_id: str, memory_size: int | None = None
    ) -> Outcome:
        if memory_size is not None and memory_size != record.settings.memory_size:
            # Dynamic memory: this request runs on an instance of the size it asked for.
            record = msgspec.structs.replace(
                record, settings=msgspec.structs.replace(record.settings, memory_size=memory_size)
            )
        # A disabled function (max instances 0) is refused by the scheduler, like every other limit.
        check_event(event)
        instance = await self._acquire(record, request_id)
        key = record.key
        self.running[key] += 1
        try:
            return await self._run(record, event, request_id, instance)
        except BaseException:
            # Cancelled mid-request (client gone, shutdown): the instance's state is unknown; retire it.
            if instance is not None and instance.state is not State.DEAD:
                self._discard(key, instance)
            raise
        finally:
            self.running[key] -= 1
            if self.running[key] <= 0:
                del self.running[key]

    async def _run(self, record: FunctionRecord, event: bytes, request_id: str, instance: Instance | None) -> Outcome:
        settings = record.settings
        outcome = Outcome(
            request_id=request_id, memory_size=settings.memory_size, version=record.version, alias=record.alias
        )
        if instance is None:
            outcome.cold = True
            try:
                instance, failure = await self._cold_start(record, request_id)
            except BaseException:
                self._start_failed(pool_key(record))
                raise
            if failure is not None:
                self._start_failed(pool_key(record))
                outcome.error = failure.error
                outcome.init_ms = failure.init_ms
                self._finish(record, instance, outcome, healthy=False)
                return outcome
            self._by_id[instance.id] = instance
            self._wake(self.scheduler.started(pool_key(record), instance.id), instance)
            outcome.init_ms = instance.init_ms
        instance.begin(request_id)
        started = trio.current_time()
        healthy = True
        answered = False
        # The timeout: on an instance that serves one request at a time, one entry for the
        # daemon's timeout task (fgd.timeouts), which ends this request alone since nothing else
        # waits on the instance. With requests sharing the instance (or while that task does not
        # run: starting, stopping), a cancel scope: the others keep what they were sent.
        if self.timeouts.running and settings.strategy_config.concurrent_num == 1:
            deadline = self.timeouts.watch(started + settings.timeout, (instance, outcome))
            scope = _WATCHED
        else:
            deadline = None
            scope = trio.move_on_at(started + settings.timeout)
        try:
            with scope:
                try:
                    credentials = self.specializer.renewed_credentials(record, instance)
                    await instance.send(
                        protocol.Invoke(request_id, event, time.time() + settings.timeout, credentials=credentials)
                    )
                    result = await instance.result(request_id)
                    assert isinstance(result, protocol.Result)
                    answered = True
                    outcome.body, outcome.error = checked_answer(result)
                    if result.http_status and outcome.error is None:
                        raw = outcome.body or b""
                        outcome.http_response = (result.http_status, list(result.http_headers), raw)
                        outcome.body = custom.apig_answer(result.http_status, list(result.http_headers), raw)
                    if result.fatal:
                        # Issue 13: its bootstrap exited; the instance is not reused (an OOM kill says so).
                        healthy = False
                        if instance.oom_killed():
                            outcome.error = gone_error(instance, InstanceGone(""), settings.memory_size)
                    outcome.max_memory_mb = instance.memory_peak_mb() or max(result.max_rss_kb, 0) / 1024
                except InstanceGone as gone:
                    healthy = False
                    outcome.error = gone_error(instance, gone, settings.memory_size)
        finally:
            fired = deadline is not None and self.timeouts.finished(deadline)
        if fired:
            # Its instance was recycled at the deadline. An answer that had come in by then (the
            # deadline's task ran before this one) still stands, as with a cancel scope.
            healthy = False
        if (fired and not answered) or scope.cancelled_caught:
            healthy = False
            # The whole instance goes: requests sharing it learn why.
            instance.kill_reason = _timed_out_reason(request_id)
            outcome.error = FunctionError(
                "Runtime.Timeout", f"the function did not finish within its timeout of {settings.timeout} s"
            )
        if outcome.error is not None and not outcome.max_memory_mb:
            # Out of memory, crashed or timed out: what it used still counts (read before the kill).
            outcome.max_memory_mb = instance.memory_peak_mb() or 0.0
        outcome.duration_ms = (trio.current_time() - started) * 1000
        self._finish(record, instance, outcome, healthy=healthy)
        return outcome

    async def _cold_start(self, record: FunctionRecord, request_id: str) -> tuple[Instance, ColdStartFailure | None]:
        if exact(self._store, record) is None:
            # Deleted (or this version of it) while this request waited in its queue: nothing of it may start again.
            raise NotFound(f"function {record.package}:{record.func_name} (version {record.version}) was deleted")
        # Resolved before an instance is taken, so a dependency that went away leaks nothing.
        deps = self._dependencies.resolve(record.project_id, record.runtime, record.settings.depend_version_list)
        started = trio.current_time()
        laps = Laps(started)
        # The interpreter's zygote, started now if this is its first cold start.
        # (Issue 13: a Node.js function's pool is that of its memory size, which sizes V8's heap.)
        zygote = await self.zygotes.get(record.runtime, memory_size=record.settings.memory_size)
        laps.lap("zygote")
        # Pool members made from now on get this size's cgroup limits already (fgd.pool).
        self.pool.usual_memory[zygote.runtime] = record.settings.memory_size
        instance = self.pool.take(zygote.runtime)
        laps.lap("take_pooled")
        if instance is None:
            try:
                instance = await self.pool.new_instance(zygote, laps.lap)
            except InstanceGone as gone:
                raise Unavailable(f"cannot start an instance of {record.func_name}: {gone.message}") from None
        instance.revision = record.revision
        instance.key = record.key
        instance.qualifier = qualifier_key(record)
        instance.pool_key = pool_key(record)
        instance.on_late = functools.partial(self._late_lines, record.key)
        instance.begin(request_id)
        instance.packages = {record.code.sha256} | {d.code.sha256 for d in deps}
        settings = record.settings
        limit = settings.initializer_timeout if settings.initializer_handler else self._config.instances.spawn_timeout
        if custom.mode_of(record.runtime) != "python":
            # Issue 13: bootstrap's start (first GET of the runtime API, or its server accepting)
            # is the initializer of a Custom/http function.
            limit = settings.initializer_timeout
        self.instances.setdefault(record.key, []).append(instance)
        instance.state = State.BUSY
        failure: FunctionError | None = None
        try:
            # The limit is the function's: it runs from the specialisation, not from the start of
            # the zygote or the pool member this start may have waited for (bounded by
            # `spawn_timeout` each). The agent of a Custom or http function keeps the same count
            # to report a bootstrap's late start with its output, just before this deadline.
            with trio.move_on_after(limit) as scope:
                try:
                    if self.sandbox is not None:
                        # (No write at all when the pool member was made with this size's limits.)
                        instance.set_limits(self.sandbox.limits(record))
                        laps.lap("cgroup_limits")
                    instance.credentials_token = self.specializer.credentials_token(record)
                    specialize = self.specializer.frame(record, deps, instance.id)
                    laps.lap("specialize_frame")
                    if specialize.sandbox is not None:
                        policy = await self.pool.network_policy(record, instance, specialize.sandbox)
                        specialize = msgspec.structs.replace(specialize, sandbox=policy)
                        laps.lap("network")
                    # The initializer runs under the id of the start it belongs to (issue 12).
                    await instance.send(msgspec.structs.replace(specialize, initializer_request_id=request_id))
                    frame = await instance.receive()
                    laps.lap("specialize_in_instance")
                    if isinstance(frame, protocol.Ready):
                        # What the instance says is kept only as far as it names the steps the
                        # runtimes time (it comes from user code's process, and /healthz serves it).
                        timings = {k: v for k, v in frame.timings.items() if k in INSTANCE_STEPS}
                        self.last_cold_start = {"daemon": laps.steps, "instance": timings}
                    if isinstance(frame, protocol.InitError):
                        failure = clean_error(frame.error)
                    elif not isinstance(frame, protocol.Ready):
                        failure = FunctionError("Runtime.InitError", f"unexpected {type(frame).__name__} during start")
                except InstanceGone as gone:
                    failure = gone_error(instance, gone, settings.memory_size)
                    if failure.error_type == "Runtime.ExitError":
                        failure = FunctionError("Runtime.InitError", f"the instance failed to start: {gone.message}")
        except BaseException:
            # Cancelled from outside mid-start (shutdown, the caller went away) or anything
            # unexpected: the half-started instance goes. (Our own deadline is absorbed above.)
            self._discard(record.key, instance)
            raise
        init_ms = (trio.current_time() - started) * 1000
        if scope.cancelled_caught:
            what = f"initializer {settings.initializer_handler!r}" if settings.initializer_handler else "loading"
            failure = FunctionError("Runtime.InitError", f"{what} did not finish within {limit} s")
        instance.init_ms = init_ms
        if failure is not None:
            return instance, ColdStartFailure(failure, init_ms)
        return instance, None

    def _timed_out(self, subject: tuple[Instance, Outcome]) -> None:
        """An invocation's deadline passed (fgd.timeouts): its instance goes now, and the task
        waiting on it (the only one: an instance serving one request at a time) is woken to find
        it gone at once, not when its processes have died (one stuck in the kernel could take long)."""
        instance, outcome = subject
        # What it used still counts (read before the kill).
        outcome.max_memory_mb = instance.memory_peak_mb() or 0.0
        instance.kill_reason = _timed_out_reason(outcome.request_id)
        try:
            instance.kill()
        finally:
            instance.interrupt()  # whatever the kill did, the request ends now

    def _finish(self, record: FunctionRecord, instance: Instance, outcome: Outcome, *, healthy: bool) -> None:
        # Issue 13 (nodejs): a Node instance was run by its zygote's node.
        served_by = getattr(instance.zygote, "node", None) or instance.zygote.interpreter
        if served_by is not None:
            outcome.runtime_interpreter = served_by.describe()
        if not healthy:
            instance.kill()
        instance.collect_output()
        instance.add_line(
            "platform",
            summary_line(
                outcome.request_id,
                outcome.duration_ms,
                outcome.memory_size,
                outcome.max_memory_mb,
                outcome.init_ms,
                outcome.version,
                outcome.alias,
            ),
            outcome.request_id,
        )
        outcome.logs = instance.end(outcome.request_id)
        if self._store.get(record.key) is not None:
            # A function deleted while this request ran keeps no logs.
            self._logs.add(record.key, outcome.logs)
        # The version it ran (latest, or a published one: fgd.versions) as it is now.
        current = exact(self._store, record)
        if healthy and current is not None and instance.revision == current.revision and not instance.retired:
            self._release(instance)
        else:
            self._discard(record.key, instance)


def _timed_out_reason(request_id: str) -> str:
    return f"the instance was recycled because request {request_id} on it timed out"


class _Watched:
    """The scope of an invocation whose deadline the timeout task keeps: no cancel scope."""

    cancelled_caught = False

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc_info: object) -> None:
        pass


_WATCHED = _Watched()


class Laps:
    """Milliseconds of each step of a cold start, from the daemon's side."""

    def __init__(self, started: float) -> None:
        self._last = started
        self.steps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = trio.current_time()
        self.steps[name] = round((now - self._last) * 1000, 3)
        self._last = now


class _Waiter:
    """A queued request: woken with the instance whose slot it was handed, or None to ask again."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.instance: Instance | None = None
