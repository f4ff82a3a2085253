"""The official FunctionGraph SDK pointed at a real daemon, signing with an access key (AK/SK).

Everything is the stock SDK: BasicCredentials, request building, signing, paths and response
parsing. Its conversion warnings are failures here.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import httpx
import pytest
from huaweicloudsdkcore.warning.warning import SdkWarning
from huaweicloudsdkfunctiongraph.v2 import FunctionGraphClient

from tests.conftest import Daemon, access_key, sdk_client_for


@pytest.fixture(scope="session")
def sdk(daemon: Daemon) -> Iterator[FunctionGraphClient]:
    """A stock client for project "default" with an access key of its own (removed at the end)."""
    key = access_key(daemon, description="tests/sdk")
    yield sdk_client_for(daemon, key)
    httpx.delete(
        f"{daemon.url}/v2/{key['project_id']}/fgs/fgd/keys/{key['access']}",
        headers={"X-Auth-Token": daemon.token},
        timeout=10,
    )


@pytest.fixture(autouse=True)
def strict_parsing() -> Iterator[None]:
    """A value the SDK cannot convert to its model's type is a warning there (TypeConversionWarning,
    an SdkWarning); here a failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SdkWarning)
        yield
