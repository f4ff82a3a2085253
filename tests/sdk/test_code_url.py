"""Code from a URL (`code_type: "obs"`, `code_url`) through the stock SDK, from loopback test servers.

The session daemon allows 127.0.0.1 in `[code_fetch] allow`; a daemon with the default
settings refuses it (last test).
"""

from __future__ import annotations

import http.server
import io
import threading
import zipfile
from collections.abc import Iterator

import httpx
import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkfunctiongraph.v2 import FunctionGraphClient
from huaweicloudsdkfunctiongraph.v2 import model as m

from tests.conftest import RUNTIME, Api, Daemon, b64, make_zip, unique_name


class Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def files() -> Iterator[tuple[str, dict[str, bytes]]]:
    served: dict[str, bytes] = {}
    handler = type("Handler", (Files,), {"files": served})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()
    httpd.server_close()


def source(answer: str) -> bytes:
    return make_zip({"index.py": f"def handler(event, context):\n    return {answer!r}\n"})


def bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("index.py", "def handler(event, context):\n    return 1\n")
        archive.writestr("zeros.bin", b"\0" * (64 * 1024 * 1024))
    return buffer.getvalue()


def create(sdk: FunctionGraphClient, name: str, **code) -> m.CreateFunctionResponse:
    body = m.CreateFunctionRequestBody(
        func_name=name, package="default", runtime=RUNTIME, handler="index.handler", memory_size=128, timeout=10, **code
    )
    return sdk.create_function(m.CreateFunctionRequest(body=body))


def test_create_and_update_from_a_url(sdk: FunctionGraphClient, api: Api, files) -> None:
    base, served = files
    served["/v1.zip"] = source("from v1")
    served["/v2.zip?token=abc"] = source("from v2")
    name = unique_name()
    created = create(sdk, name, code_type="obs", code_url=f"{base}/v1.zip")
    assert created.code_type == "obs" and created.code_url == f"{base}/v1.zip"
    assert api.invoke(name).text == "from v1"
    updated = sdk.update_function_code(
        m.UpdateFunctionCodeRequest(
            function_urn=created.func_urn,
            body=m.UpdateFunctionCodeRequestBody(code_type="obs", code_url=f"{base}/v2.zip?token=abc"),
        )
    )
    assert updated.code_url == f"{base}/v2.zip?token=abc" and updated.digest != created.digest
    assert api.invoke(name).text == "from v2"


def refused(call) -> ClientRequestException:
    with pytest.raises(ClientRequestException) as caught:
        call()
    return caught.value


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/missing.zip", "HTTP 404"),
        # A space and non-ASCII in the URL were an uncaught h11 error: a 500.
        ("/missing file ü.zip", "HTTP 404"),
        ("/bomb.zip", "zeros.bin"),
        ("/not-a-zip", "zip"),
    ],
)
def test_a_bad_url_is_refused_and_the_code_kept(sdk: FunctionGraphClient, api: Api, files, path, message) -> None:
    base, served = files
    served["/bomb.zip"] = bomb()
    served["/not-a-zip"] = b"<html>hello</html>"
    name = unique_name()
    created = create(sdk, name, code_type="zip", func_code=m.FuncCode(file=b64(source("kept"))))
    error = refused(
        lambda: sdk.update_function_code(
            m.UpdateFunctionCodeRequest(
                function_urn=created.func_urn,
                body=m.UpdateFunctionCodeRequestBody(code_type="obs", code_url=f"{base}{path}"),
            )
        )
    )
    assert error.status_code == 400 and message in error.error_msg, error.error_msg
    config = api.http.get(f"/functions/{name}/config").json()
    assert config["digest"] == created.digest and config["code_type"] == "zip"
    assert api.invoke(name).text == "kept"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"code_type": "obs"}, "needs code_url"),
        ({"code_type": "obs", "code_url": "file:///etc/shadow"}, "http or https"),
        ({"code_type": "obs", "code_url": "http://169.254.169.254/latest/meta-data/"}, "169.254.169.254"),
        ({"code_type": "obs", "code_url": "http://[::1]:1/x.zip"}, "::1"),
        (
            {"code_type": "zip", "code_url": "http://127.0.0.1/x.zip", "func_code": {"file": b64(source("x"))}},
            "only with code_type obs",
        ),
    ],
)
def test_attacker_urls_are_refused_before_any_connection(api: Api, body: dict, message: str) -> None:
    created = api.deploy("def handler(event, context):\n    return 1\n")
    answer = api.http.put(f"/functions/{created['func_name']}/code", json=body)
    assert answer.status_code == 400 and message in answer.json()["error_msg"], answer.text
    assert api.http.get(f"/functions/{created['func_name']}/config").json()["digest"] == created["digest"]


def test_loopback_is_refused_with_the_default_settings(fresh_daemon: Daemon, files) -> None:
    base, served = files
    served["/ok.zip"] = source("never")
    fresh_daemon.start()
    headers = {"X-Auth-Token": fresh_daemon.token}
    answer = httpx.post(
        f"{fresh_daemon.url}/v2/default/fgs/functions",
        headers=headers,
        json={
            "func_name": "fromurl",
            "runtime": RUNTIME,
            "handler": "index.handler",
            "code_type": "obs",
            "code_url": f"{base}/ok.zip",
        },
    )
    assert answer.status_code == 400 and "[code_fetch] allow" in answer.json()["error_msg"]
    listed = httpx.get(f"{fresh_daemon.url}/v2/default/fgs/functions", headers=headers).json()
    assert listed["count"] == 0
