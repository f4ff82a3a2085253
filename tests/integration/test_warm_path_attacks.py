"""Attacks on issue 15's warm path from inside functions: reserved starts several at once
(fgd.reserved) and the output pipes polled once at a request's end (fgd.instance_output)."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import BACKGROUND_SLEEP, Api, b64, make_zip, marker, pids_with, running, wait_none_with

SLOW_INIT_V = "import time\ndef init(context):\n    time.sleep(1.0)\ndef handler(e, c):\n    return '{v}'\n"


def test_an_update_while_a_reserved_instance_starts_runs_the_new_code(api: Api) -> None:
    # The reserved start began with the old code; the function is updated meanwhile and invoked at
    # once, with room for one instance only: the request must not be handed the old code's instance.
    name = api.deploy(SLOW_INIT_V.format(v="old"), initializer_handler="index.init", initializer_timeout=10)[
        "func_name"
    ]
    assert api.http.put(f"/functions/{name}/config-max-instance", json={"max_instance_num": 1}).status_code == 200
    assert api.http.put(f"/functions/{name}/reservedinstances", json={"count": 1}).status_code == 200
    time.sleep(0.4)  # the reserved instance is in its initializer
    body = {"code_type": "zip", "func_code": {"file": b64(make_zip({"index.py": SLOW_INIT_V.format(v="new")}))}}
    assert api.http.put(f"/functions/{name}/code", json=body).status_code == 200
    response = api.invoke(name)
    assert response.status_code == 200, response.text
    assert response.text == "new"
    api.http.put(f"/functions/{name}/reservedinstances", json={"count": 0})


# -- the instance's output pipes, attacked from inside the function (fgd.instance_output) ----------


def tail_of(response) -> str:
    return base64.b64decode(response.headers["x-cff-function-log"]).decode()


def logs_of(api: Api, name: str, request_id: str) -> list[tuple[str, str]]:
    logs = api.http.get(f"/functions/{name}/logs", params={"request_id": request_id}).json()["logs"]
    return [(line["stream"], line["message"]) for line in logs]


TAIL = {"X-Cff-Log-Type": "tail"}

CLOSER = """
import os, sys

def handler(event, context):
    how = event["how"]
    if how == "close":
        print("before closing", flush=True)
        os.close(1)
        os.close(2)
        # A file now takes fd 1: what the function writes there is not the pipe's.
        fd = os.open("/tmp/out.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.write(fd, b"into the file\\n")
        return fd
    if how == "dup":
        os.dup2(2, 1)
        os.write(1, b"stdout onto stderr\\n")
        return "dup"
    if how == "partial":
        os.write(1, b"no newline at the end")
        return "partial"
    return "plain"
"""


def test_a_function_that_closes_or_swaps_its_output_keeps_its_lines_and_the_daemon(api: Api) -> None:
    name = api.deploy(CLOSER)["func_name"]
    first = api.invoke(name, {"how": "close"}, headers=TAIL)
    assert first.status_code == 200 and first.text == "1"  # fd 1 reused by the file
    assert "before closing" in tail_of(first) and "into the file" not in tail_of(first)
    # The same instance, its output pipes closed: it still answers; nothing it printed before is
    # anyone else's.
    second = api.invoke(name, {"how": "plain"}, headers=TAIL)
    assert second.status_code == 200 and second.text == "plain"
    assert "before closing" not in tail_of(second)
    assert api.http.get("/functions").status_code == 200

    name = api.deploy(CLOSER)["func_name"]
    swapped = api.invoke(name, {"how": "dup"}, headers=TAIL)
    assert swapped.status_code == 200
    assert "stdout onto stderr" in tail_of(swapped)
    name = api.deploy(CLOSER)["func_name"]
    partial = api.invoke(name, {"how": "partial"}, headers=TAIL)
    assert "no newline at the end" in tail_of(partial)
    after = api.invoke(name, {"how": "plain"}, headers=TAIL)
    assert after.status_code == 200 and "no newline" not in tail_of(after)
    assert ("stdout", "no newline at the end") in logs_of(api, name, partial.headers["x-cff-request-id"])


LINGERING = """
import os, subprocess, sys

def handler(event, context):
    if event.get("child"):
        # A child that keeps the pipes and writes once the request has ended, without a newline.
        subprocess.Popen(["sh", "-c", "sleep 0.4; printf 'late from the child'; echo ' and done' >&2"])
        return "left"
    if event.get("die"):
        os.write(1, b"dying words")
        os._exit(3)
    return "next"
"""


def test_a_child_writing_after_its_request_and_a_dying_write_are_attributed(api: Api) -> None:
    name = api.deploy(LINGERING)["func_name"]
    left = api.invoke(name, {"child": True}, headers=TAIL)
    assert left.status_code == 200 and "late from the child" not in tail_of(left)
    time.sleep(1.0)
    # Printed while no request ran, after one that ran alone: that request's, in the function's log.
    owner = left.headers["x-cff-request-id"]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        lines = logs_of(api, name, owner)
        if ("stderr", " and done") in lines:
            break
        time.sleep(0.1)
    assert ("stderr", " and done") in lines
    # The partial stdout line waits for its end, which comes with the next request's end at the latest.
    nxt = api.invoke(name, {}, headers=TAIL)
    assert nxt.status_code == 200
    died = api.invoke(name, {"die": True}, headers=TAIL)
    assert died.status_code == 200 and died.headers["x-is-func-err"] == "true"
    assert "dying words" in tail_of(died)
    assert api.invoke(name, {}).text == "next"


# -- reserved instances started several at once (fgd.reserved) --------------------------------------

FORK_BOMB = """
import os, time

def init(context):
    for _ in range(10_000):
        try:
            if os.fork() == 0:
                time.sleep(1000)
                os._exit(0)
        except OSError:
            break
    time.sleep(1000)

def handler(event, context):
    return "never"
"""
QUICK = "import time\ndef init(context):\n    time.sleep(0.3)\ndef handler(e, c):\n    return 'quick'\n"


def reserved_running(api: Api) -> dict[str, int]:
    rows = api.http.get("/functions/reservedinstances").json()["reservedinstances"]
    return {r["func_urn"].split(":")[-2]: r["running"] for r in rows}


@pytest.mark.slow
def test_many_functions_huge_counts_and_a_fork_bomb_initializer_keep_the_daemon_within_its_limits(
    tmp_path: Path,
) -> None:
    # A budget of 8 instances of 128 MB, 4 of them at most for one function; three functions ask
    # for 40 reserved instances each, a fourth's initializer forks until its pids limit and hangs.
    config = "[scheduler]\nmemory_budget_mb = 1024\n[sandbox]\npids_max = 32\n"
    with running(tmp_path / "state", config) as daemon:
        api = Api(daemon)
        victim = api.deploy("def handler(e, c):\n    return 'victim'\n")["func_name"]
        assert api.http.put(f"/functions/{victim}/reservedinstances", json={"count": 1}).status_code == 200
        mark = marker()
        bomb = api.deploy(
            FORK_BOMB, initializer_handler="index.init", initializer_timeout=2, user_data={"FGD_TEST_MARK": mark}
        )["func_name"]
        greedy = [api.deploy(QUICK, initializer_handler="index.init")["func_name"] for _ in range(3)]
        assert api.invoke(victim).text == "victim"
        assert api.http.put(f"/functions/{bomb}/reservedinstances", json={"count": 3}).status_code == 200
        for name in greedy:
            assert api.http.put(f"/functions/{name}/reservedinstances", json={"count": 40}).status_code == 200
        slowest = 0.0
        most = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            began = time.monotonic()
            assert httpx.get(f"{daemon.url}/healthz", timeout=5).status_code == 200
            assert api.invoke(victim).text == "victim"
            counts = reserved_running(api)
            slowest = max(slowest, time.monotonic() - began)
            most = max(most, sum(counts.values()))
            assert all(counts.get(name, 0) <= 4 for name in greedy), counts
            time.sleep(0.1)
        assert slowest < 1.5, slowest
        assert most <= 8, most
        counts = reserved_running(api)
        assert counts.get(bomb, 0) == 0
        assert sum(counts.get(name, 0) for name in greedy) >= 4  # the others did start meanwhile
        for name in [bomb, *greedy]:
            assert api.http.put(f"/functions/{name}/reservedinstances", json={"count": 0}).status_code == 200
        assert wait_none_with(mark, within=5)
        assert "Traceback" not in daemon.log()


SLOW_MARKED = (
    BACKGROUND_SLEEP + "import time\ndef init(context):\n    time.sleep(0.3)\ndef handler(e, c):\n    return 1\n"
)


def marked_function(api: Api) -> tuple[str, str]:
    mark = marker()
    name = api.deploy(SLOW_MARKED, initializer_handler="index.init", user_data={"FGD_TEST_MARK": mark})["func_name"]
    return name, mark


def settle(mark: str, count: int, within: float = 6.0) -> int:
    deadline = time.monotonic() + within
    while len(pids_with(mark)) != count and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(pids_with(mark))


def test_counts_changed_rapidly_end_with_the_last_count_and_no_stray_instance(api: Api) -> None:
    name, mark = marked_function(api)
    for count in [5, 0, 7, 1, 6, 0, 4, 9, 2, 8, 0, 5] * 2 + [3]:
        assert api.http.put(f"/functions/{name}/reservedinstances", json={"count": count}).status_code == 200
        time.sleep(0.03)
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and not (running_of(api, name) == 3 and len(pids_with(mark)) == 3):
        time.sleep(0.1)
    time.sleep(1.0)  # starts under way then have ended, their surplus gone
    assert running_of(api, name) == 3
    assert settle(mark, 3) == 3  # one marked `sleep` per instance kept, none of the others
    api.http.put(f"/functions/{name}/reservedinstances", json={"count": 0})
    assert settle(mark, 0) == 0


def test_a_function_deleted_while_its_reserved_instances_start_leaves_nothing(api: Api) -> None:
    name, mark = marked_function(api)
    assert api.http.put(f"/functions/{name}/reservedinstances", json={"count": 12}).status_code == 200
    time.sleep(0.5)  # some up, some in their initializer, others waiting for a slot
    assert pids_with(mark)
    assert api.http.delete(f"/functions/{name}").status_code in (200, 204)
    assert settle(mark, 0) == 0
    time.sleep(1.0)  # no start after the deletion either
    assert pids_with(mark) == []
    assert api.http.get(f"/functions/{name}/config").status_code == 404


def running_of(api: Api, name: str) -> int:
    return reserved_running(api).get(name, 0)
