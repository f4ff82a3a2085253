"""Versions and aliases over plain HTTP: publish, qualify, route by weight and header, delete rules."""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import io
import json
import re
import time
import zipfile

import httpx
import pytest

from tests.conftest import RUNTIME, Api, b64, make_zip, unique_name

# Says which code answered, and what the instance was told about itself.
SOURCE = """
import os
INSTANCE = os.urandom(8).hex()

def handler(event, context):
    return {
        "code": CODE,
        "version": context.getVersion(),
        "alias": context.getAlias(),
        "memory": context.getMemorySize(),
        "env_version": os.environ.get("RUNTIME_FUNC_VERSION"),
        "env_alias": os.environ.get("RUNTIME_ALIAS"),
        "greeting": os.environ.get("GREETING"),
        "pid": os.getpid(),
        "instance": INSTANCE,
    }
"""


def source(code: str) -> str:
    return f"CODE = {code!r}\n{SOURCE}"


def deploy(api: Api, code: str = "one", **settings) -> str:
    name = unique_name("ver")
    api.deploy(source(code), name=name, **settings)
    return name


def set_code(api: Api, name: str, code: str) -> None:
    body = {"code_type": "zip", "func_code": {"file": b64(make_zip({"index.py": source(code)}))}}
    response = api.http.put(f"/functions/{name}/code", json=body)
    assert response.status_code == 200, response.text


def publish(api: Api, name: str, version: str | None = None, **fields) -> httpx.Response:
    body = {"version": version, **fields} if version else fields
    return api.http.post(f"/functions/{name}/versions", json=body)


def published(api: Api, name: str, version: str) -> dict:
    response = publish(api, name, version)
    assert response.status_code == 200, response.text
    return response.json()


def alias(api: Api, name: str, alias_name: str, version: str, **fields) -> httpx.Response:
    return api.http.post(f"/functions/{name}/aliases", json={"name": alias_name, "version": version, **fields})


def run(api: Api, qualified: str, headers: dict | None = None) -> dict:
    response = api.invoke(qualified, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-is-func-err"] == "false", response.text
    return response.json()


def error_code(response: httpx.Response) -> str:
    return response.json()["error_code"]


def test_each_qualifier_runs_its_own_code_and_config(api: Api) -> None:
    name = deploy(api, "one", memory_size=128, user_data={"GREETING": "first"})
    v1 = published(api, name, "v1")
    assert v1["version"] == "v1" and v1["func_urn"].endswith(f":{name}:v1") and v1["memory_size"] == 128
    set_code(api, name, "two")
    response = api.http.put(f"/functions/{name}/config", json={"memory_size": 256, "user_data": {"GREETING": "second"}})
    assert response.status_code == 200, response.text
    assert alias(api, name, "prod", "v1").status_code == 200

    latest = run(api, name)
    assert (latest["code"], latest["memory"], latest["greeting"]) == ("two", 256, "second")
    assert (latest["version"], latest["env_version"], latest["alias"], latest["env_alias"]) == (
        "latest",
        "latest",
        "",
        "",
    )
    one = run(api, f"{name}:v1")
    assert (one["code"], one["memory"], one["greeting"]) == ("one", 128, "first")
    assert (one["version"], one["env_version"], one["alias"]) == ("v1", "v1", "")
    through = run(api, f"{name}:!prod")
    assert (through["code"], through["version"], through["alias"], through["env_alias"]) == (
        "one",
        "v1",
        "prod",
        "prod",
    )

    # The same by URN; the answer's summary and the log say which version ran.
    urn = f"urn:fss:local:default:function:default:{name}"
    response = api.invoke(f"{urn}:!prod", headers={"X-Cff-Log-Type": "tail"})
    summary = json.loads(response.headers["x-cff-invoke-summary"])
    assert (summary["version"], summary["alias"], summary["memorySize"]) == ("v1", "prod", 128)
    assert "Version: v1, Alias: prod" in base64.b64decode(response.headers["x-cff-function-log"]).decode()
    assert json.loads(api.invoke(f"{urn}:latest").headers["x-cff-invoke-summary"])["version"] == "latest"

    # The published version's config is frozen: reading it shows it, changing it is refused.
    config = api.http.get(f"/functions/{name}:v1/config").json()
    assert (config["version"], config["memory_size"], config["user_data"]) == ("v1", 128, '{"GREETING":"first"}')
    response = api.http.put(f"/functions/{urn}:v1/config", json={"memory_size": 512})
    assert response.status_code == 400 and "never changes" in response.json()["error_msg"]
    assert api.http.get(f"/functions/{name}:v1/config").json()["memory_size"] == 128
    body = {"code_type": "zip", "func_code": {"file": b64(make_zip({"index.py": source("three")}))}}
    assert api.http.put(f"/functions/{urn}:v1/code", json=body).status_code == 400
    raw = api.http.put(
        f"/functions/{urn}:v1/code",
        content=make_zip({"index.py": source("three")}),
        headers={"Content-Type": "application/zip"},
    )
    assert raw.status_code == 400 and "never changes" in raw.json()["error_msg"]
    # Exported code of v1 is v1's.
    exported = api.http.get(f"/functions/{urn}:v1/export")
    assert exported.status_code == 200
    assert "CODE = 'one'" in zipfile.ZipFile(io.BytesIO(exported.content)).read("index.py").decode()


def test_publish_rules(api: Api) -> None:
    name = deploy(api)
    first = publish(api, name)
    assert first.status_code == 200, first.text
    assert re.fullmatch(r"v\d{8}-\d{6}", first.json()["version"])
    again = publish(api, name, "v2")
    assert again.status_code == 400 and error_code(again) == "FSS.1016"
    api.http.put(f"/functions/{name}/config", json={"description": "changed"})
    same_name = publish(api, name, first.json()["version"])
    assert same_name.status_code == 409 and error_code(same_name) == "FSS.1062"
    # A digest that is not latest's code is refused; latest's own is taken.
    digest = api.http.get(f"/functions/{name}/config").json()["digest"]
    assert publish(api, name, "v3", digest="0" * 128).status_code == 400
    assert publish(api, name, "v3", digest=digest).status_code == 200
    listing = api.http.get(f"/functions/{name}/versions").json()
    assert [v["version"] for v in listing["versions"]] == ["latest", first.json()["version"], "v3"]
    assert listing["count"] == 3


@pytest.mark.parametrize(
    "version",
    ["latest", "v 1", "../v1", "v1/x", "a" * 43, "-v1", "v1\n", "v\u00e91", ":v1", "!v1"],
)
def test_odd_version_names_refused(api: Api, version: str) -> None:
    name = deploy(api)
    response = publish(api, name, version)
    assert response.status_code == 400, response.text
    assert api.http.get(f"/functions/{name}/versions").json()["count"] == 1


def test_twenty_versions_at_most(api: Api) -> None:
    name = deploy(api)
    for number in range(19):
        api.http.put(f"/functions/{name}/config", json={"description": f"change {number}"})
        assert publish(api, name, f"v{number}").status_code == 200
    api.http.put(f"/functions/{name}/config", json={"description": "one more"})
    response = publish(api, name, "v19")
    assert response.status_code == 400 and "20 versions" in response.json()["error_msg"]
    assert api.http.get(f"/functions/{name}/versions").json()["count"] == 20


def test_concurrent_publishes_make_one_version(api: Api) -> None:
    name = deploy(api)
    api.http.put(f"/functions/{name}/config", json={"description": "changed"})

    def attempt(number: int) -> int:
        with api.daemon.client() as client:
            return client.post(f"/functions/{name}/versions", json={"version": f"c{number}"}).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(attempt, range(8)))
    assert statuses == [200] + [400] * 7
    assert api.http.get(f"/functions/{name}/versions").json()["count"] == 2


def test_aliases_ten_at_most_and_their_rules(api: Api) -> None:
    name = deploy(api)
    published(api, name, "v1")
    api.http.put(f"/functions/{name}/config", json={"description": "changed"})
    published(api, name, "v2")
    for number in range(10):
        assert alias(api, name, f"a{number}", "v1").status_code == 200
    response = alias(api, name, "a10", "v1")
    assert response.status_code == 400 and "10 aliases" in response.json()["error_msg"]
    assert len(api.http.get(f"/functions/{name}/aliases").json()) == 10
    exists = alias(api, name, "a0", "v2")
    assert exists.status_code == 409 and error_code(exists) == "FSS.1063"
    shown = api.http.get(f"/functions/{name}/aliases/a3").json()
    assert shown["version"] == "v1" and shown["alias_urn"].endswith(f":{name}:!a3")
    assert error_code(api.http.get(f"/functions/{name}/aliases/nope")) == "FSS.1053"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"name": "pr od"}, "FSS.0400"),
        ({"name": "-x"}, "FSS.0400"),
        ({"name": "x_"}, "FSS.0400"),
        ({"name": "1abc"}, "FSS.0400"),
        ({"name": "a" * 64}, "FSS.0400"),
        ({"name": "pr\u00f6d"}, "FSS.0400"),
        ({"name": "!prod"}, "FSS.0400"),
        ({"name": "prod\n"}, "FSS.0400"),
        ({"name": ""}, "FSS.0400"),
        ({"version": "nope"}, "FSS.1052"),
        ({"version": "../v1"}, "FSS.0400"),
        ({"additional_version_weights": {"v2": -1}}, "FSS.0400"),
        ({"additional_version_weights": {"v2": 101}}, "FSS.0400"),
        ({"additional_version_weights": {"v2": 30.5}}, "FSS.0400"),
        ({"additional_version_weights": {"v2": "30"}}, "FSS.0400"),
        ({"additional_version_weights": {"v2": 10**30}}, "FSS.0400"),
        ({"additional_version_weights": {"v2": 10, "v3": 10}}, "FSS.0400"),
        ({"additional_version_weights": {"v1": 10}}, "FSS.1093"),
        ({"additional_version_weights": {"latest": 10}}, "FSS.0400"),
        ({"additional_version_weights": {"nope": 10}}, "FSS.1052"),
        ({"additional_version_weights": ["v2"]}, "FSS.0400"),
        (
            {
                "additional_version_weights": {"v2": 10},
                "additional_version_strategy": {
                    "v2": {
                        "combine_type": "or",
                        "rules": [{"rule_type": "Header", "param": "x", "op": "=", "value": "1"}],
                    }
                },
            },
            "FSS.0400",
        ),
        (
            {
                "additional_version_strategy": {
                    "v2": {
                        "combine_type": "or",
                        "rules": [{"rule_type": "Header", "param": "x", "op": "=", "value": "1" * 2000}],
                    }
                }
            },
            "FSS.0400",
        ),
        (
            {
                "additional_version_strategy": {
                    "v2": {
                        "combine_type": "or",
                        "rules": [
                            {"rule_type": "Header", "param": f"h{i}", "op": "=", "value": "1"} for i in range(11)
                        ],
                    }
                }
            },
            "FSS.0400",
        ),
        (
            {
                "additional_version_strategy": {
                    "v2": {
                        "combine_type": "or",
                        "rules": [{"rule_type": "Header", "param": "x\r\ny", "op": "=", "value": "1"}],
                    }
                }
            },
            "FSS.0400",
        ),
        (
            {
                "additional_version_strategy": {
                    "v2": {
                        "combine_type": "xor",
                        "rules": [{"rule_type": "Header", "param": "x", "op": "=", "value": "1"}],
                    }
                }
            },
            "FSS.0400",
        ),
        (
            {
                "additional_version_strategy": {
                    "v2": {
                        "combine_type": "or",
                        "rules": [{"rule_type": "Query", "param": "x", "op": "=", "value": "1"}],
                    }
                }
            },
            "FSS.0400",
        ),
        ({"additional_version_strategy": {"v2": {"combine_type": "or", "rules": []}}}, "FSS.0400"),
        ({"surprise": 1}, "FSS.0400"),
    ],
)
def test_attacker_alias_bodies_refused(api: Api, fields: dict, code: str) -> None:
    name = deploy(api)
    published(api, name, "v1")
    api.http.put(f"/functions/{name}/config", json={"description": "changed"})
    published(api, name, "v2")
    response = api.http.post(f"/functions/{name}/aliases", json={"name": "prod", "version": "v1", **fields})
    assert response.status_code in (400, 404), response.text
    assert error_code(response) == code, response.text
    assert api.http.get(f"/functions/{name}/aliases").json() == []


@pytest.mark.parametrize(
    "qualified",
    [
        "{name}:v1:extra",
        "{name}:v1%0A",
        "{name}:..",
        "{name}:!v1%00",
        "{name}:!",
        "{name}:",
        "{urn}:",
        "{urn}:!",
        "{urn}:v1:extra",
        "{urn}:!pr od",
        "{urn}:..%2Fv1",
        "{urn}:!-prod",
        "{urn}:v1%0A",
        "{urn}:" + "a" * 43,
    ],
)
def test_qualifier_injection_refused(api: Api, qualified: str) -> None:
    name = deploy(api)
    published(api, name, "v1")
    target = qualified.format(name=name, urn=f"urn:fss:local:default:function:default:{name}")
    response = api.http.post(f"/functions/{target}/invocations", json={})
    assert response.status_code in (400, 404), response.text
    assert response.json()["error_code"].startswith("FSS.0400") or response.status_code == 404


def test_unknown_qualifiers_are_404_with_their_codes(api: Api) -> None:
    name = deploy(api)
    urn = f"urn:fss:local:default:function:default:{name}"
    assert error_code(api.invoke(f"{urn}:v9")) == "FSS.1052"
    assert error_code(api.invoke(f"{urn}:!nope")) == "FSS.1053"
    assert error_code(api.invoke(f"{name}:!nope")) == "FSS.1053"


def test_weights_send_their_share_to_the_additional_version(api: Api) -> None:
    name = unique_name("weights")
    api.deploy(
        "def handler(event, context):\n    return context.getVersion()\n",
        name=name,
        strategy_config={"concurrency": 8, "concurrent_num": 10},
    )
    published(api, name, "v1")
    api.http.put(f"/functions/{name}/config", json={"description": "changed"})
    published(api, name, "v2")
    assert alias(api, name, "gray", "v1", additional_version_weights={"v2": 30}).status_code == 200

    def batch(count: int) -> collections.Counter:
        seen: collections.Counter = collections.Counter()
        with api.daemon.client() as client:
            for _ in range(count):
                response = client.post(f"/functions/{name}:!gray/invocations", json={})
                assert response.status_code == 200, response.text
                seen[response.text] += 1
        return seen

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        counts = sum(pool.map(batch, [125] * 8), collections.Counter())
    elapsed = time.monotonic() - started
    assert sum(counts.values()) == 1000 and set(counts) <= {"v1", "v2"}
    assert 250 <= counts["v2"] <= 350, counts
    assert elapsed < 20, elapsed


def test_header_rules_route_sync_requests(api: Api) -> None:
    name = deploy(api, "one")
    published(api, name, "v1")
    set_code(api, name, "two")
    published(api, name, "v2")
    rules = {
        "v2": {
            "combine_type": "or",
            "rules": [
                {"rule_type": "Header", "param": "X-Canary", "op": "in", "value": "yes,true"},
                {"rule_type": "Header", "param": "x-user", "op": "=", "value": "alice"},
            ],
        }
    }
    assert alias(api, name, "prod", "v1", additional_version_strategy=rules).status_code == 200
    assert run(api, f"{name}:!prod")["code"] == "one"
    assert run(api, f"{name}:!prod", {"X-CANARY": "true"})["code"] == "two"
    assert run(api, f"{name}:!prod", {"x-canary": "no"})["code"] == "one"
    assert run(api, f"{name}:!prod", {"X-User": "alice"})["code"] == "two"
    assert run(api, f"{name}:!prod", {"X-User": "bob"})["code"] == "one"


GATEWAY_SOURCE = """
import json

def handler(event, context):
    return {"statusCode": 200, "body": json.dumps({"code": CODE, "version": context.getVersion(),
            "alias": context.getAlias()})}
"""


def gateway_source(code: str) -> str:
    return f"CODE = {code!r}\n{GATEWAY_SOURCE}"


def test_gateway_header_rules_and_trigger_follows_alias(api: Api) -> None:
    name = unique_name("gw")
    api.deploy(gateway_source("one"), name=name)
    published(api, name, "v1")
    body = {"code_type": "zip", "func_code": {"file": b64(make_zip({"index.py": gateway_source("two")}))}}
    assert api.http.put(f"/functions/{name}/code", json=body).status_code == 200
    published(api, name, "v2")
    body = {"code_type": "zip", "func_code": {"file": b64(make_zip({"index.py": gateway_source("three")}))}}
    assert api.http.put(f"/functions/{name}/code", json=body).status_code == 200
    published(api, name, "v3")
    rules = {
        "v2": {"combine_type": "and", "rules": [{"rule_type": "Header", "param": "X-Canary", "op": "=", "value": "on"}]}
    }
    assert alias(api, name, "prod", "v1", additional_version_strategy=rules).status_code == 200
    path = f"/{name}/r"
    route = {"trigger_type_code": "APIG", "event_data": {"name": "r", "path": path}}
    assert api.http.post(f"/triggers/urn:fss:local:default:function:default:{name}:!prod", json=route).status_code in (
        200,
        201,
    )

    def gateway(headers: dict | None = None) -> dict:
        response = httpx.get(f"{api.daemon.gateway_url}{path}", headers=headers or {}, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    assert gateway() == {"code": "one", "version": "v1", "alias": "prod"}
    assert gateway({"x-canary": "on"}) == {"code": "two", "version": "v2", "alias": "prod"}
    assert gateway({"X-Canary": "off"})["code"] == "one"
    # The alias moves: its trigger follows at once.
    response = api.http.put(f"/functions/{name}/aliases/prod", json={"version": "v3"})
    assert response.status_code == 200, response.text
    assert gateway() == {"code": "three", "version": "v3", "alias": "prod"}
    assert gateway({"x-canary": "on"})["code"] == "three"
    # An alias bound to a trigger cannot be deleted.
    refused = api.http.delete(f"/functions/{name}/aliases/prod")
    assert refused.status_code == 409 and error_code(refused) == "FSS.1154"


def test_a_warm_instance_never_serves_another_version(api: Api) -> None:
    name = deploy(api, "one")
    published(api, name, "v1")
    set_code(api, name, "two")
    published(api, name, "v2")
    assert alias(api, name, "prod", "v1").status_code == 200
    seen: dict[str, set] = {}
    for _ in range(3):
        for qualified in (name, f"{name}:v1", f"{name}:v2", f"{name}:!prod"):
            answer = run(api, qualified)
            seen.setdefault(qualified, set()).add((answer["pid"], answer["instance"], answer["version"]))
    for qualified, instances in seen.items():
        # Sequential requests reuse one warm instance per qualifier...
        assert len(instances) == 1, (qualified, instances)
    # ...and no two qualifiers ever share one (pids are per PID namespace: the token tells instances apart).
    tokens = [next(iter(instances))[1] for instances in seen.values()]
    assert len(set(tokens)) == 4
    assert {next(iter(i))[2] for i in seen.values()} == {"latest", "v1", "v2"}


def test_delete_rules(api: Api) -> None:
    name = deploy(api, "one")
    urn = f"urn:fss:local:default:function:default:{name}"
    published(api, name, "v1")
    set_code(api, name, "two")
    published(api, name, "v2")
    set_code(api, name, "three")
    published(api, name, "v3")
    assert alias(api, name, "gray", "v1", additional_version_weights={"v2": 10}).status_code == 200
    assert alias(api, name, "beta", "v3").status_code == 200
    timer = {"trigger_type_code": "TIMER", "event_data": {"name": "t3", "schedule_type": "Rate", "schedule": "60m"}}
    created = api.http.post(f"/triggers/{urn}:v3", json=timer)
    assert created.status_code in (200, 201)
    assert created.json()["qualifier"] == "v3"
    assert [t["trigger_id"] for t in api.http.get(f"/triggers/{urn}:v3").json()] == [created.json()["trigger_id"]]

    # An additional version cannot go.
    refused = api.http.delete(f"/functions/{urn}:v2")
    assert refused.status_code == 409 and error_code(refused) == "FSS.1094" and "gray" in refused.json()["error_msg"]
    # Deleting a version takes its aliases and triggers along.
    assert api.http.delete(f"/functions/{urn}:v3").status_code == 204
    assert error_code(api.invoke(f"{urn}:v3")) == "FSS.1052"
    assert error_code(api.invoke(f"{urn}:!beta")) == "FSS.1053"
    assert api.http.get(f"/triggers/{urn}/TIMER/{created.json()['trigger_id']}").status_code == 404
    assert [v["version"] for v in api.http.get(f"/functions/{name}/versions").json()["versions"]] == [
        "latest",
        "v1",
        "v2",
    ]
    assert api.http.delete(f"/functions/{urn}:v9").status_code == 404
    # An alias cannot be deleted through the function's DELETE.
    assert api.http.delete(f"/functions/{urn}:!gray").status_code == 400
    # latest never goes alone: deleting it (with or without :latest) deletes the function.
    assert api.http.delete(f"/functions/{urn}:latest").status_code == 204
    assert api.invoke(f"{urn}:v1").status_code == 404
    assert api.http.get(f"/functions/{name}/versions").status_code == 404


def test_published_code_survives_the_collector_and_dependencies_stay(api: Api) -> None:
    dep = api.http.post(
        "/dependencies/version",
        json={
            "name": unique_name("dep"),
            "runtime": RUNTIME,
            "depend_type": "zip",
            "depend_file": b64(make_zip({"python/helper_mod.py": "X = 1\n"})),
        },
    )
    assert dep.status_code == 200, dep.text
    dep_id, dep_version = dep.json()["dep_id"], dep.json()["version"]
    name = deploy(api, "one", depend_version_list=[dep.json()["id"]])
    published(api, name, "v1")
    body = {
        "code_type": "zip",
        "func_code": {"file": b64(make_zip({"index.py": source("two")}))},
        "depend_version_list": [],
    }
    assert api.http.put(f"/functions/{name}/code", json=body).status_code == 200
    # latest no longer uses the dependency; v1 does: it cannot be deleted, and the answer says who uses it.
    refused = api.http.delete(f"/dependencies/{dep_id}/version/{dep_version}")
    assert refused.status_code == 409 and f"{name} (version v1)" in refused.json()["error_msg"], refused.text
    assert run(api, f"{name}:v1")["code"] == "one"
