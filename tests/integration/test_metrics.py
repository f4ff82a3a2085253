"""GET /metrics: Prometheus text whose counters move with what happens."""

from __future__ import annotations

import re

import httpx

from tests.conftest import Api, Daemon


def scrape(daemon: Daemon) -> dict[str, float]:
    response = httpx.get(f"{daemon.url}/metrics", headers={"X-Auth-Token": daemon.token})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_need_the_token(daemon: Daemon) -> None:
    assert httpx.get(f"{daemon.url}/metrics").status_code == 401


def test_counters_move_with_invocations(api: Api) -> None:
    source = (
        "import time\ndef handler(e, c):\n    if e.get('fail'):\n        raise ValueError('x')\n"
        "    time.sleep(e.get('s', 0))\n    return 1\n"
    )
    name = api.deploy(source, timeout=1)["func_name"]
    disabled = api.deploy("def handler(e, c):\n    return 1\n", strategy_config={"concurrency": 0})["func_name"]
    label = f'function="default/default:{name}"'
    api.invoke(name)
    api.invoke(name)
    warm = scrape(api.daemon)
    assert warm['fgd_memory_budget_megabytes{kind="used"}'] >= 128
    assert warm['fgd_instances{state="idle"}'] >= 1
    api.invoke(name, {"fail": True})
    api.invoke(name, {"s": 5})
    api.invoke(disabled)
    values = scrape(api.daemon)
    assert values[f'fgd_invocations_total{{{label},outcome="success"}}'] == 2
    assert values[f'fgd_invocations_total{{{label},outcome="function_error"}}'] == 1
    assert values[f'fgd_invocations_total{{{label},outcome="timeout"}}'] == 1
    assert values[f"fgd_timeouts_total{{{label}}}"] == 1
    assert values[f"fgd_cold_starts_total{{{label}}}"] == 1
    assert values[f"fgd_invocation_duration_seconds_count{{{label}}}"] == 4
    assert values[f'fgd_invocation_duration_seconds_bucket{{{label},le="+Inf"}}'] == 4
    assert values[f"fgd_invocation_duration_seconds_sum{{{label}}}"] >= 1.0
    assert values[f"fgd_init_duration_seconds_count{{{label}}}"] == 1
    assert values[f'fgd_throttles_total{{function="default/default:{disabled}",reason="throttled"}}'] == 1
    assert values['fgd_memory_budget_megabytes{kind="total"}'] > 0
    assert "fgd_queued_requests" in values
    assert all(re.match(r"^[a-z_]+(\{.*\})?$", key) for key in values)


def test_series_of_a_deleted_function_go_away(api: Api) -> None:
    source = "def handler(e, c):\n    print('x')\n    return 1\n"
    gone = api.deploy(source)["func_name"]
    disabled = api.deploy(source, strategy_config={"concurrency": 0})["func_name"]
    reborn = api.deploy(source)["func_name"]
    for name in (gone, disabled, reborn, reborn):
        api.invoke(name)
    text = httpx.get(f"{api.daemon.url}/metrics", headers={"X-Auth-Token": api.daemon.token}).text
    assert all(f'default:{name}"' in text for name in (gone, disabled, reborn))
    for name in (gone, disabled, reborn):
        assert api.http.delete(f"/functions/{name}").status_code == 204
    # A new function of the same name, invoked before any scrape, starts from zero.
    api.deploy(source, name=reborn)
    api.invoke(reborn)
    text = httpx.get(f"{api.daemon.url}/metrics", headers={"X-Auth-Token": api.daemon.token}).text
    assert f'default:{gone}"' not in text
    assert f'default:{disabled}"' not in text
    values = scrape(api.daemon)
    label = f'function="default/default:{reborn}"'
    assert values[f'fgd_invocations_total{{{label},outcome="success"}}'] == 1
    assert values[f"fgd_invocation_duration_seconds_count{{{label}}}"] == 1
    assert values[f"fgd_cold_starts_total{{{label}}}"] == 1
