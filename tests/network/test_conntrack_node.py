"""Issue 14, attacker's pass: the per-instance connection-tracking limit also bounds connections
to the node itself (a destination the operator allowed on the node, the DNS forwarder), not only
those forwarded out of it."""

from __future__ import annotations

from tests.conftest import Api
from tests.network.conftest import NODE_ADDRESS, deploy_probe, run_steps
from tests.network.test_policy import gateway_port


def test_connections_to_an_allowed_node_port_count_against_the_conntrack_limit(node_api: Api) -> None:
    port = gateway_port(node_api.daemon)
    name = deploy_probe(node_api, network={"allow": [{"cidr": f"{NODE_ADDRESS}/32", "ports": [port]}]})
    (held,) = run_steps(node_api, name, {"do": "many", "host": NODE_ADDRESS, "port": port, "count": 48})
    # conntrack_limit = 32 in the lab's config: the rest are refused at once, as going out.
    assert held["connected"] <= 32
    assert held["errors"] == {"ECONNREFUSED": 48 - held["connected"]}
