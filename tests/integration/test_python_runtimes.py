"""FunctionGraph's Python runtime names served by the node's real interpreters (issue 12, items 1 and 5).

Real daemons on the pyenv interpreters the development and CI machines have
(3.6-3.13, 2.7): each function reports the `sys.version_info` it runs on, and
the test compares it with the interpreter's own answer.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import Api, Daemon, make_zip, unique_name

PYENV = os.environ.get("PYENV_ROOT") or "/root/.pyenv"
DAEMON_MINOR = sys.version_info.minor
FGD_SOURCE = str(Path(__file__).resolve().parents[2])
REPORT = """
import os, sys
def handler(event, context):
    return {"version": list(sys.version_info[:3]), "executable": sys.executable}
"""


def pyenv_python(minor: int) -> str:
    """The pyenv interpreter 3.<minor> of this machine (they all have 3.6-3.13 and 2.7)."""
    found = sorted(glob.glob(f"{PYENV}/versions/3.{minor}.*/bin/python3.{minor}"))
    if not found:
        # The development and CI machines have them; a machine with only its system Python cannot run this.
        pytest.skip(f"needs pyenv's Python 3.{minor} under {PYENV}/versions (pyenv install 3.{minor})")
    return found[-1]


def version_of(path: str) -> list[int]:
    out = subprocess.run([path, "-c", "import sys; print(list(sys.version_info[:3]))"], capture_output=True, text=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def shims() -> None:
    """The shim packages of every interpreter (what `make` builds; quick when up to date)."""
    result = subprocess.run([sys.executable, "-m", "fgd.shims", "build"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    # It goes on past an interpreter it cannot serve (a node serves what it can); the development
    # and CI machines can serve them all, so one that failed is named here, not by later tests.
    assert "FAILED" not in result.stdout, result.stdout


def narrow_config(*minors: int, exact: bool = False, extra: str = "") -> str:
    """[runtimes] that finds only these pyenv minors (plus the daemon's own interpreter)."""
    search = [f"{PYENV}/versions/3.{minor}.*/bin/python3.*" for minor in minors]
    return f"""
        [runtimes]
        search = {json.dumps(search)}
        exact_versions = {"true" if exact else "false"}
        {extra}
    """


# Scripts an operator might list by mistake: each must be skipped, never stop the daemon.
HANGS = "#!/bin/sh\nsleep 300\n"
GARBAGE = "#!/bin/sh\necho 'FGD-PROBE {not json'\necho 'Python 3.12.1'\nhead -c 3000 /dev/urandom\n"
FLOODS = "#!/bin/sh\nyes FGD-PROBE\n"
LIES = '#!/bin/sh\necho \'FGD-PROBE {"version": [3, 99, 0], "implementation": "CPython", "prefix": "relative"}\'\n'


@pytest.fixture(scope="module")
def broken_interpreters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("interpreters")
    paths = {}
    for name, script in (("hangs", HANGS), ("garbage", GARBAGE), ("lies", LIES), ("floods", FLOODS)):
        path = folder / f"python3.{name}"
        path.write_text(script)
        path.chmod(0o755)
        paths[name] = str(path)
    paths["missing"] = str(folder / "python3.404")
    paths["python2"] = f"{PYENV}/versions/2.7.18/bin/python2.7"
    return paths


@pytest.fixture(scope="module")
def narrow(shims: None, tmp_path_factory: pytest.TempPathFactory, broken_interpreters: dict) -> Iterator[Daemon]:
    """Pyenv's 3.9, 3.12 and 3.13 only: no 3.10; and broken interpreters listed in the config."""
    listed = [broken_interpreters[k] for k in ("hangs", "garbage", "lies", "floods", "missing", "python2")]
    extra = f"python = {json.dumps(listed)}\nprobe_timeout = 1.0"
    d = Daemon(tmp_path_factory.mktemp("narrow") / "state", narrow_config(9, 12, 13, extra=extra))
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def narrow_api(narrow: Daemon) -> Api:
    return Api(narrow)


def deploy(api: Api, runtime: str, source: str = REPORT, **settings) -> httpx.Response:
    body = {
        "func_name": unique_name("py"),
        "runtime": runtime,
        "handler": "index.handler",
        "code_type": "zip",
        "func_code": {"file": __import__("base64").b64encode(make_zip({"index.py": source})).decode()},
        **settings,
    }
    return api.http.post("/functions", json=body)


def run_on(api: Api, runtime: str, source: str = REPORT) -> tuple[dict, httpx.Response, dict]:
    created = deploy(api, runtime, textwrap.dedent(source))
    assert created.status_code == 200, created.text
    response = api.invoke(created.json()["func_name"])
    assert response.status_code == 200, response.text
    return created.json(), response, response.json()


@pytest.mark.parametrize("minor", [9, 12])
def test_function_runs_on_the_interpreter_of_its_runtime_name(narrow_api: Api, minor: int) -> None:
    path = pyenv_python(minor)
    config, response, body = run_on(narrow_api, f"Python3.{minor}")
    assert body["version"] == version_of(path)
    assert os.path.realpath(body["executable"]) == os.path.realpath(path)
    # The config answer and the invocation summary name the interpreter too.
    version = ".".join(map(str, version_of(path)))
    assert config["runtime_interpreter"] == {"path": path, "version": version}
    summary = json.loads(response.headers["x-cff-invoke-summary"])
    assert summary["runtime_interpreter"] == {"path": path, "version": version}
    assert summary["coldStart"] is True


def test_a_missing_minor_is_served_by_the_nearest_newer_one(narrow_api: Api) -> None:
    # No 3.10 was found: the next newer one present serves Python3.10 (the daemon's own 3.11).
    _config, _response, body = run_on(narrow_api, "Python3.10")
    assert body["version"][:2] == [3, 11]
    # FunctionGraph's Python3.6: pyenv's 3.6 cannot run the shim (nor was it searched): 3.9 serves it.
    _config, _response, body = run_on(narrow_api, "Python3.6")
    assert body["version"] == version_of(pyenv_python(9))


def test_runtimes_lists_every_name_with_its_interpreter(narrow_api: Api) -> None:
    answer = narrow_api.http.get("/runtimes").json()
    assert [n for n in answer["runtimes"] if n.startswith("Python")] == [f"Python3.{m}" for m in range(6, 14)]
    # Issue 13: Custom and http run on the daemon's own interpreter, listed after the Python names.
    assert answer["runtimes"][-2:] == ["Custom", "http"]
    assert answer["served_by"]["Custom"]["path"] == answer["served_by"]["http"]["path"]
    served = answer["served_by"]
    assert served["Python3.12"] == {"path": pyenv_python(12), "version": served["Python3.12"]["version"], "exact": True}
    assert served["Python3.10"]["exact"] is False and served["Python3.10"]["version"].startswith("3.11.")
    for name in ("Python3.6", "Python3.7", "Python3.8"):
        assert served[name]["path"] == pyenv_python(9)
    assert answer["exact_versions"] is False
    by_path = {i["path"]: i for i in answer["interpreters"]}
    assert by_path[pyenv_python(9)]["serves"] == ["Python3.6", "Python3.7", "Python3.8", "Python3.9"]


def test_python27_is_refused_with_the_reason(narrow_api: Api) -> None:
    response = deploy(narrow_api, "Python2.7")
    assert response.status_code == 400
    assert response.json()["error_code"] == "FSS.0400"
    message = response.json()["error_msg"]
    assert "Python 2" in message and "end of life" in message and "Python3.12" in message


@pytest.mark.parametrize("runtime", ["Python3.99", "Python3.5", "python3.12", "Python3.12 ", "Node.js99"])
def test_a_name_no_interpreter_serves_is_refused(narrow_api: Api, runtime: str) -> None:
    response = deploy(narrow_api, runtime)
    assert response.status_code == 400, response.text
    assert repr(runtime) in response.json()["error_msg"]


def test_broken_interpreters_are_skipped_and_the_daemon_serves(
    narrow: Daemon, narrow_api: Api, broken_interpreters: dict
) -> None:
    log = narrow.log()
    assert f"interpreter {broken_interpreters['hangs']} skipped: no answer within 1 s" in log
    assert f"interpreter {broken_interpreters['garbage']} skipped: it did not answer like a Python" in log
    assert f"interpreter {broken_interpreters['lies']} skipped: it did not answer like a Python" in log
    # Endless output is cut off at 64 KiB and the script killed, well before the probe's timeout.
    assert f"interpreter {broken_interpreters['floods']} skipped: it did not answer like a Python" in log
    assert f"interpreter {broken_interpreters['missing']} skipped: not an executable file" in log
    assert f"interpreter {broken_interpreters['python2']} skipped: Python 2.7.18 is not Python 3" in log
    listed = {i["path"] for i in narrow_api.http.get("/runtimes").json()["interpreters"]}
    assert not listed & set(broken_interpreters.values())
    # The hanging probe was killed, with anything it started.
    assert not [
        p for p in psutil.process_iter(["cmdline"]) if broken_interpreters["hangs"] in (p.info["cmdline"] or [])
    ]


def test_exact_versions_refuses_a_missing_minor_naming_what_is_installed(
    shims: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    daemon = Daemon(tmp_path_factory.mktemp("exact") / "state", narrow_config(9, 12, exact=True))
    daemon.start()
    try:
        api = Api(daemon)
        for missing in ("Python3.10", "Python3.6"):
            response = deploy(api, missing)
            assert response.status_code == 400, response.text
            message = response.json()["error_msg"]
            assert "exact_versions" in message
            for installed in (pyenv_python(9), pyenv_python(12)):
                assert f"{'.'.join(map(str, version_of(installed)))} ({installed})" in message
        names = api.http.get("/runtimes").json()["runtimes"]
        assert [n for n in names if n.startswith("Python")] == ["Python3.9", f"Python3.{DAEMON_MINOR}", "Python3.12"]
        assert run_on(api, "Python3.12")[2]["version"] == version_of(pyenv_python(12))
    finally:
        daemon.stop()


def zygote_interpreters(daemon: Daemon) -> list[str]:
    """Real paths of the interpreters of the daemon's zygotes running now (the process list)."""
    found = []
    for child in psutil.Process(daemon.process.pid).children():
        try:
            if "runtimes.python.zygote" in " ".join(child.cmdline()):
                found.append(os.path.realpath(child.exe()))
        except psutil.NoSuchProcess:
            continue
    return found


def test_a_zygote_starts_on_first_use_only(shims: None, tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", narrow_config(9, 12))
    daemon.start()
    try:
        api = Api(daemon)
        health = httpx.get(f"{daemon.url}/healthz").json()
        assert health["status"] == "ok"
        assert health["runtimes"]["Python3.12"] == "not started"
        time.sleep(0.3)
        # Not even the daemon's own interpreter runs a zygote before a function needs it.
        assert zygote_interpreters(daemon) == []
        run_on(api, "Python3.12")
        assert zygote_interpreters(daemon) == [os.path.realpath(pyenv_python(12))]
        health = httpx.get(f"{daemon.url}/healthz").json()
        assert health["runtimes"]["Python3.12"] == "ready"
        assert health["runtimes"]["Python3.9"] == "not started"
        started = {i["path"]: i for i in health["interpreters"]}[pyenv_python(12)]
        assert started["zygote"] == "ready" and started["pid"] > 0
    finally:
        daemon.stop()


@pytest.mark.parametrize("minor", [9, 12])
def test_the_sandbox_holds_for_a_zygote_of_another_interpreter(narrow_api: Api, minor: int) -> None:
    # The security suite's key checks, on interpreters other than the daemon's.
    source = """
        import os, sys
        def handler(event, context):
            status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
            try:
                socket_refused = False
                import socket
                socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            except OSError:
                socket_refused = True
            return {
                "version": list(sys.version_info[:2]),
                "uid": os.getuid(), "euid": os.geteuid(),
                "seccomp": status["Seccomp"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
                "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
                "pid": os.getpid(), "root": sorted(os.listdir("/")),
                "host_paths": [p for p in HOST_PATHS if os.path.exists(p)],
                "socket_refused": socket_refused,
                "sys_path": sys.path, "environ": sorted(os.environ),
            }
    """
    # The daemon's own interpreter and fgd's source tree are host paths too.
    host_paths = ("/work", "/home", "/var/lib", "/etc/shadow", os.path.realpath(sys.base_prefix), FGD_SOURCE)
    source = source.replace("HOST_PATHS", repr(host_paths))
    _config, _response, body = run_on(narrow_api, f"Python3.{minor}", source)
    assert body["version"] == [3, minor]
    assert body["uid"] >= 200_000 and body["euid"] == body["uid"]
    assert body["seccomp"] == "2" and body["no_new_privs"] == "1"
    assert int(body["cap_eff"], 16) == 0 and int(body["cap_bnd"], 16) == 0
    # Its own pid namespace (a reaper is pid 1), its own root: no host tree, no daemon interpreter.
    assert body["pid"] < 10
    assert body["host_paths"] == []
    assert "work" not in body["root"]
    assert body["socket_refused"] is True
    # Neither the shim packages nor fgd's source are on its import path or in its environment.
    assert not [p for p in body["sys_path"] if "runtimes" in p or p.startswith(FGD_SOURCE) or ".venv" in p]
    assert "PYTHONPATH" not in body["environ"]


BUNDLED_WRITER = """
import errno, os, sys

def handler(event, context):
    tree = "/opt/function/runtime/bundled/python%d.%d" % sys.version_info[:2]
    tag = sys.implementation.cache_tag
    targets = [
        tree + "/zz-every-function.pth",
        tree + "/__pycache__/six." + tag + ".pyc",
        tree + "/sitecustomize.py",
        tree + "/requests/__pycache__/__init__." + tag + ".pyc",
        "/opt/function/runtime/bundled/python3.11/usercustomize.py",
    ]
    outcome = {}
    for target in targets:
        try:
            with open(target, "wb") as handle:
                handle.write(b"import os; os.environ['OWNED'] = '1'\\n")
            outcome[target] = "written"
        except OSError as exc:
            outcome[target] = errno.errorcode.get(exc.errno, str(exc.errno))
    try:
        os.symlink("/tmp", tree + "/link")
        outcome["symlink"] = "made"
    except OSError as exc:
        outcome["symlink"] = errno.errorcode.get(exc.errno, str(exc.errno))
    import six, requests
    return {"outcome": outcome, "owned": os.environ.get("OWNED"), "six": six.__file__}
"""


@pytest.mark.parametrize("minor", [9, 12])
def test_a_function_on_another_interpreter_cannot_plant_code_in_the_shared_bundled_tree(
    narrow_api: Api, minor: int
) -> None:
    # The tree is shared by every function: a .pth, a sitecustomize or a __pycache__ entry
    # written there would run in all of them. Every write is refused by the read-only mount.
    _config, _response, body = run_on(narrow_api, f"Python3.{minor}", BUNDLED_WRITER)
    assert set(body["outcome"].values()) <= {"EROFS", "EACCES"}, body["outcome"]
    assert body["outcome"]["symlink"] == "EROFS"
    assert body["owned"] is None
    assert body["six"] == f"/opt/function/runtime/bundled/python3.{minor}/six.py"
    # A second function (another uid) finds nothing planted.
    _config, _response, second = run_on(narrow_api, f"Python3.{minor}", BUNDLED_WRITER)
    assert second["owned"] is None


# Item 5: errors show the function's frames, at the paths the function sees -------------------


NESTED = """
def inner(value):
    return 1 / value

def middle(value):
    return inner(value)

def handler(event, context):
    return middle(0)
"""
IMPORT_ERROR = """
import helper

def handler(event, context):
    return 1
"""
HELPER = """
import not_installed_anywhere
"""
SYNTAX_ERROR = """
def handler(event, context):
    return {"unclosed": 1
"""
FOREIGN = ("runtimes/python", "sandbox/", "/.pyenv", "site-packages", "<frozen", "importlib", "/usr/lib/python")


def frames_of(stack: list[str]) -> list[str]:
    """The `File "...", line N, in f` line of each frame (an entry also holds the source line)."""
    lines = [line.strip() for entry in stack for line in entry.splitlines()]
    return [line for line in lines if line.startswith("File ")]


def assert_only_function_frames(stack: list[str]) -> None:
    text = "\n".join(stack)
    for foreign in FOREIGN:
        assert foreign not in text, (foreign, text)
    frames = frames_of(stack)
    assert frames, text
    assert all(frame.startswith('File "/opt/function/code/') for frame in frames), text


def invoke_files(api: Api, runtime: str, files: dict[str, str]) -> dict:
    """The error body of invoking a function made of `files`."""
    body = {
        "func_name": unique_name("err"),
        "runtime": runtime,
        "handler": "index.handler",
        "code_type": "zip",
        "func_code": {"file": __import__("base64").b64encode(make_zip(files)).decode()},
    }
    created = api.http.post("/functions", json=body)
    assert created.status_code == 200, created.text
    response = api.invoke(created.json()["func_name"])
    assert response.headers["x-is-func-err"] == "true", response.text
    return response.json()


RUNTIMES = ["Python3.9", f"Python3.{DAEMON_MINOR}", "Python3.12"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_an_error_in_a_nested_call_shows_the_functions_frames_only(narrow_api: Api, runtime: str) -> None:
    error = invoke_files(narrow_api, runtime, {"index.py": NESTED})
    assert error["errorType"] == "ZeroDivisionError"
    assert_only_function_frames(error["stackTrace"])
    frames = frames_of(error["stackTrace"])
    assert [frame.rsplit(" in ", 1)[1] for frame in frames] == ["handler", "middle", "inner"]
    assert frames[-1].startswith('File "/opt/function/code/index.py", line 3')


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_an_import_error_shows_the_functions_frames_only(narrow_api: Api, runtime: str) -> None:
    error = invoke_files(narrow_api, runtime, {"index.py": IMPORT_ERROR, "helper.py": HELPER})
    assert error["errorType"] == "Runtime.ImportModuleError"
    assert "not_installed_anywhere" in error["errorMessage"]
    assert_only_function_frames(error["stackTrace"])
    frames = frames_of(error["stackTrace"])
    assert frames[0].startswith('File "/opt/function/code/index.py", line 2')
    assert frames[-1].startswith('File "/opt/function/code/helper.py", line 2')
    assert error["stackTrace"][-1].startswith("ModuleNotFoundError: No module named 'not_installed_anywhere'")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_syntax_error_in_the_handler_module_points_at_the_line(narrow_api: Api, runtime: str) -> None:
    error = invoke_files(narrow_api, runtime, {"index.py": SYNTAX_ERROR})
    assert error["errorType"] == "Runtime.ImportModuleError"
    assert "SyntaxError" in error["errorMessage"]
    assert_only_function_frames(error["stackTrace"])
    assert any(
        frame.startswith('File "/opt/function/code/index.py", line 3') for frame in frames_of(error["stackTrace"])
    )
    assert error["stackTrace"][-1].startswith("SyntaxError: ")


def test_doctor_shows_each_interpreter_and_what_it_serves(shims: None, tmp_path: Path) -> None:
    config = tmp_path / "fgd.toml"
    config.write_text(textwrap.dedent(narrow_config(9, 12)))
    result = subprocess.run(
        [sys.executable, "-m", "fgd", "doctor", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    lines = result.stdout.splitlines()
    served = [line for line in lines if line.startswith("ok") and " python " in f" {line.split()[1]} "]
    assert any(
        pyenv_python(9) in line and line.endswith("serves Python3.6, Python3.7, Python3.8, Python3.9")
        for line in served
    )
    assert any(pyenv_python(12) in line and line.endswith("serves Python3.12") for line in served)
    assert not any("3.10." in line for line in lines)


ASYNC = """
import asyncio, sys
async def handler(event, context):
    await asyncio.sleep(0.01)
    return {"version": list(sys.version_info[:2]), "request": context.getRequestID()}
"""


@pytest.mark.parametrize("minor", [9, 12])
def test_async_handlers_and_concurrent_requests_run_on_other_interpreters(narrow_api: Api, minor: int) -> None:
    created = deploy(narrow_api, f"Python3.{minor}", ASYNC, strategy_config={"concurrency": 1, "concurrent_num": 4})
    assert created.status_code == 200, created.text
    name = created.json()["func_name"]
    responses = [narrow_api.invoke(name) for _ in range(3)]
    for response in responses:
        assert response.headers["x-is-func-err"] == "false", response.text
        assert response.json()["version"] == [3, minor]
        assert response.json()["request"] == response.headers["x-cff-request-id"]


@pytest.mark.slow
def test_an_interpreter_removed_under_a_running_daemon_costs_only_its_own_functions(
    shims: None, tmp_path: Path
) -> None:
    # The operator names 3.12 through a link, then removes it (an uninstall) while its zygote runs.
    link = tmp_path / "python3.12"
    link.symlink_to(pyenv_python(12))
    daemon = Daemon(tmp_path / "state", narrow_config(9, extra=f"python = [{json.dumps(str(link))}]"))
    daemon.start()
    try:
        api = Api(daemon)
        assert run_on(api, "Python3.12")[2]["version"][:2] == [3, 12]
        on_39 = deploy(api, "Python3.9").json()["func_name"]
        link.unlink()
        for child in psutil.Process(daemon.process.pid).children():
            if os.path.realpath(child.exe()) == os.path.realpath(pyenv_python(12)):
                child.kill()
        deadline = time.monotonic() + 5
        while "cannot restart the python3.12 zygote" not in daemon.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"cannot restart the python3.12 zygote ({link})" in daemon.log()
        # The daemon and the other interpreters go on; health names the one that is down.
        assert api.invoke(on_39).json()["version"][:2] == [3, 9]
        health = httpx.get(f"{daemon.url}/healthz")
        assert health.status_code == 503 and health.json()["runtimes"]["Python3.12"] == "restarting"
        # Back once the interpreter is.
        link.symlink_to(pyenv_python(12))
        deadline = time.monotonic() + 10
        while httpx.get(f"{daemon.url}/healthz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run_on(api, "Python3.12")[2]["version"][:2] == [3, 12]
    finally:
        daemon.stop()


def test_preloaded_runtimes_start_their_zygote_at_boot(shims: None, tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", narrow_config(9, 12, extra='preload = ["Python3.12"]'))
    daemon.start()
    try:
        assert zygote_interpreters(daemon) == [os.path.realpath(pyenv_python(12))]
        assert httpx.get(f"{daemon.url}/healthz").json()["runtimes"]["Python3.12"] == "ready"
    finally:
        daemon.stop()


def test_preloading_a_name_the_node_cannot_serve_stops_the_start(shims: None, tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", narrow_config(9, 12, exact=True, extra='preload = ["Python3.10"]'))
    with pytest.raises(RuntimeError) as failed:
        daemon.start()
    assert "[runtimes] preload: runtime 'Python3.10' needs Python 3.10" in str(failed.value)
