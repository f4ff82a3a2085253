"""A signed request to the front's routes is checked whole before anything is looked up.

The front (fgd.web.front) reads a request's body after its function is found, so that a token
client is refused from its head; a signature covers the body, so a wrongly signed request used
to learn whether a function exists (404) before it was refused (401). Anyone who has seen an
access key's id could map a project's functions that way. Now: 401 whatever the function.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import Api, Daemon, make_zip
from tests.integration.test_keys import signed

ECHO = "def handler(event, context):\n    return event\n"
BASE = "/v2/default/fgs/functions"


def send(daemon: Daemon, key: dict, route: str, name: str, *, streamed: bool = False) -> httpx.Response:
    """One signed request of `route` for function `name`, signed with `key`."""
    if route == "code":
        method, path, body, kind = "PUT", f"{BASE}/{name}/code", make_zip({"index.py": ECHO}), "application/zip"
    else:
        suffix = "invocations-async" if route == "async" else "invocations"
        method, path, body, kind = "POST", f"{BASE}/{name}/{suffix}", b'{"n": 1}', "application/json"
    url, headers = signed(daemon, key, method, path, body, content_type=kind)
    if streamed:
        # In pieces, so the body is not whole with the head: the ASGI route, not the direct one.
        def pieces():
            yield body[:3]
            time.sleep(0.05)
            yield body[3:]

        return httpx.request(method, url, headers=headers, content=pieces(), timeout=30)
    return httpx.request(method, url, headers=headers, content=body, timeout=30)


@pytest.mark.parametrize(("route", "streamed"), [("sync", False), ("sync", True), ("async", False), ("code", False)])
def test_a_wrong_signature_learns_nothing_of_which_functions_exist(
    daemon: Daemon, api: Api, make_key, route: str, streamed: bool
) -> None:
    key = make_key()
    forged = {**key, "secret": "not-" + key["secret"]}
    existing = api.deploy(ECHO)["func_name"]
    for name in (existing, "no-such-function", "urn:fss:elsewhere:default:function:default:x"):
        response = send(daemon, forged, route, name, streamed=streamed)
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error_code"] == "FSS.0401"
    # Signed right, the key's own project is told what exists.
    assert send(daemon, key, route, "no-such-function", streamed=streamed).status_code == 404
    assert send(daemon, key, route, existing, streamed=streamed).status_code in (200, 202)


def test_a_refused_signed_upload_leaves_no_staged_file(daemon: Daemon, api: Api, make_key) -> None:
    """Read whole to check its signature, a signed upload for a function that is not there is
    refused (404) and its staging file removed."""
    key = make_key()
    staged = [path for path in daemon.state_dir.rglob("upload-*")]
    for _ in range(3):
        assert send(daemon, key, "code", "no-such-function").status_code == 404
    assert [path for path in daemon.state_dir.rglob("upload-*")] == staged
