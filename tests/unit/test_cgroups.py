"""cgroup backends: the v2 file protocol against a fake tree; detection from /proc texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.cgroups import V1, V2, CgroupError, Limits, detect, parse_mountinfo, parse_proc_cgroup

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
    v1 = V1({"memory": (tmp_path / "memory", "/a/b"), "pids": (tmp_path / "pids", "/")})
    assert v1.bases["memory"] == tmp_path / "memory/a/b/fgd"
    assert v1.bases["pids"] == tmp_path / "pids/fgd"


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


def test_detect_hybrid_uses_v1(tmp_path) -> None:
    backend = detect(HYBRID_CGROUP, HYBRID_MOUNTINFO)
    assert isinstance(backend, V1)
    assert backend.bases["memory"] == Path("/sys/fs/cgroup/memory/process_api/abc/fgd")
    assert backend.bases["cpu"] == Path("/sys/fs/cgroup/cpu,cpuacct/fgd")


def test_detect_pure_v2(tmp_path) -> None:
    mount = fake_v2(tmp_path, own="/system.slice/fgd.service")
    mountinfo = f"30 25 0:26 / {mount} rw - cgroup2 cgroup2 rw\n"
    backend = detect("0::/system.slice/fgd.service\n", mountinfo)
    assert isinstance(backend, V2)
    assert backend.base == mount / "system.slice/fgd.service/fgd"


def test_detect_nothing_usable() -> None:
    assert detect("0::/\n", "") is None
    assert detect(HYBRID_CGROUP, HYBRID_MOUNTINFO, root_override="/nonexistent") is None
