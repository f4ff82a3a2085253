"""Issue 14: a function in `outbound` mode reaches the outside world, through NAT, by name and address."""

from __future__ import annotations

from tests.conftest import Api
from tests.network.conftest import NODE_ADDRESS, deploy_probe, run_steps


def test_outbound_fetches_from_the_test_server_by_address_and_by_name(node_api: Api) -> None:
    name = deploy_probe(node_api)
    by_address, resolved, by_name = run_steps(
        node_api,
        name,
        {"do": "http", "host": "198.51.100.10"},
        {"do": "resolve", "name": "web.fgd.test"},
        {"do": "http", "host": "web.fgd.test"},
    )
    # The server sees the node's address: the instance's own was masqueraded on the way out.
    assert by_address == {"body": f"outside {NODE_ADDRESS}"}
    assert resolved == {"address": "198.51.100.10"}
    assert by_name == {"body": f"outside {NODE_ADDRESS}"}
