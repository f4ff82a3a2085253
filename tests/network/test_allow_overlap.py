"""Issue 14, attacker's pass: a function's allow list whose entries overlap (or repeat a port)
cannot be loaded into the firewall's interval set; it was stored, and every instance of the
function then failed to start ("File exists"). Refused at create and update instead."""

from __future__ import annotations

from tests.conftest import Api
from tests.network.conftest import deploy_probe, run_steps


def test_overlapping_destinations_are_refused_naming_them(node_api: Api) -> None:
    for allow in [
        [{"cidr": "192.168.77.0/24"}, {"cidr": "192.168.77.2", "ports": [1883]}],
        [{"cidr": "192.168.77.2", "ports": [1883, 1884]}, {"cidr": "192.168.77.0/30", "ports": [1884]}],
        [{"cidr": "192.168.77.2", "ports": [1883, 1883]}],
    ]:
        response = node_api.create(b"PK\x05\x06" + b"\0" * 18, network={"allow": allow})
        assert response.status_code == 400, (allow, response.text)
        assert "overlap" in response.text or "twice" in response.text, response.text
    # The same range over the other protocol, or other ports of one address, is fine and works.
    name = deploy_probe(
        node_api,
        network={
            "allow": [
                {"cidr": "192.168.77.2", "ports": [1883]},
                {"cidr": "192.168.77.2", "ports": [80]},
                {"cidr": "192.168.77.2", "ports": [5997], "protocol": "udp"},
            ]
        },
    )
    broker, web = run_steps(
        node_api, name, {"do": "tcp", "host": "192.168.77.2", "port": 1883}, {"do": "http", "host": "192.168.77.2"}
    )
    assert broker["body"].startswith("broker:1883")
    assert web["body"].startswith("lan-web")
