"""Issue 14, attacker's pass: a function's own `network.allow` cannot open what the operator did
not grant. Any project's access key may create a function; were its allow list free, the
function author would allow itself the cloud metadata service (the node's credentials), the
node's sshd and admin API, or 0.0.0.0/0, and the egress policy would protect nothing. Each
entry must lie within `[network] function_allow_within` (the lab grants the LAN 192.168.77.0/24,
the node's address over TCP, the instance range over UDP and the metadata service's port 80)."""

from __future__ import annotations

from tests.conftest import Api
from tests.network.conftest import NODE_ADDRESS, deploy_probe, run_steps

DENIED = {"error": "ECONNREFUSED"}


def test_a_function_cannot_allow_itself_what_the_operator_did_not_grant(node_api: Api) -> None:
    for asked in [
        {"cidr": "0.0.0.0/0"},
        {"cidr": "169.254.169.254/32", "ports": [80, 443]},  # port 443 is not granted
        {"cidr": "169.254.0.0/16", "ports": [80]},  # wider than the grant
        {"cidr": "192.168.77.2", "protocol": "udp"},  # the LAN is granted over TCP only
        {"cidr": "172.16.0.0/12"},
    ]:
        response = node_api.create(b"PK\x05\x06" + b"\0" * 18, network={"allow": [asked]})
        assert response.status_code == 400, (asked, response.text)
        assert "function_allow_within" in response.text, response.text
    # Nor by a later update of a function made without it.
    name = deploy_probe(node_api)
    changed = node_api.http.put(
        f"/functions/{name}/config",
        json={"handler": "index.handler", "network": {"allow": [{"cidr": "0.0.0.0/0"}]}},
    )
    assert changed.status_code == 400, changed.text
    assert node_api.http.get(f"/functions/{name}/config").json()["network"]["allow"] == []
    (blocked,) = run_steps(node_api, name, {"do": "http", "host": "169.254.169.254"})
    assert blocked == DENIED


def test_what_lies_within_a_grant_is_allowed(node_api: Api) -> None:
    name = deploy_probe(node_api, network={"allow": [{"cidr": "192.168.77.2/32", "ports": [1883]}]})
    (broker,) = run_steps(node_api, name, {"do": "tcp", "host": "192.168.77.2", "port": 1883})
    assert broker == {"body": f"broker:1883 {NODE_ADDRESS}\n"}
