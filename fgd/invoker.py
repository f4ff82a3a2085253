"""Running invocations: pick or start an instance, enforce the deadline, report.

Instances are kept per function; a warm idle instance of the function's
current revision is reused (most recently used first, so the others can age
out and be reaped), otherwise a cold start forks a new one from the runtime's
zygote and specialises it.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid

import msgspec
import psutil
import trio

from fgd import custom
from fgd.agencies import Agencies
from fgd.bundled import SANDBOX_ROOT as BUNDLED_SANDBOX_ROOT
from fgd.codestore import CodeStore
from fgd.config import Config
from fgd.dependencies import Dependencies
from fgd.errors import InvalidParameter, NotFound, Throttled, Unavailable
from fgd.instance import Instance, InstanceGone, LogLimits, State
from fgd.logs import LogSink, summary_line
from fgd.model import MAX_RESPONSE_BYTES, DependencyVersion, FunctionRecord, cpu_millicores
from fgd.network import Network, NetworkError
from fgd.nodejs import NodeZygote, launch_policy
from fgd.sandboxing import CODE_DIR, DEPENDENCY_DIR, WORKDIR, Sandbox
from fgd.scheduler import Assign, Limits, Reject, Scheduler, Start
from fgd.store import LogLine, Store
from fgd.versions import exact, qualifier_key, reserved_targets
from fgd.zygote import Zygote, Zygotes, ZygoteUnavailable
from runtimes import protocol
from runtimes.protocol import FunctionError
from sandbox.cgroups import memory_limit as cgroup_memory_limit
from sandbox.policy import EnterPolicy

# An instance OOM-killed while using less than this share of its own limit was killed because
# the node (the daemon's own cgroup) ran out, not for its own use.
NODE_OOM_SHARE = 0.9
REAP_INTERVAL = 1.0
RESERVE_CHECK = 0.5
# Seconds shutdown waits for killed instances to leave their cgroups, so none is left behind.
SHUTDOWN_RELEASE_WAIT = 2.0

log = logging.getLogger("fgd.invoker")


class Outcome(msgspec.Struct, kw_only=True):
    """What one invocation produced, for the HTTP layer and the logs."""

    request_id: str
    body: bytes | None = None
    error: FunctionError | None = None
    duration_ms: float = 0.0
    init_ms: float | None = None
    cold: bool = False
    max_memory_mb: float = 0.0
    memory_size: int = 0
    logs: list[LogLine] = []
    # The version that ran, and the alias it was reached through (fgd.versions).
    version: str = "latest"
    alias: str = ""
    # The interpreter that ran it ({"path", "version"}; issue 12), for the invocation summary.
    runtime_interpreter: dict | None = None
    # Issue 13: an HTTP function's answer as its server sent it (status, headers, body), for a
    # gateway route; `body` holds its APIG response for everyone else (fgd.custom).
    http_response: tuple[int, list[tuple[str, str]], bytes] | None = None


def check_event(event: bytes) -> bytes:
    """The event as the function will get it: a JSON document (an empty body is `{}`)."""
    try:
        # Checked, not built: decoding to Raw checks the syntax (and nesting) without making
        # Python objects of the document, about 6 times faster; it does not look inside
        # strings, so UTF-8 is checked apart (JSON text is UTF-8 as a whole).
        msgspec.json.decode(event or b"{}", type=msgspec.Raw)
        if not event.isascii():
            event.decode()
    except (msgspec.DecodeError, UnicodeDecodeError):
        # msgspec reports invalid UTF-8 inside a string as UnicodeDecodeError, not DecodeError.
        raise InvalidParameter("the request body must be a JSON document (the function's event)") from None
    except RecursionError:
        raise InvalidParameter("the event is JSON nested too deeply") from None
    return event or b"{}"


def pool_key(record: FunctionRecord) -> tuple:
    """Instances are interchangeable only within one function, version and alias (never across
    versions: fgd.versions) and one memory size (dynamic memory)."""
    return (*qualifier_key(record), record.settings.memory_size)


def new_request_id() -> str:
    return str(uuid.uuid4())


def function_environment(record: FunctionRecord, code_dir: str) -> dict[str, str]:
    settings = record.settings
    user_data = dict(settings.user_data)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        **user_data,
        **settings.encrypted_user_data,
        "RUNTIME_PROJECT_ID": record.project_id,
        "RUNTIME_FUNC_NAME": record.func_name,
        "RUNTIME_FUNC_VERSION": record.version,
        "RUNTIME_ALIAS": record.alias,
        "RUNTIME_PACKAGE": record.package,
        "RUNTIME_HANDLER": settings.handler,
        "RUNTIME_TIMEOUT": str(settings.timeout),
        "RUNTIME_USERDATA": json.dumps(user_data),
        "RUNTIME_CPU": str(cpu_millicores(settings.memory_size)),
        "RUNTIME_MEMORY": str(settings.memory_size),
        "RUNTIME_MAX_RESP_BODY_SIZE": str(MAX_RESPONSE_BYTES),
        "RUNTIME_INITIALIZER_HANDLER": settings.initializer_handler,
        "RUNTIME_INITIALIZER_TIMEOUT": str(settings.initializer_timeout),
        "RUNTIME_ROOT": WORKDIR if code_dir == CODE_DIR else code_dir.rsplit("/", 1)[0],
        "RUNTIME_CODE_ROOT": code_dir,
        "RUNTIME_LOG_DIR": "/tmp",
        "TMPDIR": "/tmp",
    }


def specialize_frame(record: FunctionRecord, code_dir: str) -> protocol.Specialize:
    settings = record.settings
    identity = protocol.FunctionIdentity(
        project_id=record.project_id,
        package=record.package,
        func_name=record.func_name,
        version=record.version,
        alias=record.alias,
        memory_size=settings.memory_size,
        cpu=cpu_millicores(settings.memory_size),
        timeout=settings.timeout,
        user_data={**settings.user_data, **settings.encrypted_user_data},
    )
    return protocol.Specialize(
        code_dir=code_dir,
        handler=settings.handler,
        initializer=settings.initializer_handler,
        initializer_timeout=settings.initializer_timeout,
        environ=function_environment(record, code_dir),
        identity=identity,
        concurrency=settings.strategy_config.concurrent_num,
    )


class Invoker:
    def __init__(
        self,
        config: Config,
        zygotes: Zygotes,
        logs: LogSink,
        store: Store,
        code: CodeStore,
        sandbox: Sandbox | None,
        dependencies: Dependencies,
        agencies: Agencies | None = None,
    ) -> None:
        self._dependencies = dependencies
        # Issue 12: credential sets of the functions' agencies, and the bundled libraries'
        # root (host path; None when switched off or not built), set by the daemon.
        self.agencies = agencies or Agencies({})
        self.bundled_root: str | None = None
        self._config = config
        self.zygotes = zygotes
        self._logs = logs
        self._store = store
        self._code = code
        self.sandbox = sandbox
        self.instances: dict[tuple[str, str, str], list[Instance]] = {}
        # Per zygote (one per interpreter, started on first use): generic instances already
        # forked and contained, waiting for a function.
        self.pools: dict[str, list[Instance]] = {}
        self._pool_wanted: dict[str, trio.Event] = {}
        zygotes.on_start.append(self._zygote_started)
        self._releasing: list[Instance] = []
        self._nursery: trio.Nursery | None = None
        scheduling = config.scheduler
        # What the daemon may really use: the host's memory, or less if its cgroup says so.
        usable = min(psutil.virtual_memory().total, cgroup_memory_limit() or psutil.virtual_memory().total)
        budget = scheduling.memory_budget_mb or int(usable / 2**20 * scheduling.memory_budget_fraction)
        self.scheduler = Scheduler(time.monotonic, budget, scheduling.function_memory_share)
        self._by_id: dict[str, Instance] = {}
        # Issue 14: the instances' network (fgd.network), set by the daemon; None: loopback only.
        self.network: Network | None = None
        self._waiters: dict[str, _Waiter] = {}
        self._reserved_changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every instance's background task; reap idle ones. Kills all on exit."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for zygote in list(self.zygotes.running.values()):
                    self._zygote_started(zygote)
                nursery.start_soon(self._release_cgroups)
                nursery.start_soon(self._keep_reserved)
                task_status.started()
                while True:
                    await trio.sleep(REAP_INTERVAL)
                    self.reap_idle(time.monotonic() - self._config.instances.idle_keepalive)
        finally:
            self._nursery = None
            self.kill_all()
            # Give the killed processes a moment to exit so their cgroups can go too. The shield
            # is outside the deadline: inside it, the deadline could not end the wait.
            with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_RELEASE_WAIT):
                while self._releasing:
                    self._releasing = [i for i in self._releasing if not i.release()]
                    await trio.sleep(0.02)

    # The pre-warmed pool ------------------------------------------------------

    def _zygote_started(self, zygote: Zygote) -> None:
        """A zygote's first start: from now on keep a pool of its instances."""
        if zygote.runtime in self.pools or self._nursery is None:
            return
        self.pools[zygote.runtime] = []
        self._pool_wanted[zygote.runtime] = trio.Event()
        self._nursery.start_soon(self._fill_pool, zygote.runtime)

    async def _fill_pool(self, runtime: str) -> None:
        """Keep `sandbox.pool_size` contained generic instances ready for cold starts."""
        zygote = self.zygotes.running[runtime]
        pool = self.pools[runtime]
        failures = 0
        while True:
            # Instances of a zygote that died went with it.
            for instance in [i for i in pool if i.zygote_generation != zygote.generation or i.state is State.DEAD]:
                pool.remove(instance)
                self._retire_instance(instance)
            if len(pool) >= self._config.sandbox.pool_size:
                self._pool_wanted[runtime] = trio.Event()
                with trio.move_on_after(1.0):
                    await self._pool_wanted[runtime].wait()
                continue
            await zygote.ready.wait()
            try:
                instance = await self._new_instance(zygote)
            except (Unavailable, InstanceGone) as exc:
                failures += 1
                log.warning("cannot fill the %s pool: %s", runtime, getattr(exc, "message", exc))
                await trio.sleep(min(5.0, 0.1 * 2**failures))
                continue
            failures = 0
            instance.state = State.IDLE
            pool.append(instance)

    def _take_pooled(self, runtime: str) -> Instance | None:
        pool = self.pools.get(runtime, [])
        zygote = self.zygotes.running[runtime]
        while pool:
            instance = pool.pop(0)
            self._pool_wanted[runtime].set()
            if instance.state is State.IDLE and instance.zygote_generation == zygote.generation:
                return instance
            self._retire_instance(instance)
        return None

    async def _new_instance(self, zygote: Zygote) -> Instance:
        """Fork a generic instance and contain it (cgroup, namespaces, mounts)."""
        logs = self._config.logs
        instance = Instance(
            zygote, LogLimits(logs.max_lines_per_invocation, logs.max_bytes_per_invocation), self.sandbox
        )
        try:
            with trio.fail_after(self._config.instances.spawn_timeout):
                # A zygote being restarted is back within moments: wait for it rather than fail.
                await zygote.ready.wait()
                await instance.start()
                assert self._nursery is not None
                self._nursery.start_soon(instance.pump_output)
                await instance.contain()
                await self._attach_network(instance)
                if isinstance(zygote, NodeZygote):
                    # Issue 13 (nodejs): a Node pool member runs its node from the start, as its own uid.
                    await instance.launch(zygote.launch(launch_policy(self.sandbox, instance.id)))
        except BaseException as exc:
            # Whatever stopped it (a dead zygote, a deadline, shutdown mid-start), it leaves nothing behind.
            self._retire_instance(instance)
            if isinstance(exc, ZygoteUnavailable):
                raise Unavailable(f"cannot start an instance: {exc}") from None
            if isinstance(exc, trio.TooSlowError):
                raise Unavailable("cannot start an instance: the runtime did not answer in time") from None
            raise
        return instance

    def _retire_instance(self, instance: Instance) -> None:
        """Kill an instance and queue its cgroup for removal."""
        instance.close()
        self._releasing.append(instance)
        self._detach_network(instance)

    # Issue 14: the instance's interface (fgd.network) --------------------------------

    async def _attach_network(self, instance: Instance) -> None:
        """A pooled instance gets its veth now, off the request path (a `none` function's leaves it)."""
        network = self.network
        if network is None or not network.available or self.sandbox is None or not self.sandbox.protections.namespaces:
            return
        try:
            await trio.to_thread.run_sync(network.attach, instance.id, instance.pid)
        except NetworkError as exc:
            raise InstanceGone(str(exc)) from None

    async def _network_policy(self, record: FunctionRecord, instance: Instance, policy: EnterPolicy) -> EnterPolicy:
        network = self.network
        if network is None:
            return policy
        settings = record.settings
        lease = network.leases.get(instance.id)
        mode = network.mode_of(settings)
        rules = settings.network
        if rules is not None and (rules.allow or rules.bandwidth_kbps) and lease is not None and mode == "outbound":
            # Firewall elements of its own (a libnftables batch): in a worker thread.
            try:
                keep = await trio.to_thread.run_sync(network.specialize, lease, record.key, mode, rules)
            except NetworkError as exc:
                raise InstanceGone(str(exc)) from None
        else:
            keep = network.specialize(lease, record.key, mode, None)
        if lease is not None and not keep and self._nursery is not None:
            # The instance leaves its interface behind (sandbox.network): it goes in the background.
            self._nursery.start_soon(functools.partial(trio.to_thread.run_sync, network.drop_interface, lease))
        return network.enter_policy(policy, keep)

    def _detach_network(self, instance: Instance) -> None:
        network = self.network
        lease = network.leases.get(instance.id) if network is not None else None
        if lease is None:
            return
        assert network is not None
        if self._nursery is not None:
            self._nursery.start_soon(functools.partial(trio.to_thread.run_sync, network.release, lease))
        else:
            # Shutting down: Network.stop removes every interface at once after this.
            network.leases.pop(instance.id, None)

    async def _release_cgroups(self) -> None:
        while True:
            await trio.sleep(0.1)
            self._releasing = [i for i in self._releasing if not i.release()]

    # Instance bookkeeping --------------------------------------------------

    def reap_idle(self, idle_since: float) -> None:
        for token in self.scheduler.idle_since(idle_since):
            instance = self._by_id.get(token)
            if instance is not None:
                self._discard(instance.key, instance)

    # Reserved instances ----------------------------------------------------------

    def reserved_changed(self) -> None:
        self._reserved_changed.set()

    def reserved_count(self, record: FunctionRecord) -> int:
        qualifier = qualifier_key(record)
        return sum(
            1
            for i in self.instances.get(record.key, [])
            if i.reserved and i.qualifier == qualifier and i.revision == record.revision and i.state is not State.DEAD
        )

    def _exited(self, instance: Instance) -> bool:
        zygote = instance.zygote
        return instance.zygote_generation != zygote.generation or instance.pid in zygote.exit_codes

    def _dead(self, instance: Instance) -> bool:
        """Known to be unusable: killed, exited, or of a zygote that died (restarting or replaced)."""
        return instance.state is State.DEAD or not instance.zygote.ready.is_set() or self._exited(instance)

    async def _keep_reserved(self) -> None:
        """Start each function's reserved instances, replace those that die, retire the surplus."""
        while True:
            with trio.move_on_after(RESERVE_CHECK):
                await self._reserved_changed.wait()
            self._reserved_changed = trio.Event()
            # latest, each published version, each alias (fgd.versions): each keeps its own.
            targets = reserved_targets(self._store)
            wanted = {qualifier_key(r) for r in targets}
            for instances in list(self.instances.values()):
                for instance in list(instances):
                    # The reserved instances of a version or alias that went, or of an alias that moved.
                    if instance.reserved and instance.qualifier not in wanted and instance.state is State.IDLE:
                        self._discard(instance.key, instance)
            for record in targets:
                try:
                    await self._keep_reserved_of(record)
                except Exception:
                    # One function's trouble must not stop the others' reserved instances.
                    log.exception("keeping the reserved instances of %s failed", record.func_name)

    async def _keep_reserved_of(self, record: FunctionRecord) -> None:
        qualifier = qualifier_key(record)
        reserved = [i for i in self.instances.get(record.key, []) if i.reserved and i.qualifier == qualifier]
        for instance in reserved:
            if instance.state is State.IDLE and self._exited(instance):
                self._discard(record.key, instance)
        live = [i for i in reserved if i.state is not State.DEAD and i.revision == record.revision]
        for instance in live[record.reserved :]:
            if instance.state is State.IDLE:
                self._discard(record.key, instance)
        for _ in range(record.reserved - len(live)):
            if not await self._start_reserved(record):
                break

    async def _start_reserved(self, record: FunctionRecord) -> bool:
        decision = self.scheduler.reserve(pool_key(record), self._limits(record))
        if isinstance(decision, Reject):
            log.warning("cannot keep reserved instances of %s: %s", record.func_name, decision.reason)
            return False
        for token in decision.evict:
            evicted = self._by_id.get(token)
            if evicted is not None:
                self._discard(evicted.key, evicted)
        token = f"reserved-{uuid.uuid4().hex[:8]}"
        try:
            instance, failure = await self._cold_start(record, token)
        except Unavailable as exc:
            self.scheduler.start_failed(pool_key(record))
            log.warning("cannot start a reserved instance of %s: %s", record.func_name, exc.message)
            return False
        lines = instance.end(token)
        if failure is not None:
            self.scheduler.start_failed(pool_key(record))
            self._logs.add(record.key, lines)
            self._discard(record.key, instance)
            # The reason is the function's own text: quoted (no newline of its own) and short in our log.
            reason = failure.error.error_message[:500]
            log.warning("reserved instance of %s failed to start: %r", record.func_name, reason)
            return False
        self._logs.add(record.key, lines)
        instance.reserved = True
        self._by_id[instance.id] = instance
        instance.state = State.IDLE
        handed = self.scheduler.started(pool_key(record), instance.id, reserved=True, for_request=False)
        if handed:
            instance.state = State.BUSY
            self._wake(handed, instance)
        return True

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
        for pool in self.pools.values():
            for instance in pool:
                self._retire_instance(instance)
            pool.clear()

    def _discard(self, key: tuple[str, str, str], instance: Instance) -> None:
        self.scheduler.gone(instance.id)
        self._by_id.pop(instance.id, None)
        self._wake(self.scheduler.waiting_with_nothing_coming(instance.pool_key), None)
        self._retire_instance(instance)
        lines = instance.take_all_lines()
        if lines:
            self._logs.add(key, lines)
        instances = self.instances.get(key)
        if instances and instance in instances:
            instances.remove(instance)
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

    def _limits(self, record: FunctionRecord) -> Limits:
        return Limits(
            max_instances=record.effective_max_instances,
            slots=record.settings.strategy_config.concurrent_num,
            memory_mb=record.settings.memory_size,
            queue_length=self._config.scheduler.queue_length,
        )

    async def _acquire(self, record: FunctionRecord, request_id: str) -> Instance | None:
        """A warm instance with a slot taken for this request, or None: start one (the slot is its first)."""
        limits = self._limits(record)
        deadline = trio.current_time() + self._config.scheduler.max_wait
        while True:
            decision = self.scheduler.acquire(pool_key(record), limits, request_id)
            if isinstance(decision, Assign):
                instance = self._by_id[decision.instance]
                if self._dead(instance):
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
        try:
            return await self._run(record, event, request_id, instance)
        except BaseException:
            # Cancelled mid-request (client gone, shutdown): the instance's state is unknown; retire it.
            if instance is not None and instance.state is not State.DEAD:
                self._discard(record.key, instance)
            raise

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
                self.scheduler.start_failed(pool_key(record))
                self._wake(self.scheduler.waiting_with_nothing_coming(pool_key(record)), None)
                raise
            if failure is not None:
                self.scheduler.start_failed(pool_key(record))
                self._wake(self.scheduler.waiting_with_nothing_coming(pool_key(record)), None)
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
        with trio.move_on_at(started + settings.timeout) as scope:
            try:
                credentials = self._renewed_credentials(record, instance)
                await instance.send(
                    protocol.Invoke(request_id, event, time.time() + settings.timeout, credentials=credentials)
                )
                result = await instance.result(request_id)
                assert isinstance(result, protocol.Result)
                outcome.body, outcome.error = checked_answer(result)
                if result.http_status and outcome.error is None:
                    raw = outcome.body or b""
                    outcome.http_response = (result.http_status, list(result.http_headers), raw)
                    outcome.body = custom.apig_answer(result.http_status, list(result.http_headers), raw)
                if result.fatal:
                    # Issue 13: its bootstrap exited; the instance is not reused (an OOM kill says so).
                    healthy = False
                    if instance.oom_killed():
                        outcome.error = self._gone_error(instance, InstanceGone(""), settings.memory_size)
                outcome.max_memory_mb = instance.memory_peak_mb() or max(result.max_rss_kb, 0) / 1024
            except InstanceGone as gone:
                healthy = False
                outcome.error = self._gone_error(instance, gone, settings.memory_size)
        if scope.cancelled_caught:
            healthy = False
            # The whole instance goes: requests sharing it learn why.
            instance.kill_reason = f"the instance was recycled because request {request_id} on it timed out"
            outcome.error = FunctionError(
                "Runtime.Timeout", f"the function did not finish within its timeout of {settings.timeout} s"
            )
        if outcome.error is not None and not outcome.max_memory_mb:
            # Out of memory, crashed or timed out: what it used still counts (read before the kill).
            outcome.max_memory_mb = instance.memory_peak_mb() or 0.0
        outcome.duration_ms = (trio.current_time() - started) * 1000
        self._finish(record, instance, outcome, healthy=healthy)
        return outcome

    @staticmethod
    def _gone_error(instance: Instance, gone: InstanceGone, memory_size: int) -> FunctionError:
        if instance.oom_killed():
            peak = instance.memory_peak_mb()
            if peak is not None and peak < memory_size * NODE_OOM_SHARE:
                # Killed below its own limit: the memory that ran out was the node's (the daemon's cgroup).
                return FunctionError(
                    "Runtime.OutOfMemory",
                    f"the node ran out of memory while the function ran (it used {peak:.0f} MB of its "
                    f"{memory_size} MB): the instance was killed; try again later",
                )
            return FunctionError(
                "Runtime.OutOfMemory", f"the function ran out of memory: it used more than its {memory_size} MB"
            )
        return FunctionError("Runtime.ExitError", gone.message)

    async def _cold_start(self, record: FunctionRecord, request_id: str) -> tuple[Instance, ColdStartFailure | None]:
        if exact(self._store, record) is None:
            # Deleted (or this version of it) while this request waited in its queue: nothing of it may start again.
            raise NotFound(f"function {record.package}:{record.func_name} (version {record.version}) was deleted")
        # Resolved before an instance is taken, so a dependency that went away leaks nothing.
        deps = self._dependencies.resolve(record.project_id, record.runtime, record.settings.depend_version_list)
        started = trio.current_time()
        # The interpreter's zygote, started now if this is its first cold start.
        # (Issue 13: a Node.js function's pool is that of its memory size, which sizes V8's heap.)
        zygote = await self.zygotes.get(record.runtime, memory_size=record.settings.memory_size)
        instance = self._take_pooled(zygote.runtime)
        if instance is None:
            try:
                instance = await self._new_instance(zygote)
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
            with trio.move_on_at(started + limit) as scope:
                try:
                    if self.sandbox is not None:
                        instance.set_limits(self.sandbox.limits(record))
                    instance.credentials_token = self._credentials_token(record)
                    specialize = self._specialize_frame(record, deps, instance.id)
                    if specialize.sandbox is not None:
                        policy = await self._network_policy(record, instance, specialize.sandbox)
                        specialize = msgspec.structs.replace(specialize, sandbox=policy)
                    # The initializer runs under the id of the start it belongs to (issue 12).
                    await instance.send(msgspec.structs.replace(specialize, initializer_request_id=request_id))
                    frame = await instance.receive()
                    if isinstance(frame, protocol.InitError):
                        failure = clean_error(frame.error)
                    elif not isinstance(frame, protocol.Ready):
                        failure = FunctionError("Runtime.InitError", f"unexpected {type(frame).__name__} during start")
                except InstanceGone as gone:
                    failure = self._gone_error(instance, gone, settings.memory_size)
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

    def _specialize_frame(
        self, record: FunctionRecord, deps: list[DependencyVersion], owner: str = ""
    ) -> protocol.Specialize:
        tree = self._code.tree_path(record.code.sha256)
        trees = [(f"{DEPENDENCY_DIR}/{d.name}/{d.version}", self._code.tree_path(d.code.sha256)) for d in deps]
        # Every other protection holds without mounts: the policy always goes (uid, seccomp...).
        # Issue 13: an http function's server listens (seccomp profile "http"); fgd.custom.
        profile = custom.seccomp_profile(record.runtime)
        policy = None if self.sandbox is None else self.sandbox.enter_policy(record, tree, trees, owner, profile)
        if self.sandbox is None or not (self.sandbox.protections.mounts and self.sandbox.protections.namespaces):
            frame = specialize_frame(record, str(tree))
            frame = msgspec.structs.replace(
                frame, dependency_dirs=[str(t) for _, t in trees], sandbox=policy, bundled_dir=self.bundled_root or ""
            )
        else:
            frame = specialize_frame(record, CODE_DIR)
            # The sandbox binds the bundled root at the same place for every instance (fgd.sandboxing).
            bundled = BUNDLED_SANDBOX_ROOT if self.bundled_root else ""
            frame = msgspec.structs.replace(
                frame, dependency_dirs=[inside for inside, _ in trees], sandbox=policy, bundled_dir=bundled
            )
        # Issue 13: what the instance becomes ("python", or the agent of a Custom/http function).
        frame = msgspec.structs.replace(frame, mode=custom.mode_of(record.runtime), region=self._config.server.region)
        return self._with_credentials(record, frame)

    # Agencies (issue 12) --------------------------------------------------------

    def _credentials_token(self, record: FunctionRecord) -> tuple[str, int]:
        return self.agencies.credentials(record.settings.xrole, record.settings.app_xrole, record.project_id)[1]

    def _with_credentials(self, record: FunctionRecord, frame: protocol.Specialize) -> protocol.Specialize:
        """The function's agency credentials go in the frame, only to its own instances."""
        settings = record.settings
        credentials, token = self.agencies.credentials(settings.xrole, settings.app_xrole, record.project_id)
        if not token[0]:
            return frame
        identity = msgspec.structs.replace(frame.identity, credentials=credentials.as_frame())
        return msgspec.structs.replace(frame, identity=identity)

    def _renewed_credentials(self, record: FunctionRecord, instance: Instance) -> dict[str, str] | None:
        """New values of the agency's credentials (its file changed) for a warm instance, else None."""
        settings = record.settings
        credentials, token = self.agencies.credentials(settings.xrole, settings.app_xrole, record.project_id)
        if token == instance.credentials_token:
            return None
        instance.credentials_token = token
        return credentials.as_frame()

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


def checked_answer(result: protocol.Result) -> tuple[bytes | None, FunctionError | None]:
    """A Result frame's body and error as the daemon passes them on: within the limits, clean text."""
    if result.error is not None:
        return None, clean_error(result.error)
    if result.body is not None and len(result.body) > MAX_RESPONSE_BYTES:
        return None, FunctionError(
            "Runtime.ResponseTooLarge",
            f"the response is {len(result.body):,} bytes; the limit is {MAX_RESPONSE_BYTES:,}",
        )
    return result.body, None


def clean_error(error: FunctionError) -> FunctionError:
    """An error report from user code, bounded, with a type name fit for a header."""
    error_type = "".join(c for c in error.error_type if c.isprintable())[: protocol.MAX_ERROR_TYPE] or "Error"
    message = error.error_message
    if len(message) > protocol.MAX_ERROR_MESSAGE:
        message = message[: protocol.MAX_ERROR_MESSAGE] + " [... cut]"
    stack = [line[: protocol.MAX_LOG_LINE] for line in error.stack_trace[: protocol.MAX_STACK_LINES]]
    if (error_type, message, stack) == (error.error_type, error.error_message, error.stack_trace):
        return error
    return FunctionError(error_type, message, stack)


class _Waiter:
    """A queued request: woken with the instance whose slot it was handed, or None to ask again."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.instance: Instance | None = None


class ColdStartFailure(msgspec.Struct):
    error: FunctionError
    init_ms: float
