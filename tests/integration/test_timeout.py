"""The deadline: the caller hears Runtime.Timeout promptly, and every process is gone."""

from __future__ import annotations

import json
import threading
import time

import httpx

from tests.conftest import Api, marker, ran_ms, wait_none_with

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
    assert 1000 <= ran_ms(response) < 1500
    assert 1.0 <= elapsed < 4.0, elapsed  # a cold start first
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
    response = api.invoke(name)
    assert response.json()["errorType"] == "Runtime.Timeout"
    assert 1000 <= ran_ms(response) < 1800
    assert time.monotonic() - started < 4.0  # a cold start first


def test_a_short_timeout_fires_on_time_while_longer_ones_are_pending(api: Api) -> None:
    # Timeouts are kept by one task (fgd.timeouts) that sleeps until the earliest deadline: one
    # that starts later with an earlier deadline must wake it; the longer ones are not disturbed.
    sleeper = """
        import time

        def handler(event, context):
            time.sleep(event["sleep"])
            return "slept"
    """
    patient = api.deploy(sleeper, timeout=30)["func_name"]
    hasty = api.deploy(sleeper, timeout=1)["func_name"]
    assert api.invoke(hasty, {"sleep": 0}).content == b"slept"  # both warm: no cold start in the timings
    assert api.invoke(patient, {"sleep": 0}).content == b"slept"
    answers: dict[str, tuple[float, httpx.Response]] = {}
    ended: dict[str, float] = {}

    def call(key: str, name: str, sleep: float) -> None:
        started = time.monotonic()
        response = api.invoke(name, {"sleep": sleep})
        answers[key] = (time.monotonic() - started, response)
        ended[key] = time.monotonic()

    long_ones = [threading.Thread(target=call, args=(f"patient{i}", patient, 4)) for i in range(3)]
    for thread in long_ones:
        thread.start()
    time.sleep(0.5)
    short_ones = [threading.Thread(target=call, args=(f"hasty{i}", hasty, 100)) for i in range(8)]
    for thread in short_ones:
        thread.start()
    for thread in short_ones + long_ones:
        thread.join(30)
    # Seven of the eight short ones start an instance first, which a loaded machine can make
    # slow: their timeout is judged by the run the daemon reports (from the event's handover,
    # as FunctionGraph's timeout counts), and all of them end before the first long one does.
    for i in range(8):
        elapsed, response = answers[f"hasty{i}"]
        assert response.json()["errorType"] == "Runtime.Timeout", response.text
        assert 1000 <= ran_ms(response) < 1800, (ran_ms(response), elapsed)
    for i in range(3):
        elapsed, response = answers[f"patient{i}"]
        assert response.content == b"slept" and 4.0 <= elapsed < 6.0, (elapsed, response.text)
    assert max(ended[f"hasty{i}"] for i in range(8)) < min(ended[f"patient{i}"] for i in range(3))
