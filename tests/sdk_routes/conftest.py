"""The official FunctionGraph SDK pointed at a real daemon, authenticated with the admin token.

Until AK/SK signing lands, `BasicCredentials` here puts the node's admin token in X-Auth-Token
where the SDK would sign; everything else (paths, query, answer parsing) is the stock SDK's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future

import pytest
from huaweicloudsdkcore.auth import credentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from huaweicloudsdkfunctiongraph.v2 import FunctionGraphClient

from tests.conftest import Api, Daemon

PROJECT = "default"


class BasicCredentials(credentials.BasicCredentials):
    """The SDK's BasicCredentials presenting the admin token instead of signing.

    Named like its base: the client builder accepts credentials by class name only."""

    def __init__(self, token: str, project_id: str) -> None:
        super().__init__("unused-ak", "unused-sk", project_id)
        self.token = token

    def process_auth_request(self, request: SdkRequest, http_client: object) -> Future:
        request.header_params["X-Auth-Token"] = self.token
        request.header_params["X-Project-Id"] = self.project_id
        # What signing would also have done: the path and query become the request's URI.
        Signer.process_request_uri(request)
        done: Future = Future()
        done.set_result(request)
        return done


def sdk_client(daemon: Daemon, project_id: str = PROJECT) -> FunctionGraphClient:
    config = HttpConfig.get_default_config()
    config.timeout = (5, 30)
    config.retry_times = 0
    return (
        FunctionGraphClient.new_builder()
        .with_credentials(BasicCredentials(daemon.token, project_id))
        .with_endpoint(daemon.url)
        .with_http_config(config)
        .build()
    )


@pytest.fixture(scope="module")
def sdk_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon of this directory's own: the statistics and quotas tests count what it did."""
    d = Daemon(tmp_path_factory.mktemp("fgd-sdk") / "state", "[instances]\nidle_keepalive = 45.0\n")
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def sdk(sdk_daemon: Daemon) -> FunctionGraphClient:
    return sdk_client(sdk_daemon)


@pytest.fixture(scope="module")
def api(sdk_daemon: Daemon) -> Api:
    """The daemon's plain HTTP API (tests.conftest.Api) for setting things up."""
    return Api(sdk_daemon)


def refused(call: Callable[[], object]) -> ClientRequestException:
    """The SDK's exception for a call fgd must refuse with a 4xx."""
    with pytest.raises(ClientRequestException) as caught:
        call()
    assert 400 <= caught.value.status_code < 500
    return caught.value
