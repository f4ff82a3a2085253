"""Versions and aliases over time: reserved instances per qualifier, async events, restarts, migration."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import time
from pathlib import Path

import httpx

from fgd.store import MIGRATIONS
from tests.conftest import Api, Daemon, b64, make_zip, unique_name
from tests.integration.test_versions import alias, deploy, gateway_source, published, run, set_code, source

FIXTURE = Path(__file__).parent.parent / "fixtures" / "store-v7"


def reserved_rows(api: Api, name: str) -> list[dict]:
    rows = api.http.get("/functions/reservedinstances").json()["reservedinstances"]
    return [r for r in rows if f":{name}:" in r["func_urn"]]


def wait_for(check, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_reserved_instances_per_alias(api: Api) -> None:
    name = deploy(api, "one")
    published(api, name, "v1")
    set_code(api, name, "two")
    published(api, name, "v2")
    assert alias(api, name, "prod", "v1").status_code == 200
    response = api.http.put(f"/functions/{name}:!prod/reservedinstances", json={"count": 1})
    assert response.status_code == 200, response.text
    assert response.json()["func_urn"].endswith(f":{name}:!prod")
    assert wait_for(
        lambda: (
            [(r["qualifier_type"], r["qualifier_name"], r["running"]) for r in reserved_rows(api, name)]
            == [("alias", "prod", 1)]
        )
    )
    # The alias's request finds its reserved instance warm; latest and v1 have none of their own.
    summary = json.loads(api.invoke(f"{name}:!prod").headers["x-cff-invoke-summary"])
    assert (summary["coldStart"], summary["version"], summary["alias"]) == (False, "v1", "prod")
    assert json.loads(api.invoke(f"{name}:v1").headers["x-cff-invoke-summary"])["coldStart"] is True
    configs = api.http.get("/functions/reservedinstanceconfigs").json()["reserved_instances"]
    assert [
        (c["qualifier_type"], c["qualifier_name"], c["min_count"]) for c in configs if f":{name}:" in c["function_urn"]
    ] == [("alias", "prod", 1)]
    # FunctionGraph's rule: not on both an alias and the version it points at.
    refused = api.http.put(f"/functions/{name}:v1/reservedinstances", json={"count": 1})
    assert refused.status_code == 400 and "not both" in refused.json()["error_msg"]
    assert api.http.put(f"/functions/{name}:v2/reservedinstances", json={"count": 1}).status_code == 200
    moved = api.http.put(f"/functions/{name}/aliases/prod", json={"version": "v2"})
    assert moved.status_code == 400 and "not both" in moved.json()["error_msg"]
    # Back to none on the alias: its reserved instance goes; v2's stays.
    assert api.http.put(f"/functions/{name}:!prod/reservedinstances", json={"count": 0}).status_code == 200
    assert wait_for(lambda: [(r["qualifier_name"], r["running"]) for r in reserved_rows(api, name)] == [("v2", 1)])


def test_max_instances_and_async_config_per_qualifier(api: Api) -> None:
    name = deploy(api, "one")
    published(api, name, "v1")
    assert alias(api, name, "prod", "v1").status_code == 200
    # Disabled through the alias only: the version itself still runs.
    response = api.http.put(f"/functions/{name}:!prod/config-max-instance", json={"max_instance_num": 0})
    assert response.status_code == 200, response.text
    assert api.invoke(f"{name}:!prod").status_code == 429
    assert run(api, f"{name}:v1")["version"] == "v1"
    assert (
        api.http.put(f"/functions/{name}:v1/config-max-instance", json={"max_instance_num": 10**20}).status_code == 400
    )
    assert api.http.put(f"/functions/{name}:v1/config-max-instance", json={"max_instance_num": "5"}).status_code == 400
    # Async config: the version's own, latest's untouched.
    body = {"max_async_retry_attempts": 3, "max_async_event_age_in_seconds": 100}
    assert api.http.put(f"/functions/{name}:v1/async-invoke-config", json=body).status_code == 200
    assert api.http.get(f"/functions/{name}:v1/async-invoke-config").json()["max_async_retry_attempts"] == 3
    assert api.http.get(f"/functions/{name}/async-invoke-config").json()["max_async_retry_attempts"] == 1
    # An alias with no async config of its own uses its version's.
    assert api.http.get(f"/functions/{name}:!prod/async-invoke-config").json()["max_async_retry_attempts"] == 3
    body = {"max_async_retry_attempts": 0}
    assert api.http.put(f"/functions/{name}:!prod/async-invoke-config", json=body).status_code == 200
    listed = api.http.get(f"/functions/{name}/async-invoke-configs").json()["async_invoke_configs"]
    assert [(c["func_urn"].rsplit(":", 1)[1], c["max_async_retry_attempts"]) for c in listed] == [
        ("v1", 3),
        ("!prod", 0),
    ]
    assert api.http.delete(f"/functions/{name}:!prod/async-invoke-config").status_code == 204
    assert api.http.get(f"/functions/{name}:!prod/async-invoke-config").json()["max_async_retry_attempts"] == 3


def test_async_events_run_the_version_chosen_when_queued(api: Api) -> None:
    name = deploy(api, "one")
    published(api, name, "v1")
    set_code(api, name, "two")
    published(api, name, "v2")
    assert alias(api, name, "gray", "v1", additional_version_weights={"v2": 100}).status_code == 200
    response = api.http.post(f"/functions/{name}:!gray/invocations-async", json={})
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]

    def finished() -> bool:
        rows = api.http.get(f"/functions/{name}/async-invocations", params={"request_id": request_id}).json()
        return rows["invocations"][0]["status"] == "SUCCESS"

    assert wait_for(finished)
    logs = api.http.get(f"/functions/{name}/logs", params={"request_id": request_id}).json()["logs"]
    assert any("Version: v2, Alias: gray" in line["message"] for line in logs), logs


def test_restart_keeps_versions_aliases_and_bound_triggers(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    api = Api(fresh_daemon)
    name = unique_name("keep")
    api.deploy(gateway_source("one"), name=name, memory_size=192)
    published(api, name, "v1")
    body = {"code_type": "zip", "func_code": {"file": b64(make_zip({"index.py": gateway_source("two")}))}}
    assert api.http.put(f"/functions/{name}/code", json=body).status_code == 200
    published(api, name, "v2")
    assert alias(api, name, "prod", "v1", additional_version_weights={"v2": 0}, description="d").status_code == 200
    route = {"trigger_type_code": "APIG", "event_data": {"name": "r", "path": f"/{name}"}}
    assert api.http.post(f"/triggers/{name}:!prod", json=route).status_code in (200, 201)
    assert api.http.put(f"/functions/{name}:!prod/reservedinstances", json={"count": 1}).status_code == 200
    fresh_daemon.stop()
    fresh_daemon.start()
    api = Api(fresh_daemon)
    assert [v["version"] for v in api.http.get(f"/functions/{name}/versions").json()["versions"]] == [
        "latest",
        "v1",
        "v2",
    ]
    shown = api.http.get(f"/functions/{name}/aliases/prod").json()
    assert (shown["version"], shown["description"], shown["additional_version_weights"]) == ("v1", "d", {"v2": 0})
    answer = httpx.get(f"{fresh_daemon.gateway_url}/{name}", timeout=10)
    assert answer.json() == {"code": "one", "version": "v1", "alias": "prod"}
    assert api.http.get(f"/functions/{name}:v1/config").json()["memory_size"] == 192
    assert wait_for(lambda: [r["running"] for r in reserved_rows(api, name)] == [1])
    fresh_daemon.stop()


def test_a_store_of_the_previous_release_migrates(tmp_path: Path) -> None:
    state = tmp_path / "state"
    shutil.copytree(FIXTURE, state)
    daemon = Daemon(state)
    daemon.start()
    try:
        api = Api(daemon)
        assert run(api, "legacy") == {"old": True, "version": "latest"}
        listing = api.http.get("/functions/legacy/versions").json()
        assert [v["version"] for v in listing["versions"]] == ["latest"]
        assert listing["versions"][0]["memory_size"] == 256
        assert api.http.get("/functions/legacy/aliases").json() == []
        assert [t["event_data"]["name"] for t in api.http.get("/triggers/legacy").json()] == ["tick"]
        # It gains versions like any function.
        published(api, "legacy", "v1")
        assert run(api, "legacy:v1")["version"] == "v1"
    finally:
        daemon.stop()
    with sqlite3.connect(state / "fgd.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("SELECT version FROM versions").fetchall() == [("v1",)]


def test_timer_on_an_alias_follows_it(api: Api) -> None:
    name = deploy(api, "one")
    published(api, name, "v1")
    set_code(api, name, "two")
    published(api, name, "v2")
    assert alias(api, name, "prod", "v1").status_code == 200
    timer = {
        "trigger_type_code": "TIMER",
        "event_data": {"name": "t", "schedule_type": "Cron", "schedule": "@every 1s"},
    }
    created = api.http.post(f"/triggers/{name}:!prod", json=timer)
    assert created.status_code in (200, 201), created.text

    def versions_run() -> list[str]:
        found = []
        for event in api.http.get(f"/functions/{name}/async-invocations", params={"status": "SUCCESS"}).json()[
            "invocations"
        ]:
            logs = api.http.get(f"/functions/{name}/logs", params={"request_id": event["request_id"]}).json()["logs"]
            found += [m.group(0) for line in logs if (m := re.search(r"Version: \S+, Alias: \w+", line["message"]))]
        return found

    assert wait_for(lambda: "Version: v1, Alias: prod" in versions_run(), within=5)
    assert api.http.put(f"/functions/{name}/aliases/prod", json={"version": "v2"}).status_code == 200
    assert wait_for(lambda: "Version: v2, Alias: prod" in versions_run(), within=5)
    trigger_id = created.json()["trigger_id"]
    assert api.http.delete(f"/triggers/{name}:!prod/TIMER/{trigger_id}").status_code == 204


def test_the_collector_keeps_published_code(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", "[storage]\ngc_interval = 0.2\ngc_grace = 0.0\n")
    daemon.start()
    try:
        api = Api(daemon)
        name = unique_name("gc")
        packages = {code: make_zip({"index.py": source(code)}) for code in ("one", "two", "three")}
        blobs = {
            code: daemon.state_dir / "blobs" / "sha256" / h[:2] / h
            for code, h in ((c, hashlib.sha256(p).hexdigest()) for c, p in packages.items())
        }
        assert api.create(packages["one"], name=name).status_code == 200
        published(api, name, "v1")
        for code in ("two", "three"):
            body = {"code_type": "zip", "func_code": {"file": b64(packages[code])}}
            assert api.http.put(f"/functions/{name}/code", json=body).status_code == 200
        # "two" is used by nothing: the collector removes it; v1's "one" stays.
        assert wait_for(lambda: not blobs["two"].exists())
        assert blobs["one"].exists() and blobs["three"].exists()
        assert run(api, f"{name}:v1")["code"] == "one"
        # Once v1 is deleted, nothing uses "one" any more.
        assert api.http.delete(f"/functions/{name}:v1").status_code == 204
        assert wait_for(lambda: not blobs["one"].exists())
    finally:
        daemon.stop()
