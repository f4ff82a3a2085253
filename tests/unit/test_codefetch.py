"""fgd.codefetch: code from a URL, against HTTP servers on loopback (allowed explicitly in the config)."""

from __future__ import annotations

import contextlib
import gzip
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
import trio

from fgd.codefetch import FetchError, check_address, fetch_to_file
from fgd.codestore import CodeStore
from fgd.config import CodeFetchConfig
from fgd.errors import InvalidParameter, TooLarge
from fgd.packages import PackageLimits

LOOPBACK = CodeFetchConfig(allow=["127.0.0.1/32"], connect_timeout=2, read_timeout=1, timeout=5)


def a_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        # A fixed time: two calls a second apart must give the same bytes.
        entry = zipfile.ZipInfo("index.py", date_time=(2024, 1, 1, 0, 0, 0))
        archive.writestr(entry, "def handler(event, context):\n    return 'fetched'\n")
    return buffer.getvalue()


class Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    seen: list[str] = []
    received: list[dict[str, str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        self.received.append({k.lower(): v for k, v in self.headers.items()})
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
    Handler.received = []
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


# Attacks on the fetch (issue 12 review): hostile URLs and servers, and a patched resolver (no
# test sends a DNS query).


class Resolver:
    """Stands in for trio.socket.getaddrinfo: every name resolves to `addresses`."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        self.asked.append(host)
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in self.addresses
        ]


@pytest.fixture
def no_connection(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Fails the test if the fetch opens any connection."""
    attempts: list[tuple] = []

    async def refuse(host: str, port: int, *args: object, **kwargs: object) -> None:
        attempts.append((host, port))
        raise AssertionError(f"connected to {host}:{port}")

    monkeypatch.setattr("trio.open_tcp_stream", refuse)
    return attempts


@pytest.mark.parametrize(
    "answer",
    [
        ("93.184.216.34", "10.0.0.7"),
        ("10.0.0.7", "93.184.216.34"),
        ("2606:4700::1", "::1"),
        ("93.184.216.34", "169.254.169.254"),
    ],
)
async def test_a_name_resolving_to_public_and_private_addresses_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch, code: CodeStore, no_connection: list, answer: tuple[str, str]
) -> None:
    resolver = Resolver(*answer)
    monkeypatch.setattr("trio.socket.getaddrinfo", resolver)
    with pytest.raises(FetchError, match="loopback, private, link-local"):
        await fetch_to_file("http://code.example.com/pkg.zip", code, CodeFetchConfig())
    assert resolver.asked == ["code.example.com"]
    assert no_connection == []


@pytest.mark.parametrize(
    "address",
    [
        # IPv6 forms that carry an IPv4 address a NAT64 or 6to4 gateway would reach: judged by it.
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::a00:1",
        "64:ff9b:1::a00:1",
        "2002:a9fe:a9fe::1",
        "2002:7f00:1::",
        # IPv4-compatible (deprecated): ::127.0.0.1
        "::7f00:1",
        "::a9fe:a9fe",
    ],
)
def test_ipv6_addresses_embedding_a_private_ipv4_are_refused(address: str) -> None:
    with pytest.raises(FetchError):
        check_address(ipaddress.ip_address(address), CodeFetchConfig())


def test_ipv6_addresses_embedding_a_public_ipv4_pass() -> None:
    check_address(ipaddress.ip_address("64:ff9b::808:808"), CodeFetchConfig())
    check_address(ipaddress.ip_address("2002:808:808::1"), CodeFetchConfig())


async def test_a_redirect_to_a_loopback_address_not_allowed_is_refused(server: str, code: CodeStore) -> None:
    # Only 127.0.0.1 is allowed (the stand-in for the one host the operator lets through).
    port = server.rsplit(":", 1)[1]
    for target in (f"http://127.0.0.2:{port}/x.zip", f"http://[::1]:{port}/x.zip", f"http://0.0.0.0:{port}/x.zip"):
        Handler.routes["/hop"] = (302, {"Location": target}, b"")
        with pytest.raises(FetchError, match="loopback, private, link-local"):
            await fetch_to_file(f"{server}/hop", code, LOOPBACK)
    assert Handler.seen == ["/hop"] * 3


async def test_a_redirect_to_a_name_with_a_loopback_answer_not_allowed_is_refused(
    monkeypatch: pytest.MonkeyPatch, server: str, code: CodeStore
) -> None:
    # "localhost" answers 127.0.0.1 (allowed) and ::1 (not): every answer must pass.
    monkeypatch.setattr("trio.socket.getaddrinfo", Resolver("127.0.0.1", "::1"))
    Handler.routes["/hop"] = (302, {"Location": f"http://localhost:{server.rsplit(':', 1)[1]}/x.zip"}, b"")
    with pytest.raises(FetchError, match="::1"):
        await fetch_to_file(f"{server}/hop", code, LOOPBACK)


async def test_a_server_trickling_a_byte_at_a_time_hits_the_total_timeout(code: CodeStore) -> None:
    def trickle(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(100):
            try:
                conn.sendall(b"P")
            except OSError:
                return
            time.sleep(0.2)

    url = raw_server(trickle)
    config = CodeFetchConfig(allow=["127.0.0.1/32"], connect_timeout=1, read_timeout=1, timeout=2)
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"took over 2 s \(\[code_fetch\] timeout\)"):
        await fetch_to_file(url, code, config)
    assert time.monotonic() - started < 3
    assert list(code.tmp.iterdir()) == []


async def test_a_gzip_content_encoding_is_stored_as_sent_not_decoded(server: str, code: CodeStore) -> None:
    # A 1 KB gzip of 64 MB of zeros: decoding it would be a bomb; the bytes are kept as they came
    # and fail the zip check like any other non-zip.
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))
    Handler.routes["/bomb.zip"] = (200, {"Content-Encoding": "gzip"}, bomb)
    path = await fetch_to_file(f"{server}/bomb.zip", code, LOOPBACK)
    assert path.read_bytes() == bomb
    assert "accept-encoding" not in Handler.received[-1]


async def test_a_huge_answer_header_is_refused(code: CodeStore) -> None:
    def huge(conn: socket.socket) -> None:
        conn.recv(65536)
        with contextlib.suppress(OSError):
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * (4 * 1024 * 1024) + b"\r\n\r\n")

    with pytest.raises(FetchError, match="broken HTTP"):
        await fetch_to_file(raw_server(huge), code, LOOPBACK)


async def test_urls_with_spaces_and_non_ascii_are_sent_percent_encoded(server: str, code: CodeStore) -> None:
    # Was an uncaught h11 error / UnicodeEncodeError: a 500 from the API.
    Handler.routes["/a%20b/%C3%BC.zip?sig=%C3%BC%20x"] = (200, {}, a_zip())
    path = await fetch_to_file(f"{server}/a b/ü.zip?sig=ü x", code, LOOPBACK)
    assert path.read_bytes() == a_zip()
    # Already-encoded URLs are left as they are.
    path = await fetch_to_file(f"{server}/a%20b/%C3%BC.zip?sig=%C3%BC%20x", code, LOOPBACK)
    assert path.read_bytes() == a_zip()


async def test_a_redirect_to_a_raw_non_ascii_location_is_followed_encoded(server: str, code: CodeStore) -> None:
    Handler.routes["/hop"] = (302, {"Location": "/caf\xe9 1.zip"}, b"")
    Handler.routes["/caf%E9%201.zip"] = (200, {}, a_zip())
    path = await fetch_to_file(f"{server}/hop", code, LOOPBACK)
    assert path.read_bytes() == a_zip()


async def test_a_non_ascii_host_is_resolved_and_sent_in_its_idna_form(
    monkeypatch: pytest.MonkeyPatch, server: str, code: CodeStore
) -> None:
    resolver = Resolver("127.0.0.1")
    monkeypatch.setattr("trio.socket.getaddrinfo", resolver)
    port = server.rsplit(":", 1)[1]
    Handler.routes["/x.zip"] = (200, {}, a_zip())
    await fetch_to_file(f"http://bücher.example:{port}/x.zip", code, LOOPBACK)
    assert resolver.asked == ["xn--bcher-kva.example"]
    assert Handler.received[-1]["host"] == f"xn--bcher-kva.example:{port}"


@pytest.mark.parametrize(
    "url", ["http://a\x00b.example/x.zip", "http://" + "a" * 64 + ".example/x.zip", "http://127.0.0.1/" + "a" * 9000]
)
async def test_hosts_that_cannot_be_encoded_and_overlong_urls_are_refused(
    monkeypatch: pytest.MonkeyPatch, url: str, code: CodeStore, no_connection: list
) -> None:
    resolver = Resolver("93.184.216.34")
    monkeypatch.setattr("trio.socket.getaddrinfo", resolver)
    with pytest.raises(FetchError):
        await fetch_to_file(url, code, LOOPBACK)
    assert no_connection == [] and resolver.asked == []


def raw_server(answer) -> str:
    """A one-connection-at-a-time loopback server whose answer is `answer(conn)`; its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def serve() -> None:
        with listener:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    answer(conn)

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/x.zip"


async def test_an_ipv6_host_is_sent_in_brackets_in_the_host_header(code: CodeStore) -> None:
    class V6Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6

    Handler.routes = {"/x.zip": (200, {}, a_zip())}
    Handler.received = []
    httpd = V6Server(("::1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        port = httpd.server_address[1]
        config = CodeFetchConfig(allow=["::1/128"], connect_timeout=2, read_timeout=1, timeout=5)
        path = await fetch_to_file(f"http://[::1]:{port}/x.zip", code, config)
        assert path.read_bytes() == a_zip()
        assert Handler.received[-1]["host"] == f"[::1]:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_a_public_host_redirecting_to_loopback_is_refused_with_the_default_settings(
    monkeypatch: pytest.MonkeyPatch, server: str, code: CodeStore
) -> None:
    # "files.example.com" resolves to a public address (patched resolver); the connection to it is
    # routed to the loopback test server, which plays the public host and redirects to 127.0.0.1.
    port = int(server.rsplit(":", 1)[1])
    monkeypatch.setattr("trio.socket.getaddrinfo", Resolver("93.184.216.34"))
    real_open = trio.open_tcp_stream
    opened: list[tuple[str, int]] = []

    async def to_the_test_server(host: str, _port: int, **kwargs: object) -> trio.abc.Stream:
        opened.append((host, _port))
        assert host == "93.184.216.34", "only the checked public address is connected to"
        return await real_open("127.0.0.1", port)

    monkeypatch.setattr("trio.open_tcp_stream", to_the_test_server)
    Handler.routes["/pkg.zip"] = (302, {"Location": f"http://127.0.0.1:{port}/internal"}, b"")
    with pytest.raises(FetchError, match=r"127\.0\.0\.1, a loopback"):
        await fetch_to_file("http://files.example.com/pkg.zip", code, CodeFetchConfig())
    assert opened == [("93.184.216.34", 80)]
    assert Handler.seen == ["/pkg.zip"]


async def test_printable_ascii_in_a_url_reaches_the_server_unchanged(server: str, code: CodeStore) -> None:
    # A presigned URL's signature covers its characters: only what HTTP cannot carry is encoded.
    target = "/p|{x}^`\\.zip?Signature=a%2Bb%3D&X=[1]&q=\"'<>"
    Handler.routes[target] = (200, {}, a_zip())
    path = await fetch_to_file(server + target, code, LOOPBACK)
    assert path.read_bytes() == a_zip()
    assert Handler.seen == [target]


async def test_the_host_header_names_a_port_other_than_the_schemes_default(
    monkeypatch: pytest.MonkeyPatch, server: str, code: CodeStore
) -> None:
    port = int(server.rsplit(":", 1)[1])
    real_open = trio.open_tcp_stream

    async def to_the_test_server(host: str, _port: int, **kwargs: object) -> trio.abc.Stream:
        return await real_open("127.0.0.1", port)

    monkeypatch.setattr("trio.open_tcp_stream", to_the_test_server)
    Handler.routes["/x.zip"] = (200, {}, a_zip())
    await fetch_to_file("http://127.0.0.1:443/x.zip", code, LOOPBACK)
    await fetch_to_file("http://127.0.0.1:80/x.zip", code, LOOPBACK)
    assert [r["host"] for r in Handler.received] == ["127.0.0.1:443", "127.0.0.1"]
