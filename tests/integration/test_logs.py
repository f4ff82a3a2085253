"""Function logs: every line of an invocation stored with its request id, plus a summary."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, Daemon

CHATTY = """
    import subprocess, sys

    def handler(event, context):
        print("out", event["n"])
        print("err", event["n"], file=sys.stderr)
        context.getLogger().warn("warned %s", event["n"])
        subprocess.run(["sh", "-c", f"echo child {event['n']}"])
        return event["n"]
"""


def test_log_api_returns_each_invocations_lines_with_its_request_id(api: Api) -> None:
    name = api.deploy(CHATTY)["func_name"]
    ids = [api.invoke(name, {"n": n}).headers["x-cff-request-id"] for n in range(3)]
    logs = api.http.get(f"/functions/{name}/logs", params={"request_id": ids[1]}).json()["logs"]
    by_stream = {(line["stream"], line["message"]) for line in logs}
    assert ("stdout", "out 1") in by_stream
    assert ("stderr", "err 1") in by_stream
    assert ("logger", "[WARN] warned 1") in by_stream
    assert ("stdout", "child 1") in by_stream
    assert all(line["request_id"] == ids[1] for line in logs)
    assert all(line["instance_id"] for line in logs)
    summary = [line for line in logs if line["stream"] == "platform"]
    assert len(summary) == 1
    message = summary[0]["message"]
    for field in ("Duration:", "Billed Duration:", "Memory Size: 128 MB", "Max Memory Used:"):
        assert field in message
    assert "Init Duration" not in message


def test_cold_start_summary_has_init_duration(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    return 1\n")["func_name"]
    request_id = api.invoke(name).headers["x-cff-request-id"]
    logs = api.http.get(f"/functions/{name}/logs", params={"request_id": request_id}).json()["logs"]
    assert "Init Duration:" in logs[-1]["message"]


def test_log_api_limit_keeps_the_newest_lines_in_order(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    for i in range(10):\n        print('line', i)\n    return 1\n")[
        "func_name"
    ]
    api.invoke(name)
    logs = api.http.get(f"/functions/{name}/logs", params={"limit": 3}).json()["logs"]
    assert [line["message"] for line in logs[:2]] == ["line 8", "line 9"]
    assert logs[2]["stream"] == "platform"
    times = [line["time"] for line in logs]
    assert times == sorted(times)


def test_log_api_since_filters_by_time(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    print(e['n'])\n    return 1\n")["func_name"]
    api.invoke(name, {"n": "early"})
    time.sleep(0.05)
    cut = time.time()
    api.invoke(name, {"n": "late"})
    messages = [
        line["message"] for line in api.http.get(f"/functions/{name}/logs", params={"since": cut}).json()["logs"]
    ]
    assert "late" in messages and "early" not in messages


def test_log_api_validates_parameters(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    return 1\n")["func_name"]
    for params in ({"limit": 0}, {"limit": "many"}, {"since": "yesterday"}, {"follow": "maybe"}):
        response = api.http.get(f"/functions/{name}/logs", params=params)
        assert response.status_code == 400, params
        assert response.json()["error_code"] == "FSS.0400"


def test_follow_streams_new_lines(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    print('followed', e['n'])\n    return 1\n")["func_name"]
    api.invoke(name, {"n": 0})
    received: list[dict] = []

    def follow() -> None:
        client = httpx.Client(base_url=api.http.base_url, headers=api.http.headers, timeout=10)
        with client, client.stream("GET", f"/functions/{name}/logs", params={"follow": "true"}) as response:
            for line in response.iter_lines():
                if line:
                    received.append(json.loads(line))
                if any(r["message"] == "followed 1" for r in received):
                    return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    time.sleep(0.3)
    api.invoke(name, {"n": 1})
    reader.join(5)
    messages = [r["message"] for r in received]
    assert "followed 0" in messages
    assert "followed 1" in messages


def test_logs_of_a_deleted_function_are_gone(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    print('x')\n    return 1\n")["func_name"]
    api.invoke(name)
    api.http.delete(f"/functions/{name}")
    api.deploy("def handler(e, c):\n    return 1\n", name=name)
    assert api.http.get(f"/functions/{name}/logs").json()["logs"] == []


# Byte caps -------------------------------------------------------------------

KIB = 1024
LINE_TEXT = 1000
# Prints event["lines"] lines of 1,000 bytes, each naming its invocation and number.
PRINTER = """
    def handler(event, context):
        for i in range(event["lines"]):
            print(f"{event['tag']}:{i:05d}:" + "x" * 988)
        return event["tag"]
"""


def stored_size(line: dict, name: str) -> int:
    """What one line counts for against the caps (docs/api.md): its UTF-8 text and names + 64."""
    fields = ("default", "default", name, line["message"], line["request_id"], line["instance_id"], line["stream"])
    return sum(len(field.encode()) for field in fields) + 64


def capped(tmp_path: Path, per_function: int, total: int) -> Daemon:
    daemon = Daemon(tmp_path / "state", f"[logs]\nmax_bytes_per_function = {per_function}\nmax_bytes_total = {total}\n")
    daemon.start()
    return daemon


def all_lines(api: Api, name: str) -> list[dict]:
    return api.http.get(f"/functions/{name}/logs", params={"limit": 10000}).json()["logs"]


def drop_notes(api: Api, name: str, within: float = 5.0) -> list[dict]:
    """The platform lines saying lines were dropped, once the sink has trimmed (it runs after a flush)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        notes = [line for line in all_lines(api, name) if "oldest log lines" in line["message"]]
        if notes:
            return notes
        time.sleep(0.1)
    return []


def dropped_in(note: dict) -> int:
    return int(re.search(r"dropped this function's ([\d,]+) oldest", note["message"])[1].replace(",", ""))


def test_a_chatty_function_keeps_only_its_newest_lines_within_its_byte_cap(tmp_path: Path) -> None:
    daemon = capped(tmp_path, per_function=256 * KIB, total=8 * 1024 * KIB)
    try:
        api = Api(daemon)
        chatty = api.deploy(PRINTER)["func_name"]
        quiet = api.deploy(PRINTER)["func_name"]
        api.invoke(quiet, {"lines": 20, "tag": "q"})
        for tag in range(10):  # about 1 MB, four times the cap
            assert api.invoke(chatty, {"lines": 100, "tag": f"t{tag}"}).status_code == 200
        notes = drop_notes(api, chatty)
        assert notes, "no line says lines were dropped"
        assert all("logs.max_bytes_per_function = 262,144 bytes" in note["message"] for note in notes)
        lines = all_lines(api, chatty)
        assert sum(stored_size(line, chatty) for line in lines) <= 256 * KIB
        printed = [line["message"] for line in lines if line["stream"] == "stdout"]
        # Oldest first: the first invocation is gone, the last one is whole.
        assert not any(message.startswith("t0:") for message in printed)
        assert [m[:9] for m in printed if m.startswith("t9:")] == [f"t9:{i:05d}:" for i in range(100)]
        # Whatever survives of an invocation is its newest part.
        oldest = printed[0].split(":")[0]
        numbers = [int(m.split(":")[1]) for m in printed if m.startswith(f"{oldest}:")]
        assert numbers == list(range(100 - len(numbers), 100))
        # The quiet function lost nothing.
        assert len([line for line in all_lines(api, quiet) if line["stream"] == "stdout"]) == 20
        # /metrics counts exactly what the notes say.
        metrics = httpx.get(f"{daemon.url}/metrics", headers={"X-Auth-Token": daemon.token}).text
        label = f'function="default/default:{chatty}",reason="max_bytes_per_function"'
        counted = re.search(rf"^fgd_log_lines_dropped_total\{{{re.escape(label)}\}} (\d+)$", metrics, re.M)
        # The newest note carries the running total (older notes are lines too, and go in turn).
        assert counted and int(counted[1]) >= sum(dropped_in(note) for note in notes)
        assert f"; {int(counted[1]):,} lines in all since fgd started" in notes[-1]["message"]
        assert quiet not in metrics.split("fgd_log_lines_dropped_total", 1)[1].split("# HELP", 1)[0]
    finally:
        daemon.stop()


def test_the_node_cap_drops_the_oldest_lines_first_whichever_function_wrote_them(tmp_path: Path) -> None:
    daemon = capped(tmp_path, per_function=4 * 1024 * KIB, total=256 * KIB)
    try:
        api = Api(daemon)
        first = api.deploy(PRINTER)["func_name"]
        second = api.deploy(PRINTER)["func_name"]
        api.invoke(first, {"lines": 150, "tag": "a"})
        api.http.get(f"/functions/{first}/logs", params={"limit": 1})  # written before the second's
        api.invoke(second, {"lines": 220, "tag": "b"})  # 400 KB in all: 170 KB over 90% of the cap
        notes = drop_notes(api, first)
        assert notes and "logs.max_bytes_total = 262,144 bytes" in notes[0]["message"]
        assert not [line for line in all_lines(api, first) if line["stream"] == "stdout"]
        second_lines = [line for line in all_lines(api, second) if line["stream"] == "stdout"]
        assert second_lines and second_lines[-1]["message"].startswith("b:00219:")
        total = sum(stored_size(line, name) for name in (first, second) for line in all_lines(api, name))
        assert total <= 256 * KIB
    finally:
        daemon.stop()


@pytest.mark.slow
def test_fgd_db_stays_bounded_under_a_chatty_function(tmp_path: Path) -> None:
    """Two clients keep a function printing 5 MB per invocation for 8 s: the database stays small."""
    daemon = capped(tmp_path, per_function=1024 * KIB, total=2048 * KIB)
    try:
        api = Api(daemon)
        name = api.deploy(PRINTER, timeout=30)["func_name"]
        written = [0]
        sizes: list[int] = []

        def db_size() -> int:
            return sum(p.stat().st_size for p in daemon.state_dir.glob("fgd.db*"))

        def client(tag: str) -> None:
            with daemon.client() as http:
                deadline = time.monotonic() + 8
                while time.monotonic() < deadline:
                    response = http.post(f"/functions/{name}/invocations", json={"lines": 5000, "tag": tag})
                    assert response.status_code == 200
                    written[0] += 5000 * LINE_TEXT

        threads = [threading.Thread(target=client, args=(tag,)) for tag in ("a", "b")]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            sizes.append(db_size())
            time.sleep(0.25)
        time.sleep(1)
        sizes.append(db_size())
        print(f"wrote {written[0] / 1e6:.0f} MB of log lines; fgd.db* sizes (MB): {[round(s / 1e6, 1) for s in sizes]}")
        assert written[0] >= 40_000_000, "the load was too light to show anything"
        # The caps bound the logs at 2 MiB; the files hold them with their indexes, up to 8 MB
        # of free pages kept for reuse, and the WAL (a few MB between checkpoints).
        assert max(sizes) < 24_000_000
        lines = all_lines(api, name)
        assert sum(stored_size(line, name) for line in lines) <= 1024 * KIB
        assert drop_notes(api, name)
    finally:
        daemon.stop()
