"""Versions and aliases through the stock FunctionGraph SDK (AK/SK signed): request models in,
parsed models out, every operation the SDK has for them."""

from __future__ import annotations

import datetime
import json

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkfunctiongraph.v2 import FunctionGraphClient
from huaweicloudsdkfunctiongraph.v2 import model as m

from tests.conftest import b64, make_zip
from tests.sdk.test_sdk_functions import create

CODE = (
    "def handler(event, context):\n"
    "    return {'code': %r, 'version': context.getVersion(), 'alias': context.getAlias()}\n"
)


def refused(call) -> ClientRequestException:
    with pytest.raises(ClientRequestException) as caught:
        call()
    return caught.value


def replace_code(sdk: FunctionGraphClient, urn: str, code: str) -> None:
    body = m.UpdateFunctionCodeRequestBody(
        code_type="zip", func_code=m.FuncCode(file=b64(make_zip({"index.py": CODE % code})))
    )
    sdk.update_function_code(m.UpdateFunctionCodeRequest(function_urn=urn, body=body))


def publish(sdk: FunctionGraphClient, urn: str, version: str, **fields) -> m.CreateFunctionVersionResponse:
    body = m.CreateFunctionVersionRequestBody(version=version, **fields)
    return sdk.create_function_version(m.CreateFunctionVersionRequest(function_urn=urn, body=body))


def invoke(sdk: FunctionGraphClient, urn: str) -> dict:
    # v1: the answer is {request_id, result, log, status}, which the SDK parses.
    answer = sdk.invoke_function(m.InvokeFunctionRequest(function_urn=urn, x_cff_request_version="v1", body={}))
    assert answer.status == 200, answer
    return json.loads(answer.result)


def test_versions_and_aliases_through_the_sdk(sdk: FunctionGraphClient) -> None:
    created = create(sdk, func_code=m.FuncCode(file=b64(make_zip({"index.py": CODE % "one"}))), memory_size=256)
    urn = created.func_urn
    base = urn.rsplit(":", 1)[0]
    v1 = publish(sdk, urn, "v1", description="first")
    assert (v1.version, v1.version_description, v1.memory_size, v1.func_urn) == ("v1", "first", 256, f"{base}:v1")
    assert isinstance(v1.last_modified, datetime.datetime) and v1.digest == created.digest
    error = refused(lambda: publish(sdk, urn, "v1b"))
    assert (error.status_code, error.error_code) == (400, "FSS.1016")
    replace_code(sdk, urn, "two")
    v2 = publish(sdk, urn, "v2")
    assert v2.digest != v1.digest

    listing = sdk.list_function_versions(m.ListFunctionVersionsRequest(function_urn=urn))
    assert [v.version for v in listing.versions] == ["latest", "v1", "v2"] and listing.count == 3
    assert listing.versions[1].strategy_config.concurrency == 400 and listing.versions[1].concurrent_num == 1
    paged = sdk.list_function_versions(m.ListFunctionVersionsRequest(function_urn=urn, marker="1", maxitems="1"))
    assert [v.version for v in paged.versions] == ["v1"] and paged.next_marker == 2

    body = m.CreateVersionAliasRequestBody(
        name="prod", version="v1", description="live", additional_version_weights={"v2": 0}
    )
    made = sdk.create_version_alias(m.CreateVersionAliasRequest(function_urn=urn, body=body))
    assert (made.name, made.version, made.alias_urn) == ("prod", "v1", f"{base}:!prod")
    assert made.additional_version_weights == {"v2": 0}
    strategy = {
        "v2": m.VersionStrategy(
            combine_type="and",
            rules=[m.VersionStrategyRules(rule_type="Header", param="x-beta", op="=", value="1")],
        )
    }
    body = m.CreateVersionAliasRequestBody(name="beta", version="v1", additional_version_strategy=strategy)
    beta = sdk.create_version_alias(m.CreateVersionAliasRequest(function_urn=urn, body=body))
    assert beta.additional_version_strategy["v2"].rules[0].param == "x-beta"

    aliases = sdk.list_version_aliases(m.ListVersionAliasesRequest(function_urn=urn))
    assert [(a.name, a.version) for a in aliases.body] == [("prod", "v1"), ("beta", "v1")]
    shown = sdk.show_version_alias(m.ShowVersionAliasRequest(function_urn=urn, alias_name="prod"))
    assert (shown.description, shown.additional_version_weights) == ("live", {"v2": 0})
    assert isinstance(shown.last_modified, datetime.datetime)

    assert invoke(sdk, f"{base}:!prod") == {"code": "one", "version": "v1", "alias": "prod"}
    assert invoke(sdk, f"{base}:v2")["code"] == "two"
    body = m.UpdateVersionAliasRequestBody(version="v2", description="moved")
    updated = sdk.update_version_alias(m.UpdateVersionAliasRequest(function_urn=urn, alias_name="prod", body=body))
    assert (updated.version, updated.description, updated.additional_version_weights) == ("v2", "moved", {})
    assert invoke(sdk, f"{base}:!prod") == {"code": "two", "version": "v2", "alias": "prod"}

    error = refused(lambda: sdk.show_version_alias(m.ShowVersionAliasRequest(function_urn=urn, alias_name="nope")))
    assert (error.status_code, error.error_code) == (404, "FSS.1053")
    body = m.CreateVersionAliasRequestBody(name="same", version="v1", additional_version_weights={"v1": 5})
    error = refused(lambda: sdk.create_version_alias(m.CreateVersionAliasRequest(function_urn=urn, body=body)))
    assert (error.status_code, error.error_code) == (400, "FSS.1093")

    # v2 is beta's additional version: it cannot go; deleting beta, then v2 (with prod on it) can.
    error = refused(lambda: sdk.delete_function(m.DeleteFunctionRequest(function_urn=f"{base}:v2")))
    assert (error.status_code, error.error_code) == (409, "FSS.1094")
    sdk.delete_version_alias(m.DeleteVersionAliasRequest(function_urn=urn, alias_name="beta"))
    sdk.delete_function(m.DeleteFunctionRequest(function_urn=f"{base}:v2"))
    remaining = sdk.list_version_aliases(m.ListVersionAliasesRequest(function_urn=urn))
    # The SDK parses an empty JSON array as no body at all.
    assert not remaining.body
    listing = sdk.list_function_versions(m.ListFunctionVersionsRequest(function_urn=urn))
    assert [v.version for v in listing.versions] == ["latest", "v1"]
    # The function itself is still there, and deleting it takes every version along.
    assert invoke(sdk, urn)["code"] == "two"
    sdk.delete_function(m.DeleteFunctionRequest(function_urn=urn))
    error = refused(lambda: sdk.list_function_versions(m.ListFunctionVersionsRequest(function_urn=urn)))
    assert error.status_code == 404
