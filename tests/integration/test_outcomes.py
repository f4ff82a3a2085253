"""Every invocation gets the outcome that really happened, and nothing is left behind."""

from __future__ import annotations

import concurrent.futures
import io
import signal
import threading
import time
import zipfile

from tests.conftest import (
    BACKGROUND_SLEEP,
    Api,
    Daemon,
    instance_cgroups,
    marker,
    pids_with,
    wait_none_with,
)


def test_crash_after_an_earlier_child_oom_is_an_exit_error_not_out_of_memory(api: Api) -> None:
    name = api.deploy(
        "import os, subprocess, sys\n"
        "def handler(event, context):\n"
        "    if event.get('hog'):\n"
        "        child = subprocess.run([sys.executable, '-c', 'x = bytearray(400 * 2**20)'])\n"
        "        return child.returncode\n"
        "    os._exit(3)\n",
        memory_size=128,
        timeout=20,
    )["func_name"]
    first = api.invoke(name, {"hog": True})
    assert first.headers["x-is-func-err"] == "false"
    assert first.json() == -signal.SIGKILL  # the child, not the instance, was killed for memory
    second = api.invoke(name)
    body = second.json()
    assert body["errorType"] == "Runtime.ExitError", body
    assert "status 3" in body["errorMessage"]


def test_the_workers_exit_code_and_signal_reach_the_caller_through_pid_1(api: Api) -> None:
    # Issue 15: the zygote reaps the sandbox's PID 1, which exits like the worker (a signal as
    # 128 + n); the caller learns the worker's own status or signal, whichever it was.
    name = api.deploy(
        "import os, signal\n"
        "def handler(event, context):\n"
        "    if event['how'] == 'exit':\n"
        "        os._exit(event['code'])\n"
        "    os.kill(os.getpid(), getattr(signal, event['signal']))\n",
    )["func_name"]
    cases = [({"how": "exit", "code": 5}, "exited with status 5"), ({"how": "exit", "code": 0}, "status 0")]
    cases += [({"how": "kill", "signal": sig}, f"killed by signal {sig}") for sig in ("SIGTERM", "SIGSEGV")]
    for event, expected in cases:
        body = api.invoke(name, event).json()
        assert body["errorType"] == "Runtime.ExitError", (event, body)
        assert expected in body["errorMessage"], (event, body)


def test_delete_stops_running_invocations(api: Api) -> None:
    mark = marker()
    name = api.deploy(
        BACKGROUND_SLEEP + "import time\ndef handler(event, context):\n    time.sleep(60)\n",
        timeout=120,
        user_data={"FGD_TEST_MARK": mark},
    )["func_name"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: api.daemon.client(timeout=90).post(f"/functions/{name}/invocations", json={}))
        deadline = time.monotonic() + 10
        while not pids_with(mark) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the module has loaded; the handler is sleeping
        started = time.monotonic()
        assert api.http.delete(f"/functions/{name}").status_code in (200, 204)
        response = running.result(timeout=10)
    assert time.monotonic() - started < 5
    body = response.json()
    assert response.headers["x-is-func-err"] == "true"
    assert body["errorType"] == "Runtime.ExitError"
    assert "deleted" in body["errorMessage"]
    assert wait_none_with(mark)


def _slow_zip_body(data: bytes, pause: threading.Event, resume: threading.Event):
    half = len(data) // 2
    yield data[:half]
    pause.set()
    resume.wait(10)
    yield data[half:]


def test_delete_during_a_slow_code_upload_stays_deleted(api: Api) -> None:
    name = api.deploy("def handler(event, context):\n    return 1\n")["func_name"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.py", "def handler(event, context):\n    return 2\n" + "#" * 200_000)
    pause, resume = threading.Event(), threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        upload = pool.submit(
            lambda: api.daemon.client().put(
                f"/functions/{name}/code",
                content=_slow_zip_body(buffer.getvalue(), pause, resume),
                headers={"Content-Type": "application/zip"},
            )
        )
        assert pause.wait(10)
        assert api.http.delete(f"/functions/{name}").status_code in (200, 204)
        resume.set()
        response = upload.result(timeout=30)
    assert response.status_code == 404, response.text
    assert "deleted" in response.json()["error_msg"]
    assert api.http.get(f"/functions/{name}/config").status_code == 404
    assert name not in [f["func_name"] for f in api.http.get("/functions").json()["functions"]]


def test_sigterm_during_a_cold_start_leaves_no_cgroup_or_process(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    api = Api(fresh_daemon)
    mark = marker()
    name = api.deploy(
        BACKGROUND_SLEEP + "import time\ndef init(context):\n    time.sleep(30)\ndef handler(e, c):\n    return 1\n",
        initializer_handler="index.init",
        initializer_timeout=60,
        user_data={"FGD_TEST_MARK": mark},
    )["func_name"]
    pid = fresh_daemon.process.pid
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: fresh_daemon.client(timeout=60).post(f"/functions/{name}/invocations", json={}))
        time.sleep(1.0)
        started = time.monotonic()
        assert fresh_daemon.stop() == 0
        stopped = time.monotonic() - started
    assert stopped < 15  # the grace period (10 s) bounds it
    assert wait_none_with(mark)
    assert instance_cgroups(pid) == []


def test_requests_queued_for_a_deleted_function_never_start_it_again(api: Api) -> None:
    mark = marker()
    name = api.deploy(
        "import time\ndef handler(event, context):\n    time.sleep(30)\n",
        timeout=60,
        strategy_config={"concurrency": 1, "concurrent_num": 1},
        user_data={"FGD_TEST_MARK": mark},
    )["func_name"]
    call = lambda: api.daemon.client(timeout=60).post(f"/functions/{name}/invocations", json={})  # noqa: E731
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(call)
        time.sleep(1.0)
        queued = pool.submit(call)  # waits: the only instance allowed is busy
        time.sleep(0.5)
        assert api.http.delete(f"/functions/{name}").status_code in (200, 204)
        first, second = running.result(timeout=15), queued.result(timeout=15)
    assert first.json()["errorType"] == "Runtime.ExitError"
    assert second.status_code == 404, second.text
    assert wait_none_with(mark)
