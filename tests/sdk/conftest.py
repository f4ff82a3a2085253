"""The official FunctionGraph SDK pointed at a real daemon.

Until AK/SK signing is in, the `sdk` client authenticates with the daemon's admin token: its
credentials put `X-Auth-Token` on each request instead of signing it. Everything else (request
building, paths, response parsing) is the stock SDK.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.signer.signer import Signer
from huaweicloudsdkcore.warning.warning import SdkWarning
from huaweicloudsdkfunctiongraph.v2 import FunctionGraphClient

from tests.conftest import Daemon

PROJECT = "default"


def token_credentials(token: str) -> BasicCredentials:
    """BasicCredentials (the SDK checks the class by name) that send the admin token instead of
    an AK/SK signature."""
    # Non-empty placeholders: with no AK/SK the SDK would ask a cloud metadata service for some.
    credentials = BasicCredentials("token-auth", "token-auth", PROJECT)

    def sign_request(request):
        request.header_params["X-Auth-Token"] = token
        Signer.process_request_uri(request)
        return request

    credentials.sign_request = sign_request
    return credentials


@pytest.fixture(scope="session")
def sdk(daemon: Daemon) -> FunctionGraphClient:
    return (
        FunctionGraphClient.new_builder()
        .with_credentials(token_credentials(daemon.token))
        .with_endpoint(daemon.url)
        .build()
    )


@pytest.fixture(autouse=True)
def strict_parsing() -> Iterator[None]:
    """A value the SDK cannot convert to its model's type is a warning there (TypeConversionWarning,
    an SdkWarning); here a failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SdkWarning)
        yield
