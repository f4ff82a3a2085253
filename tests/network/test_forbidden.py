"""Issue 14: a node that forbids outbound; `fgd doctor` on networking."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import Api
from tests.network.conftest import Lab, deploy_probe, lab_daemon, run_steps

FORBIDDEN = """
    allow_outbound = false
    bridge = "fgdf0"
    table = "fgdf"
    veth_prefix = "fgdf"
"""


def test_a_node_that_forbids_outbound_sets_up_nothing_and_refuses_asking_for_it(lab: Lab, tmp_path: Path) -> None:
    daemon = lab_daemon(tmp_path, FORBIDDEN)
    daemon.start()
    try:
        network = httpx.get(f"{daemon.url}/healthz").json()["network"]
        assert network["available"] is False
        assert "allow_outbound = false" in network["detail"]
        assert network["default_mode"] == "none"
        api = Api(daemon)
        refused = api.create(b"PK\x05\x06" + b"\0" * 18, network={"mode": "outbound"})
        assert refused.status_code == 400
        assert "allow_outbound" in refused.text
        name = deploy_probe(api)
        assert api.http.get(f"/functions/{name}/config").json()["network"]["mode"] == "none"
        interfaces, fetched = run_steps(api, name, {"do": "interfaces"}, {"do": "http", "host": "198.51.100.10"})
        assert interfaces == {"names": ["lo"]}
        assert fetched == {"error": "ENETUNREACH"}
        assert not [link for link in lab.node_links() if link.startswith("fgdf")]
        assert "fgdf" not in lab.node_tables()
    finally:
        daemon.stop()


def test_doctor_reports_networking_and_why_not(tmp_path: Path) -> None:
    config = tmp_path / "fgd.toml"
    config.write_text("[network]\nallow_outbound = false\n")
    env = {**os.environ, "FGD_NETWORK_OFF": ""}
    done = subprocess.run(
        [sys.executable, "-m", "fgd", "doctor", "--config", str(config)], capture_output=True, text=True, env=env
    )
    line = next(line for line in done.stdout.splitlines() if " network " in line)
    assert line.split()[0] == "info"
    assert "allow_outbound = false" in line
    config.write_text('[network]\nsubnet = "10.99.0.0/16"\n')
    done = subprocess.run(
        [sys.executable, "-m", "fgd", "doctor", "--config", str(config)], capture_output=True, text=True, env=env
    )
    line = next(line for line in done.stdout.splitlines() if " network " in line)
    assert line.split()[0] == "ok"
    assert "10.99.0.0/16" in line


def test_config_refuses_a_public_or_malformed_instance_range(tmp_path: Path) -> None:
    for subnet in ("8.8.8.0/24", "10.0.0.0/30", "10.0.0.0/4", "fd00::/64", "nonsense"):
        config = tmp_path / "fgd.toml"
        config.write_text(f'[network]\nsubnet = "{subnet}"\n')
        done = subprocess.run(
            [sys.executable, "-m", "fgd", "doctor", "--config", str(config)], capture_output=True, text=True
        )
        assert done.returncode != 0
        assert "subnet" in done.stderr, done.stderr


def test_an_instance_range_the_node_uses_makes_networking_unavailable_not_broken(lab: Lab, tmp_path: Path) -> None:
    daemon = lab_daemon(
        tmp_path, 'bridge = "fgdo0"\ntable = "fgdo"\nveth_prefix = "fgdo"\nsubnet = "192.168.77.0/24"\n'
    )
    daemon.start()
    try:
        network = httpx.get(f"{daemon.url}/healthz").json()["network"]
        assert network["available"] is False
        assert "overlaps the node's address 192.168.77.5/24" in network["detail"]
        # Nothing half-made is left, and functions run (with loopback only).
        assert not [link for link in lab.node_links() if link.startswith("fgdo")]
        assert "fgdo" not in lab.node_tables()
        api = Api(daemon)
        name = deploy_probe(api)
        assert run_steps(api, name, {"do": "interfaces"}) == [{"names": ["lo"]}]
    finally:
        daemon.stop()
