"""A small HTTP client for the CLI (stdlib only, so the CLI starts fast)."""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_ENDPOINT = "http://127.0.0.1:8900"
DEFAULT_STATE_DIR = "/var/lib/fgd"


class ClientError(Exception):
    """Something the CLI reports as one line and a non-zero exit."""


class ApiError(ClientError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def resolve_token(token: str | None, state_dir: str | None) -> str:
    if token:
        return token
    if os.environ.get("FGD_TOKEN"):
        return os.environ["FGD_TOKEN"]
    path = Path(state_dir or os.environ.get("FGD_STATE_DIR") or DEFAULT_STATE_DIR) / "admin.token"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ClientError(
            f"no token: pass --token, set FGD_TOKEN, or point --state-dir/FGD_STATE_DIR at the daemon's state "
            f"directory ({path}: {exc.strerror})"
        ) from None


class Client:
    def __init__(self, endpoint: str | None, token: str, project: str = "default", timeout: float = 300) -> None:
        self.endpoint = (endpoint or os.environ.get("FGD_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        parsed = urllib.parse.urlsplit(self.endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ClientError(f"endpoint {self.endpoint!r} must look like http://HOST:PORT")
        self._parsed = parsed
        self._token = token
        self._timeout = timeout
        self.base = f"/v2/{project}/fgs"

    def _connection(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._parsed.scheme == "https" else http.client.HTTPConnection
        return kind(self._parsed.hostname, self._parsed.port, timeout=self._timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> Response | Iterator[bytes]:
        all_headers = {"X-Auth-Token": self._token, "Content-Type": "application/json", **(headers or {})}
        conn = self._connection()
        try:
            conn.request(method, self.base + path, body=body, headers=all_headers)
            raw = conn.getresponse()
        except ConnectionRefusedError:
            raise ClientError(f"cannot connect to {self.endpoint}: is `fgd serve` running?") from None
        except OSError as exc:
            raise ClientError(f"cannot reach {self.endpoint}: {exc}") from None
        if raw.status >= 400:
            data = raw.read()
            try:
                error = json.loads(data)
                raise ApiError(raw.status, error["error_code"], error["error_msg"])
            except (ValueError, KeyError, TypeError):
                raise ApiError(raw.status, f"HTTP {raw.status}", data.decode(errors="replace")[:200]) from None
        if stream:
            return _lines(raw, conn)
        response = Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, raw.read())
        conn.close()
        return response

    def json(self, method: str, path: str, value: Any = None) -> Any:
        body = None if value is None else json.dumps(value).encode()
        response = self.request(method, path, body)
        assert isinstance(response, Response)
        return response.json() if response.body else None


class ProgressReader:
    """A file-like body that reports upload progress on stderr (for packages over a few MB)."""

    def __init__(self, data: bytes, label: str, stream) -> None:
        self._data = memoryview(data)
        self._sent = 0
        self._label = label
        self._stream = stream
        self._last = -1

    def __len__(self) -> int:
        return len(self._data)

    def read(self, size: int = -1) -> bytes:
        size = len(self._data) - self._sent if size < 0 else size
        chunk = self._data[self._sent : self._sent + min(size, 1 << 20)]
        self._sent += len(chunk)
        percent = self._sent * 100 // max(len(self._data), 1)
        if percent != self._last:
            self._last = percent
            end = "\n" if self._sent >= len(self._data) else ""
            self._stream.write(
                f"\r{self._label}: {self._sent / 2**20:.1f} / {len(self._data) / 2**20:.1f} MB ({percent}%){end}"
            )
            self._stream.flush()
        return bytes(chunk)


def _lines(raw: http.client.HTTPResponse, conn: http.client.HTTPConnection) -> Iterator[bytes]:
    try:
        while line := raw.readline():
            yield line
    finally:
        conn.close()


def quote(name: str) -> str:
    return urllib.parse.quote(name, safe=":!")
