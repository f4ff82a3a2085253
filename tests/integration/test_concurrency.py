"""strategy_config.concurrent_num: several requests share one instance, and their logs stay apart."""

from __future__ import annotations

import concurrent.futures
import time

from tests.conftest import INSTANCE_TOKEN, Api

SLEEPY = (
    INSTANCE_TOKEN
    + """
import time
CALLS = []

def handler(event, context):
    CALLS.append(context.getRequestID())
    for i in range(event.get("lines", 0)):
        print(f"line {i} of {context.getRequestID()}")
        context.getLogger().info("logger %d of %s", i, context.getRequestID())
        time.sleep(0.001)
    start = time.time()
    time.sleep(event.get("s", 0))
    return {"instance": INSTANCE, "calls": len(CALLS), "span": [start, time.time()]}
"""
)


def overlapping(spans: list) -> bool:
    """Whether every span began before any of them ended: all ran at once (a wall-clock bound on the
    client would say the same, but fails on a loaded machine)."""
    return max(start for start, _ in spans) < min(end for _, end in spans)


def fire(api: Api, name: str, count: int, event: dict) -> tuple[list, float]:
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        responses = list(
            pool.map(lambda _: api.daemon.client().post(f"/functions/{name}/invocations", json=event), range(count))
        )
    return responses, time.monotonic() - started


def test_four_requests_share_one_instance_at_once(api: Api) -> None:
    name = api.deploy(SLEEPY, strategy_config={"concurrency": 1, "concurrent_num": 4}, timeout=10)["func_name"]
    api.invoke(name)  # warm: the instance exists
    responses, _ = fire(api, name, 4, {"s": 0.5})
    bodies = [r.json() for r in responses]
    assert all(r.headers["x-is-func-err"] == "false" for r in responses)
    assert len({b["instance"] for b in bodies}) == 1
    assert overlapping([b["span"] for b in bodies])  # together, not one after another
    assert max(b["calls"] for b in bodies) == 5  # module globals are shared by the requests


def test_eight_requests_two_instances_of_four_finish_in_about_one_sleep(api: Api) -> None:
    name = api.deploy(SLEEPY, strategy_config={"concurrency": 2, "concurrent_num": 4}, timeout=10)["func_name"]
    responses, _ = fire(api, name, 8, {"s": 0.5})
    assert all(r.status_code == 200 and r.headers["x-is-func-err"] == "false" for r in responses)
    bodies = [r.json() for r in responses]
    assert len({b["instance"] for b in bodies}) == 2
    for instance in {b["instance"] for b in bodies}:
        spans = [b["span"] for b in bodies if b["instance"] == instance]
        assert len(spans) == 4 and overlapping(spans)


def test_async_handlers_run_concurrently_on_one_event_loop(api: Api) -> None:
    source = (
        INSTANCE_TOKEN
        + """
import asyncio, threading, time

async def handler(event, context):
    start = time.time()
    await asyncio.sleep(0.5)
    print("async done", context.getRequestID())
    return [INSTANCE, threading.current_thread().name, [start, time.time()]]
"""
    )
    name = api.deploy(source, strategy_config={"concurrency": 1, "concurrent_num": 5}, timeout=10)["func_name"]
    api.invoke(name)
    responses, _ = fire(api, name, 5, {})
    bodies = [r.json() for r in responses]
    assert len({b[0] for b in bodies}) == 1
    assert {b[1] for b in bodies} == {"handler-loop"}
    assert overlapping([b[2] for b in bodies])


def test_logs_of_concurrent_requests_never_mix(api: Api) -> None:
    name = api.deploy(SLEEPY, strategy_config={"concurrency": 1, "concurrent_num": 4}, timeout=10)["func_name"]
    responses, _ = fire(api, name, 4, {"lines": 20})
    for response in responses:
        request_id = response.headers["x-cff-request-id"]
        logs = api.http.get(f"/functions/{name}/logs", params={"request_id": request_id, "limit": 1000}).json()["logs"]
        prints = [line["message"] for line in logs if line["stream"] == "stdout"]
        logged = [line["message"] for line in logs if line["stream"] == "logger"]
        assert prints == [f"line {i} of {request_id}" for i in range(20)]
        assert logged == [f"[INFO] logger {i} of {request_id}" for i in range(20)]
        assert sum(1 for line in logs if line["stream"] == "platform") == 1


def test_a_timeout_recycles_the_shared_instance_and_says_why(api: Api) -> None:
    name = api.deploy(SLEEPY, strategy_config={"concurrency": 1, "concurrent_num": 2}, timeout=1)["func_name"]
    api.invoke(name)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(lambda: api.daemon.client().post(f"/functions/{name}/invocations", json={"s": 5}))
        time.sleep(0.2)
        quick = pool.submit(lambda: api.daemon.client().post(f"/functions/{name}/invocations", json={"s": 0.9}))
        assert slow.result().json()["errorType"] == "Runtime.Timeout"
        other = quick.result()
    # The other request either finished first or was taken down with the instance, told why.
    if other.headers["x-is-func-err"] == "true":
        assert "timed out" in other.json()["errorMessage"]
    assert api.invoke(name).headers["x-is-func-err"] == "false"


def test_a_burst_during_cold_starts_waits_for_their_slots_instead_of_starting_one_each(api: Api) -> None:
    """24 requests at once for 8 slots an instance, whose start takes 0.5 s (an initializer): 3
    instances start and take 8 requests each; before, each request that found no free slot
    started an instance of its own (24 cold starts)."""
    source = SLEEPY + "\ndef init(context):\n    time.sleep(0.5)\n"
    name = api.deploy(
        source,
        strategy_config={"concurrency": 24, "concurrent_num": 8},
        initializer_handler="index.init",
        initializer_timeout=10,
        timeout=10,
    )["func_name"]
    responses, _ = fire(api, name, 24, {"s": 0.2})
    assert all(r.status_code == 200 and r.headers["x-is-func-err"] == "false" for r in responses), [
        r.text for r in responses
    ]
    instances = {r.json()["instance"] for r in responses}
    assert len(instances) == 3, instances
