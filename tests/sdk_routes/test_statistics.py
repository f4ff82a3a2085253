"""ListStatistics, ListFunctionStatistics, ShowFunctionMetrics (SLA report) and ListQuotas through
the stock SDK, answered from the daemon's own counters and limits."""

from __future__ import annotations

import time

import httpx
import pytest
from huaweicloudsdkfunctiongraph.v2 import FunctionGraphClient
from huaweicloudsdkfunctiongraph.v2.model import (
    ListFunctionStatisticsRequest,
    ListQuotasRequest,
    ListStatisticsRequest,
    ShowFunctionMetricsRequest,
)

from tests.conftest import RUNTIME, Api, Daemon, access_key, b64, make_zip, sdk_client_for, unique_name
from tests.sdk_routes.conftest import refused, sdk_client

SOURCE = """
import time

def handler(event, context):
    if event.get("fail"):
        raise ValueError("asked to fail")
    time.sleep(event.get("sleep", 0))
    return "ok"
"""


@pytest.fixture(scope="module")
def worked(api: Api) -> dict:
    """A function invoked 3 times successfully, once failing, and refused once (max instances 0)."""
    config = api.deploy(SOURCE)
    name = config["func_name"]
    for _ in range(3):
        assert api.invoke(name, {"sleep": 0.02}).status_code == 200
    assert api.invoke(name, {"fail": True}).headers["x-is-func-err"] == "true"
    assert api.http.put(f"/functions/{name}/config-max-instance", json={"max_instance_num": 0}).status_code == 200
    assert api.invoke(name).status_code == 429
    assert api.http.put(f"/functions/{name}/config-max-instance", json={"max_instance_num": 400}).status_code == 200
    return config


def total(points: list) -> float:
    return sum(p.value for p in points if p.value >= 0)


def test_function_statistics_count_what_happened(sdk: FunctionGraphClient, worked: dict) -> None:
    answer = sdk.list_function_statistics(ListFunctionStatisticsRequest(func_urn=worked["func_urn"], period="5"))
    assert len(answer.count) == 5  # one point per minute of the last 5
    stamps = [p.timestamp for p in answer.count]
    assert all(isinstance(s, int) and s % 60_000 == 0 for s in stamps)
    assert stamps == sorted(stamps) and stamps[-1] <= time.time() * 1000
    assert total(answer.count) == 4
    assert total(answer.fail_count) == 1
    assert total(answer.function_error_count) == 1
    assert total(answer.system_error_count) == 0
    assert total(answer.reject_count) == 1
    ran = [p.value for p in answer.max_duration if p.value >= 0]
    assert ran and max(ran) >= 20  # the 20 ms sleeps
    assert all(
        0 <= p.value <= q.value for p, q in zip(answer.min_duration, answer.max_duration, strict=True) if q.value >= 0
    )
    # Minutes in which nothing ran have no duration: FunctionGraph's -1.
    assert all(d.value == -1 for d, c in zip(answer.duration, answer.count, strict=True) if c.value == 0)
    assert max(p.value for p in answer.concurrency_num) >= 1


def test_function_statistics_over_a_day_come_in_hour_points(sdk: FunctionGraphClient, worked: dict) -> None:
    answer = sdk.list_function_statistics(ListFunctionStatisticsRequest(func_urn=worked["func_urn"], period="1440"))
    assert 24 <= len(answer.count) <= 25
    assert all(p.timestamp % 3_600_000 == 0 for p in answer.count)
    assert total(answer.count) == 4


def test_sla_report_has_every_series(sdk: FunctionGraphClient, worked: dict) -> None:
    answer = sdk.show_function_metrics(ShowFunctionMetricsRequest(func_urn=worked["func_urn"], period="1"))
    assert len(answer.count) == 60
    assert total(answer.count) == 4 and total(answer.reject_count) == 1
    assert max(p.value for p in answer.instance_num) >= 1
    assert max(p.value for p in answer.concurrency_num) >= 1
    assert all(p.value == 0 for p in answer.reserved_instance_num)
    fifteen = sdk.show_function_metrics(ShowFunctionMetricsRequest(func_urn=worked["func_urn"], period="15"))
    assert all(p.timestamp % 900_000 == 0 for p in fifteen.count)
    assert total(fifteen.count) == 4


def test_tenant_statistics_add_up_the_project(sdk_daemon: Daemon, api: Api, worked: dict) -> None:
    other = unique_name("other")
    api.deploy(SOURCE, name=other)
    for _ in range(2):
        api.invoke(other)
    project = sdk_client(sdk_daemon).list_statistics(ListStatisticsRequest(filter="monitor_data", period="1"))
    assert len(project.statistics.count) == 60
    # Every function of the project together (other tests' functions included).
    assert total(project.statistics.count) >= 6
    one = sdk_client(sdk_daemon).list_function_statistics(ListFunctionStatisticsRequest(func_urn=other, period="60"))
    assert total(one.count) == 2


def test_monthly_report_counts_this_month(sdk: FunctionGraphClient, worked: dict) -> None:
    answer = sdk.list_statistics(ListStatisticsRequest(filter="monthly_report", option="0"))
    assert [m.date for m in answer.count] == [time.strftime("%Y-%m", time.gmtime())]
    assert answer.count[0].value >= 4
    assert answer.gbs[0].value > 0  # 128 MB for at least 3 x 20 ms
    assert [m.value for m in answer.gpu_gbs] == [0]
    six = sdk.list_statistics(ListStatisticsRequest(filter="monthly_report", option="3"))
    assert len(six.count) == 6 and six.count[-1].date == answer.count[0].date
    last = sdk.list_statistics(ListStatisticsRequest(filter="monthly_report", option="1"))
    assert len(last.count) == 1 and last.count[0].date < answer.count[0].date


def test_asynchronous_invocations_are_counted(sdk: FunctionGraphClient, api: Api) -> None:
    name = api.deploy(SOURCE)["func_name"]
    for event in ({}, {"fail": True}):
        assert api.http.post(f"/functions/{name}/invocations-async", json=event).status_code == 202
    deadline = time.monotonic() + 10
    states: list[str] = []
    while sorted(states) != ["FAIL", "SUCCESS"] and time.monotonic() < deadline:
        time.sleep(0.1)
        states = [i["status"] for i in api.http.get(f"/functions/{name}/async-invocations").json()["invocations"]]
    assert sorted(states) == ["FAIL", "SUCCESS"]
    answer = sdk.list_function_statistics(ListFunctionStatisticsRequest(func_urn=name, period="5"))
    # The failing event ran twice (max_async_retry_attempts defaults to 1).
    assert total(answer.count) == 3
    assert total(answer.function_error_count) == 2


def test_gateway_invocations_and_refusals_are_counted(sdk: FunctionGraphClient, sdk_daemon: Daemon, api: Api) -> None:
    name = api.deploy(SOURCE)["func_name"]
    path = f"/stats-{name}"
    assert api.route(name, path).status_code == 201
    assert httpx.get(f"{sdk_daemon.gateway_url}{path}").status_code == 502  # "ok" is not an APIG answer
    assert api.http.put(f"/functions/{name}/config-max-instance", json={"max_instance_num": 0}).status_code == 200
    assert httpx.get(f"{sdk_daemon.gateway_url}{path}").status_code == 429
    answer = sdk.list_function_statistics(ListFunctionStatisticsRequest(func_urn=name, period="5"))
    assert (total(answer.count), total(answer.reject_count)) == (1, 1)


def test_statistics_of_a_new_function_of_an_old_name_start_at_zero(sdk: FunctionGraphClient, api: Api) -> None:
    name = unique_name("reborn")
    api.deploy(SOURCE, name=name)
    assert api.invoke(name).status_code == 200
    assert api.http.delete(f"/functions/{name}").status_code == 204
    api.deploy(SOURCE, name=name)
    answer = sdk.list_function_statistics(ListFunctionStatisticsRequest(func_urn=name, period="5"))
    assert total(answer.count) == 0


@pytest.mark.parametrize(
    "period", ["0", "1441", "-5", "5.5", "abc", "1e3", "99999999999999999999", "9" * 5000, "%00", "٣"]
)
def test_function_statistics_refuse_a_bad_period(sdk: FunctionGraphClient, worked: dict, period: str) -> None:
    error = refused(
        lambda: sdk.list_function_statistics(ListFunctionStatisticsRequest(func_urn=worked["func_urn"], period=period))
    )
    assert error.status_code == 400 and "period" in error.error_msg


@pytest.mark.parametrize("period", ["0", "2", "30", "1440", "x"])
def test_sla_report_refuses_a_period_that_is_not_a_step(sdk: FunctionGraphClient, worked: dict, period: str) -> None:
    error = refused(
        lambda: sdk.show_function_metrics(ShowFunctionMetricsRequest(func_urn=worked["func_urn"], period=period))
    )
    assert error.status_code == 400 and "period" in error.error_msg


@pytest.mark.parametrize(
    ("query", "argument"),
    [
        ({"filter": "everything"}, "filter"),
        ({"filter": "monitor_data", "period": "7"}, "period"),
        ({"filter": "monitor_data", "limit": "501"}, "limit"),
        ({"filter": "monitor_data", "marker": "-1"}, "marker"),
    ],
)
def test_tenant_statistics_refuse_bad_arguments(sdk: FunctionGraphClient, query: dict, argument: str) -> None:
    error = refused(lambda: sdk.list_statistics(ListStatisticsRequest(**query)))
    assert error.status_code == 400 and argument in error.error_msg


def test_statistics_of_missing_functions_and_bad_projects(sdk_daemon: Daemon, sdk: FunctionGraphClient) -> None:
    error = refused(
        lambda: sdk.list_function_statistics(ListFunctionStatisticsRequest(func_urn="nosuchfn", period="5"))
    )
    assert error.status_code == 404
    error = refused(lambda: sdk.show_function_metrics(ShowFunctionMetricsRequest(func_urn="nosuchfn", period="5")))
    assert error.status_code == 404
    stranger = sdk_client(sdk_daemon, "nosuchproject")
    empty = stranger.list_statistics(ListStatisticsRequest(filter="monitor_data", period="5"))
    assert total(empty.statistics.count) == 0
    error = refused(
        lambda: sdk_client_for(sdk_daemon, access_key(sdk_daemon), "bad!project").list_quotas(ListQuotasRequest())
    )
    assert error.status_code == 403  # a key works for its own project only
    for path in ("quotas", "functions/statistics", "functions/reservedinstances", "functions/reservedinstanceconfigs"):
        answer = httpx.get(f"{sdk_daemon.url}/v2/bad!project/fgs/{path}", headers={"X-Auth-Token": sdk_daemon.token})
        assert answer.status_code == 400 and "project_id" in answer.json()["error_msg"], path


def test_quotas_are_the_configured_limits(sdk_daemon: Daemon, api: Api) -> None:
    project = unique_name("quota")
    client = api.http
    package = make_zip({"index.py": SOURCE})
    for name in ("one", "two"):
        body = {
            "func_name": name,
            "runtime": RUNTIME,
            "handler": "index.handler",
            "code_type": "zip",
            "func_code": {"file": b64(package)},
        }
        assert client.post(f"{sdk_daemon.url}/v2/{project}/fgs/functions", json=body).status_code == 200
    assert (
        client.put(
            f"{sdk_daemon.url}/v2/{project}/fgs/functions/two/config-max-instance", json={"max_instance_num": 7}
        ).status_code
        == 200
    )
    quotas = {r.type: r for r in sdk_client(sdk_daemon, project).list_quotas(ListQuotasRequest()).quotas.resources}
    assert (quotas["fgs_func_num"].quota, quotas["fgs_func_num"].used) == (-1, 2)
    assert quotas["fgs_func_code_size"].unit == "MB" and quotas["fgs_func_code_size"].used == 1
    assert quotas["fgs_on_demand_instance_limit"].quota == 1000
    assert quotas["fgs_on_demand_instance_limit"].used == 400  # "one" keeps the default 400
    assert (quotas["fgs_func_occurs"].quota, quotas["fgs_func_occurs"].used) == (1000, 0)
    # [instances] idle_keepalive = 45.0 in this directory's daemon.
    assert quotas["fgs_func_scale_down_timeout"].quota == 45
    empty = {
        r.type: r.used
        for r in sdk_client(sdk_daemon, unique_name("empty")).list_quotas(ListQuotasRequest()).quotas.resources
    }
    assert empty["fgs_func_num"] == 0 and empty["fgs_func_code_size"] == 0
