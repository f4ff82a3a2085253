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

The HTTP side is api_server.Server: one thread on epoll, keep-alive, bounded. An
Invoke is written to the GET waiting longest by the thread that received it from
the daemon (no hand-over between threads); a POST's answer goes to the daemon from
the server's thread. The peer's uid is checked per connection only where the
loopback is the host's (no network namespace): /proc/net/tcp is read for it.
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

from runtimes import protocol
from runtimes.custom.agent import Agent
from runtimes.custom.api_server import BadRequest, Connection, Request, Server, response
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
ALLOWED = frozenset({"GET", "POST"})


class Refusal(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


class RuntimeApi(Agent):
    """The runtime API's requests (api_server.Server calls these in its one thread) and the
    invocations waiting for them: each Invoke goes to the GET that waits longest, or waits in
    `queue` for the next GET."""

    body_limit = protocol.MAX_RESPONSE

    def __init__(self, conn, spec: Specialize, code_dir: str, listener: socket.socket | None) -> None:
        super().__init__(conn, spec, code_dir)
        assert listener is not None
        self.listener = listener
        host, port = listener.getsockname()[:2]
        self.address = f"{host}:{port}"
        self.queue: collections.deque[Invoke] = collections.deque()
        # GETs waiting for an invocation, longest first (their connections, busy).
        self.waiters: collections.deque[Connection] = collections.deque()
        self.given: dict[str, Invoke] = {}
        self.answered: dict[str, None] = {}
        # On a host without network namespaces the API listens on the host's loopback: each
        # connection's peer is checked. In the instance's own namespace only it can connect.
        sandbox = spec.sandbox
        self.shared_loopback = sandbox is None or not sandbox.protections.namespaces

    def holding(self) -> list[str]:
        return super().holding() + [frame.request_id for frame in self.queue]

    def run(self, environ: dict[str, str]) -> None:
        environ["RUNTIME_API_ADDR"] = self.address
        admit = self.admit if self.shared_loopback else lambda sock: True
        server = Server(self.listener, self, admit)
        threading.Thread(target=server.serve_forever, name="runtime-api", daemon=True).start()
        self.start(environ)
        threading.Thread(target=self.watch_init, args=("ask for work (GET " + REQUEST_PATH + ")",), daemon=True).start()
        self.receive_invocations(self.queue.append, self.hand_out)

    # Invocations and the GETs that wait for them -------------------------------------

    def give(self, frame: Invoke) -> None:
        """(Under the lock.) `frame` goes to a GET: the bootstrap works on it now."""
        self.given[frame.request_id] = frame
        self.active.append(frame.request_id)

    def hand_out(self) -> None:
        """Give waiting invocations to waiting GETs, written from this thread (no hand-over)."""
        while True:
            with self.lock:
                if not self.queue or not self.waiters:
                    return
                waiter = self.waiters.popleft()
                frame = self.queue.popleft()
                self.give(frame)
                headers = self.headers_locked(frame)
            if not waiter.deliver(invocation_response(frame, headers, waiter.keep_alive), frame):
                self.give_back(frame)

    def give_back(self, frame: Invoke) -> None:
        """A GET whose client went away before it got its invocation: the next GET gets it."""
        with self.lock:
            if self.given.pop(frame.request_id, None) is None:
                return
            self.active.remove(frame.request_id)
            self.queue.appendleft(frame)
        self.hand_out()

    def headers_locked(self, frame: Invoke) -> list[tuple[str, str]]:
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
        credentials = self.credentials
        for key, names in CREDENTIAL_HEADERS.items():
            value = credentials.get(key, "")
            if value:
                headers += [(name, value) for name in names]
        return headers

    # The API (api_server.Handler) ---------------------------------------------------

    def admit(self, sock: socket.socket) -> bool:
        if peer_is_ours(sock):
            return True
        # Another uid's process: on a host without network namespaces the API is on the host's
        # loopback, where another function's bootstrap could take this instance's invocations
        # (and its agency's credentials) or answer them.
        body = json.dumps({"errorType": "Forbidden", "errorMessage": "the runtime API serves its own bootstrap only"})
        with contextlib.suppress(OSError):
            sock.sendall(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode())
            )
        return False

    def on_request(self, conn: Connection, request: Request) -> None:
        if request.method == "GET":
            if request.path != REQUEST_PATH:
                refuse(conn, Refusal(404, "NotFound", f"no such route: GET {request.target[:200]}"))
                return
            self.became_ready()
            with self.lock:
                if not self.queue:
                    conn.busy = True
                    self.waiters.append(conn)
                    return
                frame = self.queue.popleft()
                self.give(frame)
                headers = self.headers_locked(frame)
            conn.busy = True
            if not conn.deliver(invocation_response(frame, headers, conn.keep_alive), frame):
                self.give_back(frame)
            return
        if request.method not in ALLOWED:
            # http.server's answer to a method it has no handler for was a 501; to a client of
            # the API it is a method the API does not have.
            refuse(conn, Refusal(405, "MethodNotAllowed", f"{request.method} is not a method of the runtime API"), True)
            return
        match = ANSWER_PATH.match(request.target)
        if match is None:
            refuse(conn, Refusal(404, "NotFound", f"no such route: POST {request.target[:200]}"))
            return
        try:
            self.complete(match.group(1), match.group(2), bytes(request.body))
        except Refusal as refusal:
            refuse(conn, refusal)
            return
        conn.respond(202, b'{"status":"OK"}')

    def on_oversize(self, conn: Connection, request: Request) -> None:
        size = f"{request.size:,} bytes" if request.size else "over the limit"
        refusal = Refusal(413, "BodyTooLarge", f"the body is {size}; the limit is {protocol.MAX_RESPONSE:,}")
        match = ANSWER_PATH.match(request.target) if request.method == "POST" else None
        if match is not None:
            self.too_large_response(match.group(1), match.group(2), refusal)
        refuse(conn, refusal)

    def on_refused(self, conn: Connection, error: BadRequest) -> None:
        refuse(conn, Refusal(error.status, "InvalidRequest", error.message), True)

    def closed(self, conn: Connection) -> None:
        with self.lock:
            if conn.busy:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(conn)
        frame = conn.in_flight
        if isinstance(frame, Invoke):
            conn.in_flight = None
            self.give_back(frame)

    # Answers ---------------------------------------------------------------------------

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


def invocation_response(frame: Invoke, headers: list[tuple[str, str]], keep_alive: bool) -> bytes:
    return response(200, frame.event, headers, not keep_alive)


def refuse(conn: Connection, refusal: Refusal, close: bool = False) -> None:
    body = json.dumps({"errorType": refusal.error_type, "errorMessage": refusal.message}).encode()
    conn.respond(refusal.status, body, close=close)


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
        key = f" {_proc_address(conn.getpeername())} {_proc_address(conn.getsockname())} ".encode()
        with open("/proc/net/tcp", "rb") as table:
            # The host's table holds every socket of the node: searched as bytes, not line by line.
            text = table.read()
        at = text.find(key)
        if at < 0:
            return True
        fields = text[at : text.find(b"\n", at)].split()
        return int(fields[6]) == os.getuid()
    except (OSError, ValueError, IndexError):
        pass
    return True


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
