"""AK/SK request signatures (SDK-HMAC-SHA256), checked as Huawei Cloud's official SDKs make them.

Sans-IO: no sockets, no clock calls, no store. The caller hands in the request's
method, path, query and headers, a way to look an access key up, and the time;
the body is fed in as it arrives, so a streamed upload is hashed while it is
received and refused before anything is committed.

The canonical request follows `huaweicloudsdkcore/signer/signer.py` line by line:

    METHOD
    canonical URI        the decoded path, each segment quote(safe="~"), a trailing "/"
    canonical query      pairs sorted, key=value, each quote(safe="~")
    canonical headers    "name:value" for each signed header, value stripped, then a blank line
    signed headers       the names, ";"-joined, as the Authorization header lists them
    payload hash         hex SHA-256 of the body; the empty hash for no body; or the
                         X-Sdk-Content-Sha256 header's value ("UNSIGNED-PAYLOAD", which
                         the SDKs send for bodies that are not JSON)

    string to sign = "SDK-HMAC-SHA256\\n" + X-Sdk-Date + "\\n" + hex SHA-256(canonical request)
    signature      = hex HMAC-SHA256(secret, string to sign)
"""

from __future__ import annotations

import hashlib
import hmac
import re
import urllib.parse
from calendar import timegm
from collections.abc import Callable, Iterable
from time import strptime
from typing import Protocol

from fgd.errors import Forbidden, Unauthorized

ALGORITHM = "SDK-HMAC-SHA256"
DATE_HEADER = "x-sdk-date"
CONTENT_HASH_HEADER = "x-sdk-content-sha256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_HASH = hashlib.sha256(b"").hexdigest()
# The SDKs' clock tolerance: a signed request is good for 15 minutes either side of its date.
MAX_SKEW_SECONDS = 15 * 60
# Headers every signature must cover: without host a request could be replayed at another
# node, without the date at any time.
REQUIRED_SIGNED = ("host", DATE_HEADER)
# An Authorization header is a few hundred bytes; anything far longer is refused unparsed.
MAX_AUTHORIZATION = 4096
MAX_SIGNED_HEADERS = 64

_DATE_RE = re.compile(r"^\d{8}T\d{6}Z\Z")
_ACCESS_RE = re.compile(r"^[A-Za-z0-9]{1,128}\Z")
_SIGNATURE_RE = re.compile(r"^[0-9a-f]{64}\Z")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^`|~0-9a-z-]+\Z")
_HEX_HASH_RE = re.compile(r"^[0-9a-fA-F]{64}\Z")


class SigningKey(Protocol):
    """What the verifier needs of a stored key."""

    @property
    def access(self) -> str: ...
    @property
    def secret(self) -> str: ...
    @property
    def project_id(self) -> str: ...


Lookup = Callable[[str], SigningKey | None]
Headers = Iterable[tuple[bytes, bytes]]


def is_signed(authorization: str | None) -> bool:
    """True if an Authorization header claims an AK/SK signature (whatever its shape)."""
    return bool(authorization) and authorization.lstrip()[: len(ALGORITHM) + 1].upper() == ALGORITHM + " "


class Authorization:
    """The parts of `Authorization: SDK-HMAC-SHA256 Access=..., SignedHeaders=..., Signature=...`."""

    def __init__(self, access: str, signed_headers: list[str], signature: str) -> None:
        self.access = access
        self.signed_headers = signed_headers
        self.signature = signature

    @classmethod
    def parse(cls, header: str) -> Authorization:
        if len(header) > MAX_AUTHORIZATION:
            raise Unauthorized(f"the Authorization header is {len(header):,} characters; at most {MAX_AUTHORIZATION:,}")
        scheme, _, rest = header.strip().partition(" ")
        if scheme.upper() != ALGORITHM:
            raise Unauthorized(f"the Authorization header must start with {ALGORITHM}")
        fields: dict[str, str] = {}
        for part in rest.split(","):
            name, sep, value = part.strip().partition("=")
            if not sep or name in fields:
                raise Unauthorized(
                    f"malformed Authorization header: expected {ALGORITHM} Access=<access key>, "
                    "SignedHeaders=<names separated by ;>, Signature=<hex>"
                )
            fields[name] = value.strip()
        if set(fields) != {"Access", "SignedHeaders", "Signature"}:
            raise Unauthorized(
                f"malformed Authorization header: it needs exactly Access=, SignedHeaders= and Signature= "
                f"(got {', '.join(sorted(fields)) or 'none'})"
            )
        access, signature = fields["Access"], fields["Signature"]
        if not _ACCESS_RE.match(access):
            raise Unauthorized("malformed Authorization header: Access= must be an access key (letters and digits)")
        if not _SIGNATURE_RE.match(signature):
            raise Unauthorized("malformed Authorization header: Signature= must be 64 lower-case hex digits")
        names = fields["SignedHeaders"].split(";")
        if len(names) > MAX_SIGNED_HEADERS:
            raise Unauthorized(f"SignedHeaders lists {len(names)} headers; at most {MAX_SIGNED_HEADERS}")
        for name in names:
            if not _HEADER_NAME_RE.match(name):
                raise Unauthorized(f"SignedHeaders holds {name[:64]!r}, not a lower-case header name")
        if len(set(names)) != len(names):
            raise Unauthorized("SignedHeaders names a header twice")
        missing = [name for name in REQUIRED_SIGNED if name not in names]
        if missing:
            raise Unauthorized(
                f"the signature must cover the {' and '.join(missing)} header(s); add them to SignedHeaders"
            )
        return cls(access, names, signature)


def canonical_uri(path: str) -> str:
    """The SDK's canonical URI: segments of the decoded path, each percent-encoded, a trailing slash."""
    encoded = "/".join(urllib.parse.quote(segment, safe="~") for segment in path.split("/"))
    return encoded if encoded.endswith("/") else encoded + "/"


def canonical_query(query: bytes | str) -> str:
    """The SDK's canonical query: every key=value pair, sorted, each side percent-encoded.

    The raw query is decoded the way the API then reads it ('+' is a space), so a
    signature always covers the meaning the route acts on.
    """
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    pairs = sorted(urllib.parse.parse_qsl(text, keep_blank_values=True))
    return "&".join(f"{urllib.parse.quote(k, safe='~')}={urllib.parse.quote(v, safe='~')}" for k, v in pairs)


def parse_date(value: str | None) -> float:
    """X-Sdk-Date (YYYYMMDDTHHMMSSZ, UTC) as a Unix time."""
    if value is None:
        raise Unauthorized(
            "the X-Sdk-Date header is missing; a signed request carries its UTC time as YYYYMMDDTHHMMSSZ"
        )
    if not _DATE_RE.match(value):
        raise Unauthorized(f"X-Sdk-Date {value[:40]!r} is malformed; expected UTC time as YYYYMMDDTHHMMSSZ")
    try:
        return float(timegm(strptime(value, "%Y%m%dT%H%M%SZ")))
    except ValueError:
        raise Unauthorized(f"X-Sdk-Date {value!r} is not a valid date") from None


def check_scope(key: SigningKey, path: str) -> None:
    """An access key works for its own project's /v2/{project_id}/... paths only."""
    parts = path.split("/")
    if len(parts) < 2 or parts[1] != "v2":
        raise Forbidden(f"access keys work for /v2/ paths only; {path[:100]} needs the admin token")
    if len(parts) >= 4 and parts[2] != key.project_id:
        raise Forbidden(
            f"access key {key.access} works only for its own project, not for project {parts[2][:64]!r}; "
            "create a key for that project with `fgd keys create --project ...`"
        )


class Pending:
    """A request whose headers check out; its body goes through `update`, then `finish` decides."""

    def __init__(self, key: SigningKey, auth: Authorization, date: str, prefix: str, declared: str | None) -> None:
        self.key = key
        self._auth = auth
        self._date = date
        self._prefix = prefix
        self._declared = declared
        # UNSIGNED-PAYLOAD: the signature does not cover the body, so hashing it buys nothing.
        self._hash = None if declared == UNSIGNED_PAYLOAD else hashlib.sha256()
        self._size = 0

    def update(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._hash is not None:
            self._hash.update(chunk)

    def finish(self) -> SigningKey:
        """The key that signed the request; Unauthorized if the signature or the body does not match."""
        if self._size == 0:
            payload = EMPTY_HASH  # the SDKs sign no body as the empty hash, whatever the headers say
        elif self._declared is not None:
            payload = self._declared
            if self._hash is not None and self._hash.hexdigest() != self._declared.lower():
                raise Unauthorized("the body does not match its X-Sdk-Content-Sha256; it was changed or cut short")
        else:
            assert self._hash is not None
            payload = self._hash.hexdigest()
        canonical = self._prefix + payload
        string_to_sign = f"{ALGORITHM}\n{self._date}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        expected = hmac.new(self.key.secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, self._auth.signature):
            raise Unauthorized(
                f"the signature does not match for access key {self._auth.access}: check the secret key, and that "
                "the method, path, query, signed headers and body were not changed after signing"
            )
        return self.key


class Verifier:
    """Checks SDK-HMAC-SHA256 signatures against the keys `lookup` knows, at the time `now` gives."""

    def __init__(self, lookup: Lookup, now: Callable[[], float]) -> None:
        self._lookup = lookup
        self._now = now

    def start(self, method: str, path: str, query: bytes | str, headers: Headers) -> Pending:
        """Check everything but the body: `path` is decoded (ASGI's `path`), `query` raw, header names lower-case."""
        values: dict[str, list[bytes]] = {}
        for name, value in headers:
            values.setdefault(name.decode("latin-1").lower(), []).append(value)
        authorization = values.get("authorization", [b""])
        if len(authorization) != 1:
            raise Unauthorized("send one Authorization header")
        auth = Authorization.parse(authorization[0].decode("latin-1"))
        date_values = values.get(DATE_HEADER)
        date = date_values[0].decode("latin-1").strip() if date_values else None
        signed_at = parse_date(date)
        assert date is not None
        skew = signed_at - self._now()
        if abs(skew) > MAX_SKEW_SECONDS:
            where = "ahead of" if skew > 0 else "behind"
            raise Unauthorized(
                f"X-Sdk-Date {date} is {abs(skew) / 60:.0f} minutes {where} the node's clock; a signature is good "
                f"for {MAX_SKEW_SECONDS // 60} minutes either side (check the client's clock)"
            )
        key = self._lookup(auth.access)
        if key is None:
            raise Unauthorized(f"access key {auth.access} is not known on this node (see `fgd keys ls`)")
        check_scope(key, path)
        lines = []
        for name in auth.signed_headers:
            sent = values.get(name)
            if not sent:
                raise Unauthorized(f"header {name} is listed in SignedHeaders but not sent")
            if len(sent) > 1:
                raise Unauthorized(f"header {name} is signed but sent {len(sent)} times; send it once")
            # The SDK signs the text it then sends as UTF-8, stripped.
            lines.append(f"{name}:{sent[0].decode('utf-8', errors='replace').strip()}\n")
        declared_values = values.get(CONTENT_HASH_HEADER)
        declared = declared_values[0].decode("latin-1").strip() if declared_values else None
        if declared is not None and declared != UNSIGNED_PAYLOAD and not _HEX_HASH_RE.match(declared):
            raise Unauthorized(f"X-Sdk-Content-Sha256 must be {UNSIGNED_PAYLOAD} or the body's hex SHA-256")
        prefix = (
            f"{method.upper()}\n{canonical_uri(path)}\n{canonical_query(query)}\n"
            f"{''.join(lines)}\n{';'.join(auth.signed_headers)}\n"
        )
        return Pending(key, auth, date, prefix, declared)

    def verify(self, method: str, path: str, query: bytes | str, headers: Headers, body: bytes) -> SigningKey:
        """One-shot check of a request whose body is already whole (JSON bodies)."""
        pending = self.start(method, path, query, headers)
        pending.update(body)
        return pending.finish()
