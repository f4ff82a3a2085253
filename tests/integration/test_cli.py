"""The `fgd` command line against a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx

from tests.conftest import RUNTIME, Daemon, unique_name


def fgd(daemon: Daemon | None, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FGD_")}
    if daemon is not None:
        environ |= {"FGD_ENDPOINT": daemon.url, "FGD_STATE_DIR": str(daemon.state_dir)}
    environ |= env or {}
    return subprocess.run([sys.executable, "-m", "fgd", *args], capture_output=True, text=True, env=environ, timeout=60)


def write_function(directory: Path, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "index.py").write_text(body)
    (directory / "__pycache__").mkdir(exist_ok=True)
    (directory / "__pycache__" / "junk.pyc").write_bytes(b"junk")
    return directory


def test_deploy_invoke_ls_logs_rm(daemon: Daemon, tmp_path: Path) -> None:
    name = unique_name("cli")
    source = write_function(
        tmp_path / "fn", "import os\ndef handler(e, c):\n    print('hi', e)\n    return {'m': os.environ['MODE']}\n"
    )
    deployed = fgd(
        daemon,
        "deploy",
        str(source),
        "--name",
        name,
        "--runtime",
        RUNTIME,
        "--handler",
        "index.handler",
        "--memory",
        "256",
        "--timeout",
        "5",
        "--env",
        "MODE=test",
    )
    assert deployed.returncode == 0, deployed.stderr
    assert f"created urn:fss:local:default:function:default:{name}:latest" in deployed.stdout

    invoked = fgd(daemon, "invoke", name, "--data", '{"x": 1}')
    assert invoked.returncode == 0, invoked.stderr
    assert json.loads(invoked.stdout) == {"m": "test"}

    listed = fgd(daemon, "ls")
    assert listed.returncode == 0
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "RUNTIME", "MEMORY", "TIMEOUT", "HANDLER", "MODIFIED"]
    assert any(row.split()[:4] == [name, RUNTIME, "256", "MB"] for row in rows)

    logs = fgd(daemon, "logs", name)
    assert logs.returncode == 0
    assert "hi {'x': 1}" in logs.stdout
    assert "Finish Invoke" in logs.stdout

    removed = fgd(daemon, "rm", name)
    assert removed.returncode == 0
    assert fgd(daemon, "invoke", name).returncode == 1


def test_deploy_again_updates_code_and_config(daemon: Daemon, tmp_path: Path) -> None:
    name = unique_name("cli")
    source = write_function(tmp_path / "fn", "def handler(e, c):\n    return 'one'\n")
    assert fgd(daemon, "deploy", str(source), "--name", name, "--runtime", RUNTIME).returncode == 0
    (source / "index.py").write_text("def handler(e, c):\n    return 'two'\n")
    updated = fgd(daemon, "deploy", str(source), "--name", name, "--timeout", "9")
    assert updated.returncode == 0, updated.stderr
    assert "updated" in updated.stdout and "timeout 9 s" in updated.stdout
    assert fgd(daemon, "invoke", name).stdout.strip() == "two"


def test_deploy_from_zip_excludes_nothing_and_works(daemon: Daemon, tmp_path: Path) -> None:
    name = unique_name("cli")
    archive = tmp_path / "code.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("index.py", "def handler(e, c):\n    return 'zipped'\n")
    assert fgd(daemon, "deploy", str(archive), "--name", name, "--runtime", RUNTIME).returncode == 0
    assert fgd(daemon, "invoke", name).stdout.strip() == "zipped"


def test_function_error_exits_2_with_the_error_body(daemon: Daemon, tmp_path: Path) -> None:
    name = unique_name("cli")
    source = write_function(tmp_path / "fn", "def handler(e, c):\n    raise KeyError('k')\n")
    fgd(daemon, "deploy", str(source), "--name", name, "--runtime", RUNTIME)
    result = fgd(daemon, "invoke", name)
    assert result.returncode == 2
    assert json.loads(result.stdout)["errorType"] == "KeyError"
    assert "the function failed (KeyError)" in result.stderr


def test_invoke_log_flag_prints_the_tail(daemon: Daemon, tmp_path: Path) -> None:
    name = unique_name("cli")
    source = write_function(tmp_path / "fn", "def handler(e, c):\n    print('tail me')\n    return 1\n")
    fgd(daemon, "deploy", str(source), "--name", name, "--runtime", RUNTIME)
    result = fgd(daemon, "invoke", name, "--log")
    assert "tail me" in result.stderr


def test_errors_are_one_line_without_traceback(daemon: Daemon, tmp_path: Path) -> None:
    cases = [
        (fgd(daemon, "invoke", "does-not-exist-fn"), "does not exist"),
        (fgd(daemon, "invoke", "x", "--data", "{bad"), "--data is not valid JSON"),
        (fgd(daemon, "deploy", str(tmp_path / "missing"), "--name", "x", "--runtime", RUNTIME), "no such file"),
        (fgd(daemon, "deploy", str(write_function(tmp_path / "f", "x=1\n")), "--name", "x"), "--runtime is required"),
        (
            fgd(daemon, "deploy", str(tmp_path / "f"), "--name", "x", "--runtime", RUNTIME, "--memory", "1"),
            "memory_size",
        ),
        (fgd(daemon, "ls", env={"FGD_ENDPOINT": "http://127.0.0.1:9"}), "is `fgd serve` running"),
        (fgd(daemon, "ls", env={"FGD_TOKEN": "wrong"}), "FSS.0401"),
        (fgd(None, "ls", env={"FGD_STATE_DIR": str(tmp_path / "none")}), "no token"),
    ]
    for result, words in cases:
        assert result.returncode != 0, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("fgd: error: ") and words in lines[0], lines[0]
        assert "Traceback" not in result.stderr


def test_dependencies_from_the_cli(daemon: Daemon, tmp_path: Path) -> None:
    dep_name = unique_name("clidep")
    dep_dir = tmp_path / "dep"
    dep_dir.mkdir()
    (dep_dir / "clilib.py").write_text("def value():\n    return 'from cli dep'\n")
    added = fgd(daemon, "dep", "add", dep_name, str(dep_dir), "--runtime", RUNTIME)
    assert added.returncode == 0, added.stderr
    assert f"added {dep_name} version 1" in added.stdout
    assert fgd(daemon, "dep", "add", dep_name, str(dep_dir), "--runtime", RUNTIME).returncode == 0
    listed = fgd(daemon, "dep", "ls")
    assert listed.stdout.splitlines()[0].split() == ["NAME", "VERSION", "RUNTIME", "OWNER", "SIZE", "ID"]
    assert sum(1 for row in listed.stdout.splitlines() if row.split()[0] == dep_name) == 2

    name = unique_name("cli")
    source = write_function(tmp_path / "fn", "import clilib\ndef handler(e, c):\n    return clilib.value()\n")
    deployed = fgd(daemon, "deploy", str(source), "--name", name, "--runtime", RUNTIME, "--dep", f"{dep_name}:1")
    assert deployed.returncode == 0, deployed.stderr
    assert fgd(daemon, "invoke", name).stdout.strip() == "from cli dep"

    in_use = fgd(daemon, "dep", "rm", f"{dep_name}:1")
    assert in_use.returncode == 1 and name in in_use.stderr
    removed = fgd(daemon, "dep", "rm", f"{dep_name}:2")
    assert removed.returncode == 0 and f"deleted {dep_name} version 2" in removed.stdout
    assert fgd(daemon, "deploy", str(source), "--name", name, "--dep", "nonexistent-dep").returncode == 1


def test_large_package_is_streamed_with_progress(daemon: Daemon, tmp_path: Path) -> None:
    name = unique_name("big")
    source = write_function(tmp_path / "fn", "def handler(e, c):\n    return 'big'\n")
    (source / "blob.bin").write_bytes(os.urandom(9 * 1024 * 1024))
    deployed = fgd(daemon, "deploy", str(source), "--name", name, "--runtime", RUNTIME)
    assert deployed.returncode == 0, deployed.stderr
    assert "uploading" in deployed.stderr and "(100%)" in deployed.stderr
    assert int(deployed.stdout.split("code ")[1].split()[0]) > 9 * 1024 * 1024
    assert fgd(daemon, "invoke", name).stdout.strip() == "big"


def test_async_invoke_and_status_from_the_cli(daemon: Daemon, tmp_path: Path) -> None:
    name = unique_name("cliasync")
    source = write_function(tmp_path / "fn", "def handler(e, c):\n    return e\n")
    fgd(daemon, "deploy", str(source), "--name", name, "--runtime", RUNTIME)
    queued = fgd(daemon, "invoke", name, "--async", "--data", '{"k": 1}')
    assert queued.returncode == 0, queued.stderr
    request_id = queued.stdout.split()[1]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = fgd(daemon, "async", "ls", name)
        row = next(line for line in listed.stdout.splitlines() if line.startswith(request_id))
        if "SUCCESS" in row:
            break
        time.sleep(0.2)
    assert row.split()[:3] == [request_id, "SUCCESS", "1"]


def test_triggers_from_the_cli(daemon: Daemon, tmp_path: Path) -> None:
    name = unique_name("clitrig")
    source = write_function(tmp_path / "fn", "def handler(e, c):\n    return {'statusCode': 200, 'body': 'hi'}\n")
    fgd(daemon, "deploy", str(source), "--name", name, "--runtime", RUNTIME)
    timer = fgd(daemon, "trigger", "add", name, "--timer", "1h", "--rate", "--trigger-name", "hourly")
    assert timer.returncode == 0, timer.stderr
    route = fgd(daemon, "trigger", "add", name, "--http", f"/cli-{name}", "--method", "GET")
    assert route.returncode == 0, route.stderr
    listed = fgd(daemon, "trigger", "ls", name).stdout.splitlines()
    assert listed[0].split() == ["ID", "TYPE", "STATUS", "NAME", "WHAT"]
    assert any("TIMER" in row and "Rate 1h" in row for row in listed)
    assert any("APIG" in row and f"GET /cli-{name}" in row for row in listed)
    assert httpx.get(f"{daemon.gateway_url}/cli-{name}").text == "hi"
    trigger_id = timer.stdout.split()[3]
    assert fgd(daemon, "trigger", "rm", name, trigger_id).returncode == 0
    assert fgd(daemon, "trigger", "rm", name, trigger_id).returncode == 1
    bad = fgd(daemon, "trigger", "add", name, "--timer", "0 99 * * * *")
    assert bad.returncode == 1 and "not valid" in bad.stderr


def test_async_ls_shows_the_error_type_of_a_failed_invocation(daemon: Daemon, tmp_path: Path) -> None:
    name = unique_name("clifail")
    source = write_function(tmp_path / "fn", "def handler(e, c):\n    raise ValueError('broken on purpose')\n")
    fgd(daemon, "deploy", str(source), "--name", name, "--runtime", RUNTIME)
    with daemon.client() as http:
        http.put(f"/functions/{name}/async-invoke-config", json={"max_async_retry_attempts": 0}).raise_for_status()
    request_id = fgd(daemon, "invoke", name, "--async").stdout.split()[1]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = fgd(daemon, "async", "ls", name)
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if line.startswith(request_id))
        if "FAIL" in row:
            break
        time.sleep(0.2)
    # The API's error_code is FunctionGraph's integer; the CLI shows the error's name.
    assert "FAIL" in row and "ValueError: broken on purpose" in row
