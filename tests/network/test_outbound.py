"""Issue 14: a function in `outbound` mode reaches the outside world, through NAT, by name and address."""

from __future__ import annotations

import time

import httpx

from tests.conftest import Api
from tests.network.conftest import NODE_ADDRESS, deploy_probe, run_steps


def metrics_text(api: Api) -> str:
    daemon = api.daemon
    return httpx.get(f"{daemon.url}/metrics", headers={"X-Auth-Token": daemon.token}).text


def metric_value(text: str, series: str) -> int:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


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


def test_dns_and_hosts_inside_the_sandbox(node_api: Api) -> None:
    name = deploy_probe(node_api)
    resolv, hosts, localhost, unknown = run_steps(
        node_api,
        name,
        {"do": "file", "path": "/etc/resolv.conf"},
        {"do": "file", "path": "/etc/hosts"},
        {"do": "resolve", "name": "localhost"},
        {"do": "resolve", "name": "nothing.fgd.test"},
    )
    assert resolv["text"].splitlines()[0] == "nameserver 198.51.100.53"
    assert "127.0.0.1 localhost" in hosts["text"]
    assert localhost == {"address": "127.0.0.1"}
    assert unknown == {"error": "gaierror"}


def test_an_outbound_instance_has_one_interface_with_a_private_address_and_no_ipv6(node_api: Api) -> None:
    name = deploy_probe(node_api)
    interfaces, address, inet6 = run_steps(
        node_api,
        name,
        {"do": "interfaces"},
        {"do": "address"},
        {"do": "file", "path": "/proc/net/if_inet6"},
    )
    assert sorted(interfaces["names"]) == ["eth0", "lo"]
    assert address["address"].startswith("10.213.")
    # Only loopback's ::1: eth0 has no IPv6 address at all, not even link-local.
    assert "eth0" not in inet6.get("text", "")


def test_connect_is_allowed_but_listen_stays_denied_for_event_functions(node_api: Api) -> None:
    name = deploy_probe(node_api)
    (listened,) = run_steps(node_api, name, {"do": "listen"})
    assert listened == {"error": "EPERM"}


def test_traffic_counts_per_function_in_metrics(node_api: Api) -> None:
    name = deploy_probe(node_api)
    (download,) = run_steps(node_api, name, {"do": "download", "host": "198.51.100.10", "size": 2_000_000})
    assert download["bytes"] >= 2_000_000
    label = f'function="default/default:{name}"'
    deadline = time.monotonic() + 5
    received = sent = 0
    while time.monotonic() < deadline:
        text = metrics_text(node_api)
        received = metric_value(text, f'fgd_function_network_bytes_total{{{label},direction="in"}}')
        sent = metric_value(text, f'fgd_function_network_bytes_total{{{label},direction="out"}}')
        if received >= 2_000_000:
            break
        time.sleep(0.2)
    assert received >= 2_000_000
    assert 0 < sent < received
    packets = metric_value(metrics_text(node_api), f'fgd_function_network_packets_total{{{label},direction="in"}}')
    # Segments may arrive coalesced (GRO, up to 64 KiB each): at least that many.
    assert packets >= 2_000_000 // 65536
    # A deleted function's series go.
    assert node_api.http.delete(f"/functions/{name}").status_code in (200, 204)
    assert label not in metrics_text(node_api)


def test_bandwidth_limit_per_function(node_api: Api) -> None:
    size = 1_500_000
    limited = deploy_probe(node_api, network={"bandwidth_kbps": 4000})  # 500 kB/s
    free = deploy_probe(node_api)
    (slow,) = run_steps(node_api, limited, {"do": "download", "host": "198.51.100.10", "size": size})
    (fast,) = run_steps(node_api, free, {"do": "download", "host": "198.51.100.10", "size": size})
    assert slow["bytes"] >= size
    assert fast["bytes"] >= size
    # 1.5 MB at 500 kB/s: 3 s nominal; TCP through the policer averages up to about 1.4 times the
    # rate (2.1-2.5 s measured alone, 1.998 s once in a full parallel run), so the bound is twice
    # the rate; unlimited, a small fraction of that (a ratio, not a bound: a loaded machine slows
    # the unlimited download too).
    assert slow["seconds"] > 1.5, slow
    assert fast["seconds"] < slow["seconds"] / 3, (fast, slow)


def test_ipv6_goes_nowhere(node_api: Api) -> None:
    name = deploy_probe(node_api)
    (documentation,) = run_steps(node_api, name, {"do": "tcp", "host": "2001:db8::1", "port": 80})
    assert documentation == {"error": "ENETUNREACH"}
