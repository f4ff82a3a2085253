"""AK/SK signatures: every valid one here is made by Huawei Cloud's official SDK signer."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.parse
from calendar import timegm
from dataclasses import dataclass

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

from fgd.errors import Forbidden, Unauthorized
from fgd.signing import MAX_AUTHORIZATION, UNSIGNED_PAYLOAD, Verifier, canonical_query, canonical_uri, is_signed

ACCESS = "HPUAKEYEXAMPLE000001"
SECRET = "s3cretS3cretS3cretS3cretS3cretS3cretS3cr"
DATE = "20261201T120000Z"
SIGNED_AT = float(timegm(time.strptime(DATE, "%Y%m%dT%H%M%SZ")))
HOST = "127.0.0.1:8900"


@dataclass(frozen=True)
class Key:
    access: str
    secret: str
    project_id: str


KEYS = {ACCESS: Key(ACCESS, SECRET, "default"), "OTHERPROJECTKEY00001": Key("OTHERPROJECTKEY00001", SECRET, "p2")}


def verifier(now: float = SIGNED_AT) -> Verifier:
    return Verifier(KEYS.get, lambda: now)


@dataclass
class Wire:
    """A request as fgd's HTTP server hands it over: decoded path, raw query, header bytes."""

    method: str
    path: str
    query: str
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str:
        return next(v.decode() for k, v in self.headers if k == name.encode())

    def replace_header(self, name: str, value: str | None) -> Wire:
        headers = [(k, v) for k, v in self.headers if k != name.encode()]
        if value is not None:
            headers.append((name.encode(), value.encode()))
        return Wire(self.method, self.path, self.query, headers, self.body)


def sdk_signed(
    method: str,
    path: str,
    *,
    query: list[tuple[str, object]] | None = None,
    body: bytes | None = None,
    content_type: str | None = "application/json",
    secret: str = SECRET,
    access: str = ACCESS,
    date: str = DATE,
    extra: dict[str, str] | None = None,
) -> Wire:
    """Sign with the official SDK's Signer, then take what it would put on the wire."""
    headers = {"Host": HOST, "X-Sdk-Date": date, "User-Agent": "huaweicloud-usdk-python/3.0", **(extra or {})}
    if content_type:
        headers["Content-Type"] = content_type
    request = SdkRequest(
        method=method,
        schema="http",
        host=HOST,
        resource_path=path,
        query_params=list(query or []),
        header_params=headers,
        body=body or "",
    )
    Signer(BasicCredentials(access, secret, "default")).sign(request)
    raw_path, _, raw_query = request.uri.partition("?")
    # The SDK leaves header values as UTF-8 bytes read as ISO-8859-1, which is what goes on the wire.
    wire_headers = [(k.lower().encode(), v.encode("latin-1")) for k, v in request.header_params.items()]
    return Wire(method, urllib.parse.unquote(raw_path), raw_query, wire_headers, body or b"")


def check(wire: Wire, now: float = SIGNED_AT) -> Key:
    return verifier(now).verify(wire.method, wire.path, wire.query, wire.headers, wire.body)  # type: ignore[return-value]


# Valid signatures -------------------------------------------------------------------------


def test_get_with_a_query_needing_escapes_verifies() -> None:
    urn = urllib.parse.quote("urn:fss:local:default:function:default:hello", safe="")
    wire = sdk_signed(
        "GET",
        f"/v2/default/fgs/functions/{urn}/logs",
        query=[("request_id", "a b+c/d?e=f&g"), ("limit", 10), ("since", "ünï~*'()"), ("empty", "")],
        content_type=None,
    )
    assert "%2B" in wire.query and "%20" in wire.query
    assert check(wire).access == ACCESS


def test_post_with_a_json_body_verifies() -> None:
    body = json.dumps({"func_name": "hello", "runtime": "Python3.11", "user_data": "é"}).encode()
    wire = sdk_signed("POST", "/v2/default/fgs/functions", body=body)
    # JSON bodies are signed by their hash: no X-Sdk-Content-Sha256 header.
    assert all(k != b"x-sdk-content-sha256" for k, _ in wire.headers)
    assert check(wire).project_id == "default"


def test_put_with_a_binary_body_signed_by_its_hash_verifies_in_chunks() -> None:
    body = bytes(range(256)) * 4000
    # Without a Content-Type at signing time the SDK hashes the body whatever it is.
    wire = sdk_signed("PUT", "/v2/default/fgs/functions/hello/code", body=body, content_type=None)
    pending = verifier().start(wire.method, wire.path, wire.query, wire.headers)
    for start in range(0, len(body), 65536):
        pending.update(body[start : start + 65536])
    assert pending.finish().access == ACCESS


def test_unsigned_payload_verifies_whatever_the_body() -> None:
    wire = sdk_signed(
        "PUT", "/v2/default/fgs/functions/hello/code", body=b"PK\x03\x04zip", content_type="application/zip"
    )
    assert wire.header("x-sdk-content-sha256") == UNSIGNED_PAYLOAD
    assert check(wire).access == ACCESS


def test_a_date_within_fifteen_minutes_either_side_verifies() -> None:
    wire = sdk_signed("GET", "/v2/default/fgs/functions", content_type=None)
    assert check(wire, now=SIGNED_AT + 14 * 60).access == ACCESS
    assert check(wire, now=SIGNED_AT - 14 * 60).access == ACCESS


def test_canonical_forms_match_the_sdk() -> None:
    assert canonical_uri("/v2/default/fgs/functions/urn:fss:x") == "/v2/default/fgs/functions/urn%3Afss%3Ax/"
    assert canonical_uri("/v2/") == "/v2/"
    assert canonical_query(b"b=2&a=1&a=0&c") == "a=0&a=1&b=2&c="
    assert canonical_query("q=a+b") == "q=a%20b"
    assert is_signed("SDK-HMAC-SHA256 Access=x") and not is_signed("Bearer abc") and not is_signed(None)


# Refusals ---------------------------------------------------------------------------------


def refused(wire: Wire, now: float = SIGNED_AT, error: type = Unauthorized) -> str:
    with pytest.raises(error) as caught:
        check(wire, now)
    message = caught.value.message
    # Never a hint of the signature the node computed.
    assert len([word for word in message.split() if len(word) >= 64]) == 0
    return message


def test_wrong_secret_is_refused() -> None:
    wire = sdk_signed("GET", "/v2/default/fgs/functions", content_type=None, secret="x" * 40)
    assert "signature does not match" in refused(wire)


def test_unknown_access_key_is_refused() -> None:
    wire = sdk_signed("GET", "/v2/default/fgs/functions", content_type=None, access="NOSUCHKEY00000000000")
    assert "NOSUCHKEY00000000000 is not known" in refused(wire)


def test_a_key_of_another_project_is_forbidden() -> None:
    wire = sdk_signed("GET", "/v2/default/fgs/functions", content_type=None, access="OTHERPROJECTKEY00001")
    message = refused(wire, error=Forbidden)
    assert "only for its own project" in message and "'default'" in message


def test_a_key_is_forbidden_outside_v2_paths() -> None:
    wire = sdk_signed("GET", "/metrics", content_type=None)
    assert "admin token" in refused(wire, error=Forbidden)


def test_stale_dates_are_refused_both_ways() -> None:
    wire = sdk_signed("GET", "/v2/default/fgs/functions", content_type=None)
    assert "16 minutes behind" in refused(wire, now=SIGNED_AT + 16 * 60)
    assert "16 minutes ahead of" in refused(wire, now=SIGNED_AT - 16 * 60)


@pytest.mark.parametrize("date", ["2026-12-01T12:00:00Z", "20261301T120000Z", "20261201T120000", "yesterday", ""])
def test_malformed_dates_are_refused(date: str) -> None:
    wire = sdk_signed("GET", "/v2/default/fgs/functions", content_type=None)
    assert "X-Sdk-Date" in refused(wire.replace_header("x-sdk-date", date))


def test_missing_date_is_refused() -> None:
    wire = sdk_signed("GET", "/v2/default/fgs/functions", content_type=None)
    assert "X-Sdk-Date header is missing" in refused(wire.replace_header("x-sdk-date", None))


def test_tampered_body_is_refused() -> None:
    wire = sdk_signed("POST", "/v2/default/fgs/functions", body=b'{"func_name": "a"}')
    wire.body = b'{"func_name": "b"}'
    assert "signature does not match" in refused(wire)


def test_body_not_matching_its_declared_hash_is_refused() -> None:
    body = b"PK\x03\x04 the real zip"
    wire = sdk_signed(
        "PUT",
        "/v2/default/fgs/functions/f/code",
        body=body,
        content_type=None,
        extra={"X-Sdk-Content-Sha256": hashlib.sha256(body).hexdigest()},
    )
    assert check(wire).access == ACCESS
    wire.body = b"PK\x03\x04 another zip"
    assert "does not match its X-Sdk-Content-Sha256" in refused(wire)


def test_tampered_query_is_refused() -> None:
    wire = sdk_signed("GET", "/v2/default/fgs/functions", query=[("maxitems", 5)], content_type=None)
    wire.query = "maxitems=400"
    assert "signature does not match" in refused(wire)
    # '+' is a space to the API, so it cannot stand in for a signed %2B.
    plus = sdk_signed("GET", "/v2/default/fgs/functions", query=[("func_name", "a+b")], content_type=None)
    plus.query = plus.query.replace("%2B", "+")
    assert "signature does not match" in refused(plus)


def test_tampered_path_is_refused() -> None:
    wire = sdk_signed("DELETE", "/v2/default/fgs/functions/keep", content_type=None)
    wire.path = "/v2/default/fgs/functions/other"
    assert "signature does not match" in refused(wire)
    wire = sdk_signed("DELETE", "/v2/default/fgs/functions/keep", content_type=None)
    wire.method = "GET"
    assert "signature does not match" in refused(wire)


def test_a_signed_header_removed_is_refused() -> None:
    wire = sdk_signed("GET", "/v2/default/fgs/functions", content_type=None)
    assert "user-agent is listed in SignedHeaders but not sent" in refused(wire.replace_header("user-agent", None))


def test_a_signed_header_changed_is_refused() -> None:
    wire = sdk_signed("GET", "/v2/default/fgs/functions", content_type=None)
    assert "signature does not match" in refused(wire.replace_header("host", "127.0.0.1:9999"))


def test_a_signed_header_sent_twice_is_refused() -> None:
    wire = sdk_signed("GET", "/v2/default/fgs/functions", content_type=None)
    wire.headers.append((b"host", b"127.0.0.1:9999"))
    assert "sent 2 times" in refused(wire)


def signed_headers_without(wire: Wire, name: str) -> Wire:
    auth = wire.header("authorization")
    names = auth.split("SignedHeaders=")[1].split(",")[0]
    kept = ";".join(n for n in names.split(";") if n != name)
    return wire.replace_header("authorization", auth.replace(names, kept))


@pytest.mark.parametrize("name", ["host", "x-sdk-date"])
def test_signatures_must_cover_host_and_date(name: str) -> None:
    wire = sdk_signed("GET", "/v2/default/fgs/functions", content_type=None)
    assert f"must cover the {name}" in refused(signed_headers_without(wire, name))


@pytest.mark.parametrize(
    "authorization",
    [
        "SDK-HMAC-SHA256",
        "SDK-HMAC-SHA256 garbage",
        "SDK-HMAC-SHA256 Access=A, Signature=" + "0" * 64,
        "SDK-HMAC-SHA256 Access=A, SignedHeaders=host;x-sdk-date, Signature=zz",
        "SDK-HMAC-SHA256 Access=A, SignedHeaders=host;x-sdk-date, Signature=" + "0" * 64 + ", Extra=1",
        "SDK-HMAC-SHA256 Access=A, Access=B, SignedHeaders=host;x-sdk-date, Signature=" + "0" * 64,
        "SDK-HMAC-SHA256 Access=A B, SignedHeaders=host;x-sdk-date, Signature=" + "0" * 64,
        "SDK-HMAC-SHA256 Access=A, SignedHeaders=host;X-Sdk-Date, Signature=" + "0" * 64,
        "SDK-HMAC-SHA256 Access=A, SignedHeaders=host;host;x-sdk-date, Signature=" + "0" * 64,
        "SDK-HMAC-SHA256 Access=A, SignedHeaders=" + ";".join(f"h{i}" for i in range(100)) + ", Signature=" + "0" * 64,
        "SDK-HMAC-SM3 Access=A, SignedHeaders=host;x-sdk-date, Signature=" + "0" * 64,
        "\x00\xff" * 40,
    ],
)
def test_malformed_authorization_headers_are_refused(authorization: str) -> None:
    wire = sdk_signed("GET", "/v2/default/fgs/functions", content_type=None)
    message = refused(wire.replace_header("authorization", authorization))
    assert "Authorization" in message or "SignedHeaders" in message


def test_a_huge_authorization_header_is_refused_before_parsing() -> None:
    wire = sdk_signed("GET", "/v2/default/fgs/functions", content_type=None)
    huge = "SDK-HMAC-SHA256 Access=" + "A" * 1_000_000
    started = time.perf_counter()
    assert f"at most {MAX_AUTHORIZATION:,}" in refused(wire.replace_header("authorization", huge))
    assert time.perf_counter() - started < 0.05


def test_two_authorization_headers_are_refused() -> None:
    wire = sdk_signed("GET", "/v2/default/fgs/functions", content_type=None)
    wire.headers.append((b"authorization", wire.header("authorization").encode()))
    assert "one Authorization header" in refused(wire)


def test_a_bogus_declared_payload_hash_is_refused() -> None:
    wire = sdk_signed("PUT", "/v2/default/fgs/functions/f/code", body=b"x", content_type=None)
    assert "X-Sdk-Content-Sha256 must be" in refused(wire.replace_header("x-sdk-content-sha256", "not-a-hash"))
