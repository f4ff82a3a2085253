"""The node's memory is what the daemon's cgroup allows, not the host's RAM.

An appliance sets MemoryMax= on the unit; these tests start the daemon in a memory
cgroup of their own (beneath the test's own cgroup) with a 512 MB limit.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, Daemon

LIMIT_MB = 512


def own_memory_cgroup() -> Path | None:
    """This process's cgroup in the v1 memory hierarchy, or the v2 unified one."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::") and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            return Path("/sys/fs/cgroup") / line[3:].lstrip("/")
    return None


@pytest.fixture
def limited_cgroup() -> Iterator[Path]:
    parent = own_memory_cgroup()
    assert parent is not None and parent.is_dir(), "the test host needs a memory cgroup hierarchy"
    group = parent / f"fgd-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    limit = group / "memory.limit_in_bytes"
    (limit if limit.exists() else group / "memory.max").write_text(str(LIMIT_MB * 2**20))
    yield group
    for directory, _dirs, _files in os.walk(group, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def scrape_budget(daemon: Daemon) -> float:
    text = httpx.get(f"{daemon.url}/metrics", headers={"X-Auth-Token": daemon.token}).text
    line = next(line for line in text.splitlines() if line.startswith('fgd_memory_budget_megabytes{kind="total"}'))
    return float(line.split()[-1])


def test_memory_budget_comes_from_the_daemons_cgroup(tmp_path: Path, limited_cgroup: Path) -> None:
    daemon = Daemon(tmp_path / "state")
    daemon.cgroup = limited_cgroup
    daemon.start()
    try:
        assert scrape_budget(daemon) == int(LIMIT_MB * 0.8)
        api = Api(daemon)
        name = api.deploy("def handler(e, c):\n    return 'fits'\n", memory_size=256)["func_name"]
        assert api.invoke(name).content == b"fits"
    finally:
        assert daemon.stop() == 0


def test_instances_killed_by_the_nodes_limit_are_told_the_node_ran_out(tmp_path: Path, limited_cgroup: Path) -> None:
    # An operator who overrides the budget beyond what the cgroup allows: the kernel then kills
    # instances for the node's limit, and each must be told so, not that it broke its own.
    daemon = Daemon(tmp_path / "state", "[scheduler]\nmemory_budget_mb = 4096\nfunction_memory_share = 1.0\n")
    daemon.cgroup = limited_cgroup
    daemon.start()
    try:
        api = Api(daemon)
        source = "import time\ndef handler(e, c):\n    x = b'x' * (190 << 20)\n    time.sleep(3)\n    return len(x)\n"
        names = [api.deploy(source, memory_size=256, timeout=30)["func_name"] for _ in range(4)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda n: api.daemon.client(timeout=60).post(f"/functions/{n}/invocations"), names))
        errors = [a.json() for a in answers if a.headers["x-is-func-err"] == "true"]
        assert errors, "four 190 MB functions fit in 512 MB?"
        for error in errors:
            assert error["errorType"] == "Runtime.OutOfMemory", error
            assert "node ran out of memory" in error["errorMessage"], error
        assert httpx.get(f"{daemon.url}/healthz").json()["status"] == "ok"
    finally:
        assert daemon.stop() == 0


def test_the_oom_killer_prefers_instances_to_the_daemon(daemon: Daemon, api: Api) -> None:
    name = api.deploy(
        "def handler(e, c):\n"
        "    before = open('/proc/self/oom_score_adj').read().strip()\n"
        "    try:\n"
        "        open('/proc/self/oom_score_adj', 'w').write('-500')\n"
        "        lowered = 'yes'\n"
        "    except OSError as exc:\n"
        "        lowered = type(exc).__name__\n"
        "    return [before, lowered]\n"
    )["func_name"]
    assert api.invoke(name).json() == ["500", "PermissionError"]
    # -900 where the daemon holds CAP_SYS_RESOURCE (a real host), 0 in a container without it.
    assert int(Path(f"/proc/{daemon.process.pid}/oom_score_adj").read_text()) <= 0
