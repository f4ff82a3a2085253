"""cgroup backends: the v2 file protocol against a fake tree; detection from /proc texts."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sandbox.cgroups import (
    V1,
    V2,
    CgroupError,
    Limits,
    detect,
    favors_dynamic_moves,
    memory_limit,
    node_pids_max,
    parse_mountinfo,
    parse_proc_cgroup,
)

# Root-level subtrees carry the pid namespace of their daemon (the tests share it).
PIDNS = os.stat("/proc/self/ns/pid").st_ino
MIB = 1024 * 1024


def fake_v2(tmp_path: Path, own: str = "/system.slice/fgd.service", controllers: str = "cpu memory pids io") -> Path:
    mount = tmp_path / "cgroup"
    cgroup = mount / own.lstrip("/")
    cgroup.mkdir(parents=True)
    (cgroup / "cgroup.controllers").write_text(controllers + "\n")
    (cgroup / "cgroup.procs").write_text("100\n101\n")
    (cgroup / "cgroup.subtree_control").write_text("")
    return mount


def test_v2_setup_moves_daemon_to_supervisor_and_delegates_controllers(tmp_path) -> None:
    mount = fake_v2(tmp_path)
    backend = V2(mount, "/system.slice/fgd.service")
    # The fake kernel: a write to cgroup.procs lands in the file (one pid per write).
    supervisor = mount / "system.slice/fgd.service/supervisor"
    backend.setup()
    assert supervisor.is_dir()
    assert (supervisor / "cgroup.procs").read_text() == "101"  # the last of the two writes
    own = mount / "system.slice/fgd.service"
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (own / "fgd" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"


def test_v2_refuses_without_memory_and_pids(tmp_path) -> None:
    mount = fake_v2(tmp_path, controllers="cpu io")
    with pytest.raises(CgroupError, match="memory, pids are not delegated"):
        V2(mount, "/system.slice/fgd.service").setup()


def test_v2_instance_limits_and_counters(tmp_path) -> None:
    mount = fake_v2(tmp_path)
    backend = V2(mount, "/system.slice/fgd.service")
    backend.setup()
    backend.create("123-abc")
    path = mount / "system.slice/fgd.service/fgd/123-abc"
    (path / "memory.swap.max").write_text("max")
    backend.set_limits("123-abc", Limits(256 * MIB, 1024, 400))
    assert (path / "memory.max").read_text() == str(256 * MIB)
    assert (path / "memory.swap.max").read_text() == "0"
    assert (path / "memory.oom.group").read_text() == "1"
    assert (path / "pids.max").read_text() == "1024"
    assert (path / "cpu.max").read_text() == "40000 100000"
    backend.place("123-abc", 4242)
    assert (path / "cgroup.procs").read_text() == "4242"
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n")
    assert backend.oom_kills("123-abc") == 1
    (path / "memory.peak").write_text(str(50 * MIB))
    assert backend.memory_peak("123-abc") == 50 * MIB
    (path / "cgroup.kill").write_text("")
    backend.kill("123-abc")
    assert (path / "cgroup.kill").read_text() == "1"
    # The quota went first: a throttled cgroup would spend its exit in it.
    assert (path / "cpu.max").read_text() == "max 100000"


def test_v2_unlimited_cpu(tmp_path) -> None:
    mount = fake_v2(tmp_path)
    backend = V2(mount, "/x")
    (mount / "x").mkdir()
    (mount / "x" / "cgroup.controllers").write_text("cpu memory pids")
    backend.setup()
    backend.create("i")
    backend.set_limits("i", Limits(MIB, 10, None))
    assert (mount / "x/fgd/i/cpu.max").read_text() == "max 100000"


@pytest.mark.parametrize("name", ["", "a/b", "..", ".hidden", "fgd"])
def test_instance_names_cannot_escape_the_subtree(tmp_path, name: str) -> None:
    backend = V2(fake_v2(tmp_path), "/system.slice/fgd.service")
    with pytest.raises(CgroupError, match="invalid cgroup name"):
        backend.create(name)


def test_subtree_is_beneath_the_daemons_own_cgroup(tmp_path) -> None:
    backend = V2(tmp_path, "/user.slice/session-1.scope")
    assert backend.base == tmp_path / "user.slice/session-1.scope/fgd"
    v1 = V1({"memory": (tmp_path / "memory", "/a/b"), "pids": (tmp_path / "pids", "/")}, owner=4242)
    assert v1.bases["memory"] == tmp_path / "memory/a/b/fgd"
    # At a hierarchy's root (hybrid hosts: pids, cpu, freezer) the subtree is this daemon's alone.
    assert v1.bases["pids"] == tmp_path / f"pids/fgd-4242-{PIDNS}"
    other = V1({"memory": (tmp_path / "memory", "/a/b"), "pids": (tmp_path / "pids", "/")}, owner=4343)
    assert other.bases["pids"] != v1.bases["pids"]


HYBRID_CGROUP = """12:pids:/
11:memory:/process_api/abc
5:freezer:/
3:cpu,cpuacct:/
1:name=systemd:/
0::/
"""
HYBRID_MOUNTINFO = """30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
33 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 25 0:30 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
"""


def test_parse_proc_cgroup() -> None:
    paths = parse_proc_cgroup(HYBRID_CGROUP)
    assert paths["memory"] == "/process_api/abc"
    assert paths["cpu"] == paths["cpuacct"] == "/"
    assert paths[""] == "/"
    assert paths["systemd"] == "/"


def test_parse_mountinfo() -> None:
    mounts = parse_mountinfo(HYBRID_MOUNTINFO)
    assert mounts[0].version == 2 and mounts[0].path == "/sys/fs/cgroup/unified"
    assert {"cpu", "cpuacct"} <= mounts[3].controllers


def test_favordynmods_is_read_from_the_cgroup_mounts_only() -> None:
    assert not favors_dynamic_moves(HYBRID_MOUNTINFO)
    assert not favors_dynamic_moves("")
    v2 = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,favordynmods,memory_recursiveprot\n"
    assert favors_dynamic_moves(v2)
    v1 = HYBRID_MOUNTINFO.replace("cgroup rw,memory", "cgroup rw,memory,favordynmods")
    assert v1 != HYBRID_MOUNTINFO and favors_dynamic_moves(v1)
    # The word anywhere else (a path, another file system's options, a malformed line) is not it.
    others = (
        "40 25 0:40 / /mnt/favordynmods rw - tmpfs tmpfs rw,favordynmods\n"
        "41 25 0:41 / /sys/fs/cgroup/favordynmods rw - cgroup2 cgroup2\n"
        "favordynmods - cgroup2\n"
    )
    assert not favors_dynamic_moves(others)


def test_detect_hybrid_uses_v1(tmp_path) -> None:
    backend = detect(HYBRID_CGROUP, HYBRID_MOUNTINFO)
    assert isinstance(backend, V1)
    assert backend.bases["memory"] == Path("/sys/fs/cgroup/memory/process_api/abc/fgd")
    assert backend.bases["cpu"] == Path(f"/sys/fs/cgroup/cpu,cpuacct/fgd-{os.getpid()}-{PIDNS}")


def test_detect_pure_v2(tmp_path) -> None:
    mount = fake_v2(tmp_path, own="/system.slice/fgd.service")
    mountinfo = f"30 25 0:26 / {mount} rw - cgroup2 cgroup2 rw\n"
    backend = detect("0::/system.slice/fgd.service\n", mountinfo)
    assert isinstance(backend, V2)
    assert backend.base == mount / "system.slice/fgd.service/fgd"


def test_detect_nothing_usable() -> None:
    assert detect("0::/\n", "") is None
    assert detect(HYBRID_CGROUP, HYBRID_MOUNTINFO, root_override="/nonexistent") is None


def fake_v1(tmp_path: Path, own: dict[str, str], owner: int = 4242) -> V1:
    hierarchies = {}
    for controller in ("memory", "pids", "cpu", "freezer"):
        mount = tmp_path / controller
        (mount / own.get(controller, "/").lstrip("/")).mkdir(parents=True, exist_ok=True)
        hierarchies[controller] = (mount, own.get(controller, "/"))
    return V1(hierarchies, owner=owner)


def test_v1_setup_caps_all_instances_together(tmp_path) -> None:
    backend = fake_v1(tmp_path, {"memory": "/session"})
    backend.setup(node_pids=5000)
    assert (tmp_path / f"pids/fgd-4242-{PIDNS}/pids.max").read_text() == "5000"
    assert (tmp_path / "memory/session/fgd").is_dir()
    assert (tmp_path / f"freezer/fgd-4242-{PIDNS}").is_dir()


def test_v2_setup_caps_all_instances_together(tmp_path) -> None:
    mount = fake_v2(tmp_path)
    V2(mount, "/system.slice/fgd.service").setup(node_pids=1234)
    assert (mount / "system.slice/fgd.service/fgd/pids.max").read_text() == "1234"


def test_v2_at_the_root_moves_nothing_and_is_private(tmp_path) -> None:
    mount = fake_v2(tmp_path, own="/")
    backend = V2(mount, "/", owner=77)
    backend.setup(node_pids=10)
    assert backend.base == mount / f"fgd-77-{PIDNS}"
    assert not (mount / "supervisor").exists()
    assert (mount / f"fgd-77-{PIDNS}/pids.max").read_text() == "10"


def test_node_pids_default_is_well_below_pid_max(tmp_path) -> None:
    pid_max = tmp_path / "pid_max"
    pid_max.write_text("4194304\n")
    assert node_pids_max(None, str(pid_max)) == 32768
    pid_max.write_text("32768\n")
    assert node_pids_max(None, str(pid_max)) == 16384
    assert node_pids_max(900, str(pid_max)) == 900


def test_v1_remove_takes_each_hierarchy_on_its_own(tmp_path) -> None:
    backend = fake_v1(tmp_path, {})
    backend.setup()
    # A daemon that died half-way: the instance exists in memory and cpu, not in freezer or pids.
    (backend.bases["memory"] / "99-a").mkdir()
    (backend.bases["cpu"] / "99-a").mkdir()
    assert backend.names() == ["99-a"]
    backend.kill("99-a")  # no freezer directory: still kills through the others, no error
    assert backend.remove("99-a") is True
    assert backend.names() == []
    with pytest.raises(CgroupError, match="no cgroup"):
        backend.kill("99-a")


def test_v1_remove_of_a_busy_cgroup_kills_again_and_says_so(tmp_path) -> None:
    backend = fake_v1(tmp_path, {})
    backend.setup()
    backend.create("1-b")
    for path in backend._paths("1-b").values():
        (path / "cgroup.procs").write_text("")
    (backend.bases["freezer"] / "1-b/freezer.state").write_text("THAWED")
    (backend.bases["cpu"] / "1-b/cpu.cfs_quota_us").write_text("50000")
    # The fake directories hold files, so rmdir fails as it would with processes inside.
    assert backend.remove("1-b") is False
    # The retry lifted the CPU quota and left the cgroup thawed.
    assert (backend.bases["cpu"] / "1-b/cpu.cfs_quota_us").read_text() == "-1"
    assert (backend.bases["freezer"] / "1-b/freezer.state").read_text() == "THAWED"


def test_abandoned_subtrees_of_dead_daemons_are_found_not_live_ones(tmp_path) -> None:
    backend = fake_v1(tmp_path, {"memory": "/session"}, owner=10)
    backend.setup()
    dead = tmp_path / f"pids/fgd-11-{PIDNS}"
    (dead / "11-x").mkdir(parents=True)
    live = tmp_path / f"pids/fgd-12-{PIDNS}"
    live.mkdir()
    # A daemon of another pid namespace (a container): its pid means nothing here, never "dead".
    elsewhere = tmp_path / f"pids/fgd-13-{PIDNS + 1}"
    (elsewhere / "13-y").mkdir(parents=True)
    # A subtree named by an earlier release (no namespace): judged by its pid, as before.
    legacy = tmp_path / "pids/fgd-14"
    legacy.mkdir()
    (tmp_path / "pids/unrelated").mkdir()
    found = backend.abandoned(lambda pid: pid == 12)
    assert sorted(found) == sorted([dead, legacy])
    assert backend.remove_abandoned(dead) is True
    assert not dead.exists() and live.exists() and backend.bases["pids"].exists()
    assert (elsewhere / "13-y").is_dir()
    # The memory subtree is beneath a session cgroup, shared by design: never "abandoned".
    assert all("memory" not in str(p) for p in backend.abandoned(lambda pid: False))


def test_memory_limit_is_the_smallest_on_the_way_up_v2(tmp_path) -> None:
    mount = tmp_path / "cgroup"
    service = mount / "system.slice/fgd.service"
    service.mkdir(parents=True)
    (mount / "system.slice/memory.max").write_text("536870912\n")
    (service / "memory.max").write_text("max\n")
    mountinfo = f"30 25 0:26 / {mount} rw - cgroup2 cgroup2 rw\n"
    assert memory_limit("0::/system.slice/fgd.service\n", mountinfo) == 512 * MIB
    (service / "memory.max").write_text("268435456\n")
    assert memory_limit("0::/system.slice/fgd.service\n", mountinfo) == 256 * MIB
    (mount / "system.slice/memory.max").write_text("max\n")
    (service / "memory.max").write_text("max\n")
    assert memory_limit("0::/system.slice/fgd.service\n", mountinfo) is None


def test_memory_limit_v1_treats_the_huge_default_as_unlimited(tmp_path) -> None:
    mount = tmp_path / "memory"
    own = mount / "process_api/abc"
    own.mkdir(parents=True)
    (mount / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (mount / "process_api/memory.limit_in_bytes").write_text("9223372036854771712\n")
    (own / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    mountinfo = f"31 25 0:27 / {mount} rw - cgroup cgroup rw,memory\n"
    assert memory_limit("4:memory:/process_api/abc\n", mountinfo) is None
    (mount / "process_api/memory.limit_in_bytes").write_text(str(512 * MIB))
    assert memory_limit("4:memory:/process_api/abc\n", mountinfo) == 512 * MIB


V1_ROOT = Path("/sys/fs/cgroup")


@pytest.mark.skipif(
    os.geteuid() != 0 or not (V1_ROOT / "freezer").is_dir(), reason="needs root on a cgroup v1 host (this one)"
)
def test_v1_kill_of_a_fork_bomb_leaves_nothing_within_a_second() -> None:
    """A fork bomb at 128 MB under a small CPU quota: every process gone <= 1 s after the kill."""
    backend = detect()
    assert isinstance(backend, V1)
    backend.setup()
    name = f"{os.getpid()}-forkbomb"
    backend.create(name)
    backend.set_limits(name, Limits(128 * MIB, 1024, 300))
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    gate_r, gate_w = os.pipe()
    process = subprocess.Popen(
        ["python3", "-c", f"import os; os.read({gate_r}, 1)\n{bomb}"], pass_fds=(gate_r,), start_new_session=True
    )
    try:
        backend.place(name, process.pid)
        os.write(gate_w, b"x")
        deadline = time.monotonic() + 5
        while len(backend.pids(name)) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(backend.pids(name)) >= 200, "the bomb did not get going"
        started = time.monotonic()
        backend.kill(name)
        kill_took = time.monotonic() - started
        while not backend.remove(name) and time.monotonic() - started < 5:
            time.sleep(0.02)
        gone_after = time.monotonic() - started
        assert kill_took < 0.2, f"kill blocked for {kill_took:.3f} s"
        print(f"kill {kill_took * 1000:.1f} ms; all gone after {gone_after * 1000:.0f} ms")
        assert gone_after <= 1.0, f"processes lingered {gone_after:.2f} s"
        assert name not in backend.names()
    finally:
        os.close(gate_r)
        os.close(gate_w)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        for _ in range(100):
            with contextlib.suppress(CgroupError):
                if backend.remove(name):
                    break
            time.sleep(0.02)
        backend.teardown()


def test_v1_teardown_leaves_a_shared_fgd_subtree_for_the_other_daemons(tmp_path) -> None:
    # Two daemons in one cgroup share its `fgd` subtree: the first to stop must not take it away.
    first = fake_v1(tmp_path, {c: "/session" for c in ("memory", "pids", "cpu", "freezer")}, owner=4242)
    second = fake_v1(tmp_path, {c: "/session" for c in ("memory", "pids", "cpu", "freezer")}, owner=4343)
    first.setup()
    second.setup()
    assert first.bases == second.bases
    first.teardown()
    for base in second.bases.values():
        assert base.is_dir()
    second.create("4343-abc")
    assert all((base / "4343-abc").is_dir() for base in second.bases.values())


def test_v1_teardown_removes_its_own_root_level_subtree(tmp_path) -> None:
    backend = fake_v1(tmp_path, {}, owner=4242)
    backend.setup()
    assert all(base.name.startswith("fgd-4242") for base in backend.bases.values())
    backend.teardown()
    assert not any(base.exists() for base in backend.bases.values())


def test_v2_teardown_leaves_a_shared_fgd_subtree(tmp_path) -> None:
    mount = fake_v2(tmp_path)
    first = V2(mount, "/system.slice/fgd.service", owner=4242)
    first.setup()
    first.teardown()
    assert first.base.name == "fgd" and first.base.is_dir()
