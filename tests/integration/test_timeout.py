"""The deadline: the caller hears Runtime.Timeout promptly, and every process is gone."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.conftest import Api


def wait_gone(pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


SLEEPER = """
    import json, os, subprocess, time

    def handler(event, context):
        child = None
        if event.get("child"):
            child = subprocess.Popen(["sleep", "100"]).pid
        with open(event["pids"], "w") as f:
            json.dump({"worker": os.getpid(), "child": child}, f)
        time.sleep(100)
"""


def test_sleeping_handler_times_out_and_is_killed(api: Api, tmp_path: Path) -> None:
    name = api.deploy(SLEEPER, timeout=1)["func_name"]
    pids_file = tmp_path / "pids.json"
    started = time.monotonic()
    response = api.invoke(name, {"pids": str(pids_file)})
    elapsed = time.monotonic() - started
    assert response.headers["x-is-func-err"] == "true"
    body = response.json()
    assert body["errorType"] == "Runtime.Timeout"
    assert "1 s" in body["errorMessage"]
    assert 1.0 <= elapsed < 1.8
    assert wait_gone(json.loads(pids_file.read_text())["worker"])


def test_subprocess_of_timed_out_handler_is_killed_too(api: Api, tmp_path: Path) -> None:
    name = api.deploy(SLEEPER, timeout=1)["func_name"]
    pids_file = tmp_path / "pids.json"
    response = api.invoke(name, {"pids": str(pids_file), "child": True})
    assert response.json()["errorType"] == "Runtime.Timeout"
    pids = json.loads(pids_file.read_text())
    assert wait_gone(pids["worker"])
    assert wait_gone(pids["child"])


def test_function_works_again_after_a_timeout(api: Api, tmp_path: Path) -> None:
    source = """
        import time

        def handler(event, context):
            time.sleep(event.get("sleep", 0))
            return "done"
    """
    name = api.deploy(source, timeout=1)["func_name"]
    assert api.invoke(name, {"sleep": 5}).json()["errorType"] == "Runtime.Timeout"
    response = api.invoke(name, {"sleep": 0})
    assert response.headers["x-is-func-err"] == "false"
    assert response.content == b"done"
    assert json.loads(response.headers["x-cff-invoke-summary"])["coldStart"] is True


def test_cpu_spin_times_out(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    while True:\n        pass\n", timeout=1)["func_name"]
    started = time.monotonic()
    assert api.invoke(name).json()["errorType"] == "Runtime.Timeout"
    assert time.monotonic() - started < 1.8
