"""The daemon process: authentication, health, restart, shutdown, zygote supervision."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import (
    BACKGROUND_SLEEP,
    Api,
    Daemon,
    free_port,
    instance_cgroups,
    marker,
    pids_with,
    wait_none_with,
    zygote_of,
)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/default/fgs/functions"),
        ("POST", "/v2/default/fgs/functions"),
        ("GET", "/v2/default/fgs/functions/x/config"),
        ("DELETE", "/v2/default/fgs/functions/x"),
        ("POST", "/v2/default/fgs/functions/x/invocations"),
        ("GET", "/v2/default/fgs/runtimes"),
        ("GET", "/v2/other/fgs/nothing"),
    ],
)
def test_every_v2_route_needs_the_token(daemon: Daemon, method: str, path: str) -> None:
    for headers in ({}, {"X-Auth-Token": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        response = httpx.request(method, daemon.url + path, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error_code"] == "FSS.0401"


def test_bearer_token_is_accepted(daemon: Daemon) -> None:
    response = httpx.get(f"{daemon.url}/v2/default/fgs/functions", headers={"Authorization": f"Bearer {daemon.token}"})
    assert response.status_code == 200


def test_healthz_needs_no_token_and_reports_runtimes(daemon: Daemon) -> None:
    response = httpx.get(f"{daemon.url}/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    # Every accepted runtime name, with the state of the zygote serving it (started on first use).
    assert body["runtimes"][f"Python{sys.version_info.major}.{sys.version_info.minor}"] in ("not started", "ready")
    assert set(body["runtimes"].values()) <= {"not started", "starting", "ready"}


def test_token_file_is_private(daemon: Daemon) -> None:
    mode = stat.S_IMODE(os.stat(daemon.state_dir / "admin.token").st_mode)
    assert mode == 0o600
    assert len(daemon.token) >= 32


def test_database_is_sqlite_in_wal_mode_with_a_schema_version(daemon: Daemon) -> None:
    db = sqlite3.connect(daemon.state_dir / "fgd.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] >= 1


def test_functions_survive_a_restart(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    api = Api(fresh_daemon)
    name = api.deploy("def handler(e, c):\n    return 'still here'\n", memory_size=256)["func_name"]
    token = fresh_daemon.token
    assert fresh_daemon.stop() == 0
    fresh_daemon.start()
    assert fresh_daemon.token == token
    api = Api(fresh_daemon)
    assert api.http.get(f"/functions/{name}/config").json()["memory_size"] == 256
    assert api.invoke(name).content == b"still here"


def test_sigterm_lets_inflight_invocations_finish_then_kills_instances(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    api = Api(fresh_daemon)
    source = BACKGROUND_SLEEP + "import time\ndef handler(e, c):\n    time.sleep(e['s'])\n    return 'slept'\n"
    mark = marker()
    name = api.deploy(source, timeout=10, user_data={"FGD_TEST_MARK": mark})["func_name"]
    api.invoke(name, {"s": 0})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(lambda: fresh_daemon.client().post(f"/functions/{name}/invocations", json={"s": 1}))
        time.sleep(0.3)
        fresh_daemon.process.send_signal(signal.SIGTERM)
        response = slow.result(timeout=10)
    assert response.status_code == 200
    assert response.headers["x-is-func-err"] == "false"
    assert fresh_daemon.process.wait(10) == 0
    assert response.content == b"slept"
    assert wait_none_with(mark)
    assert instance_cgroups(fresh_daemon.process.pid) == []
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{fresh_daemon.url}/healthz")


def test_killed_zygote_is_restarted_and_invocations_work_again(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    api = Api(fresh_daemon)
    name = api.deploy("def handler(e, c):\n    return 'ok'\n")["func_name"]
    assert api.invoke(name).content == b"ok"
    zygote_pid = zygote_of(fresh_daemon)
    os.kill(zygote_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while zygote_of(fresh_daemon) in (None, zygote_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert zygote_of(fresh_daemon) not in (None, zygote_pid)
    # No retry: the warm instance died with the old zygote and must not be handed out.
    response = api.invoke(name)
    assert response.headers["x-is-func-err"] == "false", response.text
    assert response.content == b"ok"
    assert httpx.get(f"{fresh_daemon.url}/healthz").json()["status"] == "ok"


def test_zygote_death_fails_inflight_invocation_clearly(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    api = Api(fresh_daemon)
    source = "import time\ndef handler(e, c):\n    if e.get('s'):\n        time.sleep(5)\n    return 1\n"
    name = api.deploy(source, timeout=10)["func_name"]
    api.invoke(name)
    zygote_pid = zygote_of(fresh_daemon)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(lambda: fresh_daemon.client().post(f"/functions/{name}/invocations", json={"s": 1}))
        time.sleep(0.3)
        os.kill(zygote_pid, signal.SIGKILL)
        response = slow.result(timeout=10)
    body = response.json()
    assert response.headers["x-is-func-err"] == "true"
    assert body["errorType"] == "Runtime.ExitError"
    assert "zygote" in body["errorMessage"]


def test_port_in_use_is_one_clear_line(tmp_path) -> None:
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = subprocess.run(
            [sys.executable, "-m", "fgd", "serve", "--state-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("[server]\nlisten = 5\n", ["server.listen", "str"]),
        ("[nonsense]\n", ["nonsense"]),
        ("not toml [", ["TOML"]),
        ("[gateway]\nheader_timeout = 0\n", ["gateway.header_timeout"]),
        ("[server]\nmax_connections = -1\n", ["server.max_connections"]),
    ],
)
def test_bad_config_file_is_one_clear_line(tmp_path, content: str, words: list[str]) -> None:
    config = tmp_path / "fgd.toml"
    config.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "fgd", "serve", "--state-dir", str(tmp_path / "s"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("fgd: error: ")
    for word in words:
        assert word in result.stderr
    assert "Traceback" not in result.stderr


def test_idle_instances_are_reaped_after_keepalive(tmp_path) -> None:
    daemon = Daemon(tmp_path / "state", "[instances]\nidle_keepalive = 0.5\n")
    daemon.start()
    try:
        api = Api(daemon)
        mark = marker()
        source = BACKGROUND_SLEEP + "def handler(e, c):\n    return 1\n"
        name = api.deploy(source, user_data={"FGD_TEST_MARK": mark})["func_name"]
        api.invoke(name)
        assert pids_with(mark)
        assert wait_none_with(mark, within=4)
        assert httpx.get(f"{daemon.url}/healthz").json()["instances"] == 0
        summary = json.loads(api.invoke(name).headers["x-cff-invoke-summary"])
        assert summary["coldStart"] is True
    finally:
        daemon.stop()


def test_sigterm_is_not_held_up_by_a_client_stalled_in_its_body(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    api = Api(fresh_daemon)
    name = api.deploy("def handler(e, c):\n    return 1\n")["func_name"]
    stalled = socket.create_connection(("127.0.0.1", fresh_daemon.port), timeout=10)
    stalled.sendall(
        f"POST /v2/default/fgs/functions/{name}/invocations HTTP/1.1\r\nHost: x\r\n"
        f"X-Auth-Token: {fresh_daemon.token}\r\nContent-Length: 100\r\n\r\n{{".encode()
    )
    idle = socket.create_connection(("127.0.0.1", fresh_daemon.port), timeout=10)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    time.sleep(0.2)
    start = time.monotonic()
    fresh_daemon.process.send_signal(signal.SIGTERM)
    # body_timeout and shutdown_grace are 10 s by default; neither is waited for.
    assert fresh_daemon.process.wait(5) == 0
    assert time.monotonic() - start < 3
    answer = stalled.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408") and b"shutting down" in answer
    idle.settimeout(2)
    while idle.recv(65536):  # the rest of the answer, then the close (a timeout if it stays open)
        pass
