"""Issue 14: the daemon's tables, bridge and veths are gone after SIGTERM, and after a SIGKILL
once it starts again. This daemon has names of its own, beside the module's daemon in the lab."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import RUNTIME
from tests.network.conftest import Lab, lab_daemon

OWN_NAMES = """
    bridge = "fgdc0"
    table = "fgdc"
    veth_prefix = "fgdc"
    subnet = "10.214.0.0/16"
"""


def forwarding() -> str:
    """net.ipv4.ip_forward of this thread's network namespace (the lab's node)."""
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


def ours(lab: Lab) -> list[str]:
    return [name for name in lab.node_links() if name.startswith("fgdc")]


def wait_for_pool(lab: Lab, count: int = 3, within: float = 10.0) -> list[str]:
    """The bridge and a veth per pooled instance (pool_size = 2)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        links = ours(lab)
        if len(links) >= count:
            return links
        time.sleep(0.05)
    raise AssertionError(f"the pool's interfaces did not appear: {ours(lab)}")


def start_pool(daemon) -> None:
    # The pool of an interpreter starts with its zygote, on first use: one invocation starts it.
    api = daemon.client()
    created = api.post(
        "/functions",
        json={
            "func_name": "warm",
            "runtime": RUNTIME,
            "handler": "index.handler",
            "code_type": "inline",
            "func_code": {"file": "ZGVmIGhhbmRsZXIoZXZlbnQsIGNvbnRleHQpOgogICAgcmV0dXJuIDEK"},
        },
    )
    assert created.status_code in (200, 409), created.text
    assert api.post("/functions/warm/invocations", json={}).status_code == 200


@pytest.mark.slow
def test_everything_goes_at_sigterm_and_after_a_sigkill_at_the_next_start(lab: Lab, tmp_path: Path) -> None:
    daemon = lab_daemon(tmp_path, OWN_NAMES)
    daemon.start()
    try:
        assert httpx.get(f"{daemon.url}/healthz").json()["network"]["available"] is True
        start_pool(daemon)
        links = wait_for_pool(lab)
        assert "fgdc0" in links
        assert "table inet fgdc" in lab.node_tables()
        assert forwarding() == "1"
        assert daemon.stop(signal.SIGTERM) == 0
        assert ours(lab) == []
        assert "fgdc" not in lab.node_tables()
        # The node did not forward before the daemon: it does not after.
        assert forwarding() == "0"

        daemon.start()
        start_pool(daemon)
        wait_for_pool(lab)
        daemon.stop(signal.SIGKILL)
        # Killed: nothing of it ran its cleanup; the bridge and tables are still there...
        assert "fgdc0" in ours(lab)
        assert "table inet fgdc" in lab.node_tables()
        assert "table bridge fgdc" in lab.node_tables()
        daemon.start()
        # ... until the next start removes them (and makes its own afresh).
        assert "removed network objects left by a previous run" in daemon.log()
        assert daemon.stop(signal.SIGTERM) == 0
        assert ours(lab) == []
        assert "fgdc" not in lab.node_tables()
        # The killed daemon's note in its tables said forwarding was off before it.
        assert forwarding() == "0"
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop(signal.SIGKILL)


@pytest.mark.slow
def test_a_second_daemon_with_the_same_names_leaves_the_first_ones_alone(lab: Lab, tmp_path: Path) -> None:
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    first = lab_daemon(tmp_path / "first", OWN_NAMES)
    second = lab_daemon(tmp_path / "second", OWN_NAMES)
    first.start()
    try:
        second.start()
        try:
            network = httpx.get(f"{second.url}/healthz").json()["network"]
            assert network["available"] is False
            assert f"pid {first.process.pid} owns the table fgdc" in network["detail"]
        finally:
            second.stop()
        # The first one's bridge and tables are still there, and still its own.
        assert "fgdc0" in ours(lab)
        assert "table inet fgdc" in lab.node_tables()
        assert httpx.get(f"{first.url}/healthz").json()["network"]["available"] is True
    finally:
        first.stop()
    assert ours(lab) == []
