"""Reserved instance lists, async invoke config lists and ShowFunctionCode through the stock SDK,
and fixed names under /functions/ next to functions of the same names."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest
from huaweicloudsdkfunctiongraph.v2 import FunctionGraphClient
from huaweicloudsdkfunctiongraph.v2.model import (
    ListFunctionAsyncInvokeConfigRequest,
    ListFunctionReservedInstancesRequest,
    ListReservedInstanceConfigsRequest,
    ListStatisticsRequest,
    ShowFunctionCodeRequest,
)

from tests.conftest import RUNTIME, Api, b64, make_zip, unique_name
from tests.sdk_routes.conftest import refused

SOURCE = "def handler(event, context):\n    return event\n"


@pytest.fixture(scope="module")
def reserved(api: Api) -> dict:
    config = api.deploy(SOURCE)
    response = api.http.put(f"/functions/{config['func_urn']}/reservedinstances", json={"count": 1})
    assert response.status_code == 200, response.text
    return config


@pytest.fixture(scope="module")
def plain(api: Api) -> dict:
    return api.deploy(SOURCE)


def test_reserved_instances_list_in_functiongraph_shape(sdk: FunctionGraphClient, reserved: dict) -> None:
    answer = sdk.list_function_reserved_instances(ListFunctionReservedInstancesRequest())
    mine = [r for r in answer.reservedinstances if r.func_urn == reserved["func_urn"]]
    assert len(mine) == 1 and mine[0].count == 1
    assert answer.count == len(answer.reservedinstances)
    assert answer.page_info.current_count == len(answer.reservedinstances)
    assert (answer.page_info.previous_marker, answer.page_info.next_marker) == (0, 0)


def test_reserved_instances_of_one_function_by_urn(sdk: FunctionGraphClient, reserved: dict, plain: dict) -> None:
    one = sdk.list_function_reserved_instances(ListFunctionReservedInstancesRequest(urn=reserved["func_urn"]))
    assert [(r.func_urn, r.count) for r in one.reservedinstances] == [(reserved["func_urn"], 1)]
    # Named explicitly, a function without reserved instances is listed with 0.
    none = sdk.list_function_reserved_instances(ListFunctionReservedInstancesRequest(urn=plain["func_urn"]))
    assert [(r.func_urn, r.count) for r in none.reservedinstances] == [(plain["func_urn"], 0)]
    gone = sdk.list_function_reserved_instances(ListFunctionReservedInstancesRequest(urn="nosuchfunction"))
    assert (gone.reservedinstances, gone.count) == ([], 0)


def test_reserved_instance_configs_list(sdk: FunctionGraphClient, reserved: dict) -> None:
    answer = sdk.list_reserved_instance_configs(ListReservedInstanceConfigsRequest(function_urn=reserved["func_urn"]))
    assert answer.count == 1
    config = answer.reserved_instances[0]
    assert config.function_urn == reserved["func_urn"]
    assert (config.qualifier_type, config.qualifier_name, config.min_count) == ("version", "latest", 1)
    assert config.idle_mode is False
    assert config.tactics_config.cron_configs == [] and config.tactics_config.metric_configs == []
    assert answer.page_info.current_count == 1
    everything = sdk.list_reserved_instance_configs(ListReservedInstanceConfigsRequest(limit="0"))
    assert reserved["func_urn"] in [c.function_urn for c in everything.reserved_instances]


def test_reserved_lists_page(sdk: FunctionGraphClient, api: Api, reserved: dict) -> None:
    other = api.deploy(SOURCE)
    assert api.http.put(f"/functions/{other['func_urn']}/reservedinstances", json={"count": 1}).status_code == 200
    first = sdk.list_reserved_instance_configs(ListReservedInstanceConfigsRequest(limit="1"))
    assert first.count >= 2 and len(first.reserved_instances) == 1
    assert first.page_info.next_marker == 1
    second = sdk.list_reserved_instance_configs(ListReservedInstanceConfigsRequest(limit="1", marker="1"))
    assert second.page_info.previous_marker == 1
    assert second.reserved_instances[0].function_urn != first.reserved_instances[0].function_urn
    api.http.put(f"/functions/{other['func_urn']}/reservedinstances", json={"count": 0})


@pytest.mark.parametrize(("field", "value"), [("limit", "-1"), ("limit", "x"), ("marker", "-5"), ("marker", "0x10")])
def test_reserved_lists_refuse_malformed_paging(sdk: FunctionGraphClient, field: str, value: str) -> None:
    error = refused(lambda: sdk.list_reserved_instance_configs(ListReservedInstanceConfigsRequest(**{field: value})))
    assert error.status_code == 400 and field in error.error_msg
    error = refused(
        lambda: sdk.list_function_reserved_instances(ListFunctionReservedInstancesRequest(**{field: value}))
    )
    assert error.status_code == 400 and field in error.error_msg


def test_reserved_lists_refuse_a_urn_of_another_project(sdk: FunctionGraphClient, reserved: dict) -> None:
    urn = reserved["func_urn"].replace(":default:function:", ":otherproject:function:")
    error = refused(lambda: sdk.list_reserved_instance_configs(ListReservedInstanceConfigsRequest(function_urn=urn)))
    assert error.status_code == 400 and "project" in error.error_msg


def test_fixed_names_win_over_functions_of_the_same_names(sdk: FunctionGraphClient, api: Api) -> None:
    # Function names may be "statistics" or "reservedinstances": the lists keep their paths,
    # and each function keeps its own routes (by name below /functions/<name>/, or by URN).
    for name in ("reservedinstances", "reservedinstanceconfigs", "statistics"):
        response = api.create(make_zip({"index.py": SOURCE}), name=name)
        assert response.status_code == 200, response.text
    try:
        assert isinstance(sdk.list_reserved_instance_configs(ListReservedInstanceConfigsRequest()).count, int)
        assert isinstance(sdk.list_function_reserved_instances(ListFunctionReservedInstancesRequest()).count, int)
        assert sdk.list_statistics(ListStatisticsRequest(filter="monitor_data")).statistics is not None
        for name in ("reservedinstances", "reservedinstanceconfigs", "statistics"):
            assert api.http.get(f"/functions/{name}/config").json()["func_name"] == name
            assert api.invoke(name, {"n": name}).json() == {"n": name}
    finally:
        for name in ("reservedinstances", "reservedinstanceconfigs", "statistics"):
            assert api.http.delete(f"/functions/{name}").status_code == 204


def test_async_invoke_configs_list(sdk: FunctionGraphClient, api: Api, plain: dict) -> None:
    urn = plain["func_urn"]
    empty = sdk.list_function_async_invoke_config(ListFunctionAsyncInvokeConfigRequest(function_urn=urn))
    assert (empty.async_invoke_configs, empty.count, empty.page_info.current_count) == ([], 0, 0)
    body = {"max_async_event_age_in_seconds": 600, "max_async_retry_attempts": 3}
    assert api.http.put(f"/functions/{urn}/async-invoke-config", json=body).status_code == 200
    answer = sdk.list_function_async_invoke_config(ListFunctionAsyncInvokeConfigRequest(function_urn=urn))
    assert answer.count == 1 and answer.page_info.current_count == 1
    config = answer.async_invoke_configs[0]
    assert (config.func_urn, config.max_async_event_age_in_seconds, config.max_async_retry_attempts) == (urn, 600, 3)
    past = sdk.list_function_async_invoke_config(ListFunctionAsyncInvokeConfigRequest(function_urn=urn, marker="1"))
    assert (past.async_invoke_configs, past.count) == ([], 1)
    assert api.http.delete(f"/functions/{urn}/async-invoke-config").status_code == 204
    cleared = sdk.list_function_async_invoke_config(ListFunctionAsyncInvokeConfigRequest(function_urn=urn))
    assert cleared.count == 0


def test_async_invoke_configs_refusals(sdk: FunctionGraphClient, plain: dict) -> None:
    urn = plain["func_urn"]
    error = refused(
        lambda: sdk.list_function_async_invoke_config(
            ListFunctionAsyncInvokeConfigRequest(function_urn=urn, limit="-1")
        )
    )
    assert error.status_code == 400 and "limit" in error.error_msg
    error = refused(
        lambda: sdk.list_function_async_invoke_config(ListFunctionAsyncInvokeConfigRequest(function_urn="nosuchfn"))
    )
    assert error.status_code == 404


def test_show_function_code_has_func_code_with_a_working_link(sdk: FunctionGraphClient, api: Api) -> None:
    package = make_zip({"index.py": SOURCE, "data/extra.txt": "x" * 1000})
    name = unique_name("code")
    body = {
        "func_name": name,
        "runtime": RUNTIME,
        "handler": "index.handler",
        "code_type": "zip",
        "code_filename": "mine.zip",
        "func_code": {"file": b64(package)},
    }
    assert api.http.post("/functions", json=body).status_code == 200
    code = sdk.show_function_code(ShowFunctionCodeRequest(function_urn=name))
    assert code.func_name == name and code.func_urn.endswith(f":{name}:latest")
    assert (code.runtime, code.code_type, code.code_filename) == (RUNTIME, "zip", "mine.zip")
    assert code.code_size == len(package)
    assert code.digest == hashlib.sha512(package).hexdigest()
    assert code.last_modified is not None
    assert code.func_code.file == ""
    exported = api.http.get(code.func_code.link.removeprefix("/v2/default/fgs"))
    assert exported.status_code == 200
    with zipfile.ZipFile(io.BytesIO(exported.content)) as archive:
        assert archive.read("index.py").decode() == SOURCE
        assert archive.read("data/extra.txt") == b"x" * 1000


def test_show_function_code_of_a_missing_function_is_404(sdk: FunctionGraphClient) -> None:
    error = refused(lambda: sdk.show_function_code(ShowFunctionCodeRequest(function_urn="nosuchfunction")))
    assert error.status_code == 404
