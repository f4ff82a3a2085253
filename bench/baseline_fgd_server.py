"""The echo app of bench/baseline_app.py on fgd's own HTTP server (fgd.web.server), for
bench/invoke_profile.py --servers: what the server costs per request, without the daemon.

Usage: python bench/baseline_fgd_server.py PORT
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent))

from baseline_app import echo

from fgd.config import ServerConfig
from fgd.web.server import serve_http


def main() -> None:
    sock = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=4096)
    trio.run(lambda: serve_http(echo, sock, ServerConfig(), graceful_timeout=1, shutdown_trigger=trio.sleep_forever))


if __name__ == "__main__":
    main()
