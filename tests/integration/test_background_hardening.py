"""Background tasks on a real daemon: bad stored items fail alone, crash loops end, fair slots, retention.

Bad rows are written straight into the SQLite file while the daemon is stopped
(after a kill -9), as a hand edit, a bug of another version or a half-written
disk would leave them; the daemon must start, serve, and fail each bad item
alone with a reason.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fgd.asyncqueue import MAX_LEASES, AsyncEvent
from fgd.store import Store
from tests.conftest import Api, Daemon, running
from tests.integration.test_async import status, submit, wait_final
from tests.integration.test_triggers import ECHO, fired, timer

SLEEPER = """
import time
def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"n": event.get("n")}
"""


def add_trigger_row(db: sqlite3.Connection, func_name: str, record: bytes | str) -> str:
    trigger_id = str(uuid.uuid4())
    db.execute(
        "INSERT INTO triggers (trigger_id, project_id, package, func_name, record) VALUES (?, ?, ?, ?, ?)",
        (trigger_id, "default", "default", func_name, record),
    )
    return trigger_id


def trigger_json(trigger_id: str, func_name: str, kind: str, event_data: object) -> str:
    return json.dumps(
        {
            "trigger_id": trigger_id,
            "trigger_type_code": kind,
            "trigger_status": "ACTIVE",
            "event_data": event_data,
            "project_id": "default",
            "package": "default",
            "func_name": func_name,
            "created_time": "2026-01-01T00:00:00Z",
            "last_updated_time": "2026-01-01T00:00:00Z",
        }
    )


def queue_row(state_dir: Path, func_name: str, request_id: str, **columns: object) -> None:
    """An event as the daemon would have queued it, then `columns` overwritten by hand."""
    store = Store(state_dir / "fgd.db")
    try:
        store.queue.enqueue(AsyncEvent.new(("default", "default", func_name), request_id, b"{}"))
        for column, value in columns.items():
            store._db.execute(f"UPDATE async_events SET {column}=? WHERE request_id=?", (value, request_id))
        store._db.commit()
    finally:
        store.close()


@pytest.mark.slow
def test_hand_corrupted_triggers_configs_and_events_fail_alone_after_kill_9(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", "[async_invoke]\nretry_base = 0.05\n")
    daemon.start()
    try:
        api = Api(daemon)
        name = api.deploy(ECHO)["func_name"]
        other = api.deploy(ECHO)["func_name"]
        good = api.http.post(f"/triggers/{name}", json=timer("good", "@every 1s")).json()
        assert good["trigger_status"] == "ACTIVE"
        daemon.stop(signal.SIGKILL)

        db = sqlite3.connect(daemon.state_dir / "fgd.db")
        bad_triggers = {
            "bad json": add_trigger_row(db, name, b"{not json"),
            "never fires": "",
            "unknown type": "",
            "no schedule": "",
            "apig path not a string": "",
        }
        for label, kind, data in [
            ("never fires", "TIMER", {"name": "feb30", "schedule_type": "Cron", "schedule": "0 0 0 30 2 ?"}),
            ("unknown type", "KAFKA", {"name": "k"}),
            ("no schedule", "TIMER", {"name": "nosched", "schedule_type": "Cron"}),
            ("apig path not a string", "APIG", {"name": "a", "path": 5}),
        ]:
            trigger_id = str(uuid.uuid4())
            add_trigger_row(db, name, trigger_json(trigger_id, name, kind, data))
            bad_triggers[label] = trigger_id
        # A destination type fgd does not know, edited into `other`'s stored config.
        (blob,) = db.execute("SELECT record FROM functions WHERE func_name=?", (other,)).fetchone()
        record = json.loads(blob)
        record["async_config"]["destination_config"] = {"on_success": {"destination": "SMN", "param": {}}}
        db.execute("UPDATE functions SET record=? WHERE func_name=?", (json.dumps(record).encode(), other))
        # A function record that is not JSON at all.
        db.execute(
            "INSERT INTO functions (project_id, package, func_name, record) VALUES ('default', 'default', 'x', ?)",
            (b"\x00garbage",),
        )
        db.commit()
        db.close()
        queue_row(daemon.state_dir, name, "bogus-status", status="BOGUS")
        queue_row(daemon.state_dir, name, "text-created", created="yesterday")
        queue_row(daemon.state_dir, name, "crash-loop", status="RUNNING", leases=MAX_LEASES, lease_until=1.0)
        queue_row(daemon.state_dir, name, "one-more-try", status="RUNNING", leases=MAX_LEASES - 1, lease_until=1.0)
        queue_row(daemon.state_dir, other, "unknown-destination")

        daemon.start()
        api = Api(daemon)
        assert api.invoke(name, {"n": 1}).status_code == 200
        # Only the good trigger is there, and it still fires.
        assert [t["trigger_id"] for t in api.http.get(f"/triggers/{name}").json()] == [good["trigger_id"]]
        before = len(fired(api, name))
        deadline = time.monotonic() + 5
        while len(fired(api, name)) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(fired(api, name)) >= before + 2
        log = daemon.log()
        for label, trigger_id in bad_triggers.items():
            assert trigger_id in log, label

        for request_id in ("bogus-status", "text-created"):
            row = wait_final(api, name, request_id)
            assert row["status"] == "FAIL" and "malformed" in row["error_message"], row
        row = wait_final(api, name, "crash-loop")
        assert row["status"] == "FAIL" and f"{MAX_LEASES} times" in row["error_message"], row
        assert "crash-loop" in daemon.log()
        assert wait_final(api, name, "one-more-try")["status"] == "SUCCESS"
        row = wait_final(api, other, "unknown-destination")
        assert row["status"] == "SUCCESS" and "destination" in row["error_message"], row
        # And a clean restart over the same rows.
        assert daemon.stop() == 0
        daemon.start()
        assert Api(daemon).invoke(other, {}).status_code == 200
    finally:
        daemon.stop(signal.SIGKILL)


@pytest.mark.slow
def test_an_event_that_keeps_killing_the_daemon_is_given_up(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state")
    daemon.start()
    try:
        api = Api(daemon)
        name = api.deploy(SLEEPER, timeout=60)["func_name"]
        request_id = submit(api, name, {"sleep": 60})
        for _ in range(MAX_LEASES):
            deadline = time.monotonic() + 5
            while status(api, name, request_id)["status"] != "RUNNING":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            daemon.stop(signal.SIGKILL)  # the daemon dies while the event runs
            daemon.start()
            api = Api(daemon)
        row = wait_final(api, name, request_id, within=5)
        assert row["status"] == "FAIL"
        assert f"{MAX_LEASES} times" in row["error_message"]
        assert api.invoke(name, {}).status_code == 200
    finally:
        daemon.stop(signal.SIGKILL)


@contextlib.contextmanager
def garbage_receiver() -> Iterator[tuple[str, list[int]]]:
    """A local port that answers every connection with bytes that are not HTTP."""
    server = socket.create_server(("127.0.0.1", 0))
    hits: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                hits.append(1)
                conn.recv(65536)
                conn.sendall(b"\x00\xffnot http at all\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/hook", hits
    finally:
        server.close()


@pytest.fixture(scope="module")
def fair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    config = """
        [async_invoke]
        retry_base = 0.05
        concurrency = 4
    """
    with running(tmp_path_factory.mktemp("fair") / "state", config) as daemon:
        yield Api(daemon)


def test_a_webhook_answering_garbage_does_not_stop_the_dispatcher(fair: Api) -> None:
    name = fair.deploy(SLEEPER)["func_name"]
    with garbage_receiver() as (url, hits):
        hook = {"destination_config": {"on_success": {"destination": "WEBHOOK", "param": {"url": url}}}}
        assert fair.http.put(f"/functions/{name}/async-invoke-config", json=hook).status_code == 200
        first = submit(fair, name, {"n": 1})
        second = submit(fair, name, {"n": 2})
        assert wait_final(fair, name, first)["status"] == "SUCCESS"
        assert wait_final(fair, name, second)["status"] == "SUCCESS"
        assert len(hits) >= 2
    assert fair.http.get("/functions").status_code == 200
    assert fair.invoke(name, {}).status_code == 200


def test_a_flooding_function_does_not_delay_another_functions_event(fair: Api) -> None:
    slow = fair.deploy(SLEEPER, strategy_config={"concurrency": 4, "concurrent_num": 1})["func_name"]
    quick = fair.deploy(SLEEPER)["func_name"]
    assert fair.invoke(quick, {}).status_code == 200  # warm: measure the queue, not a cold start
    flood = [submit(fair, slow, {"sleep": 1.5, "n": n}) for n in range(40)]
    time.sleep(0.3)  # the flood holds its share of the slots
    started = time.monotonic()
    request_id = submit(fair, quick, {"n": 0})
    row = wait_final(fair, quick, request_id, within=10)
    latency = time.monotonic() - started
    assert row["status"] == "SUCCESS"
    # Without a share the flood holds all 4 slots for 1.5 s at a time (10 rounds of 40 events).
    assert latency < 1.0, latency
    print(f"another function's event ran {latency * 1000:.0f} ms after it was queued behind a flood of 40")
    running = fair.http.get(f"/functions/{slow}/async-invocations", params={"status": "RUNNING"}).json()
    assert 1 <= running["count"] <= 2  # concurrency 4 // 2
    for request_id in flood:
        fair.http.post(f"/functions/{slow}/cancel", json={"request_id": request_id})


@pytest.fixture
def short_retention(tmp_path: Path) -> Iterator[Api]:
    # retention_days = 0.00005: about 4.3 s. A daemon of its own: with so short a retention,
    # other tests' finished events would vanish before they could be read.
    with running(tmp_path / "state", "[async_invoke]\nretention_days = 0.00005\n") as daemon:
        yield Api(daemon)


@pytest.mark.slow
def test_finished_events_are_pruned_after_the_retention(short_retention: Api) -> None:
    fair = short_retention
    name = fair.deploy(SLEEPER, timeout=10)["func_name"]
    done = submit(fair, name, {"n": 1})
    running = submit(fair, name, {"sleep": 7, "n": 2})
    assert wait_final(fair, name, done)["status"] == "SUCCESS"
    assert status(fair, name, done)["status"] == "SUCCESS"  # kept for now
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        listed = fair.http.get(f"/functions/{name}/async-invocations", params={"request_id": done}).json()
        if listed["count"] == 0:
            break
        time.sleep(0.1)
    assert listed["count"] == 0
    # An event still running is never pruned, however old its lease.
    assert status(fair, name, running)["status"] == "RUNNING"
    assert wait_final(fair, name, running)["status"] == "SUCCESS"


def test_deleting_a_function_deletes_all_its_events(fair: Api) -> None:
    name = fair.deploy(SLEEPER, strategy_config={"concurrency": 1, "concurrent_num": 1})["func_name"]
    ids = [submit(fair, name, {"sleep": 1, "n": n}) for n in range(30)]
    time.sleep(0.3)
    assert fair.http.delete(f"/functions/{name}").status_code == 204
    db = sqlite3.connect(f"file:{fair.daemon.state_dir / 'fgd.db'}?mode=ro", uri=True)
    try:
        (left,) = db.execute("SELECT count(*) FROM async_events WHERE func_name=?", (name,)).fetchone()
    finally:
        db.close()
    assert left == 0, f"{left} of {len(ids)} events left"
    fair.deploy(SLEEPER, name=name)
    assert fair.http.get(f"/functions/{name}/async-invocations").json()["count"] == 0


@pytest.mark.slow
def test_pruning_a_large_backlog_goes_in_batches_and_the_api_stays_responsive(tmp_path: Path) -> None:
    # Measured on the 2-core test host: one DELETE of these 200,000 rows holds the store's
    # thread for about 0.5 s; batches of 500 hold it for at most about 30 ms each.
    count = 200_000
    daemon = Daemon(tmp_path / "state")
    daemon.start()
    name = Api(daemon).deploy(SLEEPER)["func_name"]
    daemon.stop()
    month_ago = time.time() - 30 * 86400
    template = AsyncEvent.new(("default", "default", name), "", b"{}")
    template.status, template.end_time, template.created = "SUCCESS", month_ago, month_ago
    row = [getattr(template, f) for f in AsyncEvent.__struct_fields__]
    rows = [(f"old-{n}", *row[1:]) for n in range(count)]
    columns = ", ".join(AsyncEvent.__struct_fields__)
    marks = ", ".join("?" * len(AsyncEvent.__struct_fields__))
    store = Store(daemon.state_dir / "fgd.db")
    with store._db:
        store._db.executemany(f"INSERT INTO async_events ({columns}) VALUES ({marks})", rows)
    store.close()

    daemon.start()
    try:
        http = httpx.Client(base_url=daemon.url, headers={"X-Auth-Token": daemon.token}, timeout=10)
        path = f"/v2/default/fgs/functions/{name}/async-invocations"
        slowest, calls, started = 0.0, [], time.monotonic()
        while time.monotonic() - started < 15:
            t0 = time.monotonic()
            # A store call: it waits behind whatever the store's thread is doing.
            calls.append(http.get(path, params={"limit": 1}).json()["count"])
            slowest = max(slowest, time.monotonic() - t0)
            if calls[-1] == 0:
                break
        assert calls[0] == 1, "the pruning was over before the first call: nothing was measured"
        assert calls[-1] == 0, "the backlog was not pruned"
        assert slowest < 0.3, f"an API call waited {slowest:.3f} s behind the pruning"
        print(
            f"pruned {count:,} events in < {time.monotonic() - started:.2f} s; "
            f"{len(calls)} API calls meanwhile, slowest {slowest * 1000:.0f} ms"
        )
    finally:
        daemon.stop()
