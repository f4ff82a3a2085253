"""FunctionGraph's Custom runtime API, served to `bootstrap` on RUNTIME_API_ADDR.

- `GET /v1/runtime/invocation/request` blocks until an invocation arrives and
  answers 200 with the event as the body and FunctionGraph's headers: the
  request id, its deadline, the function's facts and the agency's credentials.
  Several GETs wait at once when `concurrent_num` > 1; each gets its own request.
- `POST /v1/runtime/invocation/response/{id}` completes it with the body as the
  result (202); `POST /v1/runtime/invocation/error/{id}` with
  `{"errorType", "errorMessage"[, "stackTrace"]}` completes it as a function error.

Misuse is answered with a 4xx and a JSON `{"errorType", "errorMessage"}` and
never touches another request: an unknown id is 404, an id already answered 409,
a body that is not what the route takes 400 (the request stays open: the
bootstrap may still answer it), a body over 6 MB 413 (a response that large
fails its request with Runtime.ResponseTooLarge, as a Python handler's would),
anything else on the API 404/405. The first GET makes the instance ready.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from runtimes import protocol
from runtimes.custom.agent import Agent
from runtimes.protocol import FunctionError, Invoke, Specialize

REQUEST_PATH = "/v1/runtime/invocation/request"
ANSWER_PATH = re.compile(r"\A/v1/runtime/invocation/(response|error)/([^/?#]+)\Z")
# Requests answered lately: a second answer to one of them is a 409, not an unknown id.
RECENT = 4096
# The credentials of the function's agency, as FunctionGraph's Custom runtime sends them.
CREDENTIAL_HEADERS = {
    "access_key": ("X-CFF-Access-Key", "X-CFF-Security-Access-Key"),
    "secret_key": ("X-CFF-Secret-Key", "X-CFF-Security-Secret-Key"),
    "security_token": ("X-CFF-Security-Token",),
    "auth_token": ("X-CFF-Auth-Token",),
}
# A body refused for its size is read and dropped up to this size; past it the connection closes.
DISCARD_LIMIT = 64 * 1024 * 1024
# How long a waiting GET sleeps between looks at whether its client went away.
POLL = 1.0


class Refusal(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


class RuntimeApi(Agent):
    def __init__(self, conn, spec: Specialize, code_dir: str, listener: socket.socket | None) -> None:
        super().__init__(conn, spec, code_dir)
        assert listener is not None
        self.listener = listener
        host, port = listener.getsockname()[:2]
        self.address = f"{host}:{port}"
        self.queue: collections.deque[Invoke] = collections.deque()
        self.given: dict[str, Invoke] = {}
        self.answered: dict[str, None] = {}
        self.arrived = threading.Condition(self.lock)

    def holding(self) -> list[str]:
        return super().holding() + [frame.request_id for frame in self.queue]

    def run(self, environ: dict[str, str]) -> None:
        environ["RUNTIME_API_ADDR"] = self.address
        server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self), bind_and_activate=False)
        server.socket.close()
        server.socket = self.listener
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="runtime-api", daemon=True).start()
        self.start(environ)
        threading.Thread(target=self.watch_init, args=("ask for work (GET " + REQUEST_PATH + ")",), daemon=True).start()

        def take(frame: Invoke) -> None:
            self.queue.append(frame)
            self.arrived.notify()

        self.receive_invocations(take)

    # The API -------------------------------------------------------------------

    def next_request(self, gone) -> Invoke | None:
        """The next invocation for a GET (blocking); None if its client went away meanwhile."""
        self.became_ready()
        with self.lock:
            while not self.queue:
                self.arrived.wait(POLL)
                if not self.queue and gone():
                    return None
            frame = self.queue.popleft()
            self.given[frame.request_id] = frame
            self.active.append(frame.request_id)
            return frame

    def give_back(self, frame: Invoke) -> None:
        """A GET whose client went away before it got its invocation: the next GET gets it."""
        with self.lock:
            if self.given.pop(frame.request_id, None) is not None:
                self.active.remove(frame.request_id)
                self.queue.appendleft(frame)
                self.arrived.notify()

    def headers(self, frame: Invoke) -> list[tuple]:
        identity = self.spec.identity
        headers = [
            ("X-Cff-Request-Id", frame.request_id),
            ("X-CFF-Deadline-Ms", str(int(frame.deadline * 1000))),
            ("X-CFF-Remaining-Ms", str(max(0, int((frame.deadline - time.time()) * 1000)))),
            ("X-CFF-Func-Name", identity.func_name),
            ("X-CFF-Func-Version", identity.version),
            ("X-CFF-Package", identity.package),
            ("X-CFF-Project-Id", identity.project_id),
            ("X-CFF-Memory", str(identity.memory_size)),
            ("X-CFF-Timeout", str(identity.timeout)),
        ]
        if identity.alias:
            headers.append(("X-CFF-Alias", identity.alias))
        with self.lock:
            credentials = dict(self.credentials)
        for key, names in CREDENTIAL_HEADERS.items():
            value = credentials.get(key, "")
            if value:
                headers += [(name, value) for name in names]
        return headers

    def complete(self, kind: str, request_id: str, body: bytes) -> None:
        """A response or error for `request_id`; Refusal when it cannot be taken."""
        self.check_open(request_id)
        if kind == "error":
            self.finish(request_id, None, parse_error(body))
        else:
            self.finish(request_id, body, None)

    def check_open(self, request_id: str) -> None:
        with self.lock:
            if request_id in self.given:
                return
            if request_id in self.answered:
                raise Refusal(409, "AlreadyAnswered", f"request {request_id[:64]!r} was already answered")
        raise Refusal(404, "UnknownRequest", f"no invocation {request_id[:64]!r} is waiting for an answer")

    def finish(self, request_id: str, body: bytes | None, error: FunctionError | None) -> None:
        with self.lock:
            # Checked again under the lock: two answers to one request may race.
            if request_id not in self.given:
                raise Refusal(409, "AlreadyAnswered", f"request {request_id[:64]!r} was already answered")
            if not self.claim(request_id):
                raise Refusal(409, "AlreadyAnswered", "the bootstrap exited: every request was answered with its exit")
            del self.given[request_id]
            self.answered[request_id] = None
            if len(self.answered) > RECENT:
                del self.answered[next(iter(self.answered))]
        # Its output first (still attributed to it), then its answer.
        self.answer(request_id, body=body, error=error)
        self.done(request_id)

    def too_large_response(self, kind: str, request_id: str, refusal: Refusal) -> None:
        """A response over the limit fails its request, as a Python handler's would."""
        if kind != "response":
            return
        with contextlib.suppress(Refusal):
            self.finish(request_id, None, FunctionError("Runtime.ResponseTooLarge", refusal.message))


def _proc_address(address: tuple) -> str:
    """An IPv4 (host, port) as /proc/net/tcp writes it: the address's 32 bits in host order, hex."""
    host, port = address[:2]
    return f"{int.from_bytes(socket.inet_aton(host), 'little'):08X}:{port:04X}"


def peer_is_ours(conn: socket.socket) -> bool:
    """Whether the process at the other end of `conn` runs as our uid (the bootstrap's, which is
    the instance's own). Its socket is found in /proc/net/tcp (local = our peer, remote = us);
    without such a line (no /proc) the connection is let through: inside a network namespace of
    its own only the instance can reach the API anyway."""
    try:
        peer, local = _proc_address(conn.getpeername()), _proc_address(conn.getsockname())
        with open("/proc/net/tcp") as table:
            next(table)
            for line in table:
                fields = line.split()
                if fields[1] == peer and fields[2] == local:
                    return int(fields[7]) == os.getuid()
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return True


def is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²", which int() refuses."""
    return text.isascii() and text.isdigit()


def parse_error(body: bytes) -> FunctionError:
    try:
        report = json.loads(body)
    except (ValueError, RecursionError):
        raise Refusal(
            400, "InvalidErrorReport", 'the error report must be JSON {"errorType", "errorMessage"}'
        ) from None
    if not isinstance(report, dict):
        raise Refusal(400, "InvalidErrorReport", 'the error report must be a JSON object {"errorType", "errorMessage"}')
    error_type = report.get("errorType", "Error")
    message = report.get("errorMessage", "")
    stack = report.get("stackTrace", [])
    if not isinstance(error_type, str) or not isinstance(message, str):
        raise Refusal(400, "InvalidErrorReport", "errorType and errorMessage must be strings")
    if isinstance(stack, str):
        stack = stack.splitlines()
    if not isinstance(stack, list) or not all(isinstance(line, str) for line in stack):
        raise Refusal(400, "InvalidErrorReport", "stackTrace must be a list of strings")
    return protocol.bounded(FunctionError(error_type or "Error", message, stack))


def make_handler(api: RuntimeApi) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "fgd-runtime-api"
        sys_version = ""
        # The head and the body go out in two writes; with Nagle's algorithm the body waits for
        # the client's delayed ACK of the head (up to 40 ms on Linux) on a kept-alive connection.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:
            pass  # the function's log is the bootstrap's, not this server's access log

        def reply(self, status: int, body: bytes, headers: list[tuple] | None = None) -> None:
            self.send_response(status)
            for name, value in headers or []:
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def refuse(self, refusal: Refusal) -> None:
            body = json.dumps({"errorType": refusal.error_type, "errorMessage": refusal.message}).encode()
            self.reply(refusal.status, body)

        def handle(self) -> None:
            if not peer_is_ours(self.connection):
                # Another uid's process: on a host without network namespaces the API is on
                # the host's loopback, where another function's bootstrap could take this
                # instance's invocations (and its agency's credentials) or answer them.
                body = json.dumps(
                    {"errorType": "Forbidden", "errorMessage": "the runtime API serves its own bootstrap only"}
                ).encode()
                with contextlib.suppress(OSError):
                    self.connection.sendall(
                        b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nConnection: close\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                return
            super().handle()

        def client_gone(self) -> bool:
            try:
                data = self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            except OSError:
                return True
            return data == b""

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != REQUEST_PATH:
                self.refuse(Refusal(404, "NotFound", f"no such route: GET {self.path[:200]}"))
                return
            frame = api.next_request(self.client_gone)
            if frame is None:
                self.close_connection = True
                return
            try:
                self.reply(200, frame.event, api.headers(frame))
                self.wfile.flush()
            except OSError:
                api.give_back(frame)
                self.close_connection = True

        def do_POST(self) -> None:
            match = ANSWER_PATH.match(self.path)
            if match is None:
                self.drop_body()
                self.refuse(Refusal(404, "NotFound", f"no such route: POST {self.path[:200]}"))
                return
            kind, request_id = match.group(1), match.group(2)
            try:
                body = self.read_body()
            except Refusal as refusal:
                if refusal.status == 413:
                    api.too_large_response(kind, request_id, refusal)
                self.refuse(refusal)
                return
            try:
                api.complete(kind, request_id, body)
            except Refusal as refusal:
                self.refuse(refusal)
                return
            self.reply(202, b'{"status":"OK"}')

        def read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self.read_chunked()
            length = self.headers.get("Content-Length")
            if length is None:
                return b""
            if not is_number(length):
                raise Refusal(400, "InvalidRequest", "Content-Length is not a number")
            size = int(length)
            if size > protocol.MAX_RESPONSE:
                self.discard(size)
                raise Refusal(
                    413, "BodyTooLarge", f"the body is {size:,} bytes; the limit is {protocol.MAX_RESPONSE:,}"
                )
            return self.rfile.read(size)

        def read_chunked(self) -> bytes:
            body = bytearray()
            while True:
                line = self.rfile.readline(1024)
                digits = line.split(b";", 1)[0].strip()
                # Hex digits only: int() also takes "-1" (read(-1) reads to the connection's end,
                # past the limit), "+5", "0x5" and "5_0".
                if not digits or digits.strip(b"0123456789abcdefABCDEF"):
                    self.close_connection = True
                    raise Refusal(400, "InvalidRequest", "a malformed chunk in the body")
                size = int(digits, 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                if len(body) + size > protocol.MAX_RESPONSE:
                    self.close_connection = True
                    raise Refusal(413, "BodyTooLarge", f"the body is over the limit of {protocol.MAX_RESPONSE:,} bytes")
                body += self.rfile.read(size)
                self.rfile.readline(8)

        def discard(self, size: int) -> None:
            """Read and drop a body refused for its size, so the client gets its 413 on a connection
            it can still read (closing mid-upload makes it fail with a broken pipe instead); a body
            past DISCARD_LIMIT is not worth reading: the connection closes."""
            if size > DISCARD_LIMIT:
                self.close_connection = True
                return
            while size > 0:
                chunk = self.rfile.read(min(size, 1 << 16))
                if not chunk:
                    break
                size -= len(chunk)

        def drop_body(self) -> None:
            length = self.headers.get("Content-Length", "")
            if is_number(length) and int(length) <= DISCARD_LIMIT:
                self.discard(int(length))
            else:
                self.close_connection = True

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            # A method http.server has no do_<METHOD> for is a 501 there; to a client of the API
            # it is a method the API does not have.
            super().send_error(405 if code == 501 else code, message, explain)

        def version_string(self) -> str:
            return "fgd-runtime-api"

        def do_PUT(self) -> None:
            self.not_allowed()

        def do_DELETE(self) -> None:
            self.not_allowed()

        def do_PATCH(self) -> None:
            self.not_allowed()

        def not_allowed(self) -> None:
            self.close_connection = True
            self.refuse(Refusal(405, "MethodNotAllowed", f"{self.command} is not a method of the runtime API"))

    return Handler
