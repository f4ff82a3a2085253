"""Hostile functions and request patterns against the timeout task (fgd.timeouts).

On an instance serving one request at a time the deadline is no cancel scope: one task kills
the instance and wakes the invocation waiting on its socket (Invoker._timed_out). Whatever
the function is doing at its deadline (flooding its output, writing half a frame, returning a
large result, forking children that hold its socket), the caller must hear Runtime.Timeout
promptly, no process may be left, and the daemon must serve the next request.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import trio

from fgd.instance import Instance, InstanceGone
from fgd.instance_output import LogLimits
from runtimes import protocol
from tests.conftest import Api, make_zip, marker, running, wait_none_with
from tests.integration.custom_support import deploy as deploy_custom
from tests.integration.custom_support import script

# A deadline is kept to this much on a busy 2-core machine (the task wakes at it; the kill and
# the wake-up are immediate).
LATE = 0.8


def timed_invoke(api: Api, name: str, event: object = None) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = api.invoke(name, event)
    return time.monotonic() - started, response


def assert_timed_out(elapsed: float, response: httpx.Response, timeout: float) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["x-is-func-err"] == "true", response.text[:300]
    assert response.json()["errorType"] == "Runtime.Timeout", response.text[:300]
    assert timeout <= elapsed < timeout + LATE, elapsed


def assert_healthy(api: Api) -> None:
    assert httpx.get(f"{api.daemon.url}/healthz", timeout=5).status_code == 200


# Each hostile function starts an exec'd child (`sleep`): its environment carries the test's
# marker, so wait_none_with sees whether the instance's processes went.
ECHO_OR_FLOOD = """
    import subprocess, sys

    def handler(event, context):
        if event.get("ok"):
            return "fine"
        subprocess.Popen(["sleep", "100"])
        logger = context.getLogger()
        line = "x" * 4000
        while True:
            if event.get("stdout"):
                print(line, flush=True)
            if event.get("stderr"):
                sys.stderr.write(line + "\\n")
                sys.stderr.flush()
            if event.get("logger"):
                logger.info(line)
"""


@pytest.mark.parametrize("streams", [{"stdout": 1}, {"stderr": 1}, {"logger": 1}, {"stdout": 1, "logger": 1}])
def test_flooding_output_at_the_deadline_still_times_out_promptly(api: Api, streams: dict) -> None:
    mark = marker()
    name = api.deploy(ECHO_OR_FLOOD, timeout=1, user_data={"FGD_TEST_MARK": mark})["func_name"]
    assert api.invoke(name, {"ok": 1}).content == b"fine"  # warm: no cold start in the timing
    elapsed, response = timed_invoke(api, name, streams)
    assert_timed_out(elapsed, response, 1)
    assert wait_none_with(mark)
    assert api.invoke(name, {"ok": 1}).content == b"fine"
    assert_healthy(api)


def test_several_flooders_time_out_together(api: Api) -> None:
    # The invocation tasks are runnable (their sockets always readable) when the timeout task
    # runs: a wake-up that only reaches tasks already waiting would miss some of them.
    mark = marker()
    names = [api.deploy(ECHO_OR_FLOOD, timeout=1, user_data={"FGD_TEST_MARK": mark})["func_name"] for _ in range(4)]
    for name in names:
        assert api.invoke(name, {"ok": 1}).content == b"fine"
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(lambda name: timed_invoke(api, name, {"logger": 1}), names))
    for elapsed, response in answers:
        assert_timed_out(elapsed, response, 1)
    assert wait_none_with(mark)
    assert_healthy(api)


HALF_FRAME = """
    import os, socket, stat, struct, subprocess, time

    def handler(event, context):
        subprocess.Popen(["sleep", "100"])
        # The instance's own protocol socket: announce a frame of 5 MB, send part of it, stall.
        for fd in sorted(int(name) for name in os.listdir("/proc/self/fd")):
            try:
                if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                    continue
                sock = socket.socket(fileno=os.dup(fd))
                if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM:
                    sock.sendall(struct.pack(">I", 5_000_000) + b"\\x00" * event.get("part", 1000))
                    break
            except OSError:
                continue
        time.sleep(100)
"""


@pytest.mark.parametrize("part", [0, 1000, 300_000])
def test_half_a_frame_then_silence_times_out(api: Api, part: int) -> None:
    mark = marker()
    name = api.deploy(HALF_FRAME, timeout=1, user_data={"FGD_TEST_MARK": mark})["func_name"]
    elapsed, response = timed_invoke(api, name, {"part": part})
    # The cold start is outside the deadline: allow for it.
    assert response.json()["errorType"] == "Runtime.Timeout", response.text[:300]
    assert 1.0 <= elapsed < 4.0, elapsed
    assert wait_none_with(mark)
    assert_healthy(api)


BIG_AT_THE_DEADLINE = """
    import time

    BIG = "r" * 5_500_000

    def handler(event, context):
        time.sleep(event["sleep"])
        return BIG
"""


@pytest.mark.slow
def test_large_result_at_the_deadline_is_whole_or_a_timeout(api: Api) -> None:
    mark = marker()
    name = api.deploy(BIG_AT_THE_DEADLINE, timeout=1, memory_size=512, user_data={"FGD_TEST_MARK": mark})["func_name"]
    assert len(api.invoke(name, {"sleep": 0}).content) == 5_500_000
    kinds = set()
    for sleep in (0.9, 0.96, 0.99, 1.0, 1.02):
        elapsed, response = timed_invoke(api, name, {"sleep": sleep})
        assert response.status_code == 200
        if response.headers["x-is-func-err"] == "true":
            assert response.json()["errorType"] == "Runtime.Timeout", response.text[:300]
            kinds.add("timeout")
        else:
            assert response.content == b"r" * 5_500_000
            kinds.add("whole")
        # A cold start follows each timeout (the instance was recycled).
        assert elapsed < 1.0 + LATE + 1.5, elapsed
    assert "timeout" in kinds
    assert len(api.invoke(name, {"sleep": 0}).content) == 5_500_000
    assert_healthy(api)
    assert api.http.delete(f"/functions/{name}").status_code in (200, 204)
    assert wait_none_with(mark)


GIL_HOG = """
    import subprocess, threading, time

    def hog():
        time.sleep(0.3)  # the answer is sent and the instance waits for the next request
        sum(range(10**11))  # one C call: the instance never gets the GIL back to read

    def handler(event, context):
        if event.get("hog"):
            subprocess.Popen(["sleep", "100"])
            threading.Thread(target=hog, daemon=True).start()
        return "fine"
"""


def test_instance_that_stops_reading_times_out_a_large_event(api: Api) -> None:
    # The next request's event fills the socket and the daemon waits to write the rest: the
    # deadline must end that wait too.
    mark = marker()
    name = api.deploy(GIL_HOG, timeout=1, user_data={"FGD_TEST_MARK": mark})["func_name"]
    assert api.invoke(name, {"hog": 1}).content == b"fine"
    time.sleep(0.5)
    elapsed, response = timed_invoke(api, name, {"pad": "p" * 4_000_000})
    assert_timed_out(elapsed, response, 1)
    assert wait_none_with(mark)
    assert api.invoke(name, {}).content == b"fine"


LINGERERS = """
    import os, signal, subprocess, time

    def handler(event, context):
        if event.get("ok"):
            return "fine"
        # Children that keep every descriptor (the protocol socket too), ignore every signal
        # they can and leave the process group.
        for session in (False, True):
            subprocess.Popen(
                ["python3", "-c", "import signal, time\\n"
                 "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\\n"
                 "    signal.signal(s, signal.SIG_IGN)\\n"
                 "time.sleep(1000)"],
                close_fds=False, start_new_session=session,
            )
        if os.fork() == 0:
            os.setsid()
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(s, signal.SIG_IGN)
            time.sleep(1000)
            os._exit(0)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        time.sleep(1000)
"""


def test_children_holding_the_socket_do_not_delay_the_answer(api: Api) -> None:
    mark = marker()
    name = api.deploy(LINGERERS, timeout=1, user_data={"FGD_TEST_MARK": mark})["func_name"]
    assert api.invoke(name, {"ok": 1}).content == b"fine"
    elapsed, response = timed_invoke(api, name, {})
    assert_timed_out(elapsed, response, 1)
    assert wait_none_with(mark)
    assert api.invoke(name, {"ok": 1}).content == b"fine"


SLEEPY = """
    import subprocess, time

    def handler(event, context):
        if event["sleep"] > 5:
            subprocess.Popen(["sleep", "100"])
        time.sleep(event["sleep"])
        return "slept %s" % event["sleep"]
"""


@pytest.mark.slow
def test_a_crowd_of_timeouts_mixed_with_near_misses(api: Api) -> None:
    # 24 one-request invocations at once over 12 functions: half sleep past their deadline, half
    # end 0.25 s before theirs. Each hears its own answer; nothing is leaked.
    mark = marker()
    names = [api.deploy(SLEEPY, timeout=2, user_data={"FGD_TEST_MARK": mark})["func_name"] for _ in range(12)]
    calls = [(names[i % 12], 1.75 if i % 2 else 30) for i in range(24)]
    for name in names:  # two warm instances of each
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda warm: api.invoke(warm, {"sleep": 0.3}), [name, name]))
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        answers = list(pool.map(lambda call: timed_invoke(api, call[0], {"sleep": call[1]}), calls))
    for (_, sleep), (elapsed, response) in zip(calls, answers, strict=True):
        if sleep > 2:
            assert_timed_out(elapsed, response, 2)
        else:
            assert response.headers["x-is-func-err"] == "false", response.text[:300]
            assert response.content == b'"slept 1.75"' or response.content == b"slept 1.75", response.content
            assert elapsed < 3.0, elapsed
    assert_healthy(api)
    for name in names:
        assert api.invoke(name, {"sleep": 0}).headers["x-is-func-err"] == "false"
    for name in names:
        assert api.http.delete(f"/functions/{name}").status_code in (200, 204)
    assert wait_none_with(mark, within=5)


def test_timeout_counts_from_the_invocation_not_the_initializer(api: Api) -> None:
    source = """
        import time

        def init(context):
            time.sleep(0.8)

        def handler(event, context):
            time.sleep(event["sleep"])
            return "ok"
    """
    name = api.deploy(source, timeout=1, initializer_handler="index.init", initializer_timeout=5)["func_name"]
    elapsed, response = timed_invoke(api, name, {"sleep": 0.5})
    # Initializer 0.8 s + handler 0.5 s > 1 s: the initializer is not the handler's time.
    assert response.headers["x-is-func-err"] == "false", response.text[:300]
    elapsed, response = timed_invoke(api, name, {"sleep": 5})
    assert_timed_out(elapsed, response, 1)


def test_async_invocation_that_times_out_is_recorded_as_a_timeout(api: Api) -> None:
    name = api.deploy(SLEEPY, timeout=1)["func_name"]
    assert (
        api.http.put(f"/functions/{name}/async-invoke-config", json={"max_async_retry_attempts": 1}).status_code == 200
    )
    submitted = api.http.post(f"/functions/{name}/invocations-async", json={"sleep": 30})
    assert submitted.status_code == 202, submitted.text
    request_id = submitted.json()["request_id"]
    deadline = time.monotonic() + 15
    while True:
        rows = api.http.get(f"/functions/{name}/async-invocations", params={"request_id": request_id}).json()
        row = rows["invocations"][0] if rows.get("invocations") else rows
        if row.get("status") in ("SUCCESS", "FAIL", "DISCARD") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert row["status"] == "FAIL", row
    assert row["attempts"] == 2, row
    assert "Timeout" in str(row.get("error_message", "")) + str(row.get("error_type", "")), row
    assert api.invoke(name, {"sleep": 0}).headers["x-is-func-err"] == "false"


NODE_SPINNER = """
exports.handler = async (event, context) => {
  if (event.ok) return 'fine';
  require('child_process').spawn('sleep', ['100'], { stdio: 'ignore' });
  const log = context.getLogger();
  for (;;) { log.info('y'.repeat(2000)); console.log('z'.repeat(2000)); }
};
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="no `node` on this machine (make installs it)")
def test_nodejs_flooding_spinner_times_out(api: Api) -> None:
    mark = marker()
    response = api.create(
        make_zip({"index.js": NODE_SPINNER}),
        runtime="Node.js20.15",
        timeout=1,
        user_data={"FGD_TEST_MARK": mark},
    )
    assert response.status_code == 200, response.text
    name = response.json()["func_name"]
    assert api.invoke(name, {"ok": 1}).content in (b"fine", b'"fine"')
    elapsed, answer = timed_invoke(api, name, {})
    assert_timed_out(elapsed, answer, 1)
    assert wait_none_with(mark)
    assert api.invoke(name, {"ok": 1}).content in (b"fine", b'"fine"')


CUSTOM_STALLER = script(
    """
    #!/bin/sh
    # Takes the event, then never answers; a child that ignores signals holds everything open.
    while true; do
        curl -sS -D /tmp/h -o /tmp/e "http://$RUNTIME_API_ADDR/v1/runtime/invocation/request" || exit 1
        sh -c 'trap "" TERM INT HUP; sleep 1000' &
        sleep 1000
    done
    """
)


def test_custom_runtime_that_never_answers_times_out(api: Api) -> None:
    if shutil.which("curl") is None:
        pytest.skip("no curl on this machine")
    mark = marker()
    name = deploy_custom(api, "Custom", {"bootstrap": CUSTOM_STALLER}, timeout=1, user_data={"FGD_TEST_MARK": mark})
    elapsed, response = timed_invoke(api, name, {"x": 1})
    assert response.json()["errorType"] == "Runtime.Timeout", response.text[:300]
    assert 1.0 <= elapsed < 4.0, elapsed  # a cold start first
    assert wait_none_with(mark)
    assert_healthy(api)


@pytest.fixture(scope="module")
def no_cgroups_api(tmp_path_factory: pytest.TempPathFactory):
    # A host without cgroups (degraded): a kill reaches the instance's process group only, so a
    # child in its own session outlives it and keeps the instance's socket open.
    config = '[sandbox]\nallow_degraded = true\ndisable = ["cgroups", "namespaces", "mounts", "credentials"]\n'
    with running(Path(tmp_path_factory.mktemp("timeouts-no-cgroups")) / "state", config) as daemon:
        yield Api(daemon)


FLOOD_WITH_A_KEEPER = """
    import os, time

    def handler(event, context):
        if event.get("ok"):
            return "fine"
        if os.fork() == 0:
            os.setsid()  # out of the instance's process group, the protocol socket still open
            time.sleep(8)
            os._exit(0)
        logger = context.getLogger()
        line = "k" * 3000
        while True:
            logger.info(line)
"""


@pytest.mark.slow
def test_timeout_ends_the_request_even_when_the_socket_outlives_the_kill(no_cgroups_api: Api) -> None:
    # The invocation task is usually runnable (its socket always readable) when the deadline
    # passes: waking only the tasks already waiting on the socket misses it, and it would then
    # wait for an end of file the child never lets come.
    api = no_cgroups_api
    names = [api.deploy(FLOOD_WITH_A_KEEPER, timeout=1)["func_name"] for _ in range(4)]
    for name in names:
        assert api.invoke(name, {"ok": 1}).content == b"fine"

    def call(name: str) -> tuple[float, httpx.Response | str]:
        started = time.monotonic()
        try:
            response = api.http.post(f"/functions/{name}/invocations", json={}, timeout=6)
        except httpx.TimeoutException:
            return time.monotonic() - started, "no answer within 6 s"
        return time.monotonic() - started, response

    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(call, names * 3))
    for elapsed, response in answers:
        assert not isinstance(response, str), response
        assert response.status_code == 200, response.text[:300]
        assert response.json().get("errorType") == "Runtime.Timeout", response.text[:300]
        assert elapsed < 1.0 + LATE + 1.0, elapsed  # a cold start each time after the first


def _instance_on(ours: socket.socket) -> Instance:
    """An Instance talking over `ours` (its process stands for whoever holds the other end)."""
    instance = Instance(SimpleNamespace(generation=0), LogLimits(max_lines=100, max_bytes=100_000))
    instance._socket = trio.socket.from_stdlib_socket(ours)
    instance._raw = ours
    return instance


@pytest.mark.parametrize("direction", ["read", "write"])
def test_an_interrupt_stops_a_task_that_was_not_waiting_at_that_moment(direction: str) -> None:
    # The timeout task interrupts while the invocation task is in the run queue (woken by data
    # in the same batch), not waiting on the socket: the next wait must not begin, since the
    # other end may stay open (here: it does) long after the kill.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    instance = _instance_on(ours)
    instance.kill_reason = "the instance was recycled because request r1 on it timed out"

    async def main() -> None:
        instance.interrupt()
        with trio.fail_after(2), pytest.raises(InstanceGone, match="r1 on it timed out"):
            if direction == "read":
                await instance.receive()
            else:
                await instance.send(protocol.Invoke("r2", b"e" * 8_000_000, time.time() + 1))

    try:
        trio.run(main)
    finally:
        ours.close()
        theirs.close()


def test_callers_that_hang_up_before_the_deadline_leave_nothing_behind(api: Api) -> None:
    # Each hang-up cancels its invocation, whose deadline entry must end with it: no late
    # timeout may then recycle the instance that serves the next request.
    mark = marker()
    name = api.deploy(SLEEPY, timeout=1, user_data={"FGD_TEST_MARK": mark})["func_name"]
    for _ in range(3):
        with pytest.raises(httpx.TimeoutException):
            api.http.post(f"/functions/{name}/invocations", json={"sleep": 30}, timeout=0.5)
    assert wait_none_with(mark)
    # Past the abandoned requests' deadlines, a warm instance serves request after request.
    for _ in range(3):
        response = api.invoke(name, {"sleep": 0.3})
        assert response.headers["x-is-func-err"] == "false", response.text[:300]
    assert json.loads(api.invoke(name, {"sleep": 0}).headers["x-cff-invoke-summary"])["coldStart"] is False
