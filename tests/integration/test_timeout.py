"""The deadline: the caller hears Runtime.Timeout promptly, and every process is gone."""

from __future__ import annotations

import json
import time

from tests.conftest import Api, marker, wait_none_with

SLEEPER = """
    import subprocess, time

    def handler(event, context):
        subprocess.Popen(["sleep", "100"])
        if event.get("detached"):
            subprocess.Popen(["sleep", "100"], start_new_session=True)
        time.sleep(100)
"""


def test_sleeping_handler_times_out_and_is_killed(api: Api) -> None:
    mark = marker()
    name = api.deploy(SLEEPER, timeout=1, user_data={"FGD_TEST_MARK": mark})["func_name"]
    started = time.monotonic()
    response = api.invoke(name)
    elapsed = time.monotonic() - started
    assert response.headers["x-is-func-err"] == "true"
    body = response.json()
    assert body["errorType"] == "Runtime.Timeout"
    assert "1 s" in body["errorMessage"]
    assert 1.0 <= elapsed < 1.5
    assert wait_none_with(mark)


def test_subprocesses_of_timed_out_handler_are_killed_too(api: Api) -> None:
    mark = marker()
    name = api.deploy(SLEEPER, timeout=1, user_data={"FGD_TEST_MARK": mark})["func_name"]
    response = api.invoke(name, {"detached": True})
    assert response.json()["errorType"] == "Runtime.Timeout"
    assert wait_none_with(mark)


def test_function_works_again_after_a_timeout(api: Api) -> None:
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
