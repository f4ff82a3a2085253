"""Helpers for Custom and http function tests: packages with an executable bootstrap, a C compiler."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import tempfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.conftest import Api, unique_name


def package(files: dict[str, str | bytes], executable: tuple[str, ...] = ("bootstrap",)) -> bytes:
    """A zip whose `executable` entries have mode 0755 (the others 0644), made on "Unix"."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (0o100755 if name in executable else 0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    return buffer.getvalue()


def create(api: Api, runtime: str, files: dict[str, str | bytes], **settings: object):
    body = {
        "func_name": settings.pop("func_name", None) or unique_name(runtime.lower()),
        "runtime": runtime,
        "handler": "bootstrap",
        "code_type": "zip",
        "func_code": {"file": base64.b64encode(package(files, **settings.pop("zip", {}))).decode()},
        **settings,
    }
    return api.http.post("/functions", json=body)


def deploy(api: Api, runtime: str, files: dict[str, str | bytes], **settings: object) -> str:
    response = create(api, runtime, files, **settings)
    assert response.status_code == 200, response.text
    return response.json()["func_name"]


# The runtime API's client for C bootstraps (tests/integration/test_custom_runtime.py,
# tests/security): put after the program's includes, which must define _GNU_SOURCE first
# (strcasestr) and include stdio, stdlib, string, unistd, arpa/inet.h and sys/socket.h.
C_RUNTIME_API_CLIENT = r"""
/* One HTTP exchange with the runtime API on a fresh connection; returns the whole answer. */
static char *exchange(const char *request, size_t length, size_t *got) {
    const char *addr = getenv("RUNTIME_API_ADDR");
    char host[64];
    strncpy(host, addr, sizeof host - 1);
    host[sizeof host - 1] = 0;
    char *colon = strchr(host, ':');
    *colon = 0;
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(atoi(colon + 1));
    inet_pton(AF_INET, host, &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) { perror("connect"); exit(9); }
    write(fd, request, length);
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    ssize_t r;
    while ((r = read(fd, buf + n, cap - n - 1)) > 0) {
        n += r;
        buf[n] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        char *cl = strcasestr(buf, "content-length:");
        if (end && cl && (size_t)(end + 4 - buf) + atoi(cl + 15) <= n) break;
    }
    buf[n] = 0;
    close(fd);
    *got = n;
    return buf;
}
"""


def script(text: str) -> str:
    return textwrap.dedent(text).lstrip()


# How a hostile test server of an HTTP function reads requests: for each, the request line, its
# Content-Length and its other header lines (the body is left in `stream`), until the client closes.
READ_REQUEST = """
def requests(stream):
    while True:
        line = stream.readline()
        if not line:
            return
        length, head = 0, b""
        while True:
            header = stream.readline()
            if header.lower().startswith(b"content-length:"):
                length = int(header.split(b":")[1])
            if header in (b"\\r\\n", b""):
                break
            head += header
        yield line, length, head
"""
# How a hostile test server of an HTTP function ends: listen on 127.0.0.1:8000 (FunctionGraph's
# rule) and give each connection to the script's `handle(conn)` on a thread of its own.
THREAD_PER_CONNECTION = """
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 8000))
server.listen(64)
while True:
    conn, _ = server.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""
# Its bootstrap: the script as server.py, on the sandbox's path of FunctionGraph's Python 3.9.
PYTHON_SERVER_BOOTSTRAP = "#!/bin/sh\nexec /opt/function/runtime/python3.9/rtsp/python/bin/python3 -u server.py\n"


def compile_c(source: str) -> bytes:
    """A static executable built from `source` with the host's gcc (skip without one)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc on this machine")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        (path / "main.c").write_text(textwrap.dedent(source))
        subprocess.run([gcc, "-O1", "-o", str(path / "bootstrap"), str(path / "main.c")], check=True)
        return (path / "bootstrap").read_bytes()


# A shell bootstrap speaking the runtime API with curl: answers {"echo": event, "id": request id}.
SHELL_ECHO = script(
    """
    #!/bin/sh
    set -eu
    while true; do
      HEADERS=$(mktemp)
      EVENT=$(curl -sS -D "$HEADERS" "http://$RUNTIME_API_ADDR/v1/runtime/invocation/request")
      ID=$(grep -i '^X-Cff-Request-Id:' "$HEADERS" | cut -d' ' -f2 | tr -d '\\r')
      echo "working on $ID"
      curl -sS -o /dev/null -X POST "http://$RUNTIME_API_ADDR/v1/runtime/invocation/response/$ID" \\
        -d "{\\"echo\\": $EVENT, \\"id\\": \\"$ID\\"}"
      rm -f "$HEADERS"
    done
    """
)

PYTHON = "/opt/function/runtime/python3.12/rtsp/python/bin/python3"

# A Python bootstrap driven by its events: {"op": ...} picks what it does (see `work`).
PYTHON_WORKER = script(
    f"""
    #!{PYTHON}
    import json, os, subprocess, sys, threading, time, urllib.error, urllib.request

    API = "http://" + os.environ["RUNTIME_API_ADDR"] + "/v1/runtime/invocation/"
    LAST = {{}}

    def post(path, data):
        request = urllib.request.Request(API + path, data=data, method="POST")
        try:
            with urllib.request.urlopen(request) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def work(event, headers):
        op = event.get("op", "echo")
        rid = headers["X-Cff-Request-Id"]
        if op == "echo":
            return {{"event": event, "headers": dict(headers)}}
        if op == "env":
            return {{"env": dict(os.environ), "cwd": os.getcwd(), "uid": os.getuid()}}
        if op == "print":
            started = time.time()
            for i in range(event.get("lines", 1)):
                # One write per line: print() writes the text and its newline apart, and threads interleave.
                sys.stdout.write(f"{{rid}} {{event.get('tag', '')}} line {{i}}\\n")
                sys.stdout.flush()
                time.sleep(event.get("pause", 0))
            return {{"printed": rid, "start": started, "end": time.time()}}
        if op == "sleep":
            time.sleep(event["seconds"])
            return {{"slept": event["seconds"]}}
        if op == "child":
            subprocess.Popen(["sleep", "1000"])
            time.sleep(1000)
        if op == "memory":
            hog = bytearray(event["mb"] * 1024 * 1024)
            for i in range(0, len(hog), 4096):
                hog[i] = 1
            return {{"held": len(hog)}}
        if op == "exit":
            print("about to exit", flush=True)
            os._exit(event.get("code", 3))
        if op == "crash":
            import ctypes
            ctypes.string_at(0)
        if op == "error":
            return post("error/" + rid, json.dumps({{"errorType": "MyError", "errorMessage": "it failed"}}).encode())
        if op == "misuse":
            results = {{
                "unknown": post("response/not-a-request", b"{{}}"),
                "bad_error": post("error/" + rid, b"not json"),
                "bad_error_shape": post("error/" + rid, b"[1, 2]"),
                "huge": post("response/" + rid + "x", b"x" * (6 * 1024 * 1024 + 10)),
            }}
            first = post("response/" + rid, json.dumps(results).encode())
            second = post("response/" + rid, b"again")
            LAST.update(first=first, second=second)
            return None
        if op == "last":
            return LAST
        if op == "garbage":
            # Raw bytes at the API while another request waits: each gets its 4xx, nothing else moves.
            import socket
            host, port = os.environ["RUNTIME_API_ADDR"].split(":")
            answers = []
            for raw in (b"GARBAGE\\r\\n\\r\\n",
                        b"POST /v1/runtime/invocation/response/x HTTP/1.1\\r\\nContent-Length: zz\\r\\n\\r\\n",
                        b"POST /v1/runtime/invocation/error/" + event["other"].encode() + b" HTTP/1.1\\r\\n"
                        b"Transfer-Encoding: chunked\\r\\n\\r\\nnot-hex\\r\\n",
                        b"DELETE /v1/runtime/invocation/request HTTP/1.1\\r\\n\\r\\n",
                        b"BREW /v1/runtime/invocation/request HTTP/1.1\\r\\n\\r\\n",
                        b"GET /elsewhere HTTP/1.1\\r\\n\\r\\n"):
                with socket.create_connection((host, int(port))) as conn:
                    conn.sendall(raw)
                    conn.shutdown(socket.SHUT_WR)
                    data = b""
                    while chunk := conn.recv(65536):
                        data += chunk
                # A request line too broken to name an HTTP version is answered in HTTP/0.9: no status line.
                answers.append(int(data.split(b" ")[1]) if data.startswith(b"HTTP/") else b"400" in data and 400)
            return {{"answers": answers}}
        if op == "toolarge":
            return post("response/" + rid, b"y" * (6 * 1024 * 1024 + 1))
        return {{"unknown op": op}}

    def loop():
        while True:
            with urllib.request.urlopen(API + "request") as answer:
                event = json.loads(answer.read() or b"{{}}")
                headers = answer.headers
            result = work(event, headers)
            if isinstance(result, dict):
                post("response/" + headers["X-Cff-Request-Id"], json.dumps(result).encode())

    workers = int(os.environ.get("WORKERS", "1"))
    for _ in range(workers - 1):
        threading.Thread(target=loop, daemon=True).start()
    print("bootstrap started", flush=True)
    loop()
    """
)

HTTP_BOOTSTRAP = "#!/bin/sh\nexec /opt/function/runtime/python3.9/rtsp/python/bin/python3 -u server.py\n"

# A small server for HTTP functions: echoes requests, and a few paths that misbehave on purpose.
HTTP_SERVER = script(
    """
    import base64, json, os, subprocess, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, status, body, headers=()):
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def handle_any(self):
            started = time.time()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            # The last segment: a gateway route forwards its whole path (/route/binary).
            path = "/" + self.path.split("?")[0].rsplit("/", 1)[-1]
            rid = self.headers.get("X-CFF-Request-Id", "")
            if path == "/binary":
                return self.answer(200, bytes(range(256)) * 4, [("Content-Type", "application/octet-stream")])
            if path == "/mirror":
                return self.answer(200, body, [("Content-Type", "application/octet-stream")])
            if path == "/sleep":
                time.sleep(float(self.headers.get("X-Seconds", "1")))
            if path == "/child":
                subprocess.Popen(["sleep", "1000"])
                time.sleep(1000)
            if path == "/exit":
                print("server exiting", flush=True)
                os._exit(4)
            if path == "/memory":
                hog = bytearray(int(self.headers["X-MB"]) * 1024 * 1024)
                for i in range(0, len(hog), 4096):
                    hog[i] = 1
            if path == "/print":
                for i in range(5):
                    # One write per line: print() writes the text and its newline apart, and threads interleave.
                    sys.stdout.write(f"{rid} {self.headers.get('X-Tag')} line {i}\\n")
                    time.sleep(0.1)
            if path == "/sixmb":
                return self.answer(200, bytes(range(256)) * (6 * 1024 * 1024 // 256))
            if path == "/big":
                return self.answer(200, b"z" * (6 * 1024 * 1024 + 1))
            echo = {
                "method": self.command,
                "path": self.path,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body": base64.b64encode(body).decode(),
                "env": dict(os.environ),
                "pid": os.getpid(),
                "start": started,
                "end": time.time(),
            }
            self.answer(
                int(self.headers.get("X-Status", "200")),
                json.dumps(echo).encode(),
                [
                    ("Content-Type", "application/json"),
                    ("Set-Cookie", "a=1"),
                    ("Set-Cookie", "b=2"),
                    ("X-Server", "small"),
                ],
            )

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any

    print("server starting", flush=True)
    ThreadingHTTPServer(("127.0.0.1", 8000), Handler).serve_forever()
    """
)
HTTP_FILES = {"bootstrap": HTTP_BOOTSTRAP, "server.py": HTTP_SERVER}
