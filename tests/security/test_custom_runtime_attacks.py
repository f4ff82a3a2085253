"""A Custom function's `bootstrap` as an attacker of its own agent (issue 13, §3).

The agent that serves the runtime API runs beside the bootstrap in the sandbox, as the
same uid. Whatever the bootstrap does to it (reads its memory, signals it, floods or
starves its API, floods its output), the harm stays inside that one instance: the
request fails with an error saying why, and the next request is served.
"""

from __future__ import annotations

import base64
import time

import pytest

from runtimes.custom.api_server import MAX_CONNECTIONS
from tests.conftest import Api
from tests.integration.custom_support import PYTHON, deploy, script

BOOTSTRAP = script(
    f"""
    #!{PYTHON}
    import json, os, signal, socket, sys, time, urllib.request

    API = "http://" + os.environ["RUNTIME_API_ADDR"] + "/v1/runtime/invocation/"
    HOST, PORT = os.environ["RUNTIME_API_ADDR"].split(":")
    HELD = []

    def attempt(action):
        try:
            action()
            return "allowed"
        except OSError as exc:
            return exc.errno

    def work(event, rid):
        op = event.get("op")
        agent = os.getppid()
        if op == "agent":
            return {{
                "mem": attempt(lambda: open(f"/proc/{{agent}}/mem", "rb").read(1)),
                "environ": attempt(lambda: open(f"/proc/{{agent}}/environ", "rb").read(1)),
                "fd": attempt(lambda: os.listdir(f"/proc/{{agent}}/fd")),
                "maps": attempt(lambda: open(f"/proc/{{agent}}/maps", "rb").read(1)),
                "own_fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
            }}
        if op == "kill-agent":
            os.kill(agent, signal.SIGKILL)
            time.sleep(10)
        if op == "slowloris":
            # Connections that send half a request head and never finish it, held open.
            for _ in range(event["count"]):
                conn = socket.create_connection((HOST, int(PORT)))
                conn.sendall(b"POST /v1/runtime/invocation/response/" + rid.encode() + b" HTTP/1.1\\r\\nContent-Le")
                HELD.append(conn)
            return {{"held": len(HELD)}}
        if op == "pipelined":
            # Two answers for one request in one write: the first is taken, the second is a 409.
            conn = socket.create_connection((HOST, int(PORT)))
            one = b"POST /v1/runtime/invocation/response/" + rid.encode()
            one += b" HTTP/1.1\\r\\nContent-Length: 5\\r\\n\\r\\n"
            conn.sendall(one + b"first" + one + b"again")
            HELD.append(conn)
            return None
        if op == "framing":
            # Bodies framed to get past the 6 MB limit or the parser: each must be a 400 at once.
            answers = []
            head = b"POST /v1/runtime/invocation/response/" + rid.encode() + b" HTTP/1.1\\r\\n"
            for raw in (head + b"Transfer-Encoding: chunked\\r\\n\\r\\n-1\\r\\n" + b"z" * 65536,
                        head + b"Content-Length: \\xb2\\r\\n\\r\\nzz"):
                conn = socket.create_connection((HOST, int(PORT)), timeout=1.5)
                HELD.append(conn)
                try:
                    conn.sendall(raw)
                    data = conn.recv(65536)
                    answers.append(data.split(b" ")[1].decode() if data.startswith(b"HTTP/") else "closed")
                except OSError as exc:
                    answers.append(type(exc).__name__)
            return {{"answers": answers}}
        if op == "abandon":
            # A GET given up (a client's read timeout): its connection closes while it waits.
            conn = socket.create_connection((HOST, int(PORT)))
            conn.sendall(b"GET /v1/runtime/invocation/request HTTP/1.1\\r\\nHost: api\\r\\n\\r\\n")
            time.sleep(0.1)
            conn.close()
            return {{"abandoned": True}}
        if op == "flood-connections":
            # Connections that send half a request head and are never read, far more than the
            # agent keeps open: it closes the least recently active ones.
            flood = []
            deadline = time.monotonic() + 2
            for _ in range(event["count"]):
                if time.monotonic() > deadline:
                    break
                conn = socket.create_connection((HOST, int(PORT)))
                conn.sendall(b"GET /v1/runtime/invocation/request HTTP/1.1\\r\\nHo")
                flood.append(conn)
            time.sleep(0.5)
            closed = 0
            for conn in flood:
                try:
                    closed += conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
                except BlockingIOError:
                    pass
                except OSError:
                    closed += 1
            HELD.extend(flood)
            return {{"held": len(flood), "closed": closed}}
        if op == "unread-answers":
            # Requests piped in without ever reading an answer: the agent stops taking them once
            # its answers back up, and closes the connection when the backlog grows past a bound.
            conn = socket.create_connection((HOST, int(PORT)))
            conn.settimeout(1)
            burst = b"GET /nowhere HTTP/1.1\\r\\nHost: api\\r\\n\\r\\n" * 4096
            sent = 0
            try:
                while sent < 64 * 1024 * 1024:
                    conn.sendall(burst)
                    sent += len(burst)
                outcome = "all taken"
            except socket.timeout:
                outcome = "stalled"
            except OSError:
                outcome = "closed"
            HELD.append(conn)
            return {{"outcome": outcome, "mb": sent // (1024 * 1024)}}
        if op == "expect":
            # curl sends `Expect: 100-continue` with a body over 1 KB and waits a second for the
            # 100 before sending it anyway: the agent answers it at once.
            conn = socket.create_connection((HOST, int(PORT)), timeout=0.5)
            body = json.dumps({{"expected": "x" * 4000}}).encode()
            conn.sendall(b"POST /v1/runtime/invocation/response/" + rid.encode() + b" HTTP/1.1\\r\\n"
                         b"Host: api\\r\\nExpect: 100-continue\\r\\nContent-Length: "
                         + str(len(body)).encode() + b"\\r\\n\\r\\n")
            interim = conn.recv(65536)
            conn.sendall(body)
            final = conn.recv(65536)
            conn.close()
            assert interim.startswith(b"HTTP/1.1 100 ") and final.startswith(b"HTTP/1.1 202 "), (interim, final)
            return None
        if op == "close-output":
            os.close(1)
            os.close(2)
            return {{"closed": True}}
        if op == "orphan-and-exit":
            # A child keeps the output pipes open and lives on; the bootstrap exits.
            import subprocess
            subprocess.Popen(["sleep", "100"])
            print("leaving a child behind", flush=True)
            os._exit(4)
        if op == "flood-output":
            chunk = bytes(range(256)) * 4096  # 1 MiB of binary, newlines among it
            for _ in range(event["mb"]):
                os.write(1, chunk)
            return {{"wrote": event["mb"]}}
        if op == "cwd-umask":
            os.chdir("/")
            os.umask(0o777)
            return {{"cwd": os.getcwd()}}
        return {{"event": event}}

    while True:
        with urllib.request.urlopen(API + "request") as answer:
            event = json.loads(answer.read() or b"{{}}")
            rid = answer.headers["X-Cff-Request-Id"]
        result = work(event, rid)
        if result is not None:
            request = urllib.request.Request(API + "response/" + rid, data=json.dumps(result).encode(), method="POST")
            urllib.request.urlopen(request).read()
    """
)


@pytest.fixture(scope="module")
def name(api: Api) -> str:
    return deploy(api, "Custom", {"bootstrap": BOOTSTRAP}, memory_size=256)


def served(api: Api, name: str) -> bool:
    return api.invoke(name, {"op": "echo"}).json() == {"event": {"op": "echo"}}


def test_the_agents_memory_and_descriptors_are_out_of_reach(api: Api, name: str) -> None:
    report = api.invoke(name, {"op": "agent"}).json()
    # EACCES: the agent changed its uid, which leaves it undumpable; its /proc files are root's.
    assert report["mem"] == report["environ"] == report["fd"] == report["maps"] == 13, report
    # The bootstrap holds stdin, stdout, stderr and the directory listing itself: not the
    # daemon's protocol socket, not the API's listening socket (it cannot forge a frame).
    assert len(report["own_fds"]) <= 4 and report["own_fds"][:3] == [0, 1, 2], report


def test_killing_the_agent_fails_that_request_only(api: Api, name: str) -> None:
    error = api.invoke(name, {"op": "kill-agent"}).json()
    assert error["errorType"] == "Runtime.ExitError" and "SIGKILL" in error["errorMessage"], error
    assert served(api, name)


def test_slowloris_against_the_runtime_api(api: Api, name: str) -> None:
    # Each holds one of the agent's threads (the bootstrap's own instance pays, within its pids
    # limit); a connection burst past the listen backlog (64) only slows the bootstrap's connects.
    assert api.invoke(name, {"op": "slowloris", "count": 60}).json() == {"held": 60}
    assert served(api, name)


def test_two_pipelined_answers_take_the_first(api: Api, name: str) -> None:
    response = api.invoke(name, {"op": "pipelined"})
    assert response.content == b"first"
    assert served(api, name)


def test_output_flood(api: Api, name: str) -> None:
    started = time.monotonic()
    response = api.invoke(name, {"op": "flood-output", "mb": 20}, headers={"X-Cff-Log-Type": "tail"})
    assert response.json() == {"wrote": 20}
    assert time.monotonic() - started < 5
    assert len(base64.b64decode(response.headers["X-Cff-Function-Log"])) < 8 * 1024 * 1024
    assert served(api, name)


def test_cwd_and_umask_are_the_bootstraps_own(api: Api, name: str) -> None:
    assert api.invoke(name, {"op": "cwd-umask"}).json() == {"cwd": "/"}
    assert served(api, name)


def test_malformed_framing_at_the_api_is_a_400(api: Api, name: str) -> None:
    # A chunk size of -1 read the connection to its end, past the 6 MB limit (the agent's memory
    # until the client stopped); a Content-Length of "\xb2" (a digit to str.isdigit) killed the
    # handler with a ValueError.
    answers = api.invoke(name, {"op": "framing"}).json()
    assert answers == {"answers": ["400", "400"]}, answers
    assert served(api, name)


def test_an_invocation_is_not_given_to_a_get_whose_client_left(api: Api, name: str) -> None:
    # The abandoned GET waited first in line: the next invocation was written to its closed
    # connection (the write succeeds) and waited for its timeout.
    assert api.invoke(name, {"op": "abandon"}).json() == {"abandoned": True}
    started = time.monotonic()
    assert served(api, name)
    assert time.monotonic() - started < 1.5


def test_a_flood_of_connections_costs_the_bootstrap_its_oldest(api: Api, name: str) -> None:
    # Before: a thread each, up to the instance's pids limit. Now at most MAX_CONNECTIONS stay
    # open; the rest are closed, least recently active first, and the instance serves on.
    report = api.invoke(name, {"op": "flood-connections", "count": 1000}).json()
    assert report["held"] == 1000, report
    assert report["closed"] >= 1000 - MAX_CONNECTIONS, report
    started = time.monotonic()
    assert served(api, name)
    assert time.monotonic() - started < 1.5


def test_requests_piped_in_without_reading_the_answers_are_bounded(api: Api, name: str) -> None:
    report = api.invoke(name, {"op": "unread-answers"}).json()
    # The agent took at most its backlog bound beyond what the socket buffers hold, not 64 MB.
    assert report["outcome"] in ("closed", "stalled") and report["mb"] < 16, report
    assert served(api, name)


def test_expect_100_continue_is_answered_at_once(api: Api, name: str) -> None:
    started = time.monotonic()
    response = api.invoke(name, {"op": "expect"})
    assert response.json() == {"expected": "x" * 4000}, response.text
    assert time.monotonic() - started < 1


def test_a_bootstrap_without_stdout_and_stderr_still_serves(api: Api, name: str) -> None:
    assert api.invoke(name, {"op": "close-output"}).json() == {"closed": True}
    assert served(api, name)


def test_a_bootstrap_exiting_with_a_child_holding_its_output(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": BOOTSTRAP})  # its own: another test closes stdout
    started = time.monotonic()
    error = api.invoke(name, {"op": "orphan-and-exit"}).json()
    assert error["errorType"] == "Runtime.ExitError" and "status 4" in error["errorMessage"], error
    assert "leaving a child behind" in error["errorMessage"]
    assert time.monotonic() - started < 2
    assert served(api, name)
