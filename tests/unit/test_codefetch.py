"""fgd.codefetch: code from a URL, against HTTP servers on loopback (allowed explicitly in the config)."""

from __future__ import annotations

import http.server
import io
import ipaddress
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fgd.codefetch import FetchError, check_address, fetch_to_file
from fgd.codestore import CodeStore
from fgd.config import CodeFetchConfig
from fgd.errors import InvalidParameter, TooLarge
from fgd.packages import PackageLimits

LOOPBACK = CodeFetchConfig(allow=["127.0.0.1/32"], connect_timeout=2, read_timeout=1, timeout=5)


def a_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.py", "def handler(event, context):\n    return 'fetched'\n")
    return buffer.getvalue()


class Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"PK")
            self.wfile.flush()
            time.sleep(3)
            return
        status, headers, body = self.routes.get(self.path, (404, {}, b"not found"))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Handler.routes = {}
    Handler.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def code(tmp_path: Path) -> CodeStore:
    return CodeStore(tmp_path, PackageLimits(max_bytes=1024 * 1024))


async def test_fetches_the_zip_into_a_staging_file(server: str, code: CodeStore) -> None:
    data = a_zip()
    Handler.routes["/pkg.zip?sig=1"] = (200, {"Content-Type": "application/zip"}, data)
    path = await fetch_to_file(f"{server}/pkg.zip?sig=1", code, LOOPBACK)
    assert path.read_bytes() == data
    assert path.parent == code.tmp


async def test_follows_a_redirect_and_checks_its_target(server: str, code: CodeStore) -> None:
    Handler.routes["/old"] = (302, {"Location": "/new"}, b"")
    Handler.routes["/new"] = (200, {}, a_zip())
    path = await fetch_to_file(f"{server}/old", code, LOOPBACK)
    assert path.read_bytes() == a_zip()
    # A redirect to the metadata service is refused by the address check, before any connection.
    Handler.routes["/meta"] = (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"")
    with pytest.raises(FetchError, match=r"169\.254\.169\.254"):
        await fetch_to_file(f"{server}/meta", code, LOOPBACK)


async def test_redirect_loops_end(server: str, code: CodeStore) -> None:
    Handler.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    with pytest.raises(FetchError, match="redirected more than"):
        await fetch_to_file(f"{server}/loop", code, LOOPBACK)


async def test_http_errors_name_the_status(server: str, code: CodeStore) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        await fetch_to_file(f"{server}/missing.zip", code, LOOPBACK)


async def test_too_large_by_length_and_by_stream(server: str, code: CodeStore) -> None:
    big = b"x" * (3 * 1024 * 1024)
    Handler.routes["/big"] = (200, {}, big)
    with pytest.raises(TooLarge):
        await fetch_to_file(f"{server}/big", code, LOOPBACK)
    # A chunked answer (no length announced) is cut off as it streams.
    Handler.routes["/chunky"] = (200, {"Transfer-Encoding": "chunked"}, b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big))
    with pytest.raises(TooLarge):
        await fetch_to_file(f"{server}/chunky", code, LOOPBACK)
    assert list(code.tmp.iterdir()) == []


async def test_a_stalled_server_times_out(server: str, code: CodeStore) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError, match="sent nothing for 1 s"):
        await fetch_to_file(f"{server}/slow", code, LOOPBACK)
    assert time.monotonic() - started < 3
    assert list(code.tmp.iterdir()) == []


async def test_loopback_is_refused_by_default_without_connecting(code: CodeStore) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        with pytest.raises(FetchError, match="loopback, private, link-local"):
            await fetch_to_file(f"http://127.0.0.1:{port}/x.zip", code, CodeFetchConfig())
        with pytest.raises(BlockingIOError):
            listener.accept()


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x.zip",
        "file:///etc/passwd",
        "http:///nohost",
        "http://user:pw@127.0.0.1/x.zip",
        "http://127.0.0.1:99999/x.zip",
        "gopher://127.0.0.1/",
    ],
)
async def test_bad_urls_are_refused(url: str, code: CodeStore) -> None:
    with pytest.raises(FetchError):
        await fetch_to_file(url, code, LOOPBACK)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(FetchError):
        check_address(ipaddress.ip_address(address), CodeFetchConfig())


def test_public_and_allowed_addresses_pass() -> None:
    check_address(ipaddress.ip_address("8.8.8.8"), CodeFetchConfig())
    check_address(ipaddress.ip_address("192.168.1.5"), CodeFetchConfig(allow=["192.168.1.0/24"]))


async def test_turned_off(code: CodeStore) -> None:
    with pytest.raises(InvalidParameter, match="turned off"):
        await fetch_to_file("http://127.0.0.1/x.zip", code, CodeFetchConfig(enabled=False))
