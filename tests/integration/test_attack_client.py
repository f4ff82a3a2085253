"""A hostile client of the node (with or without the admin token) and a hostile package author.

Each test sends what an attacker would and asserts what the daemon answers; after each,
the daemon still serves. Holes found this way and fixed (issue 9) are marked "was: ...".
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import RUNTIME, Api, Daemon, b64, make_zip, unique_name

ECHO = "def handler(event, context):\n    return event\n"


@pytest.fixture(scope="module")
def echo(api: Api) -> str:
    name = unique_name("atk")
    api.deploy(ECHO, name=name)
    return name


def healthy(daemon: Daemon) -> bool:
    return httpx.get(f"{daemon.url}/healthz", timeout=5).status_code == 200


def raw_exchange(port: int, request: bytes, wait: float = 3.0) -> bytes:
    """Send `request` as is on a new connection; everything the daemon answers until it closes or pauses."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        sock.settimeout(wait)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
    return answer


# -- state read back at start ---------------------------------------------------------------------


def _start_with_one_function_and_dependency(daemon: Daemon) -> tuple[Api, str]:
    daemon.start()
    api = Api(daemon)
    name = unique_name("atk")
    api.deploy(ECHO, name=name)
    body = {"name": "dep", "runtime": RUNTIME, "depend_file": b64(make_zip({"dep.py": "X = 1\n"}))}
    assert api.http.post("/dependencies/version", json=body).status_code == 200
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    return api, name


def test_hand_edited_dependency_row_does_not_stop_the_daemon_starting(fresh_daemon: Daemon) -> None:
    # was: every start failed with msgspec.ValidationError out of Store() (a crash loop)
    api, name = _start_with_one_function_and_dependency(fresh_daemon)
    with sqlite3.connect(fresh_daemon.state_dir / "fgd.db") as db:
        db.execute("UPDATE dependency_versions SET record = '{}'")
    fresh_daemon.start()
    api = Api(fresh_daemon)
    assert api.invoke(name, {"still": "served"}).json() == {"still": "served"}
    assert api.http.get("/dependencies").json()["count"] == 0
    assert "ignoring stored dependency version" in fresh_daemon.log()


def test_stored_code_reference_that_is_not_a_sha256_is_ignored(fresh_daemon: Daemon) -> None:
    # was: used as a path (code/<sha256>): '../../../../etc' was mounted as the function's code
    api, name = _start_with_one_function_and_dependency(fresh_daemon)
    with sqlite3.connect(fresh_daemon.state_dir / "fgd.db") as db:
        (record,) = db.execute("SELECT record FROM functions").fetchone()
        forged = record.replace(b'"sha256":"', b'"sha256":"../../../../etc","x":"')
        db.execute("UPDATE functions SET record = ?", (forged,))
    fresh_daemon.start()
    api = Api(fresh_daemon)
    assert api.http.get(f"/functions/{name}/config").status_code == 404
    assert "ignoring stored function" in fresh_daemon.log()
    assert healthy(fresh_daemon)


# -- the config file ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("[storage]\ngc_interval = -1.0\n", "storage.gc_interval"),  # was: a traceback just after start
        ("[storage]\ngc_interval = nan\n", "storage.gc_interval"),
        ("[server]\nshutdown_grace = -5.0\n", "server.shutdown_grace"),  # was: a traceback on SIGTERM
        ("[instances]\nspawn_timeout = nan\n", "instances.spawn_timeout"),  # was: a traceback at start
        ("[async_invoke]\nconcurrency = 0\n", "async_invoke.concurrency"),  # was: async events never ran
        ("[scheduler]\nmax_wait = -1.0\n", "scheduler.max_wait"),
    ],
)
def test_hostile_config_values_stop_the_daemon_with_a_message_not_a_traceback(
    tmp_path: Path, content: str, field: str
) -> None:
    config = tmp_path / "fgd.toml"
    config.write_text(content)
    argv = [sys.executable, "-m", "fgd", "serve", "--state-dir", str(tmp_path / "state")]
    argv += ["--listen", "127.0.0.1:0", "--config", str(config)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert field in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
