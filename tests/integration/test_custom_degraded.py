"""Custom and http functions on a host without mount namespaces (degraded mode): the code stays
at its host path, reached through a descriptor, and bootstrap still starts from it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Api, running
from tests.integration.custom_support import HTTP_SERVER, SHELL_ECHO, deploy


@pytest.fixture(scope="module")
def degraded_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    # Credentials off too: the code's host path is under the state dir, which a function uid
    # could not traverse (as in tests/integration/test_bundled.py).
    config = '[sandbox]\nallow_degraded = true\ndisable = ["mounts", "credentials"]\n'
    with running(Path(tmp_path_factory.mktemp("custom-degraded")) / "state", config) as daemon:
        yield Api(daemon)


def test_custom_without_mounts(degraded_api: Api) -> None:
    name = deploy(degraded_api, "Custom", {"bootstrap": SHELL_ECHO})
    response = degraded_api.invoke(name, {"a": 1})
    assert response.json() == {"echo": {"a": 1}, "id": response.headers["X-Cff-Request-Id"]}


def test_http_without_mounts(degraded_api: Api) -> None:
    # FunctionGraph's interpreter paths exist only in a mounted root: the host's python3 here.
    files = {"bootstrap": "#!/bin/sh\nexec python3 -u server.py\n", "server.py": HTTP_SERVER}
    name = deploy(degraded_api, "http", files)
    answer = degraded_api.invoke(name, {"httpMethod": "GET", "path": "/x"}).json()
    assert answer["statusCode"] == 200, answer
    assert json.loads(answer["body"])["path"] == "/x"
