"""Code from a URL: `code_type: "obs"` with `code_url`, fetched by the daemon.

FunctionGraph reads such code from OBS; on a node any http(s) URL serves. The
fetch is a request the daemon makes on a user's behalf, so it is built like a
hostile upload going the other way:

- The destination is checked before any packet is sent: the name is resolved
  once, every address it resolves to must be public (not loopback, link-local
  such as a cloud metadata service, private, multicast or reserved) unless the
  operator lists it in `[code_fetch] allow`, and the connection goes to the
  checked address (a second lookup cannot point it elsewhere). Each redirect
  is checked the same way.
- The body streams into a staging file through the same size limit as a raw
  upload; the package rules are then applied to the file as for any upload.
- Connecting, each read and the whole fetch have time limits.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
import string
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import h11
import trio

from fgd.codestore import CodeStore
from fgd.config import CodeFetchConfig
from fgd.errors import InvalidParameter, TooLarge
from fgd.web.uploads import raw_limit, receive_to_file

MAX_REDIRECTS = 5
# Longer URLs are refused before anything is sent (a presigned OBS URL is well under 2 KB).
MAX_URL = 8192
# Characters a request target keeps as they are: every printable ASCII one, "%" included (escapes
# already made; a presigned URL's signature must reach the server unchanged). Only space, controls
# and non-ASCII, which HTTP cannot carry, are percent-encoded (UTF-8), as browsers do.
TARGET_SAFE = string.punctuation
HOST_NAME = re.compile(r"[A-Za-z0-9._-]+\Z")
READ_SIZE = 256 * 1024
USER_AGENT = b"fgd-code-fetch"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# IPv6 prefixes that carry an IPv4 address a gateway (NAT64, 6to4) or the kernel (IPv4-compatible)
# would reach: the IPv4 address is the one judged.
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# RFC 8215 local-use NAT64: the network's own translators, never public.
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


class FetchError(InvalidParameter):
    """The code could not be fetched; the message says why, naming the URL."""


def _is_public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address in LOCAL_NAT64:
            return False
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            address = embedded
    return address.is_global and not address.is_multicast


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64 or address in IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def check_address(address: Address, config: CodeFetchConfig) -> None:
    if any(address in ipaddress.ip_network(net, strict=False) for net in config.allow):
        return
    if not _is_public(address):
        raise FetchError(
            f"code_url leads to {address}, a loopback, private, link-local or reserved address; the daemon "
            "fetches code only from public addresses unless the operator allows the address in "
            "[code_fetch] allow"
        )


def _split(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target), host and target in ASCII (IDNA, percent-encoding)."""
    if len(url) > MAX_URL:
        raise FetchError(f"code_url is {len(url):,} characters long; at most {MAX_URL:,} are accepted")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"code_url must be an http or https URL; got {url[:200]!r}")
    if not parts.hostname:
        raise FetchError(f"code_url has no host: {url[:200]!r}")
    if parts.username or parts.password:
        raise FetchError("code_url must not carry a user name or password")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise FetchError(f"code_url has an invalid port: {url[:200]!r}") from None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return parts.scheme, _ascii_host(parts.hostname), port, quote(target, safe=TARGET_SAFE)


def _ascii_host(host: str) -> str:
    """The host as DNS and the Host header take it: an address, or a name in its IDNA form."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    try:
        encoded = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise FetchError(f"the host of code_url is not a valid name: {host[:200]!r}") from None
    if not HOST_NAME.match(encoded):
        raise FetchError(f"the host of code_url is not a valid name: {host[:200]!r}")
    return encoded


def _location(value: bytes) -> str:
    """A Location header as a URL: UTF-8 when it is, else its raw bytes percent-encoded."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return quote(value, safe=TARGET_SAFE)


async def _resolve(host: str, port: int, config: CodeFetchConfig) -> Address:
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        check_address(literal, config)
        return literal
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    except OSError as exc:
        raise FetchError(f"cannot resolve the host of code_url ({host}): {exc}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise FetchError(f"the host of code_url ({host}) has no address")
    # Every address must pass: the connection may use any of them.
    for address in addresses:
        check_address(address, config)
    return addresses[0]


class _Connection:
    def __init__(self, stream: trio.abc.Stream, config: CodeFetchConfig, url: str) -> None:
        self.stream = stream
        self.config = config
        self.url = url
        self.h11 = h11.Connection(h11.CLIENT)

    async def send(self, event: h11.Event) -> None:
        try:
            data = self.h11.send(event)
        except h11.LocalProtocolError as exc:
            raise FetchError(f"code_url cannot be requested: {exc}") from None
        if data:
            await self.stream.send_all(data)

    async def next_event(self) -> h11.Event:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise FetchError(f"the server of code_url answered with broken HTTP: {exc}") from None
            if event is not h11.NEED_DATA:
                return event
            with trio.move_on_after(self.config.read_timeout) as scope:
                data = await self.stream.receive_some(READ_SIZE)
            if scope.cancelled_caught:
                raise FetchError(f"the server of code_url sent nothing for {self.config.read_timeout:g} s")
            self.h11.receive_data(data)


async def _open(scheme: str, host: str, address: Address, port: int, config: CodeFetchConfig) -> trio.abc.Stream:
    try:
        with trio.fail_after(config.connect_timeout):
            stream: trio.abc.Stream = await trio.open_tcp_stream(str(address), port)
            if scheme == "https":
                tls = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=host, https_compatible=True)
                await tls.do_handshake()
                stream = tls
    except trio.TooSlowError:
        raise FetchError(f"connecting to {host}:{port} for code_url took over {config.connect_timeout:g} s") from None
    except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
        cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
        raise FetchError(f"cannot connect to {host}:{port} for code_url: {cause}") from None
    return stream


async def _body(conn: _Connection, limit: int) -> AsyncIterator[bytes]:
    size = 0
    while True:
        event = await conn.next_event()
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > limit:
                raise TooLarge(f"the zip at code_url is over {limit:,} bytes")
            yield bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return
        elif isinstance(event, h11.ConnectionClosed):
            raise FetchError("the server of code_url closed the connection before the whole zip arrived")


async def fetch_to_file(url: str, code: CodeStore, config: CodeFetchConfig) -> Path:
    """Fetch the zip at `url` into a staging file (the caller owns it); FetchError/TooLarge on failure."""
    if not config.enabled:
        raise InvalidParameter("code_url is turned off on this node ([code_fetch] enabled = false); upload the zip")
    limit = raw_limit(code)
    try:
        with trio.fail_after(config.timeout):
            for _ in range(MAX_REDIRECTS + 1):
                scheme, host, port, target = _split(url)
                address = await _resolve(host, port, config)
                stream = await _open(scheme, host, address, port, config)
                async with stream:
                    conn = _Connection(stream, config, url)
                    # An IPv6 address goes in brackets ("::1:8080" would be ambiguous).
                    authority = f"[{host}]" if ":" in host else host
                    default_port = 443 if scheme == "https" else 80
                    host_header = authority if port == default_port else f"{authority}:{port}"
                    headers = [("Host", host_header), ("User-Agent", USER_AGENT), ("Accept", "*/*")]
                    await conn.send(h11.Request(method="GET", target=target, headers=headers))
                    await conn.send(h11.EndOfMessage())
                    response = await conn.next_event()
                    if not isinstance(response, h11.Response):
                        raise FetchError("the server of code_url closed the connection without an answer")
                    if response.status_code in (301, 302, 303, 307, 308):
                        location = dict(response.headers).get(b"location")
                        if not location:
                            raise FetchError(f"code_url answered {response.status_code} without a Location")
                        url = urljoin(url, _location(location))
                        continue
                    if response.status_code != 200:
                        raise FetchError(f"fetching code_url failed: the server answered HTTP {response.status_code}")
                    length = dict(response.headers).get(b"content-length")
                    if length is not None and length.isdigit() and int(length) > limit:
                        raise TooLarge(f"the zip at code_url is {int(length):,} bytes; at most {limit:,} are accepted")
                    return await receive_to_file(_body(conn, limit), code)
            raise FetchError(f"code_url redirected more than {MAX_REDIRECTS} times")
    except trio.TooSlowError:
        raise FetchError(f"fetching code_url took over {config.timeout:g} s ([code_fetch] timeout)") from None
    except trio.BrokenResourceError as exc:
        raise FetchError(f"the connection to the server of code_url broke: {exc.__cause__ or exc}") from None
