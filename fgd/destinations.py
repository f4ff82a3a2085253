"""Where an asynchronous invocation's outcome goes: another function, or a webhook.

`destination_config.on_success` / `on_failure` take
`{"destination": "FunctionGraph", "param": {"func_urn": ...}}` (queued as an
asynchronous invocation of that function) or
`{"destination": "WEBHOOK", "param": {"url": "http://..."}}` (fgd: an HTTP POST,
retried). Either receives FunctionGraph's notification payload. Cycles
between functions are refused when the config is set.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import trio

from fgd.asyncqueue import AsyncEvent
from fgd.errors import InvalidParameter, NotFound
from fgd.invoker import Outcome, new_request_id
from fgd.model import FunctionRecord, FunctionRef, function_urn, parse_function_ref
from fgd.store import Store
from fgd.versions import lookup, route

log = logging.getLogger("fgd.destinations")

WEBHOOK_ATTEMPTS = 3
WEBHOOK_TIMEOUT = 10.0
MAX_URL = 2048
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def _param(value: Any, field: str = "param") -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidParameter(f"{field} must be a JSON object (or a JSON string of one)") from None
        except RecursionError:
            raise InvalidParameter(f"{field} is JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise InvalidParameter(f"{field} must be a JSON object")
    return value


def webhook_url(value: object, field: str) -> str:
    """`value` if it is a plain http(s) URL with a valid host and port; InvalidParameter naming `field` if not.

    Parsed fully here, when the config is set, so delivery never meets a URL it cannot use.
    """
    if not isinstance(value, str) or not value:
        raise InvalidParameter(f"{field} must be an http:// or https:// URL")
    if len(value) > MAX_URL:
        raise InvalidParameter(f"{field} is {len(value):,} characters; the limit is {MAX_URL:,}")
    if not value.isascii() or any(c <= " " or c == "\x7f" for c in value):
        raise InvalidParameter(
            f"{field} must not contain spaces, control characters or non-ASCII characters (use punycode)"
        )
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise InvalidParameter(f"{field} {value!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidParameter(f"{field} must be an http:// or https:// URL, not {parts.scheme or 'schemeless'!r}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidParameter(f"{field} must not carry credentials (user:password@)")
    if parts.fragment or "#" in value:
        raise InvalidParameter(f"{field} must not have a #fragment")
    host = parts.hostname or ""
    if not _valid_host(host, bracketed=parts.netloc.startswith("[")):
        raise InvalidParameter(f"{field} {value!r} has no valid host name or IP address")
    if (port is not None and not 1 <= port <= 65535) or parts.netloc.endswith(":"):
        raise InvalidParameter(f"{field} {value!r} has an invalid port (1-65535)")
    return value


def _valid_host(host: str, *, bracketed: bool) -> bool:
    if bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    if not host or len(host) > 253:
        return False
    return all(_LABEL.match(label) for label in host.removesuffix(".").split("."))


def _check_spec(store: Store, record: FunctionRecord, condition: str, spec: object, region: str) -> tuple[str, Any]:
    """One destination (on_success or on_failure): (kind, target key or url), or InvalidParameter naming the field."""
    field = f"destination_config.{condition}"
    if not isinstance(spec, dict) or "destination" not in spec:
        raise InvalidParameter(f"{field} must be {{destination, param}}")
    unknown = set(spec) - {"destination", "param"}
    if unknown:
        raise InvalidParameter(f"{field}: unknown field {sorted(unknown)[0]!r} (destination, param)")
    param = _param(spec.get("param", {}), f"{field}.param")
    if spec["destination"] == "FunctionGraph":
        urn = param.get("func_urn")
        if not isinstance(urn, str):
            raise InvalidParameter(f"{field}.param needs func_urn")
        if set(param) - {"func_urn"}:
            raise InvalidParameter(f"{field}.param: unknown field {sorted(set(param) - {'func_urn'})[0]!r}")
        ref = parse_function_ref(record.project_id, urn, region)
        try:
            # A qualified URN names a version or alias (fgd.versions), resolved again at each delivery.
            target = lookup(store, ref)
        except NotFound:
            raise InvalidParameter(f"{field}: function {urn} does not exist") from None
        return ("FunctionGraph", FunctionRef(target.project_id, target.package, target.func_name, target.qualifier))
    if spec["destination"] == "WEBHOOK":
        if set(param) - {"url"}:
            raise InvalidParameter(f"{field}.param: unknown field {sorted(set(param) - {'url'})[0]!r}")
        return ("WEBHOOK", webhook_url(param.get("url"), f"{field}.param.url"))
    raise InvalidParameter(f"{field}.destination must be FunctionGraph or WEBHOOK")


def targets(store: Store, record: FunctionRecord, config: dict, region: str) -> dict[str, tuple[str, Any]]:
    """Check a destination_config; return condition -> (kind, target key or url)."""
    checked: dict[str, tuple[str, Any]] = {}
    for condition, spec in config.items():
        if condition not in ("on_success", "on_failure"):
            raise InvalidParameter(f"destination_config: unknown condition {condition!r} (on_success, on_failure)")
        checked[condition] = _check_spec(store, record, condition, spec, region)
    return checked


def check_no_cycle(store: Store, record: FunctionRecord, new: dict[str, tuple[str, Any]], region: str) -> None:
    """Following FunctionGraph destinations from `record` must never come back to it."""

    def edges(key: tuple) -> list[tuple]:
        if key == record.key:
            return [target.key for kind, target in new.values() if kind == "FunctionGraph"]
        other = store.get(key)
        if other is None:
            return []
        # Every version and alias has a config of its own (fgd.versions): an event may come back
        # through any of them, so the function's edges are all of theirs.
        configs = [other.async_config]
        configs += [v.async_config for v in store.versions.get(key, {}).values()]
        configs += [a.async_config for a in store.aliases.get(key, {}).values() if a.async_modified]
        found = []
        for spec in (spec for config in configs for spec in config.destination_config.values()):
            if isinstance(spec, dict) and spec.get("destination") == "FunctionGraph":
                try:
                    urn = _param(spec.get("param", {})).get("func_urn", "")
                    found.append(parse_function_ref(other.project_id, str(urn), region).key)
                except InvalidParameter:
                    continue  # another function's unusable destination: its delivery fails, not this check

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
    def __init__(self, store: Store, region: str, enqueue: Callable[[AsyncEvent], Awaitable[None]]) -> None:
        self._store = store
        self._region = region
        # The dispatcher's: queued with other events in one transaction (fgd.groupcommit), then looked at.
        self._enqueue = enqueue

    async def deliver(
        self, record: FunctionRecord, event: AsyncEvent, outcome: Outcome | None, success: bool, condition: str
    ) -> None:
        spec = record.async_config.destination_config.get("on_success" if success else "on_failure")
        if not spec:
            return
        condition_name = "on_success" if success else "on_failure"
        try:
            # The stored config passed these checks when it was set; checking again catches a
            # row edited since, and a FunctionGraph target deleted since.
            kind, target = _check_spec(self._store, record, condition_name, spec, self._region)
        except InvalidParameter as error:
            log.warning("destination of %s (%s) not notified: %s", record.func_name, event.request_id, error.message)
            raise
        payload = msgspec.json.encode(self.payload(record, event, outcome, condition))
        if kind == "FunctionGraph":
            chosen = route(self._store, lookup(self._store, target))
            queued = AsyncEvent.new(chosen.key, new_request_id(), payload, chosen.version, chosen.alias)
            await self._enqueue(queued)
        else:
            await self._post(target, payload)

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
            except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as exc:
                # A refused connection, a timeout, or a receiver answering something that is not HTTP.
                log.warning("webhook %s failed (attempt %d): %s", url, attempt + 1, exc)
                await trio.sleep(0.5 * 2**attempt)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """The notification goes to the URL that was checked, never where a 3xx points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def _post_once(url: str, payload: bytes) -> None:
    request = urllib.request.Request(url, data=payload, method="POST", headers={"Content-Type": "application/json"})
    with _opener.open(request, timeout=WEBHOOK_TIMEOUT) as response:
        if response.status >= 300:
            raise OSError(f"HTTP {response.status}")
