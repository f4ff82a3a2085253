"""Dependency packages: versions, attaching them to functions, imports, deletion rules, public ones."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx

from tests.conftest import RUNTIME, Api, Daemon, b64, make_zip, unique_name


def add_dependency(api: Api, name: str, files: dict[str, str]) -> dict:
    body = {"name": name, "runtime": RUNTIME, "depend_type": "zip", "depend_file": b64(make_zip(files))}
    response = api.http.post("/dependencies/version", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_versions_are_numbered_per_name(api: Api) -> None:
    name = unique_name("dep")
    first = add_dependency(api, name, {"mod.py": "V = 1\n"})
    second = add_dependency(api, name, {"mod.py": "V = 2\n"})
    other = add_dependency(api, unique_name("dep"), {"mod.py": "V = 3\n"})
    assert (first["version"], second["version"], other["version"]) == (1, 2, 1)
    assert first["dep_id"] == second["dep_id"] != other["dep_id"]
    assert first["id"] != second["id"]
    assert first["owner"] == "private" and first["runtime"] == RUNTIME and first["size"] > 0
    versions = api.http.get(f"/dependencies/{first['dep_id']}/version").json()["dependencies"]
    assert [v["version"] for v in versions] == [1, 2]
    one = api.http.get(f"/dependencies/{first['dep_id']}/version/2").json()
    assert one["id"] == second["id"]
    listed = api.http.get("/dependencies", params={"name": name}).json()
    assert [d["version"] for d in listed["dependencies"]] == [1, 2]
    assert api.http.get(f"/dependencies/{first['dep_id']}/version/9").status_code == 404


def test_function_imports_what_only_its_dependency_provides(api: Api) -> None:
    dep = add_dependency(api, unique_name("dep"), {"greetings/__init__.py": "def hello():\n    return 'from dep'\n"})
    source = "import greetings, sys\ndef handler(e, c):\n    return [greetings.hello(), sys.path[:2]]\n"
    config = api.deploy(source, depend_version_list=[dep["id"]])
    assert config["depend_version_list"] == [dep["id"]]
    response = api.invoke(config["func_name"])
    assert response.headers["x-is-func-err"] == "false", response.text
    result, path = response.json()
    assert result == "from dep"
    assert path == ["/opt/function/code", f"/opt/function/dependency/{dep['name']}/1"]


def test_dependency_order_follows_the_list_and_mounts_are_read_only(api: Api) -> None:
    first = add_dependency(api, unique_name("dep"), {"shared.py": "WHO = 'first'\n"})
    second = add_dependency(api, unique_name("dep"), {"shared.py": "WHO = 'second'\n"})
    source = """
import shared
def handler(e, c):
    try:
        open(shared.__file__, "a")
        writable = True
    except OSError:
        writable = False
    return [shared.WHO, writable]
"""
    name = api.deploy(source, depend_version_list=[second["id"], first["id"]])["func_name"]
    assert api.invoke(name).json() == ["second", False]


def test_unknown_dependency_is_refused(api: Api) -> None:
    response = api.http.post(
        "/functions",
        json={
            "func_name": unique_name(),
            "runtime": RUNTIME,
            "handler": "index.handler",
            "code_type": "inline",
            "func_code": {"file": b64("def handler(e, c):\n    return 1\n")},
            "depend_version_list": ["no-such-id"],
        },
    )
    assert response.status_code == 400
    assert "no-such-id" in response.json()["error_msg"]


def test_delete_in_use_is_409_naming_the_users(api: Api) -> None:
    dep = add_dependency(api, unique_name("dep"), {"m.py": "x = 1\n"})
    name = api.deploy("def handler(e, c):\n    return 1\n", depend_version_list=[dep["id"]])["func_name"]
    path = f"/dependencies/{dep['dep_id']}/version/1"
    response = api.http.delete(path)
    assert response.status_code == 409
    assert response.json()["error_code"] == "FSS.0409"
    assert name in response.json()["error_msg"]
    api.http.put(f"/functions/{name}/config", json={"depend_version_list": []})
    assert api.http.delete(path).status_code == 204
    assert api.http.get(path).status_code == 404


def test_dependency_zips_follow_the_package_rules(api: Api) -> None:
    body = {"name": unique_name("dep"), "runtime": RUNTIME, "depend_file": b64(make_zip({"notes~": "x"}))}
    response = api.http.post("/dependencies/version", json=body)
    assert response.status_code == 400
    assert "'notes~'" in response.json()["error_msg"]
    body = {"name": "9bad", "runtime": RUNTIME, "depend_file": b64(make_zip({"a.py": ""}))}
    assert api.http.post("/dependencies/version", json=body).status_code == 400


def test_raw_zip_dependency_upload(api: Api) -> None:
    name = unique_name("raw")
    response = api.http.post(
        "/dependencies/version",
        params={"name": name, "runtime": RUNTIME, "description": "streamed"},
        content=make_zip({"rawmod.py": "VALUE = 'raw dep'\n"}),
        headers={"Content-Type": "application/zip"},
    )
    assert response.status_code == 200, response.text
    dep = response.json()
    assert dep["name"] == name and dep["description"] == "streamed"
    fn = api.deploy("import rawmod\ndef handler(e, c):\n    return rawmod.VALUE\n", depend_version_list=[dep["id"]])
    assert api.invoke(fn["func_name"]).content == b"raw dep"


def test_public_dependencies_are_listed_attachable_and_not_deletable(tmp_path: Path) -> None:
    public = tmp_path / "public"
    public.mkdir()
    (public / "toolkit-3.zip").write_bytes(make_zip({"toolkit.py": "NAME = 'public toolkit'\n"}))
    daemon = Daemon(tmp_path / "state", f'public_dependencies = "{public}"\n')
    daemon.start()
    try:
        api = Api(daemon)
        listed = api.http.get("/dependencies").json()["dependencies"]
        assert [(d["name"], d["version"], d["owner"]) for d in listed] == [("toolkit", 3, "public")]
        other_project = httpx.get(
            f"{daemon.url}/v2/team-b/fgs/dependencies", headers={"X-Auth-Token": daemon.token}
        ).json()["dependencies"]
        assert [d["id"] for d in other_project] == [listed[0]["id"]]
        name = api.deploy(
            "import toolkit\ndef handler(e, c):\n    return toolkit.NAME\n", depend_version_list=[listed[0]["id"]]
        )["func_name"]
        assert api.invoke(name).content == b"public toolkit"
        response = api.http.delete(f"/dependencies/{listed[0]['dep_id']}/version/3")
        assert response.status_code == 403
        # The same id after a restart: functions keep their dependency.
        daemon.stop()
        daemon.start()
        assert Api(daemon).invoke(name).content == b"public toolkit"
    finally:
        daemon.stop()


def test_unreferenced_packages_are_collected(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", "[storage]\ngc_interval = 0.2\ngc_grace = 0.0\n")
    daemon.start()
    try:
        api = Api(daemon)
        kept = api.deploy("def handler(e, c):\n    return 'kept'\n")
        gone = api.deploy("def handler(e, c):\n    return 'gone'\n")
        dep = add_dependency(api, unique_name("dep"), {"d.py": "x = 1\n"})
        code = daemon.state_dir / "code"
        trees_before = {p.name for p in code.iterdir()}
        assert len(trees_before) == 3
        api.invoke(kept["func_name"])
        api.http.delete(f"/functions/{gone['func_name']}")
        api.http.delete(f"/dependencies/{dep['dep_id']}/version/1")
        deadline = time.monotonic() + 5
        while len(list(code.iterdir())) > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        remaining = list(code.iterdir())
        assert len(remaining) == 1
        blobs = [p for bucket in (daemon.state_dir / "blobs" / "sha256").iterdir() for p in bucket.iterdir()]
        assert [p.name for p in blobs] == [remaining[0].name]
        assert api.invoke(kept["func_name"]).content == b"kept"
    finally:
        daemon.stop()


def test_reuploads_racing_the_collector_never_lose_code(tmp_path: Path) -> None:
    """Code switched between three zips while the collector runs every 20 ms: each zip is, in
    turn, reused while fresh, reused after being collected, or reused as it is collected."""
    daemon = Daemon(tmp_path / "state", "[storage]\ngc_interval = 0.02\ngc_grace = 0.3\n")
    daemon.start()
    try:
        api = Api(daemon)
        name = api.deploy("def handler(e, c):\n    return 'first'\n")["func_name"]
        codes = [make_zip({"index.py": f"def handler(e, c):\n    return 'v{i}'\n"}) for i in range(3)]
        for turn in range(15):
            version = turn % 3
            body = {"code_type": "zip", "func_code": {"file": b64(codes[version])}}
            response = api.http.put(f"/functions/{name}/code", json=body)
            assert response.status_code == 200, response.text
            assert api.invoke(name).content == f"v{version}".encode()
            time.sleep(0.05 * (turn % 4))
        code, tmp = daemon.state_dir / "code", daemon.state_dir / "tmp"
        deadline = time.monotonic() + 5
        # A collected tree is renamed into tmp/ and removed from there a moment later.
        while (len(list(code.iterdir())) > 1 or list(tmp.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.05)
        current = hashlib.sha256(codes[14 % 3]).hexdigest()
        assert [p.name for p in code.iterdir()] == [current]
        assert list((daemon.state_dir / "tmp").iterdir()) == []
        assert daemon.log().count("unreferenced packages") >= 3  # the collector did run in between
        assert api.invoke(name).content == b"v2"
    finally:
        daemon.stop()
