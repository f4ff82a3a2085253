"""Versions and aliases attacked: a hostile API client and a hostile function author."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.server
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, Daemon, b64, make_zip, running, unique_name
from tests.integration.test_versions import (
    alias,
    deploy,
    error_code,
    gateway_source,
    published,
    run,
    set_code,
    source,
)
from tests.integration.test_versions_state import reserved_rows, wait_for

URN = "urn:fss:local:default:function:default:{name}"


def two_versions(api: Api) -> str:
    name = deploy(api, "one")
    published(api, name, "v1")
    set_code(api, name, "two")
    published(api, name, "v2")
    return name


def test_an_alias_cannot_be_named_latest(api: Api) -> None:
    # `name:latest` would name latest, `name:!latest` the alias: two meanings for one word.
    name = two_versions(api)
    response = alias(api, name, "latest", "v1")
    assert response.status_code == 409 and error_code(response) == "FSS.1063", response.text
    assert api.http.get(f"/functions/{name}/aliases").json() == []
    assert run(api, f"{name}:latest")["code"] == "two"


@pytest.mark.parametrize("encoded", ["%3A%21", "%3a%21", ":%21", "%3A!"])
def test_url_encoded_qualifiers_reach_every_route(api: Api, encoded: str) -> None:
    name = two_versions(api)
    assert alias(api, name, "prod", "v1").status_code == 200
    target = f"{name}{encoded}prod"
    assert api.http.post(f"/functions/{target}/invocations", json={}).json()["version"] == "v1"
    queued = api.http.post(f"/functions/{target}/invocations-async", json={})
    assert queued.status_code == 202, queued.text
    reserved = api.http.put(f"/functions/{target}/reservedinstances", json={"count": 0})
    assert reserved.status_code == 200, reserved.text
    for path in ("config", "versions", "aliases", "async-invoke-config", "logs", "export", "statistics/15"):
        response = api.http.get(f"/functions/{target}/{path}")
        assert response.status_code == 200, (path, response.text)
    timer = {"trigger_type_code": "TIMER", "event_data": {"name": "t", "schedule_type": "Rate", "schedule": "60m"}}
    created = api.http.post(f"/triggers/{URN.format(name=name)}{encoded}prod", json=timer)
    assert created.status_code in (200, 201), created.text
    assert created.json()["qualifier"] == "!prod"
    # Bound to the alias: it cannot go while the trigger is there.
    assert error_code(api.http.delete(f"/functions/{name}/aliases/prod")) == "FSS.1154"


def test_cross_project_qualifiers_refused(api: Api) -> None:
    name = two_versions(api)
    assert alias(api, name, "prod", "v1").status_code == 200
    other = f"urn:fss:local:other:function:default:{name}:!prod"
    response = api.http.post(f"/functions/{other}/invocations", json={})
    assert response.status_code == 400, response.text
    short = f"other:default:{name}:v1"
    assert api.http.post(f"/functions/{short}/invocations", json={}).status_code == 400
    # The same names in another project are another function: none there.
    response = httpx.post(
        f"{api.daemon.url}/v2/other/fgs/functions/{name}:!prod/invocations",
        json={},
        headers=api.http.headers,
    )
    assert response.status_code == 404, response.text


def test_one_alias_per_version(api: Api) -> None:
    """FunctionGraph: each version can have one alias (FSS.1066), on create and on a move."""
    name = two_versions(api)
    assert alias(api, name, "prod", "v1").status_code == 200
    refused = alias(api, name, "beta", "v1")
    assert refused.status_code == 409 and error_code(refused) == "FSS.1066", refused.text
    assert "prod" in refused.json()["error_msg"]
    assert alias(api, name, "beta", "v2").status_code == 200
    moved = api.http.put(f"/functions/{name}/aliases/beta", json={"version": "v1"})
    assert moved.status_code == 409 and error_code(moved) == "FSS.1066", moved.text
    assert api.http.get(f"/functions/{name}/aliases/beta").json()["version"] == "v2"
    # An alias keeps its own version when it changes something else.
    kept = api.http.put(f"/functions/{name}/aliases/prod", json={"version": "v1", "description": "d"})
    assert kept.status_code == 200, kept.text
    # latest is a version too.
    assert alias(api, name, "edge", "latest").status_code == 200
    assert error_code(alias(api, name, "edge2", "latest")) == "FSS.1066"


def test_a_restart_with_corrupted_version_rows_leaves_them_out(fresh_daemon: Daemon) -> None:
    """A version row edited by hand: the daemon starts, logs it, and serves everything else."""
    fresh_daemon.start()
    api = Api(fresh_daemon)
    name = unique_name("corrupt")
    api.deploy(gateway_source("one"), name=name)
    published(api, name, "v1")
    body = {"code_type": "zip", "func_code": {"file": b64(make_zip({"index.py": gateway_source("two")}))}}
    assert api.http.put(f"/functions/{name}/code", json=body).status_code == 200
    published(api, name, "v2")
    assert alias(api, name, "prod", "v1").status_code == 200
    route = {"trigger_type_code": "APIG", "event_data": {"name": "r", "path": f"/{name}"}}
    assert api.http.post(f"/triggers/{name}:!prod", json=route).status_code in (200, 201)
    assert api.http.put(f"/functions/{name}:!prod/reservedinstances", json={"count": 1}).status_code == 200
    fresh_daemon.stop()
    db = sqlite3.connect(fresh_daemon.state_dir / "fgd.db")
    with db:
        db.execute("UPDATE versions SET record = ? WHERE func_name = ? AND version = 'v1'", (b"{garbage", name))
        # v2's row now claims to be latest: it must not shadow the real one.
        (blob,) = db.execute("SELECT record FROM versions WHERE func_name = ? AND version = 'v2'", (name,)).fetchone()
        db.execute(
            "UPDATE versions SET record = ? WHERE func_name = ? AND version = 'v2'",
            (blob.replace(b'"version":"v2"', b'"version":"latest"'), name),
        )
    db.close()
    fresh_daemon.start()
    api = Api(fresh_daemon)
    log = fresh_daemon.log()
    assert f"ignoring stored version default/default/{name}:v1" in log, log
    assert f"ignoring stored version default/default/{name}:v2" in log, log
    assert [v["version"] for v in api.http.get(f"/functions/{name}/versions").json()["versions"]] == ["latest"]
    assert httpx.get(f"{api.daemon.url}/healthz", timeout=5).status_code == 200
    # latest serves; the alias names a version that is gone: 404 with FunctionGraph's code.
    assert json.loads(run(api, name)["body"])["code"] == "two"
    assert error_code(api.invoke(f"{name}:!prod")) == "FSS.1052"
    assert error_code(api.invoke(f"{name}:v1")) == "FSS.1052"
    assert httpx.get(f"{fresh_daemon.gateway_url}/{name}", timeout=10).status_code == 404
    # No reserved instance for a version that is not there; the alias can be moved and used again.
    assert wait_for(lambda: [r["running"] for r in reserved_rows(api, name)] in ([], [0]), within=3)
    published(api, name, "v3")
    assert api.http.put(f"/functions/{name}/aliases/prod", json={"version": "v3"}).status_code == 200
    assert json.loads(run(api, f"{name}:!prod")["body"])["version"] == "v3"
    fresh_daemon.stop()


SLEEPER = """
import time

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"version": context.getVersion(), "code": CODE}
"""


def test_deleting_a_version_while_it_runs(api: Api) -> None:
    """In-flight requests of a deleted version finish on its code; those queued behind them settle
    with a reason (never loop); nothing of the version starts again."""
    name = unique_name("del")
    api.deploy(f"CODE = 'one'\n{SLEEPER}", name=name)
    published(api, name, "v1")
    assert api.http.put(f"/functions/{name}:v1/config-max-instance", json={"max_instance_num": 1}).status_code == 200
    set_code(api, name, "two")  # latest changes; v1 keeps its code
    urn = URN.format(name=name)

    def queue(sleep: float) -> str:
        response = api.http.post(f"/functions/{urn}:v1/invocations-async", json={"sleep": sleep})
        assert response.status_code == 202, response.text
        return response.json()["request_id"]

    def row(request_id: str) -> dict:
        rows = api.http.get(f"/functions/{name}/async-invocations", params={"request_id": request_id}).json()
        return rows["invocations"][0]

    running = queue(2.0)
    assert wait_for(lambda: row(running)["status"] == "RUNNING", within=10)
    behind = [queue(0) for _ in range(3)]
    with httpx.Client(base_url=api.http.base_url, headers=api.http.headers, timeout=30) as client:
        deleted = client.delete(f"/functions/{urn}:v1")
    assert deleted.status_code == 204, deleted.text
    assert error_code(api.invoke(f"{urn}:v1")) == "FSS.1052"
    assert wait_for(lambda: row(running)["status"] in ("SUCCESS", "FAIL", "DISCARD"), within=15)
    assert row(running)["status"] == "SUCCESS", row(running)
    for request_id in behind:
        assert wait_for(lambda r=request_id: row(r)["status"] in ("SUCCESS", "FAIL", "DISCARD"), within=15)
        settled = row(request_id)
        # Either it ran before the delete, or it says why it did not.
        assert settled["status"] == "SUCCESS" or "deleted" in settled["error_message"], settled
    # latest is untouched and serves its own code.
    assert run(api, name)["code"] == "two"


FAILER = """
def handler(event, context):
    raise RuntimeError("try again")
"""


@pytest.fixture(scope="module")
def slow_retries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    # A first retry 2.5-7.5 s after the failure: the version is deleted while the event surely
    # waits (with the default 0.5-1.5 s, a busy host let the retry start first).
    with running(tmp_path_factory.mktemp("slow-retries") / "state", "[async_invoke]\nretry_base = 5.0\n") as daemon:
        yield Api(daemon)


def test_a_waiting_retry_of_a_deleted_version_fails_with_the_reason(slow_retries: Api) -> None:
    """An event waiting for its retry when its version is deleted settles FAIL, saying so, once."""
    api = slow_retries
    name = unique_name("delw")
    api.deploy(FAILER, name=name)
    published(api, name, "v1")
    api.http.put(f"/functions/{name}/config", json={"description": "latest moves on"})
    config = {"max_async_retry_attempts": 3, "max_async_event_age_in_seconds": 3600}
    assert api.http.put(f"/functions/{name}:v1/async-invoke-config", json=config).status_code == 200
    queued = api.http.post(f"/functions/{name}:v1/invocations-async", json={})
    assert queued.status_code == 202, queued.text
    request_id = queued.json()["request_id"]

    def row() -> dict:
        rows = api.http.get(f"/functions/{name}/async-invocations", params={"request_id": request_id}).json()
        return rows["invocations"][0]

    # Failed once, waiting for its retry: the version goes now.
    assert wait_for(lambda: row()["attempts"] == 1 and row()["status"] == "WAIT", within=10), row()
    assert api.http.delete(f"/functions/{name}:v1").status_code == 204
    assert wait_for(lambda: row()["status"] != "WAIT", within=15), row()
    settled = row()
    assert (settled["status"], settled["error_type"]) == ("FAIL", "FSS.1052"), settled
    assert "v1" in settled["error_message"] and "deleted" in settled["error_message"], settled
    assert settled["attempts"] == 1


class SlowZip(http.server.BaseHTTPRequestHandler):
    """Serves one zip after a pause: a code update that takes a while."""

    body = b""
    pause = 1.5

    def do_GET(self) -> None:
        time.sleep(self.pause)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_slow_code_update_keeps_a_config_change_made_meanwhile(api: Api) -> None:
    """Code and config change from two clients at once: latest (and the version published from
    it) has both, not the config as it was when the code update began."""
    name = deploy(api, "one", user_data={"GREETING": "old"})
    handler = type("Handler", (SlowZip,), {"body": make_zip({"index.py": source("two")})})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/two.zip"
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:

            def update_code() -> httpx.Response:
                with api.daemon.client() as client:
                    return client.put(f"/functions/{name}/code", json={"code_type": "obs", "code_url": url})

            pending = pool.submit(update_code)
            time.sleep(0.5)
            changed = api.http.put(f"/functions/{name}/config", json={"user_data": {"GREETING": "new"}, "timeout": 7})
            assert changed.status_code == 200, changed.text
            assert pending.result().status_code == 200, pending.result().text
    finally:
        httpd.shutdown()
        httpd.server_close()
    config = api.http.get(f"/functions/{name}/config").json()
    assert (config["user_data"], config["timeout"]) == ('{"GREETING":"new"}', 7), config
    answer = run(api, name)
    assert (answer["code"], answer["greeting"]) == ("two", "new")
    published(api, name, "v1")
    frozen = run(api, f"{name}:v1")
    assert (frozen["code"], frozen["greeting"]) == ("two", "new")


def test_publishes_racing_config_changes_freeze_whole_states_and_stop_at_twenty(api: Api) -> None:
    """Clients change latest (timeout and user data in one request) while others publish: every
    version holds one whole state, and there are never more than 20 versions."""
    name = deploy(api, "one")
    initial = api.http.get(f"/functions/{name}/config").json()
    stop = threading.Event()

    def churn() -> None:
        with api.daemon.client() as client:
            k = 0
            while not stop.is_set():
                k += 1
                body = {"timeout": 3 + k % 50, "user_data": {"GREETING": str(3 + k % 50)}, "description": f"d{k}"}
                assert client.put(f"/functions/{name}/config", json=body).status_code == 200

    def publisher(worker: int) -> list[int]:
        statuses = []
        with api.daemon.client() as client:
            for attempt in range(200):
                response = client.post(f"/functions/{name}/versions", json={"version": f"w{worker}-{attempt}"})
                statuses.append(response.status_code)
                if response.status_code == 400:
                    assert response.json()["error_code"] in ("FSS.1016", "FSS.0400"), response.text
                    if "20 versions" in response.json()["error_msg"]:
                        break
        return statuses

    with concurrent.futures.ThreadPoolExecutor(7) as pool:
        churning = [pool.submit(churn), pool.submit(churn)]
        results = list(pool.map(publisher, range(5)))
        stop.set()
        for future in churning:
            future.result()
    listing = api.http.get(f"/functions/{name}/versions", params={"maxitems": 100}).json()
    assert listing["count"] <= 20 and listing["count"] == 1 + sum(r.count(200) for r in results), listing["count"]
    assert sum(r.count(200) for r in results) == 19  # the limit reached, never passed
    for version in listing["versions"][1:]:
        if not version["user_data"]:
            # Published before the first change: the state deploy() made.
            assert (version["description"], version["timeout"]) == ("", initial["timeout"]), version
            continue
        user_data = json.loads(version["user_data"])
        assert user_data["GREETING"] == str(version["timeout"]), (version["version"], version["timeout"], user_data)


@pytest.mark.parametrize("op, value", [("in", "yes,"), ("in", ",yes"), ("in", "yes, ,no"), ("in", " , "), ("=", "  ")])
def test_a_rule_value_that_would_match_an_empty_header_is_refused(api: Api, op: str, value: str) -> None:
    """`in` with an empty item (a stray comma) would send every request carrying the header empty
    to the additional version: refused, as is a blank value."""
    name = two_versions(api)
    rules = {
        "v2": {"combine_type": "or", "rules": [{"rule_type": "Header", "param": "x-canary", "op": op, "value": value}]}
    }
    response = alias(api, name, "prod", "v1", additional_version_strategy=rules)
    assert response.status_code == 400 and error_code(response) == "FSS.0400", response.text
    assert api.http.get(f"/functions/{name}/aliases").json() == []


@pytest.mark.parametrize("through", ["v1", "!prod"])
def test_a_destination_cycle_through_a_version_or_alias_is_refused(api: Api, through: str) -> None:
    """A's v1 (or alias) notifies B; B notifying A's v1 back would bounce events forever."""
    a = two_versions(api)
    b = deploy(api, "b")
    assert alias(api, a, "prod", "v1").status_code == 200
    a_urn, b_urn = URN.format(name=a), URN.format(name=b)

    def point(source: str, target: str) -> httpx.Response:
        config = {"destination_config": {"on_success": {"destination": "FunctionGraph", "param": {"func_urn": target}}}}
        return api.http.put(f"/functions/{source}/async-invoke-config", json=config)

    assert point(f"{a_urn}:{through}", b_urn).status_code == 200
    cycle = point(b_urn, f"{a_urn}:{through}")
    assert cycle.status_code == 400 and "cycle" in cycle.json()["error_msg"], cycle.text
    # The other way round too: B first, then A's version.
    c = deploy(api, "c")
    c_urn = URN.format(name=c)
    assert point(c_urn, f"{a_urn}:v2").status_code == 200
    cycle = point(f"{a_urn}:v2", c_urn)
    assert cycle.status_code == 400 and "cycle" in cycle.json()["error_msg"], cycle.text


def test_an_alias_on_latest_follows_latest_changes(api: Api) -> None:
    """An alias may point at latest: its warm instance must not keep serving latest's old code."""
    name = deploy(api, "one", user_data={"GREETING": "a"})
    assert alias(api, name, "edge", "latest").status_code == 200
    first = run(api, f"{name}:!edge")
    assert (first["code"], first["version"], first["alias"]) == ("one", "latest", "edge")
    set_code(api, name, "two")
    assert run(api, f"{name}:!edge")["code"] == "two"
    assert api.http.put(f"/functions/{name}/config", json={"user_data": {"GREETING": "b"}}).status_code == 200
    assert run(api, f"{name}:!edge")["greeting"] == "b"


LATE_READER = """
import os, time

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    # Read from the package only now, after the version was deleted under this request.
    with open(os.path.join(os.environ["RUNTIME_CODE_ROOT"], "data.txt")) as f:
        return {"data": f.read(), "version": context.getVersion()}
"""


def test_a_deleted_versions_code_stays_until_its_last_request_ends(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", "[storage]\ngc_interval = 0.2\ngc_grace = 0.0\n")
    daemon.start()
    try:
        api = Api(daemon)
        name = unique_name("gcrun")
        package = make_zip({"index.py": LATE_READER, "data.txt": "v1 data"})
        blob = daemon.state_dir / "blobs" / "sha256" / hashlib.sha256(package).hexdigest()[:2]
        blob = blob / hashlib.sha256(package).hexdigest()
        assert api.create(package, name=name).status_code == 200
        published(api, name, "v1")
        body = {"code_type": "zip", "func_code": {"file": b64(make_zip({"index.py": LATE_READER, "data.txt": "new"}))}}
        assert api.http.put(f"/functions/{name}/code", json=body).status_code == 200
        with concurrent.futures.ThreadPoolExecutor(1) as pool:

            def slow() -> httpx.Response:
                with daemon.client() as client:
                    return client.post(f"/functions/{name}:v1/invocations", json={"sleep": 2.0})

            pending = pool.submit(slow)
            time.sleep(0.7)  # the instance is running the request
            assert api.http.delete(f"/functions/{name}:v1").status_code == 204
            time.sleep(0.8)  # several collector passes while it still runs
            assert blob.exists()
            answer = pending.result()
        assert answer.status_code == 200 and answer.json() == {"data": "v1 data", "version": "v1"}, answer.text
        # Its request over, nothing uses v1's package: it goes.
        assert wait_for(lambda: not blob.exists())
        assert run(api, name)["data"] == "new"
    finally:
        daemon.stop()


def test_deleting_a_qualifiers_triggers_leaves_the_others(api: Api) -> None:
    """FunctionGraph's BatchDeleteFunctionTriggers: a version's or alias's URN deletes its triggers
    only; latest's (or the bare URN) deletes every trigger of the function."""
    name = two_versions(api)
    assert alias(api, name, "prod", "v1").status_code == 200
    urn = URN.format(name=name)

    def timer(qualified: str, label: str) -> None:
        body = {"trigger_type_code": "TIMER", "event_data": {"name": label, "schedule_type": "Rate", "schedule": "60m"}}
        assert api.http.post(f"/triggers/{qualified}", json=body).status_code in (200, 201)

    def names(qualified: str) -> list[str]:
        return sorted(t["event_data"]["name"] for t in api.http.get(f"/triggers/{qualified}").json())

    timer(urn, "t-latest")
    timer(f"{urn}:v1", "t-v1")
    timer(f"{urn}:v2", "t-v2")
    timer(f"{urn}:!prod", "t-prod")
    assert api.http.delete(f"/triggers/{urn}:v1").status_code == 204
    assert (names(urn), names(f"{urn}:v1"), names(f"{urn}:v2"), names(f"{urn}:!prod")) == (
        ["t-latest"],
        [],
        ["t-v2"],
        ["t-prod"],
    )
    assert api.http.delete(f"/triggers/{name}:!prod").status_code == 204
    assert (names(urn), names(f"{urn}:v2"), names(f"{urn}:!prod")) == (["t-latest"], ["t-v2"], [])
    # latest: every trigger of the function.
    assert api.http.delete(f"/triggers/{urn}:latest").status_code == 204
    assert (names(urn), names(f"{urn}:v2")) == ([], [])
