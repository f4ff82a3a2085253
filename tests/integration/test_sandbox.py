"""The sandbox as the daemon runs it: host checks, degraded mode, the pool, the cgroup limits."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from sandbox.cgroups import favors_dynamic_moves
from tests.conftest import (
    BACKGROUND_SLEEP,
    RUNTIME,
    Api,
    Daemon,
    instance_cgroups,
    marker,
    running,
    wait_none_with,
    zygote_of,
)

# Root-level subtrees carry the pid namespace of their daemon (the tests share it).
PIDNS = os.stat("/proc/self/ns/pid").st_ino

NO_CGROUPS = '[sandbox]\ncgroup_root = "/nonexistent"\n'


def run_fgd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fgd", *args], capture_output=True, text=True, timeout=timeout)


def wait_for(predicate, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_serve_refuses_a_host_without_cgroups_and_names_the_switch(tmp_path: Path) -> None:
    (tmp_path / "fgd.toml").write_text(NO_CGROUPS)
    result = run_fgd("serve", "--state-dir", str(tmp_path / "s"), "--config", str(tmp_path / "fgd.toml"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("fgd: error: this host lacks protections fgd needs: cgroups")
    assert "allow_degraded = true" in lines[-1]
    assert "fgd doctor" in lines[-1]
    assert "Traceback" not in result.stderr


def test_degraded_mode_runs_warns_and_still_kills_on_timeout(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", NO_CGROUPS + "allow_degraded = true\n")
    daemon.start()
    try:
        health = httpx.get(f"{daemon.url}/healthz").json()
        assert health["status"] == "ok"
        assert any(item.startswith("cgroups:") for item in health["degraded"])
        assert "DEGRADED: running without cgroups" in daemon.log()
        api = Api(daemon)
        mark = marker()
        source = BACKGROUND_SLEEP + "import time\ndef handler(e, c):\n    time.sleep(e.get('s', 0))\n    return 'ok'\n"
        name = api.deploy(source, timeout=1, user_data={"FGD_TEST_MARK": mark})["func_name"]
        assert api.invoke(name).content == b"ok"
        assert api.invoke(name, {"s": 5}).json()["errorType"] == "Runtime.Timeout"
        assert wait_none_with(mark)
        assert instance_cgroups(daemon.process.pid) == []
    finally:
        daemon.stop()


def test_doctor_reports_each_protection_and_exit_status(tmp_path: Path) -> None:
    good = run_fgd("doctor")
    assert good.returncode == 0
    names = [line.split()[1] for line in good.stdout.splitlines()[:-1]]
    for name in ("root", "namespace", "cgroups", "seccomp", "function", "memory", "instance"):
        assert name in names
    # Without favordynmods (this host's case), the doctor says what that costs.
    moves = next(line for line in good.stdout.splitlines() if line.split()[1:3] == ["cgroup", "moves"])
    if favors_dynamic_moves():
        assert moves.startswith("ok") and "without waiting" in moves, moves
    else:
        assert moves.startswith("info") and "pool empty" in moves, moves
    assert good.stdout.strip().endswith("fgd serve can start with every protection")
    (tmp_path / "fgd.toml").write_text(NO_CGROUPS)
    bad = run_fgd("doctor", "--config", str(tmp_path / "fgd.toml"))
    assert bad.returncode == 1
    assert any(line.startswith("missing  cgroups") for line in bad.stdout.splitlines())
    assert "would refuse to start" in bad.stdout


def start_runtime(api: Api) -> None:
    """Start the runtime's zygote (and so its pool): it starts on first use. Leaves no instance."""
    name = api.deploy("def handler(e, c):\n    return 1\n")["func_name"]
    assert api.invoke(name).status_code == 200
    assert api.http.delete(f"/functions/{name}").status_code in (200, 204)


def test_pool_is_filled_and_refilled_after_a_cold_start(daemon: Daemon, api: Api) -> None:
    def pool() -> int | None:
        return httpx.get(f"{daemon.url}/healthz").json()["pool"].get(RUNTIME)

    start_runtime(api)
    assert wait_for(lambda: pool() == 2)
    name = api.deploy("def handler(e, c):\n    return 1\n")["func_name"]
    assert api.invoke(name).status_code == 200
    assert wait_for(lambda: pool() == 2)


def test_pool_comes_back_after_the_zygote_is_killed(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    start_runtime(Api(fresh_daemon))
    old = zygote_of(fresh_daemon)
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: zygote_of(fresh_daemon) not in (None, old))
    assert wait_for(lambda: httpx.get(f"{fresh_daemon.url}/healthz").json()["pool"][RUNTIME] == 2)
    api = Api(fresh_daemon)
    assert api.invoke(api.deploy("def handler(e, c):\n    return 'back'\n")["func_name"]).content == b"back"


def test_instance_cgroup_carries_the_function_limits(daemon: Daemon, api: Api) -> None:
    # A memory size no other test uses, to find this instance's cgroup.
    name = api.deploy("def handler(e, c):\n    return 1\n", memory_size=328)["func_name"]
    api.invoke(name)
    limits = []
    for path in instance_cgroups(daemon.process.pid):
        memory = Path(path) / "memory.limit_in_bytes"
        if memory.exists() and int(memory.read_text()) == 328 * 1024 * 1024:
            limits.append(path)
    # The instance, and (issue 15) the pool members made since, given this size's limits in advance.
    assert limits
    processes = []
    for path in limits:
        base = Path(path).name
        cgroup = Path("/sys/fs/cgroup")
        pids = next(cgroup.glob(f"pids/**/fgd*/{base}"))
        cpu = next(cgroup.glob(f"cpu/**/fgd*/{base}"))
        assert (pids / "pids.max").read_text().strip() == "1024"
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == str((328 * 100 // 128 + 200) * 100)
        assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
        processes.append(len((pids / "cgroup.procs").read_text().split()))
    # Issue 15: two processes, PID 1 of the sandbox (reaped by the zygote) and the worker; no waiter.
    # (A pool member being made right now has its cgroup and limits a moment before its processes:
    # 0 or 1 there; a waiter would make 3.)
    assert 2 in processes and max(processes) == 2, processes


def test_all_instances_together_have_a_task_cap(daemon: Daemon) -> None:
    # This host is hybrid v1 with the pids hierarchy's root as the daemon's cgroup: the
    # subtree is the daemon's own (fgd-<pid>), with the node-wide cap below pid_max.
    subtree = Path(f"/sys/fs/cgroup/pids/fgd-{daemon.process.pid}-{PIDNS}")
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert int((subtree / "pids.max").read_text()) == min(pid_max // 2, 32768)


def test_node_task_cap_is_configurable_and_subtrees_go_with_their_daemon(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", "[sandbox]\nnode_pids_max = 3000\n")
    daemon.start()
    pid = daemon.process.pid
    subtree = Path(f"/sys/fs/cgroup/pids/fgd-{pid}-{PIDNS}")
    try:
        assert (subtree / "pids.max").read_text().strip() == "3000"
        api = Api(daemon)
        assert api.invoke(api.deploy("def handler(e, c):\n    return 1\n")["func_name"]).status_code == 200
        # Stop with no instance half-way through its start (that leak is the cold-start path's, not this test's).
        assert wait_for(lambda: httpx.get(f"{daemon.url}/healthz").json()["pool"][RUNTIME] == 2)
    finally:
        daemon.stop()
    # A clean stop leaves neither instance cgroups nor the daemon's own subtree.
    assert instance_cgroups(pid) == []
    assert not subtree.exists()
    assert not Path(f"/sys/fs/cgroup/freezer/fgd-{pid}-{PIDNS}").exists()


def test_a_killed_daemons_cgroups_are_removed_at_the_next_start(tmp_path: Path) -> None:
    first = Daemon(tmp_path / "state")
    first.start()
    api = Api(first)
    mark = marker()
    name = api.deploy(BACKGROUND_SLEEP + "def handler(e, c):\n    return 1\n", user_data={"FGD_TEST_MARK": mark})
    assert api.invoke(name["func_name"]).status_code == 200
    old = first.process.pid
    first.stop(signal.SIGKILL)
    assert instance_cgroups(old), "a SIGKILLed daemon leaves its instance cgroups"
    second = Daemon(tmp_path / "state2")
    second.start()
    try:
        # Another state dir, another daemon: it still cleans what a dead daemon left on the host.
        assert instance_cgroups(old) == []
        assert not Path(f"/sys/fs/cgroup/pids/fgd-{old}-{PIDNS}").exists()
        assert wait_none_with(mark)
    finally:
        second.stop()


def _instance_tasks(daemon_pid: int) -> int:
    total = 0
    for path in instance_cgroups(daemon_pid):
        if "/freezer/" in path:
            with contextlib.suppress(OSError):
                total += len((Path(path) / "cgroup.procs").read_text().split())
    return total


def test_a_fork_bomb_at_128_mb_is_gone_within_a_second_of_its_timeout(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    api = Api(fresh_daemon)
    source = (
        "import os, time\n"
        "def handler(e, c):\n"
        "    while True:\n"
        "        try:\n"
        "            os.fork()\n"
        "        except OSError:\n"
        "            time.sleep(0.001)\n"
    )
    # The pool exists once the runtime's zygote has started (on first use).
    start_runtime(api)
    name = api.deploy(source, memory_size=128, timeout=1)["func_name"]
    pool = 2 * 2  # the pre-contained instances: PID 1 and worker each (issue 15: no waiter)
    assert wait_for(lambda: _instance_tasks(fresh_daemon.process.pid) == pool)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _instance_tasks(fresh_daemon.process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    response = api.invoke(name)
    answered = time.monotonic()
    done.set()
    sampler.join()
    assert response.json()["errorType"] == "Runtime.Timeout"
    # That it was a bomb: at 300 millicores it reaches 150-500 tasks within its second (sampled
    # every 50 ms; 196-200 seen on a slow host, so the bar is not the host's speed).
    assert peak[0] > 100, f"the bomb only reached {peak[0]} tasks"
    assert answered - started < 1.5  # cold start + the 1 s deadline: the kill does not hold the answer
    while _instance_tasks(fresh_daemon.process.pid) > pool and time.monotonic() - answered < 10:
        time.sleep(0.01)
    lingered = time.monotonic() - answered
    answer = answered - started
    print(f"fork bomb of {peak[0]} tasks: answered {answer:.2f} s after the call, gone {lingered * 1000:.0f} ms later")
    assert lingered <= 1.0, f"the fork bomb's processes lingered {lingered:.2f} s after the answer"
    # The node still serves.
    assert api.invoke(api.deploy("def handler(e, c):\n    return 'up'\n")["func_name"]).content == b"up"


ALLOCATE = "def handler(event, context):\n    blob = b'x' * (event['mb'] << 20)\n    return len(blob) >> 20\n"


def test_pool_members_made_for_one_size_still_get_each_functions_own_limits(daemon: Daemon, api: Api) -> None:
    # Issue 15: pool members get the cgroup limits of the size specialised last when they are made,
    # so its cold starts write none; a function of another size must still get its own.
    big = api.deploy(ALLOCATE, memory_size=512, timeout=5)["func_name"]
    small = api.deploy(ALLOCATE, memory_size=128, timeout=5)["func_name"]
    assert api.invoke(big, {"mb": 200}).text == "200"

    def pool() -> int | None:
        return httpx.get(f"{daemon.url}/healthz").json()["pool"].get(RUNTIME)

    assert wait_for(lambda: pool() == 2)  # refilled with 512 MB limits
    response = api.invoke(small, {"mb": 200})
    assert response.json()["errorType"] == "Runtime.OutOfMemory", response.text
    assert wait_for(lambda: pool() == 2)  # refilled with 128 MB limits
    assert api.invoke(big, {"mb": 200}).text == "200"


def test_each_step_of_the_last_cold_start_is_reported(daemon: Daemon, api: Api) -> None:
    source = "def init(context):\n    pass\ndef handler(event, context):\n    return 1\n"
    name = api.deploy(source, initializer_handler="index.init", initializer_timeout=5)["func_name"]
    assert api.invoke(name).status_code == 200
    steps = httpx.get(f"{daemon.url}/healthz").json()["last_cold_start"]
    assert {"zygote", "take_pooled", "cgroup_limits", "specialize_frame", "specialize_in_instance"} <= set(
        steps["daemon"]
    ), steps
    assert {"enter_sandbox", "environment", "load_handler", "initializer"} <= set(steps["instance"]), steps
    assert all(ms >= 0 for side in steps.values() for ms in side.values()), steps
    # The instance's own steps happen within the daemon's round trip to it.
    assert sum(steps["instance"].values()) <= steps["daemon"]["specialize_in_instance"] + 1, steps


def test_a_start_with_the_pool_empty_reports_the_fork_the_cgroup_and_the_containment_apart(tmp_path: Path) -> None:
    # With no pool, the instance is made on the request path; placing it into its cgroup can wait
    # for a kernel grace period (docs/performance.md), so it is a step of its own.
    with running(tmp_path / "state", "[sandbox]\npool_size = 0\n") as daemon:
        api = Api(daemon)
        name = api.deploy("def handler(event, context):\n    return 1\n")["func_name"]
        assert api.invoke(name).status_code == 200
        health = httpx.get(f"{daemon.url}/healthz").json()
        steps = health["last_cold_start"]["daemon"]
    assert health["pool"].get(RUNTIME, 0) == 0
    assert list(steps)[:6] == ["zygote", "take_pooled", "fork", "cgroup_place", "contain", "attach_network"], steps
    assert all(ms >= 0 for ms in steps.values()), steps
