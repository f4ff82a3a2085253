"""The stock FunctionGraph SDK creates and invokes Custom and http functions on fgd."""

from __future__ import annotations

import base64
import json

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkfunctiongraph.v2 import FunctionGraphClient
from huaweicloudsdkfunctiongraph.v2 import model as m

from tests.conftest import unique_name
from tests.integration.custom_support import HTTP_FILES, SHELL_ECHO, package


def body(runtime: str, files: dict, executable: tuple[str, ...] = ("bootstrap",)) -> m.CreateFunctionRequestBody:
    return m.CreateFunctionRequestBody(
        func_name=unique_name("sdk"),
        package="default",
        runtime=runtime,
        handler="bootstrap",
        memory_size=128,
        timeout=5,
        code_type="zip",
        func_code=m.FuncCode(file=base64.b64encode(package(files, executable)).decode()),
    )


def test_custom_function_through_the_sdk(sdk: FunctionGraphClient) -> None:
    created = sdk.create_function(m.CreateFunctionRequest(body=body("Custom", {"bootstrap": SHELL_ECHO})))
    assert created.runtime == "Custom" and created.handler == "bootstrap"
    invoked = sdk.invoke_function(
        m.InvokeFunctionRequest(function_urn=created.func_urn, body={"n": 1}, x_cff_request_version="v1")
    )
    assert json.loads(invoked.result)["echo"] == {"n": 1}


def test_http_function_through_the_sdk(sdk: FunctionGraphClient) -> None:
    created = sdk.create_function(m.CreateFunctionRequest(body=body("http", HTTP_FILES)))
    event = {"httpMethod": "GET", "path": "/sdk", "headers": {}, "body": ""}
    invoked = sdk.invoke_function(
        m.InvokeFunctionRequest(function_urn=created.func_urn, body=event, x_cff_request_version="v1")
    )
    answer = json.loads(invoked.result)
    assert answer["statusCode"] == 200 and json.loads(answer["body"])["path"] == "/sdk"


def test_sdk_sees_the_missing_bootstrap_refused(sdk: FunctionGraphClient) -> None:
    with pytest.raises(ClientRequestException) as caught:
        sdk.create_function(m.CreateFunctionRequest(body=body("Custom", {"bootstrap": SHELL_ECHO}, ())))
    assert caught.value.status_code == 400 and caught.value.error_code == "FSS.0400"
    assert "not executable" in caught.value.error_msg
