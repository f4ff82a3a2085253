"""AK/SK against a real daemon: the stock Huawei Cloud SDK, streamed uploads, the keys CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from huaweicloudsdkfunctiongraph.v2 import (
    CreateFunctionRequest,
    CreateFunctionRequestBody,
    FuncCode,
    InvokeFunctionRequest,
    ListFunctionsRequest,
    ShowFunctionConfigRequest,
)

from tests.conftest import RUNTIME, Api, Daemon, access_key, make_zip, sdk_client_for, unique_name
from tests.integration.test_cli import fgd

MakeKey = Callable[..., dict]
HELLO = "def handler(event, context):\n    return {'hello': event.get('who', 'nobody')}\n"


def signed(
    daemon: Daemon,
    key: dict,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    content_type: str | None = None,
    extra: dict[str, str] | None = None,
    query: list[tuple[str, object]] | None = None,
) -> tuple[str, dict[str, str]]:
    """The URL and headers the official SDK's signer gives a request (signed now)."""
    host = daemon.url.removeprefix("http://")
    headers = {"Host": host, **(extra or {})}
    if content_type:
        headers["Content-Type"] = content_type
    request = SdkRequest(
        method=method, schema="http", host=host, resource_path=path, query_params=query or [], header_params=headers
    )
    request.body = body
    Signer(BasicCredentials(key["access"], key["secret"], key["project_id"])).sign(request)
    return f"{daemon.url}{request.uri}", dict(request.header_params)


def chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# The stock SDK ------------------------------------------------------------------------------


def test_stock_sdk_lists_creates_and_reads_functions(sdk_client, daemon: Daemon) -> None:
    name = unique_name("sdk")
    body = CreateFunctionRequestBody(
        func_name=name,
        package="default",
        runtime=RUNTIME,
        handler="index.handler",
        memory_size=128,
        timeout=5,
        code_type="zip",
        func_code=FuncCode(file=base64.b64encode(make_zip({"index.py": HELLO})).decode()),
    )
    created = sdk_client.create_function(CreateFunctionRequest(body=body))
    assert created.status_code == 200
    assert created.func_name == name and created.runtime == RUNTIME and created.memory_size == 128
    assert created.func_urn == f"urn:fss:local:default:function:default:{name}:latest"
    listed = sdk_client.list_functions(ListFunctionsRequest(maxitems="400"))
    assert name in [f.func_name for f in listed.functions]
    shown = sdk_client.show_function_config(ShowFunctionConfigRequest(function_urn=created.func_urn))
    assert shown.handler == "index.handler" and shown.timeout == 5


def test_stock_sdk_invokes_with_a_signed_event(sdk_client, api: Api) -> None:
    name = api.deploy(HELLO)["func_name"]
    answer = sdk_client.invoke_function(
        InvokeFunctionRequest(function_urn=name, x_cff_request_version="v1", body={"who": "sdk"})
    )
    assert answer.status == 200 and json.loads(answer.result) == {"hello": "sdk"}


def test_a_changed_event_is_refused(daemon: Daemon, api: Api, make_key: MakeKey) -> None:
    key = make_key()
    name = api.deploy(HELLO)["func_name"]
    path = f"/v2/default/fgs/functions/{name}/invocations"
    url, headers = signed(daemon, key, "POST", path, b'{"who": "alice"}', content_type="application/json")
    assert httpx.post(url, content=b'{"who": "alice"}', headers=headers).json() == {"hello": "alice"}
    refused = httpx.post(url, content=b'{"who": "mallory"}', headers=headers)
    assert refused.status_code == 401 and refused.json()["error_code"] == "FSS.0401"
    assert "signature does not match" in refused.json()["error_msg"]


def test_a_key_of_another_project_is_forbidden(daemon: Daemon, make_key: MakeKey) -> None:
    other = sdk_client_for(daemon, make_key("p2"), project="default")
    with pytest.raises(ClientRequestException) as caught:
        other.list_functions(ListFunctionsRequest())
    assert caught.value.status_code == 403 and caught.value.error_code == "FSS.0403"
    assert "only for its own project" in caught.value.error_msg


def test_wrong_secret_and_stale_date_are_refused(daemon: Daemon, make_key: MakeKey) -> None:
    key = make_key()
    wrong = sdk_client_for(daemon, {**key, "secret": "x" * 40})
    with pytest.raises(ClientRequestException) as caught:
        wrong.list_functions(ListFunctionsRequest())
    assert caught.value.status_code == 401 and "signature does not match" in caught.value.error_msg
    stale = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 16 * 60))
    url, headers = signed(daemon, key, "GET", "/v2/default/fgs/functions", extra={"X-Sdk-Date": stale})
    refused = httpx.get(url, headers=headers)
    assert refused.status_code == 401 and "minutes behind the node's clock" in refused.json()["error_msg"]


def test_a_tampered_query_is_refused(daemon: Daemon, make_key: MakeKey) -> None:
    key = make_key()
    url, headers = signed(daemon, key, "GET", "/v2/default/fgs/functions", query=[("maxitems", 5)])
    assert httpx.get(url, headers=headers).status_code == 200
    refused = httpx.get(url.replace("maxitems=5", "maxitems=6"), headers=headers)
    assert refused.status_code == 401 and refused.json()["error_code"] == "FSS.0401"


@pytest.mark.parametrize(
    "authorization",
    [b"SDK-HMAC-SHA256 garbage", b"SDK-HMAC-SHA256 " + b"A=" * 3000, b"sdk-hmac-sha256 \xff\xfe Access=\x80"],
)
def test_garbage_authorization_is_a_clean_401_on_every_front(daemon: Daemon, api: Api, authorization: bytes) -> None:
    name = api.deploy(HELLO)["func_name"]
    headers = {"Authorization": authorization, "X-Sdk-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())}
    base = f"{daemon.url}/v2/default/fgs"
    for answer in (
        httpx.get(f"{base}/functions", headers=headers),  # the management API
        httpx.post(f"{base}/functions/{name}/invocations", content=b"{}", headers=headers),  # the invoke route
        httpx.put(
            f"{base}/functions/{name}/code", content=b"PK", headers={**headers, "Content-Type": "application/zip"}
        ),
    ):
        assert answer.status_code == 401, answer.text
        assert answer.json()["error_code"] == "FSS.0401" and "Authorization" in answer.json()["error_msg"]


def test_a_key_cannot_manage_keys(daemon: Daemon, make_key: MakeKey) -> None:
    key = make_key()
    url, headers = signed(daemon, key, "POST", "/v2/default/fgs/fgd/keys", b"{}", content_type="application/json")
    refused = httpx.post(url, content=b"{}", headers=headers)
    assert refused.status_code == 403 and "admin token only" in refused.json()["error_msg"]
    url, headers = signed(daemon, key, "GET", "/v2/default/fgs/fgd/keys")
    assert httpx.get(url, headers=headers).status_code == 403


# Streamed code uploads ----------------------------------------------------------------------


def code_digest(api: Api, name: str) -> str:
    return api.http.get(f"/functions/{name}/code").json()["digest"]


def test_signed_streamed_upload_is_hashed_as_it_arrives(daemon: Daemon, api: Api, make_key: MakeKey) -> None:
    key = make_key()
    name = api.deploy(HELLO)["func_name"]
    before = code_digest(api, name)
    # Incompressible filler, so the stream is several hundred chunks.
    package = make_zip({"index.py": HELLO.replace("nobody", "v2"), "blob.bin": hashlib.sha512(b"x").digest() * 40000})
    path = f"/v2/default/fgs/functions/{name}/code"
    # Signed over the body's hash (no Content-Type at signing, so the SDK does not use UNSIGNED-PAYLOAD).
    url, headers = signed(daemon, key, "PUT", path, package)
    headers["Content-Type"] = "application/zip"

    tampered = bytearray(package)
    tampered[len(tampered) // 2] ^= 1
    refused = httpx.put(url, content=chunks(bytes(tampered)), headers=headers, timeout=30)
    assert refused.status_code == 401 and refused.json()["error_code"] == "FSS.0401"
    assert code_digest(api, name) == before  # nothing stored
    assert not list((daemon.state_dir / "tmp").glob("upload-*"))  # no staging file left behind

    accepted = httpx.put(url, content=chunks(package), headers=headers, timeout=30)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["digest"] == hashlib.sha512(package).hexdigest() != before


def test_streamed_upload_with_a_bad_signature_changes_nothing(daemon: Daemon, api: Api, make_key: MakeKey) -> None:
    key = make_key()
    name = api.deploy(HELLO)["func_name"]
    before = code_digest(api, name)
    package = make_zip({"index.py": HELLO.replace("nobody", "evil")})
    path = f"/v2/default/fgs/functions/{name}/code"
    # As the SDK sends a zip: UNSIGNED-PAYLOAD, the headers still signed.
    url, headers = signed(daemon, {**key, "secret": "y" * 40}, "PUT", path, package, content_type="application/zip")
    assert headers["X-Sdk-Content-Sha256"] == "UNSIGNED-PAYLOAD"
    refused = httpx.put(url, content=chunks(package, 1024), headers=headers, timeout=30)
    assert refused.status_code == 401 and "signature does not match" in refused.json()["error_msg"]
    assert code_digest(api, name) == before


def test_a_key_removed_during_a_streamed_upload_stores_nothing(daemon: Daemon, api: Api, make_key: MakeKey) -> None:
    key = make_key()
    name = api.deploy(HELLO)["func_name"]
    before = code_digest(api, name)
    package = make_zip({"index.py": HELLO.replace("nobody", "late")})
    path = f"/v2/default/fgs/functions/{name}/code"
    url, headers = signed(daemon, key, "PUT", path, package, content_type="application/zip")

    def removed_halfway() -> Iterator[bytes]:
        yield package[: len(package) // 2]
        gone = httpx.delete(f"{daemon.url}/v2/default/fgs/fgd/keys/{key['access']}", headers=api_token(daemon))
        assert gone.status_code == 204
        yield package[len(package) // 2 :]

    refused = httpx.put(url, content=removed_halfway(), headers=headers, timeout=30)
    assert refused.status_code == 401 and "was removed" in refused.json()["error_msg"]
    assert code_digest(api, name) == before


def api_token(daemon: Daemon) -> dict[str, str]:
    return {"X-Auth-Token": daemon.token}


def test_streamed_dependency_upload_checks_the_signature_too(daemon: Daemon, make_key: MakeKey) -> None:
    key = make_key()
    package = make_zip({"lib/dep.py": "X = 1\n"})
    path = "/v2/default/fgs/dependencies/version"
    dep = unique_name("dep")
    query = [("name", dep), ("runtime", RUNTIME)]
    url, headers = signed(daemon, key, "POST", path, package, query=query)
    headers["Content-Type"] = "application/zip"
    refused = httpx.post(url, content=chunks(package + b"\0"), headers=headers)
    assert refused.status_code == 401
    listed = httpx.get(f"{daemon.url}/v2/default/fgs/dependencies?name={dep}", headers={"X-Auth-Token": daemon.token})
    assert listed.json()["count"] == 0
    accepted = httpx.post(url, content=chunks(package), headers=headers)
    assert accepted.status_code == 200 and accepted.json()["name"] == dep


# Keys: CLI, removal, storage ------------------------------------------------------------------


def test_keys_cli_create_ls_rm_with_the_daemon_running(daemon: Daemon) -> None:
    made = fgd(daemon, "keys", "create", "--project", "cliproj", "--description", "ci deploys")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert set(key) == {"access", "secret", "project_id"} and key["project_id"] == "cliproj"

    listed = fgd(daemon, "keys", "ls", "--project", "cliproj")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()[:2]
    assert header.split()[:2] == ["ACCESS", "KEY"] and "LAST USED" in header
    assert row.split()[:2] == [key["access"], "cliproj"] and "never" in row and "ci deploys" in row
    assert key["secret"] not in listed.stdout

    client = sdk_client_for(daemon, key)
    assert client.list_functions(ListFunctionsRequest()).count == 0
    assert "never" not in fgd(daemon, "keys", "ls", "--project", "cliproj").stdout.splitlines()[1]

    removed = fgd(daemon, "keys", "rm", key["access"], "--project", "cliproj")
    assert removed.returncode == 0, removed.stderr
    assert key["access"] not in fgd(daemon, "keys", "ls", "--project", "cliproj").stdout
    again = fgd(daemon, "keys", "rm", key["access"], "--project", "cliproj")
    assert again.returncode == 1 and "FSS.0404" in again.stderr and "Traceback" not in again.stderr


def test_a_removed_key_is_refused_immediately(daemon: Daemon, make_key: MakeKey) -> None:
    key = make_key()
    client = sdk_client_for(daemon, key)
    assert client.list_functions(ListFunctionsRequest()).functions is not None
    gone = httpx.delete(f"{daemon.url}/v2/default/fgs/fgd/keys/{key['access']}", headers={"X-Auth-Token": daemon.token})
    assert gone.status_code == 204
    with pytest.raises(ClientRequestException) as caught:
        client.list_functions(ListFunctionsRequest())
    assert caught.value.status_code == 401 and f"access key {key['access']} is not known" in caught.value.error_msg


def test_keys_are_kept_readable_by_root_only(daemon: Daemon, make_key: MakeKey) -> None:
    make_key()
    assert stat.S_IMODE(daemon.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((daemon.state_dir / "fgd.db").stat().st_mode) == 0o600


def test_keys_survive_a_restart_and_remember_their_last_use(fresh_daemon: Daemon) -> None:
    fresh_daemon.start()
    key = access_key(fresh_daemon)
    assert sdk_client_for(fresh_daemon, key).list_functions(ListFunctionsRequest()).count == 0
    fresh_daemon.stop()  # last use is written at shutdown, not per request
    fresh_daemon.start()
    listed = httpx.get(f"{fresh_daemon.url}/v2/default/fgs/fgd/keys", headers={"X-Auth-Token": fresh_daemon.token})
    (row,) = listed.json()["keys"]
    assert row["access"] == key["access"] and row["last_used"] and "secret" not in row
    assert sdk_client_for(fresh_daemon, key).list_functions(ListFunctionsRequest()).count == 0
