"""The "outside world" of the network tests, run inside the test's outside namespace.

- 198.51.100.10:80   the public test server: /hello, /bytes?n=N, /whoami (the client address)
- 169.254.169.254:80 a fake cloud metadata service
- 192.168.77.2:1883 and :1884  a fake LAN host (an MQTT-like broker on two ports)
- 198.51.100.53:53   a DNS server answering the zone fgd.test (UDP)

Prints "ready" once every listener is bound; runs until killed.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

ZONE = {"web.fgd.test": "198.51.100.10", "lan.fgd.test": "192.168.77.2", "metadata.fgd.test": "169.254.169.254"}
CHUNK = b"x" * 65536


def http_handler(name: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/bytes":
                size = int(parse_qs(url.query).get("n", ["0"])[0])
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                left = size
                while left > 0:
                    piece = CHUNK[: min(left, len(CHUNK))]
                    self.wfile.write(piece)
                    left -= len(piece)
                return
            body = f"{name} {self.client_address[0]}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class Broker(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(f"broker:{self.server.server_address[1]} {self.client_address[0]}\n".encode())


class ThreadingTCP(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def dns_answer(query: bytes) -> bytes | None:
    if len(query) < 12:
        return None
    ident, _flags, qdcount = struct.unpack("!HHH", query[:6])
    if qdcount != 1:
        return None
    labels, offset = [], 12
    while offset < len(query) and query[offset]:
        length = query[offset]
        labels.append(query[offset + 1 : offset + 1 + length].decode(errors="replace"))
        offset += 1 + length
    offset += 1
    qtype, _qclass = struct.unpack("!HH", query[offset : offset + 4])
    question = query[12 : offset + 4]
    address = ZONE.get(".".join(labels).lower())
    if address is None:
        return struct.pack("!HHHHHH", ident, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
    if qtype != 1:
        return struct.pack("!HHHHHH", ident, 0x8180, 1, 0, 0, 0) + question  # no AAAA
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
    return struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + answer


def serve_dns(address: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))
    while True:
        query, peer = sock.recvfrom(512)
        reply = dns_answer(query)
        if reply is not None:
            sock.sendto(reply, peer)


def main() -> None:
    servers = [
        ThreadingHTTPServer(("198.51.100.10", 80), http_handler("outside")),
        ThreadingHTTPServer(("169.254.169.254", 80), http_handler("metadata-secret")),
        ThreadingHTTPServer(("192.168.77.2", 80), http_handler("lan-web")),
        ThreadingTCP(("192.168.77.2", 1883), Broker),
        ThreadingTCP(("192.168.77.2", 1884), Broker),
    ]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    threading.Thread(target=serve_dns, args=("198.51.100.53",), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)


if __name__ == "__main__":
    main()
