"""The official FunctionGraph SDK, signing with AK/SK as a FunctionGraph user's code does,
pointed at a real daemon of this directory's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkfunctiongraph.v2 import FunctionGraphClient

from tests.conftest import Api, Daemon, access_key, running, sdk_client_for

PROJECT = "default"

# One access key per daemon and project (a project holds at most 100).
_keys: dict[tuple[str, str], dict] = {}


def sdk_client(daemon: Daemon, project: str = PROJECT) -> FunctionGraphClient:
    """The stock client with stock BasicCredentials and an access key made for `project`."""
    key = _keys.get((daemon.url, project))
    if key is None:
        key = _keys[daemon.url, project] = access_key(daemon, project, "tests/sdk_routes")
    return sdk_client_for(daemon, key)


@pytest.fixture(scope="module")
def sdk_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon of this directory's own: the statistics and quotas tests count what it did."""
    with running(tmp_path_factory.mktemp("fgd-sdk") / "state", "[instances]\nidle_keepalive = 45.0\n") as d:
        yield d


@pytest.fixture(scope="module")
def sdk(sdk_daemon: Daemon) -> FunctionGraphClient:
    return sdk_client(sdk_daemon)


@pytest.fixture(scope="module")
def api(sdk_daemon: Daemon) -> Api:
    """The daemon's plain HTTP API (tests.conftest.Api, admin token) for setting things up."""
    return Api(sdk_daemon)


def refused(call: Callable[[], object]) -> ClientRequestException:
    """The SDK's exception for a call fgd must refuse with a 4xx."""
    with pytest.raises(ClientRequestException) as caught:
        call()
    assert 400 <= caught.value.status_code < 500
    return caught.value
