"""The function resource: create, list, get, update, code, delete, export, validation."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import httpx
import pytest

from tests.conftest import (
    BACKGROUND_SLEEP,
    RUNTIME,
    Api,
    Daemon,
    b64,
    make_zip,
    marker,
    pids_with,
    unique_name,
    wait_none_with,
)

HELLO = "def handler(event, context):\n    return 'v1'\n"


def body(**overrides) -> dict:
    value = {
        "func_name": unique_name("val"),
        "runtime": RUNTIME,
        "handler": "index.handler",
        "code_type": "inline",
        "func_code": {"file": b64(HELLO)},
    }
    value.update(overrides)
    return {k: v for k, v in value.items() if v is not None}


def assert_invalid(api: Api, payload: dict, *words: str) -> None:
    before = api.http.get("/functions").json()["count"]
    response = api.http.post("/functions", json=payload)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error_code"] == "FSS.0400"
    for word in words:
        assert word in error["error_msg"], error["error_msg"]
    assert api.http.get("/functions").json()["count"] == before


def test_create_answers_the_full_config(api: Api) -> None:
    payload = body(memory_size=512, timeout=10, description="greets", user_data={"A": "1"})
    response = api.http.post("/functions", json=payload)
    assert response.status_code == 200
    config = response.json()
    assert config["func_urn"] == f"urn:fss:local:default:function:default:{payload['func_name']}:latest"
    assert config["version"] == "latest"
    assert config["cpu"] == 512 * 100 // 128 + 200
    assert config["memory_size"] == 512
    assert config["timeout"] == 10
    assert config["description"] == "greets"
    # FunctionGraph's type: a JSON string of the object.
    assert json.loads(config["user_data"]) == {"A": "1"}
    assert config["strategy_config"] == {"concurrency": 400, "concurrent_num": 1}
    assert config["ephemeral_storage"] == 512
    assert config["code_type"] == "inline"
    assert len(config["digest"]) == 128
    assert config["code_size"] > 0
    assert config["last_modified"].endswith("Z")


def test_inline_code_runs(api: Api) -> None:
    payload = body()
    api.http.post("/functions", json=payload)
    assert api.invoke(payload["func_name"]).content == b"v1"


def test_duplicate_name_is_409(api: Api) -> None:
    payload = body()
    assert api.http.post("/functions", json=payload).status_code == 200
    response = api.http.post("/functions", json=payload)
    assert response.status_code == 409
    assert response.json()["error_code"] == "FSS.0409"


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"func_name": "9starts-with-digit"}, ["func_name"]),
        ({"func_name": "ends-with-dash-"}, ["func_name"]),
        ({"func_name": "a" * 61}, ["func_name", "60"]),
        ({"func_name": ""}, ["func_name"]),
        ({"func_name": "has space"}, ["func_name"]),
        ({"func_name": None}, ["missing", "func_name"]),
        ({"runtime": None}, ["missing", "runtime"]),
        ({"runtime": "Python2.7"}, ["runtime", "Python2.7", RUNTIME]),
        ({"handler": None}, ["missing", "handler"]),
        ({"handler": "nodot"}, ["handler"]),
        ({"handler": "/abs.handler"}, ["handler"]),
        ({"handler": "../up.handler"}, ["handler"]),
        ({"memory_size": 63}, ["memory_size", ">= 64"]),
        ({"memory_size": 10241}, ["memory_size", "<= 10240"]),
        ({"memory_size": "128"}, ["memory_size", "int"]),
        ({"timeout": 0}, ["timeout", ">= 1"]),
        ({"timeout": 259201}, ["timeout", "<= 259200"]),
        ({"initializer_timeout": 301}, ["initializer_timeout", "<= 300"]),
        ({"initializer_handler": "x"}, ["initializer_handler"]),
        ({"description": "d" * 513}, ["description", "512"]),
        ({"code_type": "jar"}, ["code_type"]),
        ({"func_code": None}, ["missing", "func_code"]),
        ({"func_code": {"file": "***"}}, ["base64"]),
        ({"strategy_config": {"concurrency": -2}}, ["strategy_config.concurrency"]),
        ({"strategy_config": {"concurrency": 1001}}, ["strategy_config.concurrency"]),
        ({"strategy_config": {"concurrent_num": 0}}, ["strategy_config.concurrent_num"]),
        ({"ephemeral_storage": 100}, ["ephemeral_storage"]),
        ({"user_data": {"1bad": "x"}}, ["user_data", "1bad"]),
        ({"user_data": {"RUNTIME_FUNC_NAME": "x"}}, ["reserved"]),
        ({"user_data": {"A": "x" * 4096}}, ["user_data", "4096"]),
        ({"user_data": {"A": 1}}, ["user_data"]),
        ({"user_data": "[1, 2]"}, ["user_data"]),
        ({"user_data": "{not json"}, ["user_data"]),
        ({"encrypted_user_data": {"bad-name": "x"}}, ["encrypted_user_data", "bad-name"]),
        ({"depend_version_list": ["d"] * 21}, ["depend_version_list"]),
        ({"unknown_field": 1}, ["unknown_field"]),
    ],
)
def test_each_invalid_field_is_400_naming_it(api: Api, overrides: dict, words: list[str]) -> None:
    assert_invalid(api, body(**overrides), *words)


def test_user_data_may_be_a_json_string(api: Api) -> None:
    response = api.http.post("/functions", json=body(user_data=json.dumps({"K": "v"})))
    assert response.status_code == 200
    assert json.loads(response.json()["user_data"]) == {"K": "v"}


def test_encrypted_user_data_values_are_never_returned(api: Api) -> None:
    config = api.http.post("/functions", json=body(encrypted_user_data={"PASSWORD": "hunter2"})).json()
    assert json.loads(config["encrypted_user_data"]) == {"PASSWORD": ""}
    fetched = api.http.get(f"/functions/{config['func_name']}/config").text
    assert "hunter2" not in fetched


def test_body_that_is_not_json_is_400(api: Api) -> None:
    response = api.http.post("/functions", content=b"{oops", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "JSON" in response.json()["error_msg"]


@pytest.mark.parametrize(
    ("entry", "rule"),
    [("../escape.py", "'..'"), ("/etc/evil.py", "absolute"), ("a/../../b.py", "'..'"), ("dir\\x.py", "backslash")],
)
def test_zip_with_escaping_paths_is_refused_naming_the_entry(api: Api, entry: str, rule: str) -> None:
    code = make_zip({"index.py": HELLO, entry: "x = 1\n"})
    payload = body(code_type="zip", func_code={"file": b64(code)})
    assert_invalid(api, payload, entry, rule)


def test_file_that_is_not_a_zip_is_refused(api: Api) -> None:
    assert_invalid(api, body(code_type="zip", func_code={"file": b64(b"plain text")}), "zip")


def test_list_pages_with_marker_and_maxitems(api: Api) -> None:
    for _ in range(3):
        api.http.post("/functions", json=body())
    everything = api.http.get("/functions").json()
    assert everything["count"] == len(everything["functions"]) >= 3
    seen = []
    marker = 0
    while True:
        page = api.http.get("/functions", params={"marker": marker, "maxitems": 2}).json()
        assert len(page["functions"]) <= 2
        seen += [f["func_name"] for f in page["functions"]]
        marker = page["next_marker"]
        if not marker:
            break
    assert seen == [f["func_name"] for f in everything["functions"]]
    # FunctionGraph's rule: 0 means the default (400 functions), a negative value is an error.
    assert api.http.get("/functions", params={"maxitems": 0}).json()["count"] == everything["count"]
    assert api.http.get("/functions", params={"maxitems": -1}).status_code == 400
    assert api.http.get("/functions", params={"marker": "x"}).status_code == 400


def test_update_config_takes_effect_on_next_invocation(api: Api) -> None:
    source = "import os\ndef handler(e, c):\n    return [os.environ.get('MODE'), c.getMemorySize()]\n"
    name = api.deploy(source, user_data={"MODE": "old"})["func_name"]
    assert api.invoke(name).json() == ["old", 128]
    response = api.http.put(f"/functions/{name}/config", json={"user_data": {"MODE": "new"}, "memory_size": 256})
    assert response.status_code == 200
    assert response.json()["memory_size"] == 256
    assert response.json()["handler"] == "index.handler"
    assert api.invoke(name).json() == ["new", 256]


def test_update_config_refuses_name_and_runtime_changes(api: Api) -> None:
    name = api.deploy(HELLO)["func_name"]
    for change in ({"func_name": "other"}, {"runtime": "Python2.7"}):
        response = api.http.put(f"/functions/{name}/config", json=change)
        assert response.status_code == 400
        assert next(iter(change)) in response.json()["error_msg"]
    # Sending the current values back is fine.
    assert api.http.put(f"/functions/{name}/config", json={"func_name": name, "runtime": RUNTIME}).status_code == 200


def test_update_config_validates_like_create(api: Api) -> None:
    name = api.deploy(HELLO)["func_name"]
    response = api.http.put(f"/functions/{name}/config", json={"timeout": 0})
    assert response.status_code == 400
    assert "timeout" in response.json()["error_msg"]
    assert api.http.get(f"/functions/{name}/config").json()["timeout"] == 3


def test_replace_code_takes_effect_on_next_invocation(api: Api) -> None:
    name = api.deploy(HELLO)["func_name"]
    assert api.invoke(name).content == b"v1"
    new_code = make_zip({"index.py": "def handler(e, c):\n    return 'v2'\n"})
    response = api.http.put(f"/functions/{name}/code", json={"code_type": "zip", "func_code": {"file": b64(new_code)}})
    assert response.status_code == 200
    assert api.invoke(name).content == b"v2"
    info = api.http.get(f"/functions/{name}/code").json()
    assert info["code_size"] == len(new_code)
    assert info["digest"] == hashlib.sha512(new_code).hexdigest()


def test_bad_code_update_keeps_the_old_code(api: Api) -> None:
    name = api.deploy(HELLO)["func_name"]
    response = api.http.put(
        f"/functions/{name}/code", json={"code_type": "zip", "func_code": {"file": b64(make_zip({"../x": "1"}))}}
    )
    assert response.status_code == 400
    assert api.invoke(name).content == b"v1"


def test_delete_removes_the_function_and_its_instances(api: Api) -> None:
    mark = marker()
    source = BACKGROUND_SLEEP + "def handler(e, c):\n    return 1\n"
    name = api.deploy(source, user_data={"FGD_TEST_MARK": mark})["func_name"]
    api.invoke(name)
    assert pids_with(mark)
    assert api.http.delete(f"/functions/{name}").status_code == 204
    assert api.http.get(f"/functions/{name}/config").status_code == 404
    assert api.invoke(name).status_code == 404
    assert wait_none_with(mark)
    assert api.http.delete(f"/functions/{name}").status_code == 404


def test_export_returns_the_original_zip_byte_for_byte(api: Api) -> None:
    code = make_zip({"index.py": HELLO, "data/info.txt": "payload"})
    payload = body(code_type="zip", func_code={"file": b64(code)})
    api.http.post("/functions", json=payload)
    name = payload["func_name"]
    response = api.http.get(f"/functions/{name}/export", params={"code": "true", "config": "false"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert response.content == code


def test_export_with_config_round_trips_into_a_new_function(api: Api) -> None:
    name = api.deploy(HELLO, memory_size=256, user_data={"K": "v"})["func_name"]
    exported = api.http.get(f"/functions/{name}/export", params={"code": "true", "config": "true"}).content
    with zipfile.ZipFile(io.BytesIO(exported)) as archive:
        config = json.loads(archive.read("config.json"))
        code = archive.read("code.zip")
    assert config["memory_size"] == 256 and json.loads(config["user_data"]) == {"K": "v"}
    clone = unique_name("clone")
    created = api.http.post(
        "/functions",
        json={
            "func_name": clone,
            "runtime": config["runtime"],
            "handler": config["handler"],
            "memory_size": config["memory_size"],
            "user_data": config["user_data"],
            "code_type": "zip",
            "func_code": {"file": b64(code)},
        },
    )
    assert created.status_code == 200
    assert created.json()["digest"] == config["digest"]
    assert api.invoke(clone).content == b"v1"


def test_export_needs_code_or_config(api: Api) -> None:
    name = api.deploy(HELLO)["func_name"]
    response = api.http.get(f"/functions/{name}/export", params={"code": "false", "config": "false"})
    assert response.status_code == 400


def test_runtimes_lists_this_nodes_python(api: Api) -> None:
    assert RUNTIME in api.http.get("/runtimes").json()["runtimes"]


def test_urn_for_another_project_or_region_is_refused(api: Api) -> None:
    name = api.deploy(HELLO)["func_name"]
    assert api.http.get(f"/functions/urn:fss:elsewhere:default:function:default:{name}/config").status_code == 400
    assert api.http.get(f"/functions/urn:fss:local:other:function:default:{name}/config").status_code == 400
    assert api.http.get(f"/functions/urn:fss:local:default:function:default:{name}:latest/config").status_code == 200


def test_projects_partition_functions(api: Api) -> None:
    name = api.deploy(HELLO)["func_name"]
    other = api.daemon.client()
    other.base_url = other.base_url.copy_with(path="/v2/team-b/fgs/")
    assert other.get(f"functions/{name}/config").status_code == 404
    assert name not in [f["func_name"] for f in other.get("functions").json()["functions"]]


def test_unknown_route_is_404_json(api: Api) -> None:
    response = api.http.get("/nothing-here")
    assert response.status_code == 404
    assert response.json()["error_code"] == "FSS.0404"


@pytest.mark.parametrize(
    "path",
    [
        "/functions",
        "/dependencies",
        "/fgd/keys",
        "/quotas",
        "/functions/statistics",
        "/functions/fn/versions",
        "/functions/fn/aliases",
        "/triggers/fn",
    ],
)
def test_a_malformed_project_is_refused_on_every_route(daemon: Daemon, path: str) -> None:
    # One check for every /v2/<project_id>/ route, before any route's own work.
    answer = httpx.get(f"{daemon.url}/v2/bad.project/fgs{path}", headers={"X-Auth-Token": daemon.token})
    assert answer.status_code == 400, answer.text
    assert "project_id 'bad.project'" in answer.json()["error_msg"]
