"""FunctionGraph's bundled Python libraries: importable by every function, read-only, shared,
after the function's own code, and off when the operator says so."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fgd.bundled import SOURCE_ROOT, libraries_for, manifest_of, tree_for
from tests.conftest import RUNTIME, Api, Daemon, b64, make_zip, skip_unless_served, unique_name

VERSION = sys.version_info[:2]
TREE = tree_for(SOURCE_ROOT, VERSION)


def test_the_tree_for_this_interpreter_is_built_with_every_library() -> None:
    assert TREE is not None, f"no bundled tree under {SOURCE_ROOT}: run `make bundled`"
    manifest = manifest_of(TREE)
    assert manifest is not None
    assert manifest.python.startswith(f"{VERSION[0]}.{VERSION[1]}.")
    wanted = {library.requirement for library in libraries_for(VERSION)}
    assert set(manifest.libraries) == wanted
    assert manifest.skipped == {}


IMPORT_ALL = """
import importlib, os, sys

def handler(event, context):
    failed = {}
    for module in event["modules"]:
        try:
            importlib.import_module(module)
        except Exception as exc:
            failed[module] = "%s: %s" % (type(exc).__name__, exc)
    import requests
    return {"failed": failed, "requests": requests.__file__,
            "obs": hasattr(importlib.import_module("obs"), "ObsClient")}
"""


def test_every_bundled_library_imports_in_a_function(api: Api) -> None:
    name = api.deploy(IMPORT_ALL, memory_size=512, timeout=30)["func_name"]
    modules = [library.module for library in libraries_for(VERSION)]
    response = api.invoke(name, {"modules": modules})
    assert response.headers["x-is-func-err"] == "false", response.text
    body = response.json()
    assert body["failed"] == {}
    assert body["requests"] == f"/opt/function/runtime/bundled/python{VERSION[0]}.{VERSION[1]}/requests/__init__.py"
    assert body["obs"] is True


def test_a_functions_own_requests_shadows_the_bundled_one(api: Api) -> None:
    files = {
        "index.py": "import requests\n\ndef handler(e, c):\n    return [requests.MARKER, requests.__file__]\n",
        "requests/__init__.py": "MARKER = 'the function brought me'\n",
    }
    name = api.deploy("", files=files)["func_name"]
    response = api.invoke(name)
    assert response.json() == ["the function brought me", "/opt/function/code/requests/__init__.py"]


def test_bundled_libraries_come_after_the_standard_library_and_dependencies(api: Api) -> None:
    source = """
        import sys

        def handler(event, context):
            return sys.path
    """
    path = api.invoke(api.deploy(source)["func_name"]).json()
    assert path[0] == "/opt/function/code"
    assert path[-1] == f"/opt/function/runtime/bundled/python{VERSION[0]}.{VERSION[1]}"
    assert not any("site-packages" in entry for entry in path)


READ_ONLY_PROBE = """
import errno, os

def handler(event, context):
    import requests
    here = os.path.dirname(requests.__file__)
    outcome = {}
    for target in (os.path.join(here, "evil.py"), os.path.join(here, "__init__.py")):
        try:
            with open(target, "a") as handle:
                handle.write("hacked = True\\n")
            outcome[target] = "written"
        except OSError as exc:
            outcome[target] = errno.errorcode.get(exc.errno, str(exc.errno))
    mounts = [line.split() for line in open("/proc/self/mountinfo")]
    bundled = [m for m in mounts if m[4] == "/opt/function/runtime/bundled"]
    stat = os.stat(requests.__file__)
    return {"outcome": outcome, "options": [m[5] for m in bundled], "inode": [stat.st_dev, stat.st_ino],
            "mountinfo": open("/proc/self/mountinfo").read()}
"""


def test_the_bundled_tree_is_read_only_inside_and_shared_by_instances(api: Api) -> None:
    first = api.invoke(api.deploy(READ_ONLY_PROBE)["func_name"]).json()
    second = api.invoke(api.deploy(READ_ONLY_PROBE)["func_name"]).json()
    # Neither a new file nor a changed one; a new one is refused by the read-only mount itself
    # (an existing one meets the function uid's permissions first).
    created, changed = first["outcome"].values()
    assert created == "EROFS", first
    assert changed in ("EROFS", "EACCES"), first
    assert len(first["options"]) == 1 and first["options"][0].split(",")[0] == "ro"
    # Shown without the host's path to the tree.
    assert str(SOURCE_ROOT) not in first["mountinfo"] and "build/bundled" not in first["mountinfo"]
    # One tree on the host, bound into each sandbox: the same file, no per-instance copy.
    assert TREE is not None
    host = os.stat(TREE / "requests" / "__init__.py")
    assert first["inode"][1] == second["inode"][1] == host.st_ino
    assert "hacked" not in (TREE / "requests" / "__init__.py").read_text()
    assert not (TREE / "requests" / "evil.py").exists()


def test_switched_off_the_bundled_libraries_are_not_importable(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", "[runtimes]\nbundled_libraries = false\n")
    daemon.start()
    try:
        api = Api(daemon)
        source = """
            import os

            def handler(event, context):
                try:
                    import requests
                except ImportError as exc:
                    return {"error": type(exc).__name__, "mounted": os.path.exists("/opt/function/runtime/bundled")}
                return {"imported": requests.__file__}
        """
        body = api.invoke(api.deploy(source)["func_name"]).json()
        assert body == {"error": "ModuleNotFoundError", "mounted": False}
        assert "bundled libraries: switched off" in daemon.log()
    finally:
        daemon.stop()


def test_a_missing_tree_is_logged_and_functions_still_run(tmp_path: Path) -> None:
    empty = tmp_path / "nothing-built"
    empty.mkdir()
    daemon = Daemon(tmp_path / "state", f'[runtimes]\nbundled_libraries_dir = "{empty}"\n')
    daemon.start()
    try:
        api = Api(daemon)
        assert api.invoke(api.deploy("def handler(e, c):\n    return 'runs'\n")["func_name"]).content == b"runs"
        assert f"bundled libraries: none built under {empty}" in daemon.log()
    finally:
        daemon.stop()


def test_a_dependencys_requests_shadows_the_bundled_one(api: Api) -> None:
    files = {"requests/__init__.py": "MARKER = 'from a dependency'\n"}
    body = {"name": unique_name("dep"), "runtime": RUNTIME, "depend_type": "zip", "depend_file": b64(make_zip(files))}
    dependency = api.http.post("/dependencies/version", json=body)
    assert dependency.status_code == 200, dependency.text
    source = "import requests\n\ndef handler(e, c):\n    return requests.MARKER\n"
    name = api.deploy(source, depend_version_list=[dependency.json()["id"]])["func_name"]
    assert api.invoke(name).text == "from a dependency"


def test_without_mount_namespaces_the_tree_is_still_on_the_path_last(tmp_path: Path) -> None:
    # A degraded host: no mounts, so the instance opens the tree as root and reads it by fd.
    # (Credentials off too: this host's interpreter lives under /root, which a function uid
    # cannot read without the sandbox's own view of it.)
    config = '[sandbox]\nallow_degraded = true\ndisable = ["mounts", "credentials"]\n'
    daemon = Daemon(tmp_path / "state", config)
    daemon.start()
    try:
        api = Api(daemon)
        source = """
            import sys
            import requests
            import obs

            def handler(event, context):
                return {"path": sys.path, "requests": requests.__file__}
        """
        response = api.invoke(api.deploy(source)["func_name"])
        assert response.headers["x-is-func-err"] == "false", response.text
        body = response.json()
        assert body["requests"].startswith(body["path"][-1] + "/requests/")
        assert body["path"][-1].startswith("/proc/self/fd/")
        # The function's code comes first; the standard library before the bundled tree.
        assert body["path"][0].startswith("/proc/self/fd/") and body["path"][0] != body["path"][-1]
    finally:
        daemon.stop()


@pytest.mark.parametrize("minor", [9, 10, 12, 13])
def test_each_interpreter_gets_the_tree_built_for_it(api: Api, minor: int) -> None:
    skip_unless_served(api, f"Python3.{minor}", exact=True)
    # `make` builds a tree for every interpreter that serves a runtime name (--discover).
    assert tree_for(SOURCE_ROOT, (3, minor)) is not None, f"no bundled tree for 3.{minor}: run `make bundled`"
    response = api.create(make_zip({"index.py": IMPORT_ALL}), runtime=f"Python3.{minor}", memory_size=512, timeout=30)
    assert response.status_code == 200, response.text
    modules = [library.module for library in libraries_for((3, minor))]
    result = api.invoke(response.json()["func_name"], {"modules": modules})
    assert result.headers["x-is-func-err"] == "false", result.text
    body = result.json()
    assert body["failed"] == {}
    assert body["requests"] == f"/opt/function/runtime/bundled/python3.{minor}/requests/__init__.py"
