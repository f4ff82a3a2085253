"""The cgroup counters every invocation reads (memory peak, OOM kills) are opened when the
instance is made, off the request path, and closed with it (issue 15: the first open of a file of
a new cgroup cost a cold start about 0.1 ms, twice)."""

from __future__ import annotations

import os
import time

import httpx

from tests.conftest import RUNTIME, Api, Daemon

COUNTER_FILES = ("memory.oom_control", "memory.max_usage_in_bytes", "memory.events", "memory.peak")


def counter_descriptors(pid: int) -> list[str]:
    """What the daemon holds open of its instances' cgroup counter files."""
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.rsplit("/", 1)[-1] in COUNTER_FILES and "/fgd/" in link:
            links.append(link)
    return links


def health(daemon: Daemon) -> dict:
    return httpx.get(f"{daemon.url}/healthz", timeout=5).json()


def instance_dirs(pid: int) -> set[str]:
    """The cgroups whose counters the daemon holds, each with both files open."""
    links = counter_descriptors(pid)
    dirs = {link.rsplit("/", 1)[0] for link in links}
    assert len(links) == 2 * len(dirs), links
    return dirs


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_counters_are_open_before_the_first_request_and_closed_with_the_instance(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    api = Api(fresh_daemon)
    pid = fresh_daemon.process.pid
    name = api.deploy("def handler(event, context):\n    return {'ok': True}\n")["func_name"]
    # A first invocation starts the zygote; the pool is then filled with prepared members.
    assert api.invoke(name).status_code == 200
    wait_for(lambda: health(fresh_daemon)["pool"].get(RUNTIME, 0) >= 1)
    # The pool's members have served nothing yet, and hold their counters already.
    wait_for(
        lambda: (
            len(instance_dirs(pid)) == health(fresh_daemon)["instances"] + health(fresh_daemon)["pool"].get(RUNTIME, 0)
        )
    )
    response = api.invoke(name)
    assert response.status_code == 200
    api.http.delete(f"/functions/{name}")
    # The function's instance went: its descriptors are closed; the pool's are kept.
    wait_for(lambda: health(fresh_daemon)["instances"] == 0)
    wait_for(lambda: len(instance_dirs(pid)) == health(fresh_daemon)["pool"].get(RUNTIME, 0))
