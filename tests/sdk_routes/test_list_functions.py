"""ListFunctions through the stock SDK: func_name and package_name filter, marker and maxitems page."""

from __future__ import annotations

import pytest
from huaweicloudsdkfunctiongraph.v2 import FunctionGraphClient
from huaweicloudsdkfunctiongraph.v2.model import ListFunctionsRequest

from tests.conftest import RUNTIME, Api, Daemon, access_key, b64, make_zip, sdk_client_for, unique_name
from tests.sdk_routes.conftest import refused, sdk_client

SOURCE = "def handler(event, context):\n    return event\n"


@pytest.fixture(scope="module")
def names(api: Api) -> dict[str, str]:
    tag = unique_name("q")
    made = {
        "a1": api.deploy(SOURCE, name=f"alpha{tag}one")["func_name"],
        "a2": api.deploy(SOURCE, name=f"Alpha{tag}two")["func_name"],
        "b": api.deploy(SOURCE, name=f"beta{tag}")["func_name"],
    }
    body = {
        "func_name": f"alpha{tag}pkg",
        "package": f"pkg{tag}",
        "runtime": RUNTIME,
        "handler": "index.handler",
        "code_type": "zip",
        "func_code": {"file": b64(make_zip({"index.py": SOURCE}))},
    }
    response = api.http.post("/functions", json=body)
    assert response.status_code == 200, response.text
    made["p"] = body["func_name"]
    made["tag"] = tag
    return made


def listed(sdk: FunctionGraphClient, **query: str) -> list[str]:
    answer = sdk.list_functions(ListFunctionsRequest(**query))
    assert answer.count == len(answer.functions)
    return sorted(f.func_name for f in answer.functions)


def test_func_name_matches_any_part_of_a_name_case_aside(sdk: FunctionGraphClient, names: dict) -> None:
    tag = names["tag"]
    assert listed(sdk, func_name=f"alpha{tag}") == sorted([names["a1"], names["a2"], names["p"]])
    assert listed(sdk, func_name=f"{tag.upper()}TWO") == [names["a2"]]
    assert listed(sdk, func_name=names["b"]) == [names["b"]]


def test_package_name_filters_and_combines_with_func_name(sdk: FunctionGraphClient, names: dict) -> None:
    tag = names["tag"]
    assert listed(sdk, package_name=f"pkg{tag}") == [names["p"]]
    assert listed(sdk, package_name=f"pkg{tag}", func_name="beta") == []
    assert listed(sdk, package_name="default", func_name=f"alpha{tag}") == sorted([names["a1"], names["a2"]])


def test_filters_matching_nothing_answer_an_empty_list(sdk: FunctionGraphClient, names: dict) -> None:
    answer = sdk.list_functions(ListFunctionsRequest(func_name=f"nothing{names['tag']}", package_name="nopkg"))
    assert (answer.functions, answer.count, answer.next_marker) == ([], 0, 0)


def test_marker_and_maxitems_walk_the_list(sdk: FunctionGraphClient, names: dict) -> None:
    everything = listed(sdk, func_name=names["tag"])
    assert len(everything) == 4
    seen, marker = [], "0"
    while True:
        answer = sdk.list_functions(ListFunctionsRequest(func_name=names["tag"], marker=marker, maxitems="3"))
        assert answer.count == 4
        assert len(answer.functions) <= 3
        seen += [f.func_name for f in answer.functions]
        if not answer.next_marker:
            break
        assert isinstance(answer.next_marker, int)
        marker = str(answer.next_marker)
    assert sorted(seen) == everything


def test_maxitems_zero_or_over_400_means_400(sdk: FunctionGraphClient, names: dict) -> None:
    # FunctionGraph's documented rule for maxitems.
    for maxitems in ("0", "401", "100000"):
        assert listed(sdk, func_name=names["tag"], maxitems=maxitems) == listed(sdk, func_name=names["tag"])


@pytest.mark.parametrize(
    ("query", "argument"),
    [
        ({"maxitems": "-1"}, "maxitems"),
        ({"maxitems": "ten"}, "maxitems"),
        ({"maxitems": str(10**20)}, "maxitems"),
        ({"maxitems": "9" * 5000}, "maxitems"),
        ({"marker": "-1"}, "marker"),
        ({"marker": "1e3"}, "marker"),
        ({"marker": str(10**20)}, "marker"),
        ({"func_name": "a b"}, "func_name"),
        ({"func_name": "../etc"}, "func_name"),
        ({"func_name": "fn%00"}, "func_name"),
        ({"func_name": "函数"}, "func_name"),
        ({"func_name": "x" * 61}, "func_name"),
        ({"package_name": "pkg/../x"}, "package_name"),
    ],
)
def test_malformed_arguments_are_400_naming_them(sdk: FunctionGraphClient, query: dict, argument: str) -> None:
    error = refused(lambda: sdk.list_functions(ListFunctionsRequest(**query)))
    assert error.status_code == 400
    assert error.error_code == "FSS.0400"
    assert argument in error.error_msg


def test_unknown_project_lists_nothing_and_a_malformed_one_is_refused(sdk_daemon: Daemon, api: Api) -> None:
    answer = sdk_client(sdk_daemon, "someotherproject").list_functions(ListFunctionsRequest())
    assert (answer.functions, answer.count) == ([], 0)
    # A key works for its own project only; the admin token reaches the project check itself.
    error = refused(
        lambda: sdk_client_for(sdk_daemon, access_key(sdk_daemon), "bad!project").list_functions(ListFunctionsRequest())
    )
    assert error.status_code == 403
    answer = api.http.get(f"{sdk_daemon.url}/v2/bad!project/fgs/functions")
    assert answer.status_code == 400 and "project_id" in answer.json()["error_msg"]
