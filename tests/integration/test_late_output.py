"""Output a Python request leaves behind (a task or thread still running after its request was
answered) never breaks the instance: the daemon remembers the last 256 finished requests, so a
Log frame tagged with an older one would be taken for a forgery and the instance dropped. Such
output goes out untagged, as late output (the same rule as for Node.js, tests/integration/
test_nodejs.py), and is kept in the function's log."""

from __future__ import annotations

from tests.conftest import INSTANCE_TOKEN, Api

REQUESTS = 300  # more than fgd.instance.RECENT_REQUESTS


def invoke_many(api: Api, name: str) -> set[str]:
    client = api.daemon.client()
    instances = set()
    for _ in range(REQUESTS):
        response = client.post(f"/functions/{name}/invocations", json={})
        assert response.status_code == 200 and response.headers["x-is-func-err"] == "false", response.text
        instances.add(response.text)
    return instances


def logged(api: Api, name: str) -> list[str]:
    return [line["message"] for line in api.http.get(f"/functions/{name}/logs").json()["logs"]]


def test_an_async_task_left_running_by_an_old_request_never_breaks_the_instance(api: Api) -> None:
    source = (
        INSTANCE_TOKEN
        + """
import asyncio

TICKING = []

async def tick(context):
    while True:
        print("tick")
        context.getLogger().info("tock")
        await asyncio.sleep(0.002)

async def handler(event, context):
    if not TICKING:
        # Started by the first request, it keeps that request's id (its context) forever.
        TICKING.append(asyncio.get_running_loop().create_task(tick(context)))
    return INSTANCE
"""
    )
    name = api.deploy(source, timeout=5)["func_name"]
    assert len(invoke_many(api, name)) == 1
    messages = logged(api, name)
    assert "tick" in messages and "[INFO] tock" in messages


def test_a_thread_left_running_by_an_old_request_never_breaks_the_instance(api: Api) -> None:
    source = (
        INSTANCE_TOKEN
        + """
import threading, time

TICKING = []

def tick(context):
    while True:
        print("tick")
        context.getLogger().info("tock")
        time.sleep(0.002)

def handler(event, context):
    if not TICKING:
        TICKING.append(threading.Thread(target=tick, args=(context,), daemon=True))
        TICKING[0].start()
    return INSTANCE
"""
    )
    name = api.deploy(source, timeout=5)["func_name"]
    assert len(invoke_many(api, name)) == 1
    messages = logged(api, name)
    assert "tick" in messages and "[INFO] tock" in messages


def test_a_log_frame_for_a_request_the_instance_was_not_given_drops_only_that_instance(api: Api) -> None:
    # What the daemon does with the breach the runtimes now avoid: a Log frame (here forged by the
    # function on its own protocol socket) for an id the instance was never given nor finished
    # lately. The instance is dropped and the request it served fails saying why; the function's
    # next request gets a fresh instance, and the forged line is nowhere in the log.
    source = (
        INSTANCE_TOKEN
        + """
import gc, sys

def handler(event, context):
    if event.get("forge"):
        instance = sys.modules["runtimes.python.instance"]
        protocol = sys.modules["runtimes.protocol"]
        conn = next(o for o in gc.get_objects() if isinstance(o, instance.Connection))
        conn.send(protocol.log_line("forged-" + "0" * 30, "stdout", "forged line"))
        import time; time.sleep(1)
    return INSTANCE
"""
    )
    name = api.deploy(source, timeout=5)["func_name"]
    first = api.invoke(name).text
    forged = api.invoke(name, {"forge": True})
    assert forged.headers["x-is-func-err"] == "true"
    error = forged.json()
    assert error["errorType"] == "Runtime.ExitError"
    assert "broke the protocol: it sent a log line for request 'forged-" in error["errorMessage"]
    after = api.invoke(name)
    assert after.headers["x-is-func-err"] == "false" and after.text != first
    assert "forged line" not in logged(api, name)
