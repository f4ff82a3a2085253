"""Agency credentials reach Custom and http functions as FunctionGraph sends them: headers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import Api, running
from tests.integration.custom_support import HTTP_FILES, PYTHON_WORKER, deploy

VALUES = {name: f"{name}-{uuid.uuid4().hex}" for name in ("access_key", "secret_key", "security_token", "auth_token")}


@pytest.fixture(scope="module")
def agency_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    config = "[agencies.writer]\n" + "".join(f'{key} = "{value}"\n' for key, value in VALUES.items())
    with running(tmp_path_factory.mktemp("custom-agency") / "state", config) as daemon:
        yield Api(daemon)


def test_custom_gets_credentials_in_the_runtime_api_headers(agency_api: Api) -> None:
    name = deploy(agency_api, "Custom", {"bootstrap": PYTHON_WORKER}, xrole="writer")
    headers = {k.lower(): v for k, v in agency_api.invoke(name, {"op": "echo"}).json()["headers"].items()}
    assert headers["x-cff-access-key"] == headers["x-cff-security-access-key"] == VALUES["access_key"]
    assert headers["x-cff-secret-key"] == headers["x-cff-security-secret-key"] == VALUES["secret_key"]
    assert headers["x-cff-security-token"] == VALUES["security_token"]
    assert headers["x-cff-auth-token"] == VALUES["auth_token"]
    # Headers only: never in the bootstrap's environment.
    env = agency_api.invoke(name, {"op": "env"}).json()["env"]
    assert not any(value in env.values() for value in VALUES.values())


def test_http_gets_credentials_as_x_cff_headers(agency_api: Api) -> None:
    name = deploy(agency_api, "http", HTTP_FILES, xrole="writer")
    answer = agency_api.invoke(name, {"httpMethod": "GET", "path": "/"}).json()
    echo = json.loads(answer["body"])
    headers = {k.lower(): v for k, v in echo["headers"]}
    assert headers["x-cff-auth-token"] == VALUES["auth_token"]
    assert headers["x-cff-security-access-key"] == VALUES["access_key"]
    assert headers["x-cff-security-secret-key"] == VALUES["secret_key"]
    assert headers["x-cff-security-token"] == VALUES["security_token"]
    assert not any(value in echo["env"].values() for value in VALUES.values())
