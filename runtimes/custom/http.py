"""HTTP functions: each invocation becomes an HTTP request to the bootstrap's server.

The server must listen on 127.0.0.1:8000 (FunctionGraph's rule); the instance is
ready when that port accepts a connection. An invocation's event is an APIG
event (`httpMethod`, `path`, `headers`, `queryStringParameters`, `body`,
`isBase64Encoded`; fgd's gateway adds `rawPath`, `rawQueryString` and
`multiValueHeaders` so a request is forwarded exactly as it came); an event of
another shape is POSTed to `/` as JSON. FunctionGraph's `X-CFF-*` headers are
added (any the caller sent are removed first: they cannot be forged), and the
agency's credentials when the function has one. The server's answer goes back
as it came: its status and headers in the Result frame's `http_*` fields, its
body (at most 6 MB) as the body; the daemon makes the APIG response
`{statusCode, headers, body, isBase64Encoded}` of it where one is wanted
(fgd.custom.apig_answer) and a gateway route sends it as it is.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import subprocess
import threading
import time
import urllib.parse

from runtimes import protocol
from runtimes.custom.agent import Agent
from runtimes.custom.upstream import Upstream
from runtimes.protocol import FunctionError, Invoke, Specialize

HOST = "127.0.0.1"
PORT = 8000
# How often readiness is probed: often at first (a small server starts in milliseconds), then
# every few milliseconds (a refused connect on loopback costs microseconds; a coarse poll would
# add up to its period to every cold start).
FIRST_PROBE = 0.001
LAST_PROBE = 0.004
# Headers of the server's answer about this hop or its framing: the daemon frames the answer anew.
FRAMING = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})
# How long a failed exchange waits to see whether the server exited (then the exit is the error).
EXIT_GRACE = 0.3
# Headers about one hop or the framing: http.client and the gateway set their own.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "content-length", "host"}
)
# What a request line and header fields may hold (RFC 9110/9112): the caller's event is checked
# here, not by http.client, which lets a name with spaces through ("Content-Length : 5", read as
# a second length by lenient servers) and fails on the rest in ways that would blame the server.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
TARGET = re.compile(r"[\x21-\x7e]*\Z")
FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*\Z")
# Methods a request of may be sent twice with the effect of once (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
CREDENTIAL_HEADERS = {
    "auth_token": "x-cff-auth-token",
    "access_key": "x-cff-security-access-key",
    "secret_key": "x-cff-security-secret-key",
    "security_token": "x-cff-security-token",
}


class BadEvent(Exception):
    pass


class HttpAgent(Agent):
    def __init__(self, conn, spec: Specialize, code_dir: str) -> None:
        super().__init__(conn, spec, code_dir)
        self.local = threading.local()

    def run(self, environ: dict[str, str]) -> None:
        self.start(environ)
        threading.Thread(target=self.watch_init, args=(f"start a server on {HOST}:{PORT}",), daemon=True).start()
        self.wait_listening()
        self.became_ready()
        # `concurrent_num` threads take turns at reading the daemon's socket; the one that read an
        # invocation forwards it while the next one reads (leader and followers), so no invocation
        # is handed from one thread to another: that hand-over (a pool's queue, thread wake-ups,
        # GIL hand-overs) cost the instance about 60 us of CPU per request, a fifth of the agent's.
        # The daemon sends no frame but Invoke while requests run; anything else ends the work.
        turn = threading.Lock()
        ended = threading.Event()
        for number in range(max(1, self.spec.concurrency)):
            threading.Thread(
                target=self.forward_in_turn, args=(turn, ended), name=f"forward_{number}", daemon=True
            ).start()
        ended.wait()

    def forward_in_turn(self, turn: threading.Lock, ended: threading.Event) -> None:
        taken: list[Invoke] = []

        def take(frame: Invoke) -> None:
            self.active.append(frame.request_id)
            taken.append(frame)

        while True:
            with turn:
                if ended.is_set() or not self.receive_invocation(take):
                    ended.set()
                    return
            self.forward(taken.pop())

    def wait_listening(self) -> None:
        delay = FIRST_PROBE
        while True:
            try:
                with socket.create_connection((HOST, PORT), timeout=1.0):
                    return
            except OSError:
                pass
            time.sleep(delay)
            delay = min(delay * 2, LAST_PROBE)

    def forward(self, frame: Invoke) -> None:
        # Not named `http`: that would hide the module the except clauses below name, and a
        # failed exchange would kill this thread (its request unanswered until the timeout).
        answered: tuple[int, list[tuple[str, str]]] = (0, [])
        try:
            status, headers, body = self.exchange(frame)
            answered, error = (status, headers), None
        except BadEvent as exc:
            body, error = None, FunctionError("Runtime.InvalidRequest", str(exc))
        except BadResponse as exc:
            body, error = None, FunctionError(exc.error_type, str(exc))
        except (OSError, http.client.HTTPException) as exc:
            if self.exiting():
                return  # the server went with its bootstrap: the exit answers every request it held
            body = None
            error = FunctionError(
                "Runtime.InvalidResponse", f"the server on {HOST}:{PORT} did not answer: {type(exc).__name__}: {exc}"
            )
        except Exception as exc:  # noqa: BLE001 - a request must always be answered
            body, error = None, FunctionError("Runtime.InvalidResponse", f"{type(exc).__name__}: {exc}")
        with self.lock:
            if not self.claim(frame.request_id):
                return  # the bootstrap's exit answers it
        self.answer(frame.request_id, body=body, error=error, http=answered)
        self.done(frame.request_id)

    def exiting(self) -> bool:
        """Whether the bootstrap has exited (or does within a moment): its connection failed."""
        assert self.process is not None
        try:
            self.process.wait(EXIT_GRACE)
        except subprocess.TimeoutExpired:
            return False
        return True

    def connection(self, fresh: bool = False) -> Upstream:
        conn = getattr(self.local, "conn", None)
        if conn is not None and (fresh or conn.stale()):
            # A kept-alive connection with something to read before we ask: the server closed it
            # (idle) or wrote out of turn. Replaced before the request goes out, so no request
            # needs sending twice.
            self.drop_connection()
            conn = None
        if conn is None:
            conn = self.local.conn = Upstream(HOST, PORT)
        return conn

    def exchange(self, frame: Invoke) -> tuple[int, list[tuple[str, str]], bytes]:
        """The server's status, headers and body for the invocation's request."""
        method, target, headers, body = self.request_of(frame)
        try:
            return self._exchange(method, target, headers, body)
        except BaseException:
            # A connection an exchange failed on is in no state for the next request (half an
            # answer unread): the next one opens its own.
            self.drop_connection()
            raise

    def drop_connection(self) -> None:
        conn = getattr(self.local, "conn", None)
        self.local.conn = None
        if conn is not None:
            conn.close()

    def _exchange(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        for attempt in (0, 1):
            conn = self.connection(fresh=attempt == 1)
            try:
                conn.send(method, target, headers, body)
                answer = conn.receive(method, protocol.MAX_RESPONSE)
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server closed just as it was reused: once more on a
                # new one, for a request that may be repeated. On a new connection, or for a POST,
                # the server may have acted on it: sending it again could do it twice.
                if attempt == 1 or not conn.answered or method not in IDEMPOTENT:
                    raise
        if len(answer.body) > protocol.MAX_RESPONSE:
            self.drop_connection()
            raise BadResponse(
                f"the server's response body is over the limit of {protocol.MAX_RESPONSE:,} bytes",
                "Runtime.ResponseTooLarge",
            )
        if answer.will_close:
            self.drop_connection()
        headers = [(name, value) for name, value in answer.headers if name.lower() not in FRAMING]
        if len(headers) > protocol.MAX_HTTP_HEADERS:
            raise BadResponse(f"the server sent {len(headers)} headers; at most {protocol.MAX_HTTP_HEADERS} pass")
        size = sum(len(name) + len(value) for name, value in headers)
        if size > protocol.MAX_HTTP_HEADER_BYTES:
            # Beside a 6 MB body they would not fit the frame up: the daemon would drop the instance.
            raise BadResponse(
                f"the server's response headers total {size:,} bytes; at most {protocol.MAX_HTTP_HEADER_BYTES:,} pass"
            )
        return answer.status, headers, answer.body

    def request_of(self, frame: Invoke) -> tuple[str, str, list[tuple[str, str]], bytes]:
        try:
            event = json.loads(frame.event) if frame.event else {}
        except ValueError:
            raise BadEvent("the event is not JSON") from None
        if not isinstance(event, dict) or "httpMethod" not in event:
            method, path, query, body = "POST", "/", "", bytes(frame.event)
            pairs: list[tuple[str, str]] = [("content-type", "application/json")]
        else:
            method = str(event.get("httpMethod") or "GET").upper()
            # The gateway's rawPath (percent-encoding kept) is the path as the client sent it.
            raw_path = event.get("rawPath")
            path = raw_path if isinstance(raw_path, str) and raw_path else str(event.get("path") or "/")
            query = raw_query(event)
            pairs = header_pairs(event)
            body = event_body(event)
        if not path.startswith("/") or not TARGET.match(path + query):
            raise BadEvent(f"the event's path {path[:200]!r} (with its query) is not a valid HTTP path")
        if not TOKEN.match(method) or len(method) > 32:
            raise BadEvent(f"the event's httpMethod {method[:40]!r} is not an HTTP method")
        headers = [(n, v) for n, v in pairs if n.lower() not in HOP_BY_HOP and not forged_cff(n)]
        host = next((v for n, v in pairs if n.lower() == "host"), f"{HOST}:{PORT}")
        headers.insert(0, ("Host", host))
        headers += self.cff_headers(frame)
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            headers.append(("Content-Length", str(len(body))))
        for name, value in headers:
            if not TOKEN.match(name) or not FIELD_VALUE.match(value):
                raise BadEvent(f"the event's header {name[:100]!r} is not valid HTTP")
        return method, path + (f"?{query}" if query else ""), headers, body

    def cff_headers(self, frame: Invoke) -> list[tuple[str, str]]:
        identity = self.spec.identity
        headers = [
            ("X-CFF-Request-Id", frame.request_id),
            ("X-CFF-Memory", str(identity.memory_size)),
            ("X-CFF-Timeout", str(identity.timeout)),
            ("X-CFF-Func-Version", identity.version),
            ("X-CFF-Func-Name", identity.func_name),
            ("X-CFF-Project-Id", identity.project_id),
            ("X-CFF-Package", identity.package),
            ("X-CFF-Region", self.spec.region),
        ]
        with self.lock:
            credentials = dict(self.credentials)
        for key, name in CREDENTIAL_HEADERS.items():
            if credentials.get(key):
                headers.append((name, credentials[key]))
        return headers


def forged_cff(name: str) -> bool:
    """Whether a caller's header passes for one of FunctionGraph's X-CFF-*: CGI and WSGI servers map
    `_` and `-` to one name (HTTP_X_CFF_AUTH_TOKEN), so X_Cff_Auth_Token counts too."""
    return name.lower().replace("_", "-").startswith("x-cff-")


class BadResponse(http.client.HTTPException):
    def __init__(self, message: str, error_type: str = "Runtime.InvalidResponse") -> None:
        super().__init__(message)
        self.error_type = error_type


def raw_query(event: dict) -> str:
    raw = event.get("rawQueryString")
    if isinstance(raw, str):
        return raw
    params = event.get("queryStringParameters") or {}
    if not isinstance(params, dict):
        raise BadEvent("queryStringParameters must be an object")
    items = []
    for name, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            items.append((str(name), "" if item is None else str(item)))
    return urllib.parse.urlencode(items)


def header_pairs(event: dict) -> list[tuple[str, str]]:
    multi = event.get("multiValueHeaders")
    source = multi if isinstance(multi, dict) and multi else event.get("headers") or {}
    if not isinstance(source, dict):
        raise BadEvent("headers must be an object")
    pairs = []
    for name, value in source.items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((str(name), str(item)))
    return pairs


def event_body(event: dict) -> bytes:
    body = event.get("body")
    if body is None:
        return b""
    if not isinstance(body, str):
        body = json.dumps(body)
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:
            raise BadEvent("isBase64Encoded is true but the body is not base64") from None
    return body.encode()
