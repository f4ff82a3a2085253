"""Issue 14, attacker's pass: a destination range that happens to contain the node's own address
(a function allowed the whole LAN, every port) does not open the node: its sshd, gateway and
admin API stay unreachable unless an entry names the node's address itself (a /32)."""

from __future__ import annotations

from tests.conftest import Api
from tests.network.conftest import NODE_ADDRESS, deploy_probe, run_steps
from tests.network.test_policy import gateway_port

DENIED = {"error": "ECONNREFUSED"}


def test_a_range_containing_the_node_does_not_open_the_node(node_api: Api) -> None:
    port = gateway_port(node_api.daemon)
    name = deploy_probe(node_api, network={"allow": [{"cidr": "192.168.77.0/24"}]})
    lan, node_gateway, node_ssh = run_steps(
        node_api,
        name,
        {"do": "tcp", "host": "192.168.77.2", "port": 1883},
        {"do": "http", "host": NODE_ADDRESS, "port": port, "path": "/nothing"},
        {"do": "tcp", "host": NODE_ADDRESS, "port": 22},
    )
    assert lan == {"body": f"broker:1883 {NODE_ADDRESS}\n"}  # the LAN it was allowed
    assert node_gateway == DENIED
    assert node_ssh == DENIED  # (no sshd in the lab: refused either way; the gateway tells)
