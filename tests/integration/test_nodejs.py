"""Issue 13: Node.js functions, deployed with FunctionGraph's runtime strings, on a pooled node."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest

from tests.conftest import Api, make_zip

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="no `node` on this machine (make installs it)")

RUNTIME = "Node.js20.15"


def deploy_js(api: Api, source: str, *, files: dict | None = None, runtime: str = RUNTIME, **settings) -> str:
    """A Node.js function whose index.js is `source` (dedented); its name."""
    package = make_zip(files or {"index.js": textwrap.dedent(source)})
    response = api.create(package, runtime=runtime, **settings)
    assert response.status_code == 200, response.text
    return response.json()["func_name"]


def test_async_handler_answers(api: Api) -> None:
    name = deploy_js(api, "exports.handler = async (event, context) => ({got: event, id: context.getRequestID()});\n")
    response = api.invoke(name, {"a": 1})
    assert response.status_code == 200, response.text
    assert response.headers["x-is-func-err"] == "false", response.text
    body = response.json()
    assert body["got"] == {"a": 1}
    assert body["id"] == response.headers["x-cff-request-id"]
    summary = json.loads(response.headers["x-cff-invoke-summary"])
    assert summary["coldStart"] is True
