"""Running invocations: pick or start an instance, enforce the deadline, report.

Instances are kept per function; a warm idle instance of the function's
current revision is reused (most recently used first, so the others can age
out and be reaped), otherwise a cold start forks a new one from the runtime's
zygote and specialises it.
"""

from __future__ import annotations

import json
import time
import uuid

import msgspec
import trio

from fgd.codestore import CodeStore
from fgd.config import Config
from fgd.errors import InvalidParameter, Throttled, Unavailable
from fgd.instance import Instance, InstanceGone, State
from fgd.logs import LogSink, summary_line
from fgd.model import MAX_RESPONSE_BYTES, FunctionRecord, cpu_millicores
from fgd.store import LogLine, Store
from fgd.zygote import Zygote, ZygoteUnavailable
from runtimes import protocol
from runtimes.protocol import FunctionError

REAP_INTERVAL = 1.0


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
        "RUNTIME_FUNC_VERSION": "latest",
        "RUNTIME_PACKAGE": record.package,
        "RUNTIME_HANDLER": settings.handler,
        "RUNTIME_TIMEOUT": str(settings.timeout),
        "RUNTIME_USERDATA": json.dumps(user_data),
        "RUNTIME_CPU": str(cpu_millicores(settings.memory_size)),
        "RUNTIME_MEMORY": str(settings.memory_size),
        "RUNTIME_MAX_RESP_BODY_SIZE": str(MAX_RESPONSE_BYTES),
        "RUNTIME_INITIALIZER_HANDLER": settings.initializer_handler,
        "RUNTIME_INITIALIZER_TIMEOUT": str(settings.initializer_timeout),
        "RUNTIME_ROOT": code_dir.rsplit("/", 1)[0],
        "RUNTIME_CODE_ROOT": code_dir,
        "RUNTIME_LOG_DIR": "/tmp",
    }


def specialize_frame(record: FunctionRecord, code_dir: str) -> protocol.Specialize:
    settings = record.settings
    identity = protocol.FunctionIdentity(
        project_id=record.project_id,
        package=record.package,
        func_name=record.func_name,
        version="latest",
        alias="",
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
    )


class Invoker:
    def __init__(
        self, config: Config, zygotes: dict[str, Zygote], logs: LogSink, store: Store, code: CodeStore
    ) -> None:
        self._config = config
        self.zygotes = zygotes
        self._logs = logs
        self._store = store
        self._code = code
        self.instances: dict[tuple[str, str, str], list[Instance]] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every instance's background task; reap idle ones. Kills all on exit."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    await trio.sleep(REAP_INTERVAL)
                    self.reap_idle(time.monotonic() - self._config.instances.idle_keepalive)
        finally:
            self._nursery = None
            self.kill_all()

    # Instance bookkeeping --------------------------------------------------

    def reap_idle(self, idle_since: float) -> None:
        for key, instances in list(self.instances.items()):
            for instance in list(instances):
                if instance.state is State.IDLE and instance.last_used < idle_since:
                    self._discard(key, instance)

    def retire(self, key: tuple[str, str, str]) -> None:
        """The function changed or was deleted: idle instances go now, busy ones after their request."""
        for instance in list(self.instances.get(key, [])):
            if instance.state is State.IDLE:
                self._discard(key, instance)

    def kill_all(self) -> None:
        for key, instances in list(self.instances.items()):
            for instance in list(instances):
                self._discard(key, instance)

    def _discard(self, key: tuple[str, str, str], instance: Instance) -> None:
        instance.close()
        lines = instance.take_lines()
        if lines:
            self._logs.add(key, lines)
        instances = self.instances.get(key)
        if instances and instance in instances:
            instances.remove(instance)
            if not instances:
                del self.instances[key]

    def count(self, key: tuple[str, str, str] | None = None) -> int:
        if key is None:
            return sum(len(v) for v in self.instances.values())
        return len(self.instances.get(key, ()))

    def _take_warm(self, record: FunctionRecord) -> Instance | None:
        best: Instance | None = None
        for instance in self.instances.get(record.key, ()):
            usable = instance.state is State.IDLE and instance.revision == record.revision
            if usable and (best is None or instance.last_used > best.last_used):
                best = instance
        if best is not None:
            best.state = State.BUSY
        return best

    # Invocation ---------------------------------------------------------------

    async def invoke(self, record: FunctionRecord, event: bytes, request_id: str) -> Outcome:
        settings = record.settings
        if settings.strategy_config.concurrency == 0:
            raise Throttled(
                f"function {record.func_name} is disabled: its strategy_config.concurrency (max instances) is 0"
            )
        try:
            msgspec.json.decode(event or b"{}")
        except msgspec.DecodeError:
            raise InvalidParameter("the request body must be a JSON document (the function's event)") from None
        outcome = Outcome(request_id=request_id, memory_size=settings.memory_size)
        instance = self._take_warm(record)
        if instance is None:
            outcome.cold = True
            instance, failure = await self._cold_start(record, request_id)
            if failure is not None:
                outcome.error = failure.error
                outcome.init_ms = failure.init_ms
                self._finish(record, instance, outcome, healthy=False)
                return outcome
            outcome.init_ms = instance.init_ms
        instance.request_id = request_id
        started = trio.current_time()
        healthy = True
        with trio.move_on_at(started + settings.timeout) as scope:
            try:
                await instance.send(protocol.Invoke(request_id, event, time.time() + settings.timeout))
                result = await instance.receive()
                if not isinstance(result, protocol.Result) or result.request_id != request_id:
                    raise InstanceGone(f"the instance answered with an unexpected {type(result).__name__} frame")
                outcome.body, outcome.error = result.body, result.error
                outcome.max_memory_mb = result.max_rss_kb / 1024
            except InstanceGone as gone:
                healthy = False
                outcome.error = FunctionError("Runtime.ExitError", gone.message)
        if scope.cancelled_caught:
            healthy = False
            outcome.error = FunctionError(
                "Runtime.Timeout", f"the function did not finish within its timeout of {settings.timeout} s"
            )
        outcome.duration_ms = (trio.current_time() - started) * 1000
        self._finish(record, instance, outcome, healthy=healthy)
        return outcome

    async def _cold_start(self, record: FunctionRecord, request_id: str) -> tuple[Instance, ColdStartFailure | None]:
        zygote = self.zygotes.get(record.runtime)
        if zygote is None:
            raise Unavailable(f"runtime {record.runtime} is not available on this node")
        instance = Instance(zygote, self._config.logs.max_lines_per_invocation)
        instance.request_id = request_id
        instance.revision = record.revision
        started = trio.current_time()
        settings = record.settings
        limit = settings.initializer_timeout if settings.initializer_handler else self._config.instances.spawn_timeout
        try:
            with trio.fail_after(self._config.instances.spawn_timeout):
                await instance.start()
        except (ZygoteUnavailable, trio.TooSlowError) as exc:
            raise Unavailable(f"cannot start an instance of {record.func_name}: {exc or 'zygote too slow'}") from None
        self.instances.setdefault(record.key, []).append(instance)
        instance.state = State.BUSY
        assert self._nursery is not None
        self._nursery.start_soon(instance.pump_output)
        failure: FunctionError | None = None
        with trio.move_on_at(started + limit) as scope:
            try:
                await instance.send(specialize_frame(record, str(self._code.tree_path(record.code.sha256))))
                frame = await instance.receive()
                if isinstance(frame, protocol.InitError):
                    failure = frame.error
                elif not isinstance(frame, protocol.Ready):
                    failure = FunctionError("Runtime.InitError", f"unexpected {type(frame).__name__} during start")
            except InstanceGone as gone:
                failure = FunctionError("Runtime.InitError", f"the instance failed to start: {gone.message}")
        init_ms = (trio.current_time() - started) * 1000
        if scope.cancelled_caught:
            what = f"initializer {settings.initializer_handler!r}" if settings.initializer_handler else "loading"
            failure = FunctionError("Runtime.InitError", f"{what} did not finish within {limit} s")
        instance.init_ms = init_ms
        if failure is not None:
            return instance, ColdStartFailure(failure, init_ms)
        return instance, None

    def _finish(self, record: FunctionRecord, instance: Instance, outcome: Outcome, *, healthy: bool) -> None:
        if not healthy:
            instance.kill()
        instance.collect_output()
        instance.add_line(
            "platform",
            summary_line(
                outcome.request_id, outcome.duration_ms, outcome.memory_size, outcome.max_memory_mb, outcome.init_ms
            ),
        )
        outcome.logs = instance.take_lines()
        instance.request_id = ""
        current = self._store.get(record.key)
        if current is not None:
            # A function deleted while this request ran keeps no logs.
            self._logs.add(record.key, outcome.logs)
        if healthy and current is not None and instance.revision == current.revision:
            instance.state = State.IDLE
            instance.last_used = time.monotonic()
        else:
            self._discard(record.key, instance)


class ColdStartFailure(msgspec.Struct):
    error: FunctionError
    init_ms: float
