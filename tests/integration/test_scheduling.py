"""Capacity: max instances, the bounded wait queue, 429s that say which limit, the node memory budget."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import INSTANCE_TOKEN, Api, Daemon, running

SLEEPER = INSTANCE_TOKEN + "import time\ndef handler(e, c):\n    time.sleep(e.get('s', 0))\n    return INSTANCE\n"


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    config = "[scheduler]\nqueue_length = 1\nmax_wait = 3.0\nmemory_budget_mb = 256\n[sandbox]\npool_size = 1\n"
    with running(tmp_path_factory.mktemp("tight") / "state", config) as daemon:
        yield Api(daemon)


def parallel(api: Api, name: str, events: list[dict]) -> list:
    def call(event: dict):
        started = time.monotonic()
        response = api.daemon.client().post(f"/functions/{name}/invocations", json=event)
        return response, time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(len(events)) as pool:
        futures = []
        for event in events:
            futures.append(pool.submit(call, event))
            time.sleep(0.05)
        return [f.result() for f in futures]


def test_max_one_instance_and_queue_of_one_throttles_the_third(tight: Api) -> None:
    name = tight.deploy(SLEEPER, strategy_config={"concurrency": 1})["func_name"]
    (first, _), (second, waited), (third, refused_after) = parallel(tight, name, [{"s": 0.6}] * 3)
    assert first.status_code == 200 and second.status_code == 200
    assert first.text == second.text  # one instance served both, one after the other
    assert waited >= 0.5
    assert third.status_code == 429
    assert third.json()["error_code"] == "FSS.0429"
    assert "all 1 instances" in third.json()["error_msg"] and "queue of 1 is full" in third.json()["error_msg"]
    assert refused_after < 0.3


def test_memory_size_over_the_whole_budget_is_400_not_503(tight: Api) -> None:
    """Found by the OpenAPI fuzzer: a function that can never fit the node's budget (256 MB here)
    was answered 503 "taken by busy instances; try again shortly", and its async events retried
    for an hour. Now 400, saying what to change; async events fail at once."""
    name = tight.deploy("def handler(e, c):\n    return 1\n", memory_size=512)["func_name"]
    refused = tight.invoke(name)
    assert refused.status_code == 400
    assert refused.json()["error_code"] == "FSS.0400"
    assert "512 MB" in refused.json()["error_msg"] and "256 MB" in refused.json()["error_msg"]
    queued = tight.http.post(f"/functions/{name}/invocations-async", json={})
    assert queued.status_code == 202
    request_id = queued.json()["request_id"]
    deadline = time.monotonic() + 10
    row: dict = {}
    while time.monotonic() < deadline:
        rows = tight.http.get(f"/functions/{name}/async-invocations", params={"request_id": request_id}).json()
        row = rows["invocations"][0]
        if row["status"] == "FAIL":
            break
        time.sleep(0.1)
    assert row["status"] == "FAIL" and "256 MB" in row["error_message"]
    # The same for a per-request memory size (X-Cff-Instance-Memory) over the budget.
    small = tight.deploy("def handler(e, c):\n    return 1\n", memory_size=128, enable_dynamic_memory=True)
    big = tight.invoke(small["func_name"], headers={"X-Cff-Instance-Memory": "1024"})
    assert big.status_code == 400 and "1024 MB" in big.json()["error_msg"]
    assert tight.invoke(small["func_name"]).status_code == 200


def test_waiting_too_long_is_429_saying_so(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", "[scheduler]\nqueue_length = 5\nmax_wait = 0.3\n")
    daemon.start()
    try:
        api = Api(daemon)
        name = api.deploy(SLEEPER, strategy_config={"concurrency": 1})["func_name"]
        (first, _), (second, elapsed) = parallel(api, name, [{"s": 1.5}, {"s": 0}])
        assert first.status_code == 200
        assert second.status_code == 429
        assert "waited 0.3 s" in second.json()["error_msg"]
        assert 0.25 <= elapsed < 1.0
    finally:
        daemon.stop()


def test_memory_budget_evicts_the_least_recently_used_idle_instance(tight: Api) -> None:
    a = tight.deploy(SLEEPER)["func_name"]
    b = tight.deploy(SLEEPER)["func_name"]
    c = tight.deploy(SLEEPER)["func_name"]

    def cold(name: str) -> bool:
        response = tight.invoke(name)
        assert response.status_code == 200, response.text
        return json.loads(response.headers["x-cff-invoke-summary"])["coldStart"]

    assert cold(a) and cold(b)  # 2 x 128 MB: the budget is full
    assert not cold(b)
    assert cold(c)  # evicts a, the least recently used
    assert not cold(b)
    assert cold(a)


def test_budget_full_of_busy_instances_is_503(tight: Api) -> None:
    busy = tight.deploy(SLEEPER, memory_size=256)["func_name"]
    other = tight.deploy(SLEEPER)["func_name"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: tight.daemon.client().post(f"/functions/{busy}/invocations", json={"s": 1.0}))
        time.sleep(0.4)
        response = tight.invoke(other)
        assert running.result().status_code == 200
    assert response.status_code == 503
    assert response.json()["error_code"] == "FSS.0503"
    assert "memory budget (256 MB)" in response.json()["error_msg"]


def test_dynamic_memory_picks_the_instance_size_per_request(api: Api) -> None:
    source = INSTANCE_TOKEN + "def handler(e, c):\n    return [INSTANCE, c.getMemorySize()]\n"
    name = api.deploy(source, enable_dynamic_memory=True)["func_name"]
    small = api.invoke(name).json()
    large = api.invoke(name, headers={"X-Cff-Instance-Memory": "512"})
    assert large.json()[1] == 512 and small[1] == 128
    assert large.json()[0] != small[0]
    assert json.loads(large.headers["x-cff-invoke-summary"])["memorySize"] == 512
    assert api.invoke(name, headers={"X-Cff-Instance-Memory": "512"}).json()[0] == large.json()[0]
    for bad in ("63", "10241", "lots", ""):
        response = api.invoke(name, headers={"X-Cff-Instance-Memory": bad})
        assert response.status_code == 400, bad
        assert response.json()["error_code"] == "FSS.0406"


def test_instance_memory_header_needs_dynamic_memory(api: Api) -> None:
    name = api.deploy(SLEEPER)["func_name"]
    response = api.invoke(name, headers={"X-Cff-Instance-Memory": "256"})
    assert response.status_code == 400
    assert response.json()["error_code"] == "FSS.0406"
    assert "enable_dynamic_memory" in response.json()["error_msg"]
