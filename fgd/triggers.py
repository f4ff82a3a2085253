"""Triggers: TIMER schedules that queue asynchronous invocations.

Each fire queues an asynchronous invocation (with the function's retry
policy) carrying FunctionGraph's timer event. Fires missed while the daemon
was down are not replayed: at start, and after every change, each timer's
next fire is computed from now.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime

import msgspec
import trio

from fgd.asyncqueue import AsyncEvent
from fgd.errors import Conflict, InvalidParameter, NotFound
from fgd.invoker import new_request_id
from fgd.model import ApigEventData, CreateTrigger, FunctionRecord, TimerEventData, Trigger, convert
from fgd.schedules import Schedule, parse
from fgd.store import Store

log = logging.getLogger("fgd.triggers")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Triggers:
    def __init__(self, store: Store, notify) -> None:
        self._store = store
        self._notify = notify
        self._changed = trio.Event()

    def list(self, record: FunctionRecord) -> list[Trigger]:
        return sorted((t for t in self._store.triggers.values() if t.key == record.key), key=lambda t: t.created_time)

    def get(self, record: FunctionRecord, kind: str, trigger_id: str) -> Trigger:
        trigger = self._store.triggers.get(trigger_id)
        if trigger is None or trigger.key != record.key or trigger.trigger_type_code != kind:
            raise NotFound(f"no {kind} trigger {trigger_id} on function {record.func_name}")
        return trigger

    def _check(self, kind: str, event_data: dict, trigger_id: str = "") -> dict:
        if kind == "TIMER":
            data: TimerEventData = convert(event_data, TimerEventData, "event_data")
            parse(data.schedule_type, data.schedule)
            return msgspec.to_builtins(data)
        if kind == "APIG":
            route: ApigEventData = convert(event_data, ApigEventData, "event_data")
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
        names = {t.event_data.get("name") for t in self.list(record)}
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
        )
        await self._store.put_trigger(trigger)
        self._changed.set()
        return trigger

    async def update(self, trigger: Trigger, body: object) -> Trigger:
        if not isinstance(body, dict):
            raise InvalidParameter("the body must be a JSON object")
        unknown = set(body) - {"trigger_status", "event_data"}
        if unknown:
            raise InvalidParameter(f"unknown field {sorted(unknown)[0]!r}; trigger_status and event_data can change")
        status = body.get("trigger_status", trigger.trigger_status)
        if status not in ("ACTIVE", "DISABLED"):
            raise InvalidParameter("trigger_status must be ACTIVE or DISABLED")
        event_data = trigger.event_data
        if "event_data" in body:
            event_data = self._check(
                trigger.trigger_type_code, {**trigger.event_data, **body["event_data"]}, trigger.trigger_id
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
        for trigger in self.list(record):
            await self._store.delete_trigger(trigger.trigger_id)
        self._changed.set()

    # Timers ---------------------------------------------------------------------

    async def run_timers(self) -> None:
        """Fire ACTIVE timers on schedule; re-plan a timer whenever its schedule changes."""
        # trigger id -> (next fire, schedule, (schedule_type, schedule) it was planned from)
        plan: dict[str, tuple[float, Schedule, tuple[str, str]]] = {}
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
                source = trigger and (trigger.event_data["schedule_type"], trigger.event_data["schedule"])
                if trigger is None or plan[trigger_id][2] != source:
                    del plan[trigger_id]
            for trigger_id, trigger in active.items():
                if trigger_id not in plan:
                    source = (trigger.event_data["schedule_type"], trigger.event_data["schedule"])
                    schedule = parse(*source)
                    plan[trigger_id] = (schedule.next_after(now), schedule, source)
            for trigger_id, (at, schedule, source) in list(plan.items()):
                if at <= now:
                    await self._fire(active[trigger_id], schedule)
                    # Catch up without replaying: the next fire after now.
                    plan[trigger_id] = (schedule.next_after(max(at, time.time())), schedule, source)
            wake = min((at for at, _, _ in plan.values()), default=now + 3600)
            with trio.move_on_after(max(0.0, wake - time.time())):
                await self._changed.wait()

    async def _fire(self, trigger: Trigger, schedule: Schedule) -> None:
        record = self._store.get(trigger.key)
        if record is None:
            return
        zone = schedule.zone
        event = {
            "version": "v1.0",
            "time": datetime.now(zone).astimezone(zone).isoformat(timespec="seconds"),
            "trigger_type": "TIMER",
            "trigger_name": trigger.event_data["name"],
            "user_event": trigger.event_data.get("user_event", ""),
        }
        queued = AsyncEvent.new(record.key, new_request_id(), msgspec.json.encode(event))
        await self._store.run(self._store.queue.enqueue, queued)
        self._notify()
