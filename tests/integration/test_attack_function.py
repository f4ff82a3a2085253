"""A hostile function's attacks on the daemon, tried on a real daemon.

Each test is an attack a function's author can make from inside an instance;
it asserts what the daemon and every other function observe.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from tests.conftest import Api, Daemon
from tests.integration.test_hostile import hostile


def worst_healthz_while(daemon: Daemon, running: concurrent.futures.Future) -> float:
    """The slowest /healthz answer (seconds) while `running` is not done."""
    worst = 0.0
    with httpx.Client(timeout=30) as probe:
        while not running.done():
            started = time.monotonic()
            assert probe.get(f"{daemon.url}/healthz").status_code == 200
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.02)
    return worst


def test_a_flood_of_empty_lines_leaves_the_daemon_responsive(daemon: Daemon, api: Api) -> None:
    # A million lines per megabyte: splitting them all in one go stalled the event loop for
    # seconds (a /healthz took 7.7 s during 8 s of this flood before the per-drain line budget).
    name = api.deploy(
        "import os, time\n"
        "def handler(event, context):\n"
        "    chunk = b'\\n' * (1 << 20)\n"
        "    end = time.time() + 3\n"
        "    while time.time() < end:\n"
        "        os.write(1, chunk)\n"
        "    print('end', flush=True)\n"
        "    return 'written'\n",
        timeout=30,
    )["func_name"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        flood = pool.submit(
            lambda: daemon.client(timeout=60).post(
                f"/functions/{name}/invocations", json={}, headers={"X-Cff-Log-Type": "tail"}
            )
        )
        worst = worst_healthz_while(daemon, flood)
        response = flood.result()
    assert response.content == b"written"
    print(f"newline flood: /healthz worst {worst * 1000:.1f} ms")
    assert worst < 1.0, f"/healthz took {worst * 1000:.0f} ms during the flood"
    # The invocation kept its first lines and counted the rest (the note ends its transcript).
    tail = base64.b64decode(response.headers["x-cff-function-log"]).decode()
    assert "log lines" in tail and "dropped" in tail, tail[-300:]


def test_death_by_a_real_time_signal_is_an_exit_error_not_a_500(api: Api) -> None:
    # The enum of signal names has no real-time signals: naming one raised into the daemon (a 500).
    name = api.deploy(
        "import os, signal\ndef handler(event, context):\n    os.kill(os.getpid(), signal.SIGRTMIN + 6)\n"
    )["func_name"]
    response = api.invoke(name)
    assert response.status_code == 200, response.text
    assert response.headers["x-is-func-err"] == "true"
    body = response.json()
    assert body["errorType"] == "Runtime.ExitError"
    assert "killed by signal SIGRTMIN+6" in body["errorMessage"], body
    # An exit status that the sandbox's processes turn back into a signal (128 + n) is the same attack.
    name = api.deploy("import os\ndef handler(event, context):\n    os._exit(128 + 40)\n")["func_name"]
    response = api.invoke(name)
    assert response.status_code == 200, response.text
    assert response.json()["errorType"] == "Runtime.ExitError"


CLOSES_ITS_SOCKET = """
import os, stat, time

def handler(event, context):
    for fd in range(3, 256):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
        except OSError:
            pass
    time.sleep(5)
"""


def test_a_function_that_closes_its_connection_and_keeps_running_is_told_so(api: Api) -> None:
    # Its end of the socket closes while its process runs on: the error must not say it ended.
    name = api.deploy(CLOSES_ITS_SOCKET, timeout=10)["func_name"]
    started = time.monotonic()
    response = api.invoke(name)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.headers["x-is-func-err"] == "true"
    body = response.json()
    assert body["errorType"] == "Runtime.ExitError", body
    assert "closed its connection to fgd" in body["errorMessage"], body
    assert "ended" not in body["errorMessage"], body
    assert elapsed < 4, elapsed  # neither its sleep nor its timeout
    # Its instance was recycled with it: the next request starts a fresh one.
    response = api.invoke(name)
    assert "closed its connection to fgd" in response.json()["errorMessage"]
    assert json.loads(response.headers["x-cff-invoke-summary"])["coldStart"] is True


def test_lone_surrogates_in_logs_and_errors_are_replaced_not_fatal(api: Api) -> None:
    # Python strings may hold lone surrogates (os.fsdecode of a bad file name); msgpack may not.
    name = api.deploy(
        "def handler(event, context):\n"
        "    context.getLogger().info('bad \\udcff name')\n"
        "    raise ValueError('no such file \\udcff')\n"
    )["func_name"]
    response = api.invoke(name, headers={"X-Cff-Log-Type": "tail"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["errorType"] == "ValueError", body
    assert body["errorMessage"] == "no such file \ufffd"
    logs = api.http.get(f"/functions/{name}/logs", params={"request_id": response.headers["x-cff-request-id"]})
    assert any(line["message"].endswith("bad \ufffd name") for line in logs.json()["logs"]), logs.json()


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


@pytest.mark.slow
def test_concurrent_requests_do_not_multiply_the_log_memory_of_one_instance(daemon: Daemon, api: Api) -> None:
    # One 128 MB instance may serve 1,000 requests at once, each allowed a 1 MB transcript:
    # 100 of them grew the daemon by about 100 MB before the instance-wide cap.
    requests = 100
    name = api.deploy(
        "import time\n"
        "LINE = 'x' * 65000\n"
        "def handler(event, context):\n"
        "    for _ in range(16):\n"
        "        print(LINE)\n"
        "    time.sleep(2)\n"
        "    return 'ok'\n",
        timeout=30,
        strategy_config={"concurrency": 1, "concurrent_num": 1000},
    )["func_name"]
    assert api.invoke(name).content == b"ok"  # warm: the instance exists before we measure
    before = rss_mb(daemon.process.pid)
    peak = before
    url = f"{daemon.url}/v2/default/fgs/functions/{name}/invocations"

    def call(_: int) -> httpx.Response:
        return httpx.post(url, json={}, headers={"X-Auth-Token": daemon.token}, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        futures = [pool.submit(call, i) for i in range(requests)]
        while not all(f.done() for f in futures):
            peak = max(peak, rss_mb(daemon.process.pid))
            time.sleep(0.05)
    responses = [f.result() for f in futures]
    assert [r.content for r in responses] == [b"ok"] * requests
    print(f"{requests} concurrent chatty requests: daemon RSS {before:.0f} MB -> peak {peak:.0f} MB")
    assert peak - before < 48, f"the daemon grew by {peak - before:.0f} MB"
    # What was not kept is counted in the request's own log.
    rid = responses[-1].headers["x-cff-request-id"]
    logs = daemon.client().get(f"/functions/{name}/logs", params={"request_id": rid}).json()["logs"]
    assert any("dropped" in line["message"] for line in logs) or sum(len(x["message"]) for x in logs) > 1_000_000
    # Every request keeps its summary line, however full the instance's share is.
    assert any(line["message"].startswith("Finish Invoke") for line in logs), [x["message"][:80] for x in logs]


def test_a_burst_printed_just_before_returning_stays_with_its_request(api: Api) -> None:
    # The per-turn line budget must not push a request's last lines out of its log.
    name = api.deploy(
        "import os\n"
        "def handler(event, context):\n"
        "    os.write(1, b''.join(b'line %d\\n' % i for i in range(5000)))\n"
        "    return 'ok'\n"
    )["func_name"]
    for _ in range(3):
        response = api.invoke(name)
        rid = response.headers["x-cff-request-id"]
        logs = api.http.get(f"/functions/{name}/logs", params={"request_id": rid, "limit": 10000}).json()["logs"]
        kept = [line["message"] for line in logs if line["message"].startswith("line ")]
        assert len(kept) == 5000, f"{len(kept)} of 5000 lines kept under request {rid}"


def test_fgd_logs_never_sends_a_functions_control_characters_to_the_operators_terminal(
    daemon: Daemon, api: Api
) -> None:
    # Escape sequences retitle the operator's terminal or write to its clipboard (OSC 52); a
    # newline in a logger message forged a whole line, with another request id, in `fgd logs`.
    name = api.deploy(
        "import sys\n"
        "def handler(event, context):\n"
        "    print('\\x1b]52;c;ZWNobyBwd25lZA==\\x07\\x1b[2Jcleared\\rover\\x9b31m')\n"
        "    context.getLogger().info('real\\n2026-01-01 00:00:00.000 forged-id platform Finish Invoke')\n"
        "    return 'ok'\n"
    )["func_name"]
    assert api.invoke(name).content == b"ok"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FGD_")}
    environ |= {"FGD_ENDPOINT": daemon.url, "FGD_STATE_DIR": str(daemon.state_dir)}
    deadline = time.monotonic() + 5
    out = ""
    while "Finish" not in out and time.monotonic() < deadline:
        done = subprocess.run(
            [sys.executable, "-m", "fgd", "logs", name], capture_output=True, env=environ, timeout=60, check=True
        )
        out = done.stdout.decode()
        time.sleep(0.2)
    assert "cleared" in out and "forged-id" in out
    assert not any(c in out for c in "\x1b\x07\r\x9b"), repr(out)
    assert not any(line.startswith("2026-01-01") for line in out.splitlines()), out


def test_an_async_handler_raising_a_base_exception_ends_its_request_at_once(api: Api) -> None:
    # CancelledError and SystemExit are not Exceptions: the request sat until its timeout, counted as one.
    name = api.deploy(
        "import asyncio\nasync def handler(event, context):\n    raise asyncio.CancelledError()\n", timeout=20
    )["func_name"]
    started = time.monotonic()
    response = api.invoke(name)
    assert time.monotonic() - started < 5
    assert response.json()["errorType"] == "Runtime.ExitError", response.text


def test_a_huge_error_report_is_refused_before_it_is_decoded(api: Api) -> None:
    # A Result whose stack trace is 7 million empty strings: 94 ms of the daemon's event loop to
    # decode, and the instance survived to send the next one with its next answer.
    source = hostile(
        "rid = context.getRequestID().encode()\n"
        "n = 7 * 1024 * 1024 - 300\n"
        'send(frame(b"\\x83" + s("type") + s("Result") + s("request_id") + bytes([0xD9, len(rid)]) + rid'
        ' + s("error") + b"\\x83" + s("error_type") + s("x") + s("error_message") + s("y") + s("stack_trace")'
        ' + b"\\xdd" + struct.pack(">I", n) + b"\\xa0" * n))\n'
        "time.sleep(1)\n"
        "return 1"
    )
    name = api.deploy(source, memory_size=256)["func_name"]
    response = api.invoke(name)
    body = response.json()
    assert body["errorType"] == "Runtime.ExitError", body
    assert "error reports and every other frame are limited" in body["errorMessage"], body
    # A large answer of the shape the runtime writes still goes through.
    big = api.deploy("def handler(event, context):\n    return 'x' * (5 * 1024 * 1024)\n")["func_name"]
    response = api.invoke(big)
    assert response.headers["x-is-func-err"] == "false"
    assert len(response.content) == 5 * 1024 * 1024


def test_a_legitimately_huge_import_error_still_reaches_the_caller(api: Api) -> None:
    # The runtime keeps its reports under the daemon's limit on error frames.
    name = api.deploy("raise ValueError('\u65e5' * 300_000)\ndef handler(event, context):\n    return 1\n")["func_name"]
    body = api.invoke(name).json()
    assert body["errorType"] == "Runtime.ImportModuleError", body["errorMessage"][:300]
    assert "ValueError" in body["errorMessage"]


def test_a_flood_of_log_frames_on_the_protocol_socket_leaves_the_daemon_responsive(daemon: Daemon, api: Api) -> None:
    # Tiny Log frames for no request, as fast as the socket takes them: each read of 64 KiB is
    # about 1,400 frames, decoded and counted in a few ms before the daemon turns to others.
    source = hostile(
        'body = b"\\x84" + s("type") + s("Log") + s("request_id") + s("") + s("level") + s("stdout")'
        ' + s("message") + s("")\n'
        "blob = frame(body) * (1 << 15)\n"
        "sock = proto()\n"
        "end = time.time() + 3\n"
        "while time.time() < end:\n"
        "    sock.sendall(blob)\n"
        'return "flooded"'
    )
    name = api.deploy(source, timeout=30)["func_name"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        flood = pool.submit(lambda: daemon.client(timeout=60).post(f"/functions/{name}/invocations", json={}))
        worst = worst_healthz_while(daemon, flood)
        response = flood.result()
    assert response.content == b"flooded"
    print(f"log-frame flood: /healthz worst {worst * 1000:.1f} ms")
    assert worst < 1.0, f"/healthz took {worst * 1000:.0f} ms during the flood"


def test_a_request_killed_for_memory_reports_the_memory_it_used(api: Api) -> None:
    # The summary said "memoryUsed": 0.0 for the request that ran out of memory (and for a timeout).
    name = api.deploy(
        "import time\n"
        "def handler(event, context):\n"
        "    if event.get('sleep'):\n"
        "        keep = b'x' * (40 << 20)\n"
        "        time.sleep(10)\n"
        "    b = b'x' * (500 << 20)\n",
        memory_size=128,
        timeout=2,
    )["func_name"]
    response = api.invoke(name)
    assert response.json()["errorType"] == "Runtime.OutOfMemory"
    used = json.loads(response.headers["x-cff-invoke-summary"])["memoryUsed"]
    assert 100 <= used <= 160, used
    response = api.invoke(name, {"sleep": True})
    assert response.json()["errorType"] == "Runtime.Timeout"
    used = json.loads(response.headers["x-cff-invoke-summary"])["memoryUsed"]
    assert 40 <= used <= 128, used


def test_a_reserved_instances_init_error_cannot_forge_lines_in_the_daemons_log(api: Api) -> None:
    # The daemon logs why a reserved instance failed to start; the reason is the function's text.
    forged = "FORGED-LINE-" + os.urandom(4).hex()
    name = api.deploy(
        f"raise RuntimeError('boom\\n2026-01-01 00:00:00 ERROR fgd: {forged}')\n"
        "def handler(event, context):\n    return 1\n"
    )["func_name"]
    assert api.http.put(f"/functions/{name}/reservedinstances", json={"count": 1}).status_code == 200
    deadline = time.monotonic() + 10
    while forged not in api.daemon.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    api.http.put(f"/functions/{name}/reservedinstances", json={"count": 0})
    lines = [line for line in api.daemon.log().splitlines() if forged in line]
    assert lines, "the reserved instance's failure was not logged"
    assert all("reserved instance of" in line for line in lines), lines


def test_an_idle_instance_flooding_its_output_costs_the_daemon_no_cpu(daemon: Daemon, api: Api) -> None:
    # Between requests an instance is not billed; a thread it leaves writing empty lines kept
    # the daemon reading and counting them at a full core until the instance was reaped.
    name = api.deploy(
        "import os, threading\n"
        "def flood():\n"
        "    chunk = b'\\n' * (1 << 16)\n"
        "    while True:\n"
        "        os.write(1, chunk)\n"
        "def handler(event, context):\n"
        "    if event.get('flood'):\n"
        "        threading.Thread(target=flood, daemon=True).start()\n"
        "    print('served')\n"
        "    return 'ok'\n",
    )["func_name"]
    assert api.invoke(name, {"flood": True}).content == b"ok"
    time.sleep(0.5)  # the late-line allowance is used up by now
    process = psutil.Process(daemon.process.pid)
    before = process.cpu_times()
    time.sleep(2)
    after = process.cpu_times()
    spent = (after.user + after.system) - (before.user + before.system)
    print(f"idle flood: the daemon spent {spent:.2f} s of CPU in 2 s")
    assert spent < 0.5, f"the daemon spent {spent:.2f} s of CPU on an idle instance's output"
    # The instance still serves, and its next request's output is read again.
    response = api.invoke(name, headers={"X-Cff-Log-Type": "tail"})
    assert response.content == b"ok"
