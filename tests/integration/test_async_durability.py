"""Grouped enqueues keep their promise (issue 15): a 202 is sent only once its event is committed,
so a daemon killed while answering loses none it acknowledged; a killed daemon's backlog drains."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, Daemon
from tests.integration.test_keys import MakeKey, signed

NOOP = "def handler(event, context):\n    return {}\n"
CONFIG = "[async_invoke]\nconcurrency = 8\nper_function = 8\nretry_base = 0.05\n"


def post_until(daemon: Daemon, name: str, kill_at: int, acknowledged: list[str]) -> None:
    """Queue events as fast as one connection can; the 202 that makes `kill_at` kills the daemon at once
    (within microseconds: an event answered before its commit would still be on its way to disk)."""
    assert daemon.process is not None
    with daemon.client(timeout=10) as client:
        while True:
            try:
                response = client.post(f"/functions/{name}/invocations-async", json={"n": len(acknowledged)})
            except httpx.TransportError:
                return  # killed: this request got no answer, so no promise was made
            if response.status_code == 202:
                acknowledged.append(response.json()["request_id"])
                if len(acknowledged) >= kill_at:
                    os.kill(daemon.process.pid, signal.SIGKILL)


@pytest.mark.slow  # two daemon starts
def test_no_acknowledged_event_is_lost_when_the_daemon_is_killed_while_answering(tmp_path: Path) -> None:
    # Throttled events (the function is disabled) are tried again after retry_base: not 20 times a second.
    daemon = Daemon(tmp_path / "state", CONFIG.replace("retry_base = 0.05", "retry_base = 5.0"))
    daemon.start()
    try:
        api = Api(daemon)
        # Disabled (no instances): the events stay queued, so every one must be found as WAIT.
        name = api.deploy(NOOP, strategy_config={"concurrency": 0})["func_name"]
        acknowledged: list[str] = []
        # Killed in the middle of the stream: requests in flight, batches being committed.
        clients = [threading.Thread(target=post_until, args=(daemon, name, 300, acknowledged)) for _ in range(8)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(30)
        daemon.stop(signal.SIGKILL)
        assert len(acknowledged) >= 300
        daemon.start()
        api = Api(daemon)
        rows = api.http.get(f"/functions/{name}/async-invocations", params={"limit": 1000}).json()["invocations"]
        stored = {row["request_id"] for row in rows}
        missing = set(acknowledged) - stored
        assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged events were lost"
        # Events queued but not yet answered when the daemon died may be there too (at least once).
        assert len(stored) >= len(acknowledged)
    finally:
        daemon.stop()


def backlog_rows(db: Path, template: str, count: int) -> None:
    """Copies of a real queued event, as a killed daemon leaves them: most waiting, some leased."""
    with sqlite3.connect(db) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(async_events)")]
        (row,) = conn.execute(f"SELECT {', '.join(columns)} FROM async_events WHERE request_id=?", (template,))
        base = dict(zip(columns, row, strict=True))
        rows = []
        for n in range(count):
            copy = dict(base, request_id=str(uuid.uuid4()), not_before=base["not_before"] + n * 1e-4)
            if n % 100 == 0:  # running when the daemon died: a lease it never settled
                copy.update(status="RUNNING", lease_until=time.time() + 3600, leases=1)
            rows.append(tuple(copy[c] for c in columns))
        conn.executemany(f"INSERT INTO async_events VALUES ({', '.join('?' * len(columns))})", rows)


def finished(db: Path, name: str) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(
            conn.execute("SELECT status, count(*) FROM async_events WHERE func_name=? GROUP BY status", (name,))
        )


@pytest.mark.slow
def test_a_ten_thousand_event_backlog_left_by_a_killed_daemon_drains_after_restart(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", CONFIG)
    daemon.start()
    try:
        api = Api(daemon)
        name = api.deploy(NOOP, strategy_config={"concurrency": 0})["func_name"]
        ids = [api.http.post(f"/functions/{name}/invocations-async", json={}).json()["request_id"] for _ in range(20)]
        daemon.stop(signal.SIGKILL)
        db = daemon.state_dir / "fgd.db"
        backlog_rows(db, ids[0], 10_000 - len(ids))
        assert sum(finished(db, name).values()) == 10_000
        daemon.start()
        api = Api(daemon)
        config = {"strategy_config": {"concurrency": 8, "concurrent_num": 4}}
        assert api.http.put(f"/functions/{name}/config", json=config).status_code == 200
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and finished(db, name).get("SUCCESS", 0) < 10_000:
            time.sleep(0.25)
        assert finished(db, name) == {"SUCCESS": 10_000}
    finally:
        daemon.stop()


# -- the route on the lean front (fgd.web.front) keeps the API's checks ------------------------------


def test_a_signed_async_invocation_is_queued_and_a_tampered_body_is_refused_unqueued(
    daemon: Daemon, api: Api, make_key: MakeKey
) -> None:
    name = api.deploy(NOOP, strategy_config={"concurrency": 0})["func_name"]
    key = make_key()
    path = f"/v2/default/fgs/functions/{name}/invocations-async"
    url, headers = signed(daemon, key, "POST", path, b'{"n": 1}', content_type="application/json")
    tampered = httpx.post(url, content=b'{"n": 2}', headers=headers)
    assert tampered.status_code == 401 and tampered.json()["error_code"] == "FSS.0401"
    accepted = httpx.post(url, content=b'{"n": 1}', headers=headers)
    assert accepted.status_code == 202, accepted.text
    request_id = accepted.json()["request_id"]
    assert accepted.headers["x-cff-request-id"] == request_id == accepted.headers["x-request-id"]
    rows = api.http.get(f"/functions/{name}/async-invocations").json()["invocations"]
    assert [row["request_id"] for row in rows] == [request_id]  # the tampered one was never queued


def test_async_invocation_refusals_on_the_front(daemon: Daemon, api: Api) -> None:
    name = api.deploy(NOOP, strategy_config={"concurrency": 0})["func_name"]
    no_token = httpx.post(f"{daemon.url}/v2/default/fgs/functions/{name}/invocations-async", content=b"{}")
    assert no_token.status_code == 401 and no_token.json()["error_code"] == "FSS.0401"
    unknown = api.http.post("/functions/no-such-function/invocations-async", json={})
    assert unknown.status_code == 404
    bad_project = httpx.post(
        f"{daemon.url}/v2/no.such.project/fgs/functions/{name}/invocations-async",
        content=b"{}",
        headers={"X-Auth-Token": daemon.token},
    )
    assert bad_project.status_code == 400 and "project_id" in bad_project.json()["error_msg"]
    too_big = api.http.post(f"/functions/{name}/invocations-async", content=b'"' + b"x" * 300_000 + b'"')
    assert too_big.status_code == 413 and too_big.json()["error_code"] == "FSS.0413"
    not_json = api.http.post(f"/functions/{name}/invocations-async", content=b"{not json")
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error_msg"]
    assert api.http.get(f"/functions/{name}/async-invocations").json()["invocations"] == []
