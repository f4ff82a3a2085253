"""Issue 14 through the stock FunctionGraph SDK: `network_controller.disable_public_network`."""

from __future__ import annotations

import json

from huaweicloudsdkfunctiongraph.v2 import model as m

from tests.conftest import RUNTIME, Api, access_key, b64, make_zip, sdk_client_for, unique_name
from tests.network.conftest import NODE_ADDRESS, PROBE


def test_disable_public_network_from_the_sdk(node_api: Api) -> None:
    sdk = sdk_client_for(node_api.daemon, access_key(node_api.daemon))

    def create(**fields) -> m.CreateFunctionResponse:
        body = m.CreateFunctionRequestBody(
            func_name=unique_name("sdknet"),
            package="default",
            runtime=RUNTIME,
            handler="index.handler",
            memory_size=128,
            timeout=30,
            code_type="zip",
            func_code=m.FuncCode(file=b64(make_zip({"index.py": PROBE}))),
            **fields,
        )
        return sdk.create_function(m.CreateFunctionRequest(body=body))

    def fetch(urn: str) -> dict:
        steps = {"steps": [{"do": "http", "host": "198.51.100.10"}]}
        request = m.InvokeFunctionRequest(function_urn=urn, body=steps, x_cff_request_version="v1")
        invoked = sdk.invoke_function(request)
        # The handler's JSON text, as the SDK parses it (a JSON document: the list of results).
        result = json.loads(invoked.result) if isinstance(invoked.result, str) else invoked.result
        return result[0]

    closed = create(network_controller=m.NetworkControlConfig(disable_public_network=True))
    assert closed.network_controller.disable_public_network is True
    assert fetch(closed.func_urn) == {"error": "ENETUNREACH"}
    # FunctionGraph's default: the public network.
    opened = create()
    assert fetch(opened.func_urn) == {"body": f"outside {NODE_ADDRESS}"}
