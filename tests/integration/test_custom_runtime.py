"""Custom runtime (`runtime: Custom`): a `bootstrap` speaking FunctionGraph's runtime API."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest

from tests.conftest import Api, b64, make_zip, unique_name
from tests.integration.custom_support import (
    C_RUNTIME_API_CLIENT,
    PYTHON,
    PYTHON_WORKER,
    SHELL_ECHO,
    compile_c,
    create,
    deploy,
    package,
    script,
)


def summary(response) -> dict:
    return json.loads(response.headers["X-Cff-Invoke-Summary"])


def test_shell_bootstrap_echoes_events(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": SHELL_ECHO})
    response = api.invoke(name, {"hello": "world"}, headers={"X-Cff-Log-Type": "tail"})
    assert response.status_code == 200, response.text
    assert response.headers["X-Is-Func-Err"] == "false"
    body = response.json()
    request_id = response.headers["X-Cff-Request-Id"]
    assert body == {"echo": {"hello": "world"}, "id": request_id}
    # The bootstrap's output is the request's log; the summary line is there too.
    log = base64.b64decode(response.headers["X-Cff-Function-Log"]).decode()
    assert f"working on {request_id}" in log
    assert summary(response)["coldStart"] is True
    # Warm: the same bootstrap serves the next one.
    again = api.invoke(name, {"n": 2})
    assert again.json()["echo"] == {"n": 2}
    assert summary(again)["coldStart"] is False


C_ECHO = (
    r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>

"""
    + C_RUNTIME_API_CLIENT
    + r"""
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("c bootstrap up\n");
    for (;;) {
        const char *get = "GET /v1/runtime/invocation/request HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n";
        size_t n;
        char *answer = exchange(get, strlen(get), &n);
        char *id = strcasestr(answer, "x-cff-request-id: ") + 18;
        char rid[128];
        size_t len = strcspn(id, "\r\n");
        memcpy(rid, id, len);
        rid[len] = 0;
        char *event = strstr(answer, "\r\n\r\n") + 4;
        printf("c handling %s\n", rid);
        char body[8192];
        int blen = snprintf(body, sizeof body, "{\"from\": \"c\", \"event\": %s}", event);
        char request[9000];
        int rlen = snprintf(request, sizeof request,
            "POST /v1/runtime/invocation/response/%s HTTP/1.1\r\nHost: api\r\nConnection: close\r\n"
            "Content-Length: %d\r\n\r\n%s", rid, blen, body);
        free(answer);
        free(exchange(request, rlen, &n));
    }
}
"""
)


def test_c_bootstrap(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": compile_c(C_ECHO)})
    for n in range(3):
        response = api.invoke(name, {"n": n}, headers={"X-Cff-Log-Type": "tail"})
        assert response.status_code == 200, response.text
        assert response.json() == {"from": "c", "event": {"n": n}}
        log = base64.b64decode(response.headers["X-Cff-Function-Log"]).decode()
        assert f"c handling {response.headers['X-Cff-Request-Id']}" in log


def test_python_bootstrap_headers_and_environment(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": PYTHON_WORKER}, user_data={"GREETING": "hi"}, memory_size=256, timeout=7)
    response = api.invoke(name, {"op": "echo", "x": 1})
    assert response.status_code == 200, response.text
    echoed = response.json()
    assert echoed["event"] == {"op": "echo", "x": 1}
    headers = {k.lower(): v for k, v in echoed["headers"].items()}
    assert headers["x-cff-request-id"] == response.headers["X-Cff-Request-Id"]
    assert headers["x-cff-func-name"] == name
    assert headers["x-cff-memory"] == "256"
    assert headers["x-cff-timeout"] == "7"
    assert 0 < int(headers["x-cff-deadline-ms"]) - time.time() * 1000 <= 7000
    assert "x-cff-access-key" not in headers  # no agency: no credentials
    env = api.invoke(name, {"op": "env"}).json()
    assert env["env"]["GREETING"] == "hi"
    assert env["env"]["RUNTIME_FUNC_NAME"] == name
    assert env["env"]["RUNTIME_MEMORY"] == "256"
    assert env["env"]["RUNTIME_API_ADDR"].startswith("127.0.0.1:")
    assert env["env"]["RUNTIME_CODE_ROOT"] == "/opt/function/code"
    assert env["cwd"] == "/opt/function/code"
    assert env["uid"] != 0


def test_function_error_report(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": PYTHON_WORKER})
    response = api.invoke(name, {"op": "error"})
    assert response.headers["X-Is-Func-Err"] == "true"
    assert response.json()["errorType"] == "MyError"
    assert response.json()["errorMessage"] == "it failed"
    # The instance goes on serving.
    assert api.invoke(name, {"op": "echo"}).json()["event"] == {"op": "echo"}


def test_create_refuses_missing_or_non_executable_bootstrap(api: Api) -> None:
    missing = create(api, "Custom", {"index.py": "x = 1"}, zip={"executable": ()})
    assert missing.status_code == 400 and "bootstrap" in missing.json()["error_msg"]
    plain = create(api, "Custom", {"bootstrap": SHELL_ECHO}, zip={"executable": ()})
    assert plain.status_code == 400 and "not executable" in plain.json()["error_msg"]
    nested = create(api, "http", {"src/bootstrap": SHELL_ECHO}, zip={"executable": ("src/bootstrap",)})
    assert nested.status_code == 400
    # Replacing the code of a working function with one that lacks it is refused too.
    name = deploy(api, "Custom", {"bootstrap": SHELL_ECHO})
    update = api.http.put(
        f"/functions/{name}/code",
        json={"code_type": "zip", "func_code": {"file": base64.b64encode(package({"x.sh": "echo"})).decode()}},
    )
    assert update.status_code == 400, update.text


def test_bootstrap_exiting_is_an_exit_error_with_its_output(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": PYTHON_WORKER})
    response = api.invoke(name, {"op": "exit", "code": 3})
    assert response.headers["X-Is-Func-Err"] == "true"
    error = response.json()
    assert error["errorType"] == "Runtime.ExitError"
    assert "exited with status 3" in error["errorMessage"]
    assert "about to exit" in error["errorMessage"]
    # A new instance serves the next request.
    assert api.invoke(name, {"op": "echo"}).json()["event"] == {"op": "echo"}


def test_bootstrap_exiting_at_start(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": "#!/bin/sh\necho cannot start >&2\nexit 7\n"})
    response = api.invoke(name, {})
    error = response.json()
    assert error["errorType"] == "Runtime.ExitError", error
    assert "exited with status 7" in error["errorMessage"] and "cannot start" in error["errorMessage"]


def test_bootstrap_that_never_asks_for_work_hits_the_initializer_timeout(api: Api) -> None:
    name = deploy(
        api, "Custom", {"bootstrap": "#!/bin/sh\necho waiting forever\nexec sleep 1000\n"}, initializer_timeout=1
    )
    started = time.monotonic()
    response = api.invoke(name, {})
    assert time.monotonic() - started < 5
    error = response.json()
    assert error["errorType"] == "Runtime.InitError", error
    assert "within 1 s" in error["errorMessage"] and "waiting forever" in error["errorMessage"]


def test_timeout_kills_the_bootstrap_and_its_child(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": PYTHON_WORKER}, timeout=1)
    response = api.invoke(name, {"op": "child"})
    assert response.json()["errorType"] == "Runtime.Timeout"
    assert api.invoke(name, {"op": "echo"}).json()["event"] == {"op": "echo"}


def test_memory_limit(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": PYTHON_WORKER}, memory_size=128)
    response = api.invoke(name, {"op": "memory", "mb": 400})
    assert response.json()["errorType"] == "Runtime.OutOfMemory", response.text
    assert api.invoke(name, {"op": "memory", "mb": 10}).json() == {"held": 10 * 1024 * 1024}


def test_crash(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": PYTHON_WORKER})
    error = api.invoke(name, {"op": "crash"}).json()
    assert error["errorType"] == "Runtime.ExitError"
    assert "SIGSEGV" in error["errorMessage"]


def test_runtime_api_misuse_is_refused_and_harmless(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": PYTHON_WORKER})
    response = api.invoke(name, {"op": "misuse"}, headers={"X-Cff-Log-Type": "tail"})
    assert response.status_code == 200, response.text
    results = response.json()
    assert results["unknown"][0] == 404 and "UnknownRequest" in results["unknown"][1]
    assert results["bad_error"][0] == 400
    assert results["bad_error_shape"][0] == 400
    assert results["huge"][0] == 413
    # The first answer was taken, the second refused; the instance still serves.
    last = api.invoke(name, {"op": "last"}).json()
    assert last["first"][0] == 202 and last["second"][0] == 409 and "AlreadyAnswered" in last["second"][1]
    assert api.invoke(name, {"op": "echo"}).json()["event"] == {"op": "echo"}


def test_response_over_6_mb(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": PYTHON_WORKER})
    error = api.invoke(name, {"op": "toolarge"}).json()
    assert error["errorType"] == "Runtime.ResponseTooLarge"
    assert api.invoke(name, {"op": "echo"}).json()["event"] == {"op": "echo"}


@pytest.mark.slow
def test_concurrency_hands_requests_to_several_gets_with_attributed_logs(api: Api) -> None:
    name = deploy(
        api,
        "Custom",
        {"bootstrap": PYTHON_WORKER},
        user_data={"WORKERS": "4"},
        strategy_config={"concurrency": 1, "concurrent_num": 4},
        timeout=10,
    )
    api.invoke(name, {"op": "echo"})  # started
    answers: dict[int, object] = {}

    def call(n: int) -> None:
        answers[n] = api.invoke(
            name, {"op": "print", "tag": f"req{n}", "lines": 5, "pause": 0.1}, headers={"X-Cff-Log-Type": "tail"}
        )

    threads = [threading.Thread(target=call, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Served at once by one instance: every request started before any of them ended.
    spans = [answers[n].json() for n in range(4)]
    assert max(span["start"] for span in spans) < min(span["end"] for span in spans), spans
    for n, response in answers.items():
        assert response.status_code == 200, response.text
        log = base64.b64decode(response.headers["X-Cff-Function-Log"]).decode()
        own = [line for line in log.splitlines() if " line " in line]
        # Several requests run at once: each line goes to the request whose id it names.
        assert len(own) == 5 and all(f"req{n} line" in line for line in own), log


def test_garbage_at_the_api_never_disturbs_another_request(api: Api) -> None:
    name = deploy(
        api,
        "Custom",
        {"bootstrap": PYTHON_WORKER},
        user_data={"WORKERS": "2"},
        strategy_config={"concurrency": 1, "concurrent_num": 2},
        timeout=10,
    )
    api.invoke(name, {"op": "echo"})
    slow: dict = {}

    def sleeper() -> None:
        slow["response"] = api.invoke(name, {"op": "sleep", "seconds": 1})

    thread = threading.Thread(target=sleeper)
    thread.start()
    time.sleep(0.3)
    # The sleeping request's id is not known here; an id that was never handed out stands in.
    response = api.invoke(name, {"op": "garbage", "other": "someone-elses"})
    thread.join()
    assert response.status_code == 200, response.text
    assert response.json().get("answers") == [400, 400, 400, 405, 405, 404], response.text
    assert slow["response"].json() == {"slept": 1}


def test_stored_code_that_lost_bootstrap_is_an_init_error(api: Api) -> None:
    code_root = api.daemon.state_dir / "code"
    before = set(code_root.iterdir())
    name = deploy(api, "Custom", {"bootstrap": SHELL_ECHO + "# unique " + name_marker() + "\n"})
    (tree,) = [path for path in set(code_root.iterdir()) - before if (path / "bootstrap").exists()]
    (tree / "bootstrap").chmod(0o444)
    try:
        error = api.invoke(name, {}).json()
        assert error["errorType"] == "Runtime.InitError", error
        assert "not executable" in error["errorMessage"]
    finally:
        (tree / "bootstrap").chmod(0o555)


def name_marker() -> str:
    return str(time.time_ns())


def test_logs_api_has_the_bootstrap_output_under_its_request(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": SHELL_ECHO})
    response = api.invoke(name, {"x": 1})
    request_id = response.headers["X-Cff-Request-Id"]
    logs = api.http.get(f"/functions/{name}/logs", params={"request_id": request_id}).json()["logs"]
    messages = [line["message"] for line in logs if line["request_id"] == request_id]
    assert f"working on {request_id}" in messages
    assert any(m.startswith(f"Finish Invoke RequestId: {request_id}") for m in messages)


def test_dependency_is_mounted_read_only(api: Api) -> None:
    files = {"lib/greeting.txt": "hello from a dependency"}
    dep_name = unique_name("dep")
    body = {"name": dep_name, "runtime": "Custom", "depend_type": "zip", "depend_file": b64(make_zip(files))}
    dependency = api.http.post("/dependencies/version", json=body)
    assert dependency.status_code == 200, dependency.text
    bootstrap = script(
        f"""
        #!/bin/sh
        while true; do
          ID=$(curl -sS -D - -o /dev/null "http://$RUNTIME_API_ADDR/v1/runtime/invocation/request" \\
               | grep -i '^X-Cff-Request-Id:' | cut -d' ' -f2 | tr -d '\\r')
          TEXT=$(cat /opt/function/dependency/{dep_name}/1/lib/greeting.txt)
          if touch /opt/function/dependency/{dep_name}/1/lib/x 2>/dev/null; then W=yes; else W=no; fi
          curl -sS -o /dev/null -X POST "http://$RUNTIME_API_ADDR/v1/runtime/invocation/response/$ID" \\
               -d "{{\\"text\\": \\"$TEXT\\", \\"writable\\": \\"$W\\"}}"
        done
        """
    )
    name = deploy(api, "Custom", {"bootstrap": bootstrap}, depend_version_list=[dependency.json()["id"]])
    assert api.invoke(name, {}).json() == {"text": "hello from a dependency", "writable": "no"}


NODE_BOOTSTRAP = script(
    """
    #!/opt/function/runtime/nodejs20.15/rtsp/nodejs/bin/node
    const http = require("http");
    const api = process.env.RUNTIME_API_ADDR.split(":");
    function next() {
      http.get({host: api[0], port: api[1], path: "/v1/runtime/invocation/request"}, (res) => {
        let body = "";
        res.on("data", (chunk) => (body += chunk));
        res.on("end", () => {
          const id = res.headers["x-cff-request-id"];
          console.log("node handling " + id);
          const answer = JSON.stringify({node: process.version, event: JSON.parse(body)});
          const post = http.request(
            {host: api[0], port: api[1], method: "POST", path: "/v1/runtime/invocation/response/" + id},
            (r) => { r.resume(); r.on("end", next); });
          post.end(answer);
        });
      });
    }
    next();
    """
)


def test_node_script_bootstrap(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": NODE_BOOTSTRAP})
    for n in range(2):
        response = api.invoke(name, {"n": n}, headers={"X-Cff-Log-Type": "tail"})
        answer = response.json()
        assert answer["event"] == {"n": n} and answer["node"].startswith("v"), answer
        log = base64.b64decode(response.headers["X-Cff-Function-Log"]).decode()
        assert f"node handling {response.headers['X-Cff-Request-Id']}" in log


def test_cli_deploys_a_directory_keeping_bootstraps_mode(api: Api, tmp_path) -> None:
    from tests.integration.test_cli import fgd

    (tmp_path / "bootstrap").write_text(SHELL_ECHO)
    (tmp_path / "bootstrap").chmod(0o755)
    name = unique_name("cli")
    deployed = fgd(api.daemon, "deploy", str(tmp_path), "--name", name, "--runtime", "Custom", "--handler", "bootstrap")
    assert deployed.returncode == 0, deployed.stderr
    invoked = fgd(api.daemon, "invoke", name, "--data", '{"via": "cli"}')
    assert invoked.returncode == 0, invoked.stderr
    assert json.loads(invoked.stdout)["echo"] == {"via": "cli"}
    # Without the executable bit, the CLI says why on one line.
    (tmp_path / "bootstrap").chmod(0o644)
    refused = fgd(
        api.daemon, "deploy", str(tmp_path), "--name", name + "x", "--runtime", "Custom", "--handler", "bootstrap"
    )
    assert refused.returncode != 0 and "not executable" in refused.stderr


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("#!/no/such/interpreter\n", "No such file or directory"),
        ("echo a script without a #! line\n", "Exec format error"),
    ],
)
def test_a_bootstrap_that_cannot_be_started(api: Api, content: str, reason: str) -> None:
    name = deploy(api, "Custom", {"bootstrap": content})
    error = api.invoke(name, {}).json()
    assert error["errorType"] == "Runtime.InitError", error
    assert "bootstrap cannot be started" in error["errorMessage"] and reason in error["errorMessage"]


def test_healthz_shows_the_custom_pool(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": SHELL_ECHO})
    assert api.invoke(name, {}).status_code == 200
    health = api.http.get(f"{api.daemon.url}/healthz").json()
    assert health["runtimes"]["Custom"] == health["runtimes"]["http"] == "ready"
    deadline = time.monotonic() + 5
    while health["pool"].get("Custom", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        health = api.http.get(f"{api.daemon.url}/healthz").json()
    assert health["pool"]["Custom"] >= 1 and health["pool"]["Custom"] == health["pool"]["http"]


def test_published_version_and_alias(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": PYTHON_WORKER})
    assert api.http.post(f"/functions/{name}/versions", json={"version": "v1"}).status_code == 200
    alias = api.http.post(f"/functions/{name}/aliases", json={"name": "prod", "version": "v1"})
    assert alias.status_code == 200, alias.text
    for qualifier, version, alias_name in ((f"{name}:v1", "v1", None), (f"{name}:!prod", "v1", "prod")):
        headers = {k.lower(): v for k, v in api.invoke(qualifier, {"op": "echo"}).json()["headers"].items()}
        assert headers["x-cff-func-version"] == version
        assert headers.get("x-cff-alias") == alias_name


# One kept-alive connection for everything, each answer sent with the next GET in one write.
KEEP_ALIVE = script(
    f"""
    #!{PYTHON}
    import json, os, socket

    HOST, PORT = os.environ["RUNTIME_API_ADDR"].split(":")
    GET = b"GET /v1/runtime/invocation/request HTTP/1.1\\r\\nHost: api\\r\\n\\r\\n"
    conn = socket.create_connection((HOST, int(PORT)))
    buffer = b""

    def read_answer():
        global buffer
        while b"\\r\\n\\r\\n" not in buffer:
            chunk = conn.recv(65536)
            if not chunk:
                raise SystemExit("the runtime API closed the kept-alive connection")
            buffer += chunk
        head, buffer = buffer.split(b"\\r\\n\\r\\n", 1)
        lines = head.decode("latin-1").split("\\r\\n")
        fields = {{name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}}
        size = int(fields.get("content-length", 0))
        while len(buffer) < size:
            buffer += conn.recv(65536)
        body, buffer = buffer[:size], buffer[size:]
        return int(lines[0].split()[1]), fields, body

    conn.sendall(GET)
    served = 0
    while True:
        status, fields, event = read_answer()
        served += 1
        body = json.dumps({{"event": json.loads(event), "served": served}}).encode()
        rid = fields["x-cff-request-id"].encode()
        conn.sendall(
            b"POST /v1/runtime/invocation/response/" + rid + b" HTTP/1.1\\r\\nHost: api\\r\\n"
            + b"Content-Length: " + str(len(body)).encode() + b"\\r\\n\\r\\n" + body + GET
        )
        status, _, _ = read_answer()
        if status != 202:
            raise SystemExit(f"the answer was refused: {{status}}")
    """
)


def test_a_kept_alive_connection_serves_every_invocation_with_pipelined_requests(api: Api) -> None:
    # The answer and the next GET arrive in one segment: the 202 goes out first, then the GET
    # waits for the next invocation; the connection is never closed under the bootstrap.
    name = deploy(api, "Custom", {"bootstrap": KEEP_ALIVE})
    for n in range(20):
        response = api.invoke(name, {"n": n})
        assert response.status_code == 200, response.text
        assert response.json() == {"event": {"n": n}, "served": n + 1}, response.text


def test_an_event_larger_than_a_socket_buffer_reaches_the_bootstrap_whole(api: Api) -> None:
    # The agent's first write of a GET's answer takes only what the socket buffer holds; its loop
    # writes the rest as the bootstrap reads.
    name = deploy(api, "Custom", {"bootstrap": PYTHON_WORKER})
    event = {"op": "echo", "blob": "z" * (5 * 1024 * 1024)}
    response = api.invoke(name, event)
    assert response.status_code == 200, response.text[:300]
    assert response.json()["event"] == event
    assert api.invoke(name, {"op": "echo"}).json()["event"] == {"op": "echo"}
