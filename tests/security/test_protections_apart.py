"""Each protection switched off in turn: every other one still holds in a real function.

Before, switching the mounts off also dropped the uid, the capabilities,
rlimits, closed descriptors and seccomp: the function ran as root and read
the admin token while /healthz named one missing item. Here a daemon runs
with one protection off (`[sandbox] disable`), /healthz and `fgd doctor`
name exactly that one (and mounts with namespaces, which they need), and a
function reports what it sees.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Api, Daemon, instance_cgroups

PROTECTIONS = ["namespaces", "mounts", "credentials", "capabilities", "rlimits", "fds", "seccomp", "cgroups"]

PROBE = """
import os, resource, socket, stat

def handler(event, context):
    status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
    def can_read(path):
        try:
            with open(path) as handle:
                handle.read()
            return True
        except OSError:
            return False
    listing = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    fds = sorted(int(fd) for fd in os.listdir(listing) if int(fd) != listing)
    os.close(listing)
    extra = []
    for fd in fds:
        if fd <= 2:
            continue
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue  # the listing's own descriptor, gone already
        # The protocol socket stays, and (without mounts) the code tree's directory.
        if not (stat.S_ISSOCK(mode) or stat.S_ISDIR(mode)):
            extra.append(fd)
    return {
        "uid": os.getuid(), "pid": os.getpid(), "code_mounted": os.path.isdir("/opt/function/code"),
        "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
        "seccomp": status["Seccomp"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
        "token": can_read(event["token"]), "state_visible": os.path.exists(event["state"]),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)), "extra_fds": extra,
        "packet_socket": can_open_packet_socket(),
    }

def can_open_packet_socket():
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0).close()
        return True
    except OSError:
        return False
"""


@pytest.fixture(scope="module", params=PROTECTIONS)
def without(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Daemon]]:
    off = request.param
    config = f'[sandbox]\nallow_degraded = true\ndisable = ["{off}"]\n'
    daemon = Daemon(tmp_path_factory.mktemp(f"no-{off}") / "state", config)
    daemon.start()
    yield off, daemon
    daemon.stop()


def test_one_off_leaves_every_other_protection_in_force(without: tuple[str, Daemon]) -> None:
    off, daemon = without
    expected_off = {off, "mounts"} if off == "namespaces" else {off}
    # /healthz names exactly what is off.
    degraded = httpx.get(f"{daemon.url}/healthz").json()["degraded"]
    assert {item.split(":")[0] for item in degraded} == expected_off, degraded
    assert f"DEGRADED: running without {off}" in daemon.log()

    api = Api(daemon)
    name = api.deploy(textwrap.dedent(PROBE))["func_name"]
    event = {"token": str(daemon.state_dir / "admin.token"), "state": str(daemon.state_dir)}
    response = api.invoke(name, event)
    assert response.headers["x-is-func-err"] == "false", response.text
    seen = response.json()
    on = set(PROTECTIONS) - expected_off

    # What is on holds ...
    if "namespaces" in on:
        assert seen["pid"] == 2, seen
    if "mounts" in on:
        assert seen["state_visible"] is False and seen["code_mounted"] is True, seen
    if "credentials" in on:
        assert 200_000 <= seen["uid"] < 265_536, seen
    if "capabilities" in on:
        assert seen["cap_eff"] == seen["cap_bnd"] == "0000000000000000", seen
    if "rlimits" in on:
        assert seen["nofile"] == [2048, 2048], seen
    if "fds" in on:
        assert seen["extra_fds"] == [], seen
    if "seccomp" in on:
        assert seen["seccomp"] == "2" and seen["packet_socket"] is False, seen
    if "cgroups" in on:
        assert instance_cgroups(daemon.process.pid), "the instance should be in its own cgroup"
    # ... whatever is off: never root with capabilities, never the admin token, always no_new_privs.
    assert seen["uid"] != 0 or seen["cap_eff"] == "0000000000000000", seen
    assert seen["token"] is False, seen
    assert seen["no_new_privs"] == "1", seen

    # ... and what is off is really off (the switch is not a label).
    if off == "namespaces":
        assert seen["pid"] != 2
    elif off == "mounts":
        assert seen["code_mounted"] is False
    elif off == "credentials":
        assert seen["uid"] == 0
    elif off == "capabilities":
        assert seen["cap_bnd"] != "0000000000000000"
    elif off == "rlimits":
        assert seen["nofile"] != [2048, 2048]
    elif off == "seccomp":
        assert seen["seccomp"] == "0"
    elif off == "cgroups":
        assert instance_cgroups(daemon.process.pid) == []


def test_doctor_names_what_is_switched_off(tmp_path) -> None:
    config = tmp_path / "fgd.toml"
    config.write_text('[sandbox]\nallow_degraded = true\ndisable = ["seccomp", "fds"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "fgd", "doctor", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    off = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("off ")]
    assert off == ["fds", "seccomp"]
    assert result.stdout.strip().endswith("fgd serve would run DEGRADED without: fds, seccomp")
    config.write_text('[sandbox]\ndisable = ["seccomp"]\n')
    refused = subprocess.run(
        [sys.executable, "-m", "fgd", "doctor", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 1
    assert "would refuse to start: missing seccomp" in refused.stdout


def test_an_unknown_protection_name_is_refused(tmp_path) -> None:
    config = tmp_path / "fgd.toml"
    config.write_text('[sandbox]\nallow_degraded = true\ndisable = ["seccom"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "fgd", "doctor", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "disable" in result.stdout + result.stderr


def _facts(**failing: str):
    from fgd.sandboxing import Check, HostFacts

    names = ["root", *(f"namespace {k}" for k in ("mnt", "pid", "net", "ipc", "uts", "cgroup")), "cgroups"]
    names += ["seccomp", "function uids"]
    return HostFacts([Check(n, n not in failing, failing.get(n, "fine")) for n in names])


def test_a_host_without_root_keeps_what_needs_no_root() -> None:
    from fgd.sandboxing import protections_for

    protections, off = protections_for(_facts(root="not root", cgroups="no", **{"function uids": "no root"}))
    # rlimits, closed descriptors and seccomp need no privilege: they stay on.
    assert protections.rlimits and protections.fds and protections.seccomp
    assert sorted(protections.off()) == ["capabilities", "cgroups", "credentials", "mounts", "namespaces"]
    assert [line.split(":")[0] for line in off] == protections.off()


def test_a_missing_namespace_takes_mounts_and_nothing_else() -> None:
    from fgd.sandboxing import protections_for

    protections, off = protections_for(_facts(**{"namespace pid": "not in this kernel"}))
    assert protections.off() == ["namespaces", "mounts"]
    assert off == ["namespaces: not in this kernel", "mounts: needs namespaces"]
    protections, off = protections_for(_facts(), ["fds"])
    assert off == ["fds: switched off by [sandbox] disable"]
