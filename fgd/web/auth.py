"""Who is calling: the admin token (created once per state dir) or an AK/SK signature.

Every /v2 request and /metrics carries one of them. The admin token may do
anything; a signature (fgd.signing) made with an access key (fgd.keys) works for
that key's project only, and never for managing keys.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fgd import signing
from fgd.errors import Unauthorized
from fgd.keys import Keys


def load_or_create_token(state_dir: Path) -> str:
    path = state_dir / "admin.token"
    try:
        token = path.read_text().strip()
        if token:
            os.chmod(path, 0o600)
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.chmod(path, 0o600)
    return token


def presented_token(x_auth_token: str | None, authorization: str | None) -> str | None:
    if x_auth_token:
        return x_auth_token.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


def check(expected: str, x_auth_token: str | None, authorization: str | None) -> None:
    token = presented_token(x_auth_token, authorization)
    if token is None:
        raise Unauthorized(
            "authentication required: send X-Auth-Token: <token>, Authorization: Bearer <token>, or sign the "
            "request with an access key (Authorization: SDK-HMAC-SHA256 ..., see `fgd keys create`)"
        )
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("the token is not valid for this node")


def check_asgi(expected: str, headers: dict[bytes, bytes]) -> None:
    """`check` for an ASGI request's headers (lower-case byte names)."""
    check(
        expected,
        (headers.get(b"x-auth-token") or b"").decode(errors="replace") or None,
        (headers.get(b"authorization") or b"").decode(errors="replace") or None,
    )


class Admission:
    """One request being let in. The body of a signed request goes through `update` as it
    arrives; `finish` then decides (a no-op for the admin token, which is checked at once)."""

    def __init__(self, pending: signing.Pending | None, keys: Keys | None) -> None:
        self._pending = pending
        self._keys = keys

    @property
    def admin(self) -> bool:
        return self._pending is None

    @property
    def signed(self) -> bool:
        return self._pending is not None

    def update(self, chunk: bytes) -> None:
        if self._pending is not None:
            self._pending.update(chunk)

    def finish(self) -> None:
        if self._pending is not None:
            key = self._pending.finish()
            assert self._keys is not None
            if self._keys.lookup(key.access) is None:
                # Removed while the body was arriving (a long upload): removal wins.
                raise Unauthorized(f"access key {key.access} was removed while the request was being received")
            self._keys.used(key.access)

    async def hashing(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`chunks`, fed to the signature check on their way through."""
        async for chunk in chunks:
            self.update(chunk)
            yield chunk


class Authenticator:
    def __init__(self, token: str, keys: Keys, now: Callable[[], float]) -> None:
        self.token = token
        self._keys = keys
        self._verifier = signing.Verifier(keys.lookup, now)

    def start(self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> Admission:
        """Check a request's credentials as far as its headers go (ASGI `path`, `query_string`, `headers`)."""
        x_auth_token = authorization = None
        for name, value in headers:
            if name == b"x-auth-token":
                x_auth_token = value.decode(errors="replace")
            elif name == b"authorization":
                authorization = value.decode(errors="replace")
        if not x_auth_token and signing.is_signed(authorization):
            return Admission(self._verifier.start(method, path, query, headers), self._keys)
        check(self.token, x_auth_token, authorization)
        return Admission(None, None)

    def start_asgi(self, scope: dict) -> Admission:
        return self.start(scope["method"], scope["path"], scope.get("query_string", b""), scope["headers"])
