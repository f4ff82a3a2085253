"""Where an asynchronous invocation's outcome goes: another function, or a webhook.

`destination_config.on_success` / `on_failure` take
`{"destination": "FunctionGraph", "param": {"func_urn": ...}}` (queued as an
asynchronous invocation of that function) or
`{"destination": "WEBHOOK", "param": {"url": "http://..."}}` (fgd: an HTTP POST,
retried). Either receives FunctionGraph's notification payload. Cycles
between functions are refused when the config is set.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

import msgspec
import trio

from fgd.asyncqueue import AsyncEvent
from fgd.errors import InvalidParameter
from fgd.invoker import Outcome, new_request_id
from fgd.model import FunctionRecord, function_urn, parse_function_ref
from fgd.store import Store

log = logging.getLogger("fgd.destinations")

WEBHOOK_ATTEMPTS = 3
WEBHOOK_TIMEOUT = 10.0


def _param(value: Any) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidParameter("destination param must be a JSON object (or a JSON string of one)") from None
    if not isinstance(value, dict):
        raise InvalidParameter("destination param must be a JSON object")
    return value


def targets(store: Store, record: FunctionRecord, config: dict, region: str) -> dict[str, tuple[str, Any]]:
    """Check a destination_config; return condition -> (kind, target key or url)."""
    checked: dict[str, tuple[str, Any]] = {}
    for condition, spec in config.items():
        if condition not in ("on_success", "on_failure"):
            raise InvalidParameter(f"destination_config: unknown condition {condition!r} (on_success, on_failure)")
        if not isinstance(spec, dict) or "destination" not in spec:
            raise InvalidParameter(f"destination_config.{condition} must be {{destination, param}}")
        param = _param(spec.get("param", {}))
        if spec["destination"] == "FunctionGraph":
            urn = param.get("func_urn")
            if not isinstance(urn, str):
                raise InvalidParameter(f"destination_config.{condition}: param needs func_urn")
            ref = parse_function_ref(record.project_id, urn, region)
            if store.get(ref.key) is None:
                raise InvalidParameter(f"destination_config.{condition}: function {urn} does not exist")
            checked[condition] = ("FunctionGraph", ref.key)
        elif spec["destination"] == "WEBHOOK":
            url = param.get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise InvalidParameter(f"destination_config.{condition}: param needs an http(s) url")
            checked[condition] = ("WEBHOOK", url)
        else:
            raise InvalidParameter(f"destination_config.{condition}: destination must be FunctionGraph or WEBHOOK")
    return checked


def check_no_cycle(store: Store, record: FunctionRecord, new: dict[str, tuple[str, Any]], region: str) -> None:
    """Following FunctionGraph destinations from `record` must never come back to it."""

    def edges(key: tuple) -> list[tuple]:
        if key == record.key:
            return [target for kind, target in new.values() if kind == "FunctionGraph"]
        other = store.get(key)
        if other is None:
            return []
        found = []
        for spec in other.async_config.destination_config.values():
            if spec.get("destination") == "FunctionGraph":
                ref = parse_function_ref(other.project_id, _param(spec.get("param", {})).get("func_urn", ""), region)
                found.append(ref.key)
        return found

    stack, seen = list(edges(record.key)), set()
    while stack:
        key = stack.pop()
        if key == record.key:
            raise InvalidParameter(f"destination_config would make a cycle back to {record.func_name}")
        if key not in seen:
            seen.add(key)
            stack.extend(edges(key))


class Destinations:
    def __init__(self, store: Store, region: str, notify) -> None:
        self._store = store
        self._region = region
        self._notify = notify

    async def deliver(
        self, record: FunctionRecord, event: AsyncEvent, outcome: Outcome | None, success: bool, condition: str
    ) -> None:
        spec = record.async_config.destination_config.get("on_success" if success else "on_failure")
        if not spec:
            return
        payload = msgspec.json.encode(self.payload(record, event, outcome, condition))
        param = _param(spec.get("param", {}))
        if spec.get("destination") == "FunctionGraph":
            target = self._store.get(parse_function_ref(record.project_id, param["func_urn"], self._region).key)
            if target is None:
                log.warning("destination %s of %s no longer exists", param["func_urn"], record.func_name)
                return
            queued = AsyncEvent.new(target.key, new_request_id(), payload)
            await self._store.run(self._store.queue.enqueue, queued)
            self._notify()
        else:
            await self._post(param["url"], payload)

    def payload(self, record: FunctionRecord, event: AsyncEvent, outcome: Outcome | None, condition: str) -> dict:
        if outcome is not None and outcome.error is None:
            response_payload, status, function_error = (outcome.body or b"").decode(errors="replace"), 200, ""
        elif outcome is not None and outcome.error is not None:
            error = outcome.error
            response_payload = json.dumps(
                {"errorMessage": error.error_message, "errorType": error.error_type, "stackTrace": error.stack_trace}
            )
            status, function_error = 200, error.error_type
        else:
            response_payload, status, function_error = "", 500, event.error_message
        return {
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "request_context": {
                "request_id": event.request_id,
                "function_urn": function_urn(self._region, record),
                "condition": condition,
                "approximate_invoke_count": event.attempts,
            },
            "request_payload": event.payload.decode(errors="replace"),
            "response_context": {"status_code": status, "function_error": function_error},
            "response_payload": response_payload,
        }

    async def _post(self, url: str, payload: bytes) -> None:
        for attempt in range(WEBHOOK_ATTEMPTS):
            try:
                await trio.to_thread.run_sync(_post_once, url, payload)
                return
            except (OSError, urllib.error.URLError) as exc:
                log.warning("webhook %s failed (attempt %d): %s", url, attempt + 1, exc)
                await trio.sleep(0.5 * 2**attempt)


def _post_once(url: str, payload: bytes) -> None:
    request = urllib.request.Request(url, data=payload, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:
        if response.status >= 300:
            raise OSError(f"HTTP {response.status}")
