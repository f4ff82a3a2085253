"""The stock FunctionGraph SDK on asynchronous invocations, dependencies and triggers."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkfunctiongraph.v2 import FunctionGraphClient
from huaweicloudsdkfunctiongraph.v2 import model as m

from tests.conftest import RUNTIME, b64, make_zip, unique_name
from tests.sdk.test_sdk_functions import create

FAILING = "def handler(event, context):\n    raise RuntimeError('on purpose')\n"


def refused(call) -> ClientRequestException:
    with pytest.raises(ClientRequestException) as caught:
        call()
    return caught.value


def wait_final(sdk: FunctionGraphClient, urn: str, request_id: str) -> m.ListFunctionAsyncInvocationsResult:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        listing = sdk.list_async_invocations(m.ListAsyncInvocationsRequest(function_urn=urn, request_id=request_id))
        if listing.invocations and listing.invocations[0].status in ("SUCCESS", "FAIL", "DISCARD"):
            return listing.invocations[0]
        time.sleep(0.1)
    raise AssertionError(f"invocation {request_id} did not finish")


def test_async_invocation_is_listed_with_functiongraph_types(sdk: FunctionGraphClient) -> None:
    created = create(sdk)
    accepted = sdk.async_invoke_function(m.AsyncInvokeFunctionRequest(function_urn=created.func_urn, body={"k": "v"}))
    assert isinstance(accepted.request_id, str) and accepted.request_id
    row = wait_final(sdk, created.func_urn, accepted.request_id)
    # Was: error_code "" and the SDK raised ValueError parsing every listing.
    assert row.status == "SUCCESS" and row.error_code == 0 and row.error_message == ""
    assert isinstance(row.start_time, datetime) and isinstance(row.end_time, str) and row.end_time.endswith("Z")
    listing = sdk.list_async_invocations(m.ListAsyncInvocationsRequest(function_urn=created.func_urn, limit="10"))
    assert listing.count >= 1 and listing.next_marker == 0
    assert accepted.request_id in [r.request_id for r in listing.invocations]


def test_failed_async_invocation_has_an_integer_error_code(sdk: FunctionGraphClient) -> None:
    created = create(sdk, func_code=m.FuncCode(file=b64(make_zip({"index.py": FAILING}))))
    sdk.update_function_async_invoke_config(
        m.UpdateFunctionAsyncInvokeConfigRequest(
            function_urn=created.func_urn,
            body=m.UpdateFunctionAsyncInvokeConfigRequestBody(max_async_retry_attempts=0),
        )
    )
    accepted = sdk.async_invoke_function(m.AsyncInvokeFunctionRequest(function_urn=created.func_urn, body={}))
    row = wait_final(sdk, created.func_urn, accepted.request_id)
    assert row.status == "FAIL" and row.error_code == 1 and "on purpose" in row.error_message


def test_cancel_of_an_unknown_invocation_is_404(sdk: FunctionGraphClient) -> None:
    created = create(sdk)
    error = refused(
        lambda: sdk.cancel_async_invocation(
            m.CancelAsyncInvocationRequest(
                function_urn=created.func_urn, body=m.CancelAsyncInvocationRequestBody(request_id="nope", type="")
            )
        )
    )
    assert error.status_code == 404


def test_async_invoke_config_round_trips(sdk: FunctionGraphClient) -> None:
    target = create(sdk)
    created = create(sdk)
    before = time.time()
    updated = sdk.update_function_async_invoke_config(
        m.UpdateFunctionAsyncInvokeConfigRequest(
            function_urn=created.func_urn,
            body=m.UpdateFunctionAsyncInvokeConfigRequestBody(
                max_async_event_age_in_seconds=600,
                max_async_retry_attempts=2,
                destination_config=m.FuncAsyncDestinationConfig(
                    on_failure=m.FuncDestinationConfig(
                        destination="FunctionGraph", param=json.dumps({"func_urn": target.func_urn})
                    )
                ),
                enable_async_status_log=True,
                log_group_id="lg",
                log_stream_id="ls",
            ),
        )
    )
    assert updated.max_async_event_age_in_seconds == 600 and updated.max_async_retry_attempts == 2
    assert updated.func_urn == created.func_urn and updated.enable_async_status_log is True
    failure = updated.destination_config.on_failure
    assert failure.destination == "FunctionGraph" and json.loads(failure.param) == {"func_urn": target.func_urn}
    assert updated.destination_config.on_success is None
    for stamp in (updated.created_time, updated.last_modified):
        assert isinstance(stamp, str)
        assert datetime.fromisoformat(stamp).timestamp() >= int(before)
    shown = sdk.show_function_async_invoke_config(m.ShowFunctionAsyncInvokeConfigRequest(function_urn=created.func_urn))
    assert shown.created_time == updated.created_time and shown.max_async_retry_attempts == 2
    sdk.delete_function_async_invoke_config(m.DeleteFunctionAsyncInvokeConfigRequest(function_urn=created.func_urn))
    reset = sdk.show_function_async_invoke_config(m.ShowFunctionAsyncInvokeConfigRequest(function_urn=created.func_urn))
    assert (
        reset.max_async_retry_attempts == 1 and reset.created_time == "" and reset.destination_config.on_failure is None
    )


def test_dependency_versions_with_functiongraph_fields(sdk: FunctionGraphClient) -> None:
    name = unique_name("lib")
    before_ms = int(time.time()) * 1000
    made = sdk.create_dependency_version(
        m.CreateDependencyVersionRequest(
            body=m.CreateDependencyRequestBody(
                name=name,
                runtime=RUNTIME,
                description="shared helpers",
                depend_type="zip",
                depend_file=b64(make_zip({"helpers.py": "X = 1\n"})),
            )
        )
    )
    assert made.name == name and made.version == 1 and made.owner == "private" and made.runtime == RUNTIME
    assert isinstance(made.size, int) and made.etag and isinstance(made.link, str)
    assert made.file_name == f"{name}.zip"
    assert isinstance(made.last_modified, int) and made.last_modified >= before_ms
    second = sdk.create_dependency_version(
        m.CreateDependencyVersionRequest(
            body=m.CreateDependencyRequestBody(
                name=name, runtime=RUNTIME, depend_type="zip", depend_file=b64(make_zip({"helpers.py": "X = 2\n"}))
            )
        )
    )
    assert second.version == 2 and second.dep_id == made.dep_id
    listing = sdk.list_dependencies(m.ListDependenciesRequest(name=name))
    assert listing.count == 2 and [d.version for d in listing.dependencies] == [1, 2]
    assert all(isinstance(d.last_modified, int) for d in listing.dependencies)
    versions = sdk.list_dependency_version(m.ListDependencyVersionRequest(depend_id=made.dep_id))
    assert [v.id for v in versions.dependencies] == [made.id, second.id] and versions.count == 2
    shown = sdk.show_dependency_version(m.ShowDependencyVersionRequest(depend_id=made.dep_id, version=1))
    assert shown.id == made.id and shown.is_shared is False and shown.last_modified == made.last_modified
    sdk.delete_dependency_version(m.DeleteDependencyVersionRequest(depend_id=made.dep_id, version=1))
    error = refused(
        lambda: sdk.show_dependency_version(m.ShowDependencyVersionRequest(depend_id=made.dep_id, version=1))
    )
    assert error.status_code == 404


def test_dependency_link_is_refused(sdk: FunctionGraphClient) -> None:
    error = refused(
        lambda: sdk.create_dependency_version(
            m.CreateDependencyVersionRequest(
                body=m.CreateDependencyRequestBody(
                    name=unique_name("obs"), runtime=RUNTIME, depend_type="obs", depend_link="https://b.example/d.zip"
                )
            )
        )
    )
    assert error.status_code == 400 and "depend_link" in error.error_msg


def test_timer_trigger_lifecycle(sdk: FunctionGraphClient) -> None:
    created = create(sdk)
    urn = created.func_urn
    made = sdk.create_function_trigger(
        m.CreateFunctionTriggerRequest(
            function_urn=urn,
            body=m.CreateFunctionTriggerRequestBody(
                trigger_type_code="TIMER",
                trigger_status="ACTIVE",
                event_data=m.TriggerEventDataRequestBody(
                    name="nightly", schedule_type="Cron", schedule="0 0 3 * * ?", user_event="hello"
                ),
            ),
        )
    )
    assert made.trigger_type_code == "TIMER" and made.trigger_status == "ACTIVE"
    assert made.event_data.name == "nightly" and made.event_data.schedule == "0 0 3 * * ?"
    assert made.event_data.user_event == "hello"
    assert isinstance(made.created_time, datetime) and isinstance(made.last_updated_time, datetime)
    listed = sdk.list_function_triggers(m.ListFunctionTriggersRequest(function_urn=urn))
    assert [t.trigger_id for t in listed.body] == [made.trigger_id]
    assert listed.body[0].event_data.schedule_type == "Cron"
    shown = sdk.show_function_trigger(
        m.ShowFunctionTriggerRequest(function_urn=urn, trigger_type_code="TIMER", trigger_id=made.trigger_id)
    )
    assert shown.trigger_id == made.trigger_id and shown.event_data.name == "nightly"
    disabled = sdk.update_trigger(
        m.UpdateTriggerRequest(
            function_urn=urn,
            trigger_type_code="TIMER",
            trigger_id=made.trigger_id,
            body=m.UpdateTriggerRequestBody(trigger_status="DISABLED"),
        )
    )
    assert disabled.trigger_status == "DISABLED" and disabled.event_data.schedule == "0 0 3 * * ?"
    # The SDK's event_data list (queue polling settings) does not apply to a timer.
    error = refused(
        lambda: sdk.update_trigger(
            m.UpdateTriggerRequest(
                function_urn=urn,
                trigger_type_code="TIMER",
                trigger_id=made.trigger_id,
                body=m.UpdateTriggerRequestBody(event_data=[m.UpdateriggerEventData(polling_interval=5)]),
            )
        )
    )
    assert error.status_code == 400 and "event_data" in error.error_msg and "TIMER" in error.error_msg
    sdk.delete_function_trigger(
        m.DeleteFunctionTriggerRequest(function_urn=urn, trigger_type_code="TIMER", trigger_id=made.trigger_id)
    )
    # The SDK reads an empty JSON array as no body at all.
    assert not sdk.list_function_triggers(m.ListFunctionTriggersRequest(function_urn=urn)).body


def test_apig_trigger_keeps_gateway_metadata(sdk: FunctionGraphClient) -> None:
    created = create(sdk)
    path = f"/{unique_name('sdkroute')}"
    event_data = m.TriggerEventDataRequestBody(
        name=unique_name("api"),
        path=path,
        req_method="GET",
        auth="NONE",
        match_mode="NORMAL",
        type=1,
        protocol="HTTPS",
        group_id="grp-1",
        group_name="APIGroup_1",
        env_name="RELEASE",
        env_id="env-1",
        sl_domain="example.apig.local",
        backend_type="FUNCTION",
        func_info=m.ApigTriggerFuncInfo(timeout=5000, invocation_type="sync"),
    )
    made = sdk.create_function_trigger(
        m.CreateFunctionTriggerRequest(
            function_urn=created.func_urn,
            body=m.CreateFunctionTriggerRequestBody(
                trigger_type_code="APIG", trigger_status="ACTIVE", event_data=event_data
            ),
        )
    )
    data = made.event_data
    assert data.path == path and data.req_method == "GET" and data.match_mode == "NORMAL"
    assert data.group_id == "grp-1" and data.env_name == "RELEASE" and data.type == 1
    assert data.protocol == "HTTPS" and data.func_info.timeout == 5000
    event_data.path = f"{path}x"
    event_data.name = unique_name("api")
    event_data.func_info = m.ApigTriggerFuncInfo(invocation_type="async")
    error = refused(
        lambda: sdk.create_function_trigger(
            m.CreateFunctionTriggerRequest(
                function_urn=created.func_urn,
                body=m.CreateFunctionTriggerRequestBody(trigger_type_code="APIG", event_data=event_data),
            )
        )
    )
    assert error.status_code == 400 and "invocation_type" in error.error_msg


def test_timer_trigger_refuses_fields_of_other_trigger_types(sdk: FunctionGraphClient) -> None:
    created = create(sdk)
    error = refused(
        lambda: sdk.create_function_trigger(
            m.CreateFunctionTriggerRequest(
                function_urn=created.func_urn,
                body=m.CreateFunctionTriggerRequestBody(
                    trigger_type_code="TIMER",
                    event_data=m.TriggerEventDataRequestBody(
                        name="t", schedule_type="Rate", schedule="1m", topic_urn="urn:smn:x"
                    ),
                ),
            )
        )
    )
    assert error.status_code == 400 and "topic_urn" in error.error_msg


def test_batch_delete_removes_every_trigger_of_the_function(sdk: FunctionGraphClient) -> None:
    created = create(sdk)
    other = create(sdk)
    for target, name in ((created, "one"), (created, "two"), (other, "kept")):
        sdk.create_function_trigger(
            m.CreateFunctionTriggerRequest(
                function_urn=target.func_urn,
                body=m.CreateFunctionTriggerRequestBody(
                    trigger_type_code="TIMER",
                    event_data=m.TriggerEventDataRequestBody(name=name, schedule_type="Rate", schedule="1h"),
                ),
            )
        )
    sdk.batch_delete_function_triggers(m.BatchDeleteFunctionTriggersRequest(function_urn=created.func_urn))
    assert not sdk.list_function_triggers(m.ListFunctionTriggersRequest(function_urn=created.func_urn)).body
    kept = sdk.list_function_triggers(m.ListFunctionTriggersRequest(function_urn=other.func_urn)).body
    assert [t.event_data.name for t in kept] == ["kept"]
