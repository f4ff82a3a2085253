"""Reserved instances: started eagerly, kept warm, replaced when they die or the function changes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

from tests.conftest import BACKGROUND_SLEEP, Api, marker, pids_with

SOURCE = BACKGROUND_SLEEP + "def handler(e, c):\n    return 'reserved'\n"


def running(api: Api, name: str) -> int:
    rows = api.http.get("/functions/reservedinstances").json()["reservedinstances"]
    return next((r["running"] for r in rows if r["func_urn"].endswith(f":{name}:latest")), 0)


def wait_running(api: Api, name: str, count: int, within: float = 10) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if running(api, name) == count:
            return True
        time.sleep(0.1)
    return False


def is_cold(api: Api, name: str) -> bool:
    return json.loads(api.invoke(name).headers["x-cff-invoke-summary"])["coldStart"]


def test_reserved_instances_are_warm_before_the_first_request(api: Api) -> None:
    name = api.deploy(SOURCE)["func_name"]
    response = api.http.put(f"/functions/{name}/reservedinstances", json={"count": 2})
    assert response.status_code == 200 and response.json()["count"] == 2
    assert wait_running(api, name, 2)
    assert api.http.get(f"/functions/{name}/config").json()["reserved_instance_count"] == 2
    assert not is_cold(api, name)


def test_reserved_instances_come_back_after_a_config_change(api: Api) -> None:
    name = api.deploy(SOURCE)["func_name"]
    api.http.put(f"/functions/{name}/reservedinstances", json={"count": 1})
    assert wait_running(api, name, 1)
    api.http.put(f"/functions/{name}/config", json={"description": "changed"})
    assert wait_running(api, name, 1)
    assert not is_cold(api, name)


def test_reserved_instances_are_replaced_when_killed(api: Api) -> None:
    mark = marker()
    name = api.deploy(SOURCE, user_data={"FGD_TEST_MARK": mark})["func_name"]
    api.http.put(f"/functions/{name}/reservedinstances", json={"count": 1})
    assert wait_running(api, name, 1)
    # Kill every process of the reserved instance, found through its cgroup.
    (child,) = pids_with(mark)
    cgroups = Path(f"/proc/{child}/cgroup").read_text().splitlines()
    cgroup = next(line for line in cgroups if ":pids:" in line).split(":", 2)[2]
    for pid in map(int, Path(f"/sys/fs/cgroup/pids{cgroup}/cgroup.procs").read_text().split()):
        # The first kill takes the instance's PID 1 down with its pid namespace: the rest may be gone.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(1.5)
    assert wait_running(api, name, 1)
    assert len(pids_with(mark)) == 1
    assert not is_cold(api, name)


def test_reserved_count_is_validated(api: Api) -> None:
    name = api.deploy(SOURCE, strategy_config={"concurrency": 2})["func_name"]
    for body in ({"count": 3}, {"count": -1}, {"count": True}, {"count": "1"}, {}):
        response = api.http.put(f"/functions/{name}/reservedinstances", json=body)
        assert response.status_code == 400, body
        assert response.json()["error_code"] == "FSS.0400"


def test_config_max_instance_shortcut(api: Api) -> None:
    name = api.deploy(SOURCE)["func_name"]
    response = api.http.put(f"/functions/{name}/config-max-instance", json={"max_instance_num": 7})
    assert response.status_code == 200
    assert response.json()["strategy_config"]["concurrency"] == 7
    assert api.http.put(f"/functions/{name}/config-max-instance", json={"max_instance_num": 5000}).status_code == 400
