"""A hostile client of the node (with or without the admin token) and a hostile package author.

Each test sends what an attacker would and asserts what the daemon answers; after each,
the daemon still serves. Holes found this way and fixed (issue 9) are marked "was: ...".
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fgd.web.gateway import to_http
from tests.conftest import RUNTIME, Api, Daemon, b64, make_zip, unique_name

ECHO = "def handler(event, context):\n    return event\n"


@pytest.fixture(scope="module")
def echo(api: Api) -> str:
    name = unique_name("atk")
    api.deploy(ECHO, name=name)
    return name


def healthy(daemon: Daemon) -> bool:
    return httpx.get(f"{daemon.url}/healthz", timeout=5).status_code == 200


def raw_exchange(port: int, request: bytes, wait: float = 3.0) -> bytes:
    """Send `request` as is on a new connection; everything the daemon answers until it closes or pauses."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        sock.settimeout(wait)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
    return answer


# -- JSON inside JSON strings, UTF-8, header values ---------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def test_deeply_nested_json_inside_user_data_string_is_400(api: Api, echo: str) -> None:
    # was: 500 (json.loads raised RecursionError, which only ValueError was caught around)
    response = api.http.put(f"/functions/{echo}/config", json={"user_data": DEEP})
    assert response.status_code == 400, response.text
    assert "user_data" in response.json()["error_msg"]
    assert api.http.get(f"/functions/{echo}/config").json()["user_data"] == ""


def test_deeply_nested_json_inside_destination_param_string_is_400(api: Api, echo: str) -> None:
    # was: 500, as above, in destination_config.<condition>.param given as a JSON string
    body = {"destination_config": {"on_failure": {"destination": "WEBHOOK", "param": DEEP}}}
    response = api.http.put(f"/functions/{echo}/async-invoke-config", json=body)
    assert response.status_code == 400, response.text
    assert "destination_config.on_failure.param" in response.json()["error_msg"]


@pytest.mark.parametrize("route", ["invocations", "invocations-async"])
def test_invalid_utf8_inside_a_json_string_event_is_400(api: Api, echo: str, route: str) -> None:
    # was: 500 (msgspec reports invalid UTF-8 in a string as UnicodeDecodeError, not DecodeError)
    response = api.http.post(f"/functions/{echo}/{route}", content=b'{"a": "\xff"}')
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "FSS.0400"


def test_invalid_utf8_inside_a_json_string_api_body_is_400(api: Api, echo: str) -> None:
    response = api.http.put(f"/functions/{echo}/config", content=b'{"description": "\xff"}')
    assert response.status_code == 400, response.text
    assert "not valid JSON" in response.json()["error_msg"]


def test_instance_memory_header_with_a_non_ascii_digit_is_refused(api: Api) -> None:
    # was: 500 ('²'.isdigit() is True, int('²') raises)
    name = unique_name("atk")
    api.deploy(ECHO, name=name, enable_dynamic_memory=True)
    response = api.invoke(name, {}, headers={"X-Cff-Instance-Memory": "²".encode()})
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "FSS.0406"
    assert api.invoke(name, {"ok": 1}, headers={"X-Cff-Instance-Memory": "128"}).json() == {"ok": 1}


@pytest.mark.parametrize("authenticated", [True, False])
def test_non_utf8_content_type_on_the_api_is_not_a_500(api: Api, echo: str, authenticated: bool) -> None:
    # was: 500 and the connection closed, for anyone (the front decoded Content-Type as UTF-8)
    headers = {"Content-Type": b"\xff\xfe"}
    client = api.http if authenticated else httpx.Client(base_url=str(api.http.base_url))
    response = client.put(f"/functions/{echo}/config", content=b"{}", headers=headers)
    assert response.status_code == (200 if authenticated else 401), response.text


def test_gateway_result_with_invalid_utf8_is_a_bad_response_not_an_exception() -> None:
    # was: UnicodeDecodeError out of the gateway app (a 500 from hypercorn, a traceback in the log)
    with pytest.raises(ValueError, match="not an APIG response"):
        to_http(b'{"statusCode": 200, "body": "\xff"}')


# -- raw code uploads -----------------------------------------------------------------------------


def test_raw_code_upload_with_an_overlong_code_filename_is_400(api: Api, echo: str) -> None:
    # was: accepted and stored (5,000 characters and a NUL); the JSON form allows 128
    before = api.http.get(f"/functions/{echo}/config").json()
    response = api.http.put(
        f"/functions/{echo}/code",
        params={"code_filename": "a" * 5000 + "\0"},
        content=make_zip({"index.py": ECHO}),
        headers={"Content-Type": "application/zip"},
    )
    assert response.status_code == 400, response.text
    assert "code_filename" in response.json()["error_msg"]
    after = api.http.get(f"/functions/{echo}/config").json()
    assert after["code_filename"] == before["code_filename"]
    assert after["digest"] == before["digest"]


def _zip_with_bad_utf8_name(where: str) -> bytes:
    """A zip whose second entry's name, flagged UTF-8 (bit 11), is not UTF-8, in the central
    directory or only in the local header."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.py", ECHO)
        archive.writestr("xx.py", "X = 1\n")
    data = bytearray(buffer.getvalue())
    if where == "central":
        name_at = data.rfind(b"xx.py")
        header = data.rfind(b"PK\x01\x02", 0, name_at)
        flags_at = header + 8
    else:
        name_at = data.find(b"xx.py")
        header = data.rfind(b"PK\x03\x04", 0, name_at)
        flags_at = header + 6
    data[name_at : name_at + 2] = b"\xff\xfe"
    struct.pack_into("<H", data, flags_at, struct.unpack_from("<H", data, flags_at)[0] | 0x800)
    return bytes(data)


@pytest.mark.parametrize("where", ["central", "local"])
@pytest.mark.parametrize("form", ["json", "raw"])
def test_zip_with_a_name_flagged_utf8_that_is_not_is_refused(api: Api, echo: str, where: str, form: str) -> None:
    # was: 500 (zipfile raises UnicodeDecodeError, which the package checks did not catch)
    package = _zip_with_bad_utf8_name(where)
    before = api.http.get(f"/functions/{echo}/config").json()["digest"]
    if form == "json":
        response = api.http.put(
            f"/functions/{echo}/code", json={"code_type": "zip", "func_code": {"file": b64(package)}}
        )
    else:
        response = api.http.put(f"/functions/{echo}/code", content=package, headers={"Content-Type": "application/zip"})
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "FSS.0400"
    assert api.http.get(f"/functions/{echo}/config").json()["digest"] == before
    assert not [p for p in os.listdir(api.daemon.state_dir / "tmp") if p.startswith(("upload-", "tree-"))]


# -- refused correctly already (kept so they stay refused) ----------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcde",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"GET /x?a=\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    ],
    ids=["bad-chunk-size", "two-lengths", "huge-length", "non-ascii-target", "space-in-name"],
)
@pytest.mark.parametrize("listener", ["api", "gateway"])
def test_malformed_requests_are_400_and_closed(daemon: Daemon, request_bytes: bytes, listener: str) -> None:
    port = daemon.port if listener == "api" else daemon.gateway_port
    answer = raw_exchange(port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert healthy(daemon)


def test_gateway_head_answers_no_body_and_the_pipelined_request_after_it_is_served(api: Api) -> None:
    name = unique_name("atk")
    api.deploy("def handler(event, context):\n    return {'statusCode': 200, 'body': 'x' * 100}\n", name=name)
    path = f"/{name}"
    assert api.route(name, path).status_code == 201
    one = f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    two = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    answer = raw_exchange(api.daemon.gateway_port, one + two)
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and b"content-length: 100" in first
    # The HEAD answer carries no body: the next bytes are the second response's status line.
    assert rest.startswith(b"HTTP/1.1 200"), rest[:100]
    assert rest.endswith(b"x" * 100)


def test_gateway_does_not_proxy_absolute_form_or_connect(api: Api) -> None:
    answer = raw_exchange(api.daemon.gateway_port, b"GET http://127.0.0.2/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404"), answer[:200]
    # CONNECT is refused by the HTTP server itself (tests/unit/test_http_attacks.py).
    answer = raw_exchange(api.daemon.gateway_port, b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 501"), answer[:200]


@pytest.mark.parametrize(
    "ref",
    [
        "urn:fss:local:default:function:default:%s:%%00",
        "urn:fss:local:other:function:default:%s",
        "urn:fss:elsewhere:default:function:default:%s",
        "urn:fss:local:default:function:default:%s:latest:extra",
        "a:b:%s",
    ],
)
def test_function_references_with_odd_qualifiers_are_refused(api: Api, echo: str, ref: str) -> None:
    response = api.http.get(f"/functions/{ref % echo}/config")
    assert response.status_code in (400, 404), response.text
    assert response.json()["error_code"] in ("FSS.0400", "FSS.0404")


# -- state read back at start ---------------------------------------------------------------------


def _start_with_one_function_and_dependency(daemon: Daemon) -> tuple[Api, str]:
    daemon.start()
    api = Api(daemon)
    name = unique_name("atk")
    api.deploy(ECHO, name=name)
    body = {"name": "dep", "runtime": RUNTIME, "depend_file": b64(make_zip({"dep.py": "X = 1\n"}))}
    assert api.http.post("/dependencies/version", json=body).status_code == 200
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    return api, name


def test_hand_edited_dependency_row_does_not_stop_the_daemon_starting(fresh_daemon: Daemon) -> None:
    # was: every start failed with msgspec.ValidationError out of Store() (a crash loop)
    api, name = _start_with_one_function_and_dependency(fresh_daemon)
    with sqlite3.connect(fresh_daemon.state_dir / "fgd.db") as db:
        db.execute("UPDATE dependency_versions SET record = '{}'")
    fresh_daemon.start()
    api = Api(fresh_daemon)
    assert api.invoke(name, {"still": "served"}).json() == {"still": "served"}
    assert api.http.get("/dependencies").json()["count"] == 0
    assert "ignoring stored dependency version" in fresh_daemon.log()


def test_stored_code_reference_that_is_not_a_sha256_is_ignored(fresh_daemon: Daemon) -> None:
    # was: used as a path (code/<sha256>): '../../../../etc' was mounted as the function's code
    api, name = _start_with_one_function_and_dependency(fresh_daemon)
    with sqlite3.connect(fresh_daemon.state_dir / "fgd.db") as db:
        (record,) = db.execute("SELECT record FROM functions").fetchone()
        forged = record.replace(b'"sha256":"', b'"sha256":"../../../../etc","x":"')
        db.execute("UPDATE functions SET record = ?", (forged,))
    fresh_daemon.start()
    api = Api(fresh_daemon)
    assert api.http.get(f"/functions/{name}/config").status_code == 404
    assert "ignoring stored function" in fresh_daemon.log()
    assert healthy(fresh_daemon)


# -- the config file ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("[storage]\ngc_interval = -1.0\n", "storage.gc_interval"),  # was: a traceback just after start
        ("[storage]\ngc_interval = nan\n", "storage.gc_interval"),
        ("[server]\nshutdown_grace = -5.0\n", "server.shutdown_grace"),  # was: a traceback on SIGTERM
        ("[instances]\nspawn_timeout = nan\n", "instances.spawn_timeout"),  # was: a traceback at start
        ("[async_invoke]\nconcurrency = 0\n", "async_invoke.concurrency"),  # was: async events never ran
        ("[scheduler]\nmax_wait = -1.0\n", "scheduler.max_wait"),
    ],
)
def test_hostile_config_values_stop_the_daemon_with_a_message_not_a_traceback(
    tmp_path: Path, content: str, field: str
) -> None:
    config = tmp_path / "fgd.toml"
    config.write_text(content)
    argv = [sys.executable, "-m", "fgd", "serve", "--state-dir", str(tmp_path / "state")]
    argv += ["--listen", "127.0.0.1:0", "--config", str(config)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert field in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


# -- HTTP/2 ---------------------------------------------------------------------------------------

H2C_UPGRADE = (
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
)


def _h2_zero_window_streams(path: str) -> bytes:
    """HTTP/2 with prior knowledge: a client that opens ten streams and grants no flow-control window."""
    import h2.config
    import h2.connection
    import h2.settings

    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    connection.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    for stream in range(1, 21, 2):
        headers = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")]
        connection.send_headers(stream, headers, end_stream=True)
    return connection.data_to_send()


@pytest.mark.parametrize("listener", ["api", "gateway"])
def test_listeners_speak_http1_only(api: Api, listener: str) -> None:
    # was: hypercorn switched to HTTP/2 on the preface or `Upgrade: h2c`; HTTP/2 flow control is
    # outside send_timeout, so 20 unauthenticated connections with a zero window held 1.2 GB of
    # gateway responses in the daemon for as long as they stayed open
    name = unique_name("atk")
    api.deploy("def handler(event, context):\n    return {'statusCode': 200, 'body': 'x' * 1000}\n", name=name)
    assert api.route(name, f"/{name}").status_code == 201
    port = api.daemon.port if listener == "api" else api.daemon.gateway_port
    answer = raw_exchange(port, _h2_zero_window_streams(f"/{name}"), wait=5)
    # An HTTP/1.1 400 to "PRI * HTTP/2.0" ("*" is a target of OPTIONS only), and close: no SETTINGS frame.
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    assert answer.count(b"HTTP/1.1 4") == 1 and b"connection: close" in answer
    upgraded = raw_exchange(port, H2C_UPGRADE)
    assert upgraded.startswith(b"HTTP/1.1 200" if listener == "api" else b"HTTP/1.1 404"), upgraded[:100]
    assert b" 101 " not in upgraded


# -- packages of many directories -----------------------------------------------------------------


def _zip_of_empty_directories(count: int) -> bytes:
    """index.py and `count` directory entries, written by hand (zipfile takes seconds for this many)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.py", ECHO)
    head = buffer.getvalue()
    end = head.rfind(b"PK\x05\x06")
    first_central = head.rfind(b"PK\x01\x02", 0, end)
    local, central = [head[:first_central]], [head[first_central:end]]
    offset = first_central
    for number in range(count):
        name = f"{number:x}/".encode()
        header = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0) + name
        central.append(
            struct.pack(
                "<4s6H3L5H2L",
                b"PK\x01\x02",
                0x314,
                20,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                len(name),
                0,
                0,
                0,
                0,
                0o40755 << 16,
                offset,
            )
            + name
        )
        local.append(header)
        offset += len(header)
    directory = b"".join(central)
    # The entry count fields say 65535 (zip64's "see elsewhere"); zipfile walks the directory by its size.
    end_record = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, len(directory), offset, 0)
    return b"".join(local) + directory + end_record


def _upload_raw(api: Api, name: str, package: bytes) -> httpx.Response:
    return api.http.put(f"/functions/{name}/code", content=package, headers={"Content-Type": "application/zip"})


@pytest.mark.parametrize(
    ("package", "words"),
    [
        # was: accepted; max_files counted files only, and 200,000 empty directories (16 MB) made 200,000 inodes
        (lambda: _zip_of_empty_directories(40_000), "over 30,000 directories"),
        # directories implied by paths count too: 1,000 files 40 levels deep would make 40,000
        (lambda: make_zip({f"{n}/" + "d/" * 39 + "f.py": "" for n in range(1000)}), "over 30,000 directories"),
        # was: zipfile built an object per entry first (a million entries: 433 MB, 7 s of the daemon)
        (lambda: _zip_of_empty_directories(70_000), "over 60,000 entries"),
    ],
    ids=["directory-entries", "implied-directories", "central-directory"],
)
@pytest.mark.slow  # about 10 s in all: up to 30,000 directories are made before the refusal
def test_packages_of_too_many_directories_are_refused(api: Api, echo: str, package, words: str) -> None:
    before = api.http.get(f"/functions/{echo}/config").json()["digest"]
    response = _upload_raw(api, echo, package())
    assert response.status_code == 400, response.text
    assert words in response.json()["error_msg"]
    assert api.http.get(f"/functions/{echo}/config").json()["digest"] == before
    assert not [p for p in os.listdir(api.daemon.state_dir / "tmp") if p.startswith(("upload-", "tree-"))]


def test_package_of_many_directories_within_the_limit_is_accepted(api: Api) -> None:
    name = unique_name("atk")
    api.deploy(ECHO, name=name)
    response = _upload_raw(api, name, _zip_of_empty_directories(29_000))
    assert response.status_code == 200, response.text
    assert api.invoke(name, {"dirs": 29_000}).json() == {"dirs": 29_000}


# -- bodies held in memory ------------------------------------------------------------------------

LENGTH = "def handler(event, context):\n    return {'statusCode': 200, 'body': str(len(event.get('body', '')))}\n"


def _post_head(path: str, length: int, token: str | None = None) -> bytes:
    auth = f"X-Auth-Token: {token}\r\n" if token else ""
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Length: {length}\r\n\r\n".encode()


@pytest.fixture
def small_body_budget(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon whose listeners may each hold 1,000,000 bytes of bodies while they arrive."""
    daemon = Daemon(tmp_path / "state", "[server]\nmax_body_memory = 1000000\n")
    daemon.config_path.write_text(
        daemon.config_path.read_text().replace("[gateway]\n", "[gateway]\nmax_body_memory = 1000000\n")
    )
    daemon.start()
    yield daemon
    daemon.stop(signal.SIGKILL)


@pytest.mark.parametrize("listener", ["gateway", "api"])
def test_bodies_held_while_arriving_are_bounded_per_listener(small_body_budget: Daemon, listener: str) -> None:
    # was: no bound but the connection cap: each connection held a whole body while it arrived
    # (4 MB on the gateway, no token needed); 150 slow clients held 620 MB of the daemon's memory
    daemon = small_body_budget
    api = Api(daemon)
    name = unique_name("atk")
    api.deploy(LENGTH, name=name)
    if listener == "gateway":
        assert api.route(name, f"/{name}").status_code == 201
        port, path, token = daemon.gateway_port, f"/{name}", None
    else:
        port, path, token = daemon.port, f"/v2/default/fgs/functions/{name}/invocations", daemon.token
    body = b'{"body": "' + b"x" * 599_980 + b'"}'
    cut = len(body) - 10
    with socket.create_connection(("127.0.0.1", port)) as holder:
        holder.sendall(_post_head(path, len(body), token) + body[:cut])
        time.sleep(1)  # the daemon has read those 600 KB: they are what the listener holds
        # A second body that would take the listener over its budget is refused at once.
        refused = raw_exchange(port, _post_head(path, len(body), token) + body[:cut], wait=3)
        assert refused.startswith(b"HTTP/1.1 503"), refused[:200]
        assert b"FSS.0503" in refused
        assert healthy(daemon)
        holder.sendall(body[cut:])
        holder.settimeout(10)
        answer = holder.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    # Once the first body is whole, its bytes are the listener's again.
    again = raw_exchange(port, _post_head(path, len(body), token) + body, wait=10)
    assert again.startswith(b"HTTP/1.1 200"), again[:200]


def test_gateway_responses_waiting_for_their_client_are_bounded(small_body_budget: Daemon) -> None:
    # was: each client that read nothing held its response in the daemon for send_timeout
    # (100 such clients of a route answering 3 MB held 650 MB)
    api = Api(small_body_budget)
    name = unique_name("atk")
    api.deploy("def handler(event, context):\n    return {'statusCode': 200, 'body': 'x' * 900_000}\n", name=name)
    assert api.route(name, f"/{name}").status_code == 201
    request = f"GET /{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    with socket.socket() as reader_of_nothing:
        reader_of_nothing.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader_of_nothing.connect(("127.0.0.1", small_body_budget.gateway_port))
        reader_of_nothing.sendall(request)
        time.sleep(2)  # its answer is being sent, and does not fit in the socket's buffers
        refused = raw_exchange(small_body_budget.gateway_port, request, wait=5)
        assert refused.startswith(b"HTTP/1.1 503"), refused[:200]
        assert b"FSS.0503" in refused
    # Gone, its client releases what it held.
    time.sleep(0.5)
    answer = raw_exchange(small_body_budget.gateway_port, request, wait=10)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"x" * 1000), answer[:200]


# -- half-close and Expect: 100-continue (answered correctly already) ----------------------------


@pytest.mark.parametrize("listener", ["api", "gateway"])
def test_whole_request_then_half_close_still_gets_its_answer(api: Api, listener: str) -> None:
    name = unique_name("atk")
    api.deploy("def handler(event, context):\n    return {'statusCode': 200, 'body': 'answered'}\n", name=name)
    assert api.route(name, f"/{name}").status_code == 201
    if listener == "api":
        port, path, token = api.daemon.port, f"/v2/default/fgs/functions/{name}/invocations", api.daemon.token
    else:
        port, path, token = api.daemon.gateway_port, f"/{name}", None
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_post_head(path, 2, token) + b"{}")
        sock.shutdown(socket.SHUT_WR)  # nothing more to send; the answer is still wanted
        sock.settimeout(10)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"answered" in answer


def test_expect_100_continue_gets_100_then_the_answer(api: Api, echo: str) -> None:
    head = (
        f"POST /v2/default/fgs/functions/{echo}/invocations HTTP/1.1\r\nHost: x\r\n"
        f"X-Auth-Token: {api.daemon.token}\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: 8\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", api.daemon.port)) as sock:
        sock.sendall(head)
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 100")
        sock.sendall(b'{"a": 1}')
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert answer.endswith(b'{"a": 1}') or answer.endswith(b'{"a":1}')


# -- central directories zipfile cannot read (found by mutating a zip's bytes) --------------------


def _mutated_central(offset: int, value: bytes, name: bytes = b"xx.py") -> bytes:
    """A small zip with `value` written at `offset` of the central directory entry of `name`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.py", ECHO)
        archive.writestr("xx.py", "X = 1\n")
    data = bytearray(buffer.getvalue())
    header = data.rfind(b"PK\x01\x02", 0, data.rfind(b"xx.py"))
    data[header + offset : header + offset + len(value)] = value
    return bytes(data)


@pytest.mark.parametrize(
    "package",
    [
        _mutated_central(6, b"\xff"),  # extract version 25.5: zipfile raised NotImplementedError
        _mutated_central(8, b"\x20\x00"),  # flag bit 5, compressed patched data: NotImplementedError
        _mutated_central(8, b"\x40\x00"),  # flag bit 6, strong encryption: NotImplementedError
        _mutated_central(46, b"\x00"),  # a name starting with NUL (zipfile cuts it: ''): IndexError
    ],
    ids=["zip-version", "patched-data", "strong-encryption", "nul-name"],
)
def test_zip_that_zipfile_cannot_read_is_refused_not_a_500(api: Api, echo: str, package: bytes) -> None:
    # was: 500 (exceptions other than BadZipFile out of zipfile, or out of ZipInfo.is_dir)
    response = api.http.put(f"/functions/{echo}/code", json={"code_type": "zip", "func_code": {"file": b64(package)}})
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "FSS.0400"
    assert healthy(api.daemon)


def test_links_planted_in_the_state_dir_are_not_followed_at_start(fresh_daemon: Daemon, tmp_path: Path) -> None:
    # Leftovers of an interrupted removal (tmp/trash-*) are removed at start: a link put there,
    # or inside one, must not lead the removal (as root) out of the state dir.
    fresh_daemon.start()
    assert fresh_daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "keep.txt").write_text("keep")
    (outside / "sub" / "keep.txt").write_text("keep")
    os.chmod(outside / "sub", 0o555)
    tmp = fresh_daemon.state_dir / "tmp"
    os.symlink(outside, tmp / "trash-link")
    (tmp / "trash-dir").mkdir()
    os.symlink(outside, tmp / "trash-dir" / "inner")
    os.symlink(outside / "sub", tmp / "trash-dir" / "sub")
    fresh_daemon.start()
    assert healthy(fresh_daemon)
    assert (outside / "keep.txt").read_text() == "keep"
    assert (outside / "sub" / "keep.txt").read_text() == "keep"
    assert os.stat(outside / "sub").st_mode & 0o777 == 0o555  # not made writable through the link
    assert not (tmp / "trash-dir").exists()


# -- the asynchronous queue -----------------------------------------------------------------------


@pytest.fixture
def small_queue(tmp_path: Path) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path / "state", "[async_invoke]\nmax_queued = 5\nconcurrency = 1\n")
    daemon.start()
    yield daemon
    daemon.stop(signal.SIGKILL)


def test_async_queue_is_bounded_for_clients_and_timers(small_queue: Daemon) -> None:
    # was: no bound: any token holder (or 1,000 timers of @every 1s, 1,000 events a second) grew
    # the waiting queue, and fgd.db with it, until the disk was full
    api = Api(small_queue)
    name = unique_name("atk")
    api.deploy("import time\ndef handler(event, context):\n    time.sleep(5)\n", name=name, timeout=10)
    codes = [api.http.post(f"/functions/{name}/invocations-async", json={}).status_code for _ in range(12)]
    assert 429 in codes, codes
    assert codes.count(202) <= 6, codes  # max_queued, plus one counted before the last refresh
    refused = api.http.post(f"/functions/{name}/invocations-async", json={})
    assert refused.status_code == 429 and refused.json()["error_code"] == "FSS.0429"
    queued = api.http.get(f"/functions/{name}/async-invocations", params={"limit": 1000}).json()["count"]
    assert queued == codes.count(202)
    timer = {
        "trigger_type_code": "TIMER",
        "event_data": {"name": "t", "schedule_type": "Cron", "schedule": "@every 1s"},
    }
    assert api.http.post(f"/triggers/{name}", json=timer).status_code == 201
    time.sleep(2.5)
    assert "fire skipped, the asynchronous queue is full" in small_queue.log()
    assert api.http.get(f"/functions/{name}/async-invocations", params={"limit": 1000}).json()["count"] == queued
