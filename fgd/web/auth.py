"""The admin token: created once per state dir, checked on every /v2 request."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from fgd.errors import Unauthorized


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
        raise Unauthorized("authentication required: send X-Auth-Token: <token> or Authorization: Bearer <token>")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("the token is not valid for this node")


def check_asgi(expected: str, headers: dict[bytes, bytes]) -> None:
    """`check` for an ASGI request's headers (lower-case byte names)."""
    check(
        expected,
        (headers.get(b"x-auth-token") or b"").decode(errors="replace") or None,
        (headers.get(b"authorization") or b"").decode(errors="replace") or None,
    )
