"""Triggers: TIMER schedules that queue asynchronous invocations.

Each fire queues an asynchronous invocation (with the function's retry
policy) carrying FunctionGraph's timer event. Fires missed while the daemon
was down are not replayed: at start, and after every change, each timer's
next fire is computed from now.

The timer loop plans and fires one trigger at a time inside a boundary: a
stored trigger the loop cannot use (hand-edited, written by an older version)
is logged with its id and skipped until it changes; it never stops the other
timers or the daemon. Only a failure of the store itself propagates.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import trio

from fgd.asyncqueue import AsyncEvent
from fgd.errors import Conflict, InvalidParameter, NotFound
from fgd.invoker import new_request_id
from fgd.model import (
    ApigEventData,
    CreateTrigger,
    FunctionRecord,
    FunctionRef,
    TimerEventData,
    Trigger,
    UpdateTrigger,
    convert,
)
from fgd.schedules import Schedule, parse
from fgd.store import Store
from fgd.versions import lookup, route

log = logging.getLogger("fgd.triggers")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Triggers:
    def __init__(self, store: Store, notify, full=lambda: False) -> None:
        self._store = store
        self._notify = notify
        # Whether the async queue is at its max_queued: a fire then is skipped, not queued.
        self._full = full
        self._changed = trio.Event()
        self.drop_unusable()

    def list(self, record: FunctionRecord) -> list[Trigger]:
        """The triggers bound to the version or alias `record` was looked up through."""
        return [t for t in self.all_of(record) if t.qualifier == record.qualifier]

    def all_of(self, record: FunctionRecord) -> list[Trigger]:
        return sorted((t for t in self._store.triggers.values() if t.key == record.key), key=lambda t: t.created_time)

    def get(self, record: FunctionRecord, kind: str, trigger_id: str) -> Trigger:
        trigger = self._store.triggers.get(trigger_id)
        if trigger is None or trigger.key != record.key or trigger.trigger_type_code != kind:
            raise NotFound(f"no {kind} trigger {trigger_id} on function {record.func_name}")
        return trigger

    def _check(self, kind: str, event_data: dict, trigger_id: str = "") -> dict:
        if kind == "TIMER":
            data: TimerEventData = _event_data(event_data, TimerEventData)
            parse(data.schedule_type, data.schedule)
            return msgspec.to_builtins(data)
        if kind == "APIG":
            route: ApigEventData = _event_data(event_data, ApigEventData)
            if route.func_info is not None and route.func_info.invocation_type == "async":
                raise InvalidParameter(
                    "event_data.func_info.invocation_type async is not supported on this node: "
                    "the gateway invokes the function synchronously (use sync)"
                )
            for other in self._store.triggers.values():
                same = other.event_data.get("path") == route.path and other.trigger_id != trigger_id
                methods = {other.event_data.get("req_method"), route.req_method}
                if other.trigger_type_code == "APIG" and same and ("ANY" in methods or len(methods) == 1):
                    raise Conflict(
                        f"route {route.req_method} {route.path} is already taken by trigger {other.trigger_id}"
                    )
            return msgspec.to_builtins(route)
        raise InvalidParameter(f"trigger_type_code {kind!r} is not supported")

    async def create(self, record: FunctionRecord, body: object) -> Trigger:
        request: CreateTrigger = convert(body, CreateTrigger, "the trigger")
        event_data = self._check(request.trigger_type_code, request.event_data)
        names = {t.event_data.get("name") for t in self.all_of(record)}
        if event_data["name"] in names:
            raise InvalidParameter(f"function {record.func_name} already has a trigger named {event_data['name']!r}")
        now = _now_iso()
        trigger = Trigger(
            trigger_id=str(uuid.uuid4()),
            trigger_type_code=request.trigger_type_code,
            trigger_status=request.trigger_status,
            event_data=event_data,
            project_id=record.project_id,
            package=record.package,
            func_name=record.func_name,
            created_time=now,
            last_updated_time=now,
            # Bound to the version or alias of its URN; an alias's trigger follows the alias.
            qualifier=record.qualifier,
        )
        await self._store.put_trigger(trigger)
        self._changed.set()
        return trigger

    async def update(self, trigger: Trigger, body: object) -> Trigger:
        request: UpdateTrigger = convert(body, UpdateTrigger, "the trigger update")
        status = request.trigger_status or trigger.trigger_status
        event_data = trigger.event_data
        if isinstance(request.event_data, list):
            # The SDK's form: polling settings of queue triggers (Kafka, DMS), none of which
            # a TIMER or APIG trigger has. An empty list changes nothing.
            if request.event_data:
                raise InvalidParameter(
                    f"event_data: polling settings (is_serial, max_fetch_bytes, polling_interval, polling_unit) "
                    f"do not apply to {trigger.trigger_type_code} triggers; send an object of its event_data fields"
                )
        elif request.event_data is not None:
            event_data = self._check(
                trigger.trigger_type_code, {**trigger.event_data, **request.event_data}, trigger.trigger_id
            )
        updated = msgspec.structs.replace(
            trigger, trigger_status=status, event_data=event_data, last_updated_time=_now_iso()
        )
        await self._store.put_trigger(updated)
        self._changed.set()
        return updated

    async def delete(self, trigger: Trigger) -> None:
        await self._store.delete_trigger(trigger.trigger_id)
        self._changed.set()

    async def delete_all(self, record: FunctionRecord) -> None:
        for trigger in self.all_of(record):
            await self._store.delete_trigger(trigger.trigger_id)
        self._changed.set()

    def drop_unusable(self) -> None:
        """Forget (and log) stored triggers that would not pass the API's checks today.

        Run once at start, before the timer loop and the gateway read them: a row
        edited by hand or by another version fails here, alone, with its id in the log.
        """
        for trigger in list(self._store.triggers.values()):
            try:
                if trigger.trigger_type_code == "TIMER":
                    data: TimerEventData = _event_data(trigger.event_data, TimerEventData)
                    parse(data.schedule_type, data.schedule)
                elif trigger.trigger_type_code == "APIG":
                    _event_data(trigger.event_data, ApigEventData)
                else:
                    raise InvalidParameter(f"trigger_type_code {trigger.trigger_type_code!r} is not supported")
            except Exception as exc:  # noqa: BLE001 - any defect of a stored row is that row's alone
                log.error(
                    "ignoring stored %s trigger %s of function %s: %s",
                    trigger.trigger_type_code,
                    trigger.trigger_id,
                    trigger.func_name,
                    getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}",
                )
                del self._store.triggers[trigger.trigger_id]

    # Timers ---------------------------------------------------------------------

    async def run_timers(self) -> None:
        """Fire ACTIVE timers on schedule; re-plan a timer whenever its schedule changes."""
        # trigger id -> (next fire, schedule, (schedule_type, schedule) it was planned from)
        plan: dict[str, tuple[float, Schedule, tuple]] = {}
        # Triggers that failed, as they were when they failed: skipped until they change.
        broken: dict[str, Trigger] = {}
        while True:
            # Reset before planning: a change made while we plan or fire wakes the next wait.
            self._changed = trio.Event()
            now = time.time()
            active = {
                t.trigger_id: t
                for t in self._store.triggers.values()
                if t.trigger_type_code == "TIMER" and t.trigger_status == "ACTIVE"
            }
            for trigger_id in list(plan):
                trigger = active.get(trigger_id)
                if trigger is None or plan[trigger_id][2] != _source(trigger):
                    del plan[trigger_id]
            for trigger_id in list(broken):
                if active.get(trigger_id) is not broken[trigger_id]:
                    del broken[trigger_id]
            for trigger_id, trigger in active.items():
                if trigger_id not in plan and trigger_id not in broken:
                    with self._boundary(trigger, "planning", broken):
                        schedule = parse(trigger.event_data["schedule_type"], trigger.event_data["schedule"])
                        plan[trigger_id] = (schedule.next_after(now), schedule, _source(trigger))
            for trigger_id, (at, schedule, source) in list(plan.items()):
                trigger = active[trigger_id]
                if at <= now:
                    with self._boundary(trigger, "firing", broken):
                        await self._fire(trigger, schedule)
                    if trigger_id in broken:
                        del plan[trigger_id]
                        continue
                    with self._boundary(trigger, "planning", broken):
                        # Catch up without replaying: the next fire after now.
                        plan[trigger_id] = (schedule.next_after(max(at, time.time())), schedule, source)
                    if trigger_id in broken:
                        del plan[trigger_id]
            wake = min((at for at, _, _ in plan.values()), default=now + 3600)
            with trio.move_on_after(max(0.0, wake - time.time())):
                await self._changed.wait()

    @contextlib.contextmanager
    def _boundary(self, trigger: Trigger, step: str, broken: dict[str, Trigger]) -> Iterator[None]:
        """One trigger's failure is logged and parks that trigger; the store's own failures propagate."""
        try:
            yield
        except sqlite3.Error:
            raise
        except Exception:
            log.exception(
                "timer trigger %s of function %s failed while %s; skipped until it is changed",
                trigger.trigger_id,
                trigger.func_name,
                step,
            )
            broken[trigger.trigger_id] = trigger

    async def _fire(self, trigger: Trigger, schedule: Schedule) -> None:
        try:
            # The version the trigger's qualifier names now (an alias's weights pick one).
            record = route(self._store, lookup(self._store, trigger_ref(trigger)))
        except NotFound:
            return
        if self._full():
            log.warning(
                "timer trigger %s of function %s: fire skipped, the asynchronous queue is full (max_queued)",
                trigger.trigger_id,
                trigger.func_name,
            )
            return
        zone = schedule.zone
        event = {
            "version": "v1.0",
            "time": datetime.now(zone).astimezone(zone).isoformat(timespec="seconds"),
            "trigger_type": "TIMER",
            "trigger_name": trigger.event_data["name"],
            "user_event": trigger.event_data.get("user_event", ""),
        }
        queued = AsyncEvent.new(record.key, new_request_id(), msgspec.json.encode(event), record.version, record.alias)
        await self._store.run(self._store.queue.enqueue, queued)
        self._notify()


def trigger_ref(trigger: Trigger) -> FunctionRef:
    return FunctionRef(trigger.project_id, trigger.package, trigger.func_name, trigger.qualifier)


def _source(trigger: Trigger) -> tuple:
    """What a timer's plan depends on: a change to anything else (user_event) keeps its rhythm."""
    data = trigger.event_data
    return (data.get("schedule_type"), data.get("schedule")) if isinstance(data, dict) else (None, None)


def _event_data(data: object, kind: type[msgspec.Struct]) -> Any:
    """`data` as `kind`; an error names the field under `event_data`, as the client sent it."""
    try:
        return convert(data, kind, "event_data")
    except InvalidParameter as error:
        message = error.message
        message = message.replace("invalid ", "invalid event_data.", 1) if message.startswith("invalid ") else message
        message = message.replace("field `", "field `event_data.", 1)
        raise InvalidParameter(message) from None
