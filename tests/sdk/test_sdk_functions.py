"""The stock FunctionGraph SDK manages functions on fgd: request models in, parsed models out."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkfunctiongraph.v2 import FunctionGraphClient
from huaweicloudsdkfunctiongraph.v2 import model as m

from tests.conftest import RUNTIME, Daemon, b64, make_zip, unique_name

SOURCE = "def handler(event, context):\n    return {'got': event, 'who': context.getUserData('WHO')}\n"


def create_body(name: str, **fields) -> m.CreateFunctionRequestBody:
    defaults = {
        "func_name": name,
        "package": "default",
        "runtime": RUNTIME,
        "handler": "index.handler",
        "memory_size": 128,
        "timeout": 5,
        "code_type": "zip",
        "func_code": m.FuncCode(file=b64(make_zip({"index.py": SOURCE}))),
    }
    return m.CreateFunctionRequestBody(**{**defaults, **fields})


def create(sdk: FunctionGraphClient, **fields) -> m.CreateFunctionResponse:
    name = fields.pop("func_name", None) or unique_name("sdk")
    return sdk.create_function(m.CreateFunctionRequest(body=create_body(name, **fields)))


def refused(call) -> ClientRequestException:
    with pytest.raises(ClientRequestException) as caught:
        call()
    return caught.value


def test_create_with_functiongraph_metadata_round_trips(sdk: FunctionGraphClient, daemon: Daemon) -> None:
    created = create(
        sdk,
        type="v2",
        enterprise_project_id="ep-42",
        tags="team=search",
        log_config=m.FuncLogConfig(group_name="g", group_id="gid", stream_name="s", stream_id="sid"),
        lts_custom_tag={"env": "test"},
        domain_names='[{"id": "d1", "domain_name": "db.internal"}]',
        xrole="cff_admin",
        app_xrole="app_agency",
        network_controller=m.NetworkControlConfig(disable_public_network=True),
        pre_stop_handler="index.pre_stop",
        pre_stop_timeout=10,
        user_data=json.dumps({"WHO": "sdk"}),
        enable_lts_log=True,
        is_stateful_function=False,
        user_data_encrypt_kms_key_id="kms-1",
        code_encrypt_kms_key_id="kms-2",
        description="made by the SDK",
        # Their "off" values are accepted.
        func_vpc=m.FuncVpc(vpc_id="", subnet_id=""),
        custom_image=m.CustomImage(enabled=False),
        gpu_memory=0,
        mount_config=m.MountConfig(mount_user=m.MountUser(user_id=1000, user_group_id=1000)),
    )
    # Only the create answer's model has domain_names.
    assert created.domain_names == '[{"id": "d1", "domain_name": "db.internal"}]'
    shown = sdk.show_function_config(m.ShowFunctionConfigRequest(function_urn=created.func_urn))
    for config in (created, shown):
        assert config.type == "v2"
        assert config.enterprise_project_id == "ep-42"
        assert config.lts_custom_tag == {"env": "test"}
        assert config.xrole == "cff_admin" and config.app_xrole == "app_agency"
        assert config.network_controller.disable_public_network is True
        assert config.pre_stop_handler == "index.pre_stop" and config.pre_stop_timeout == 10
        assert config.log_group_id == "gid" and config.log_stream_id == "sid"
        assert config.enable_lts_log is True
        assert config.user_data_encrypt_kms_key_id == "kms-1" and config.code_encrypt_kms_key_id == "kms-2"
        assert config.custom_image.enabled is False and config.gpu_memory == 0
        assert config.mount_config.mount_user.user_id == 1000
        assert isinstance(config.user_data, str) and json.loads(config.user_data) == {"WHO": "sdk"}
    # The SDK's response models have no tags or whole log_config: fgd answers them beside.
    with daemon.client() as http:
        raw = http.get(f"/functions/{created.func_name}/config").json()
    assert raw["tags"] == "team=search"
    assert raw["log_config"] == {"group_name": "g", "group_id": "gid", "stream_name": "s", "stream_id": "sid"}


def test_function_answers_have_functiongraph_types(sdk: FunctionGraphClient, daemon: Daemon) -> None:
    created = create(sdk, encrypted_user_data=json.dumps({"SECRET": "hunter2"}))
    config = sdk.show_function_config(m.ShowFunctionConfigRequest(function_urn=created.func_urn))
    assert re.fullmatch(r"[0-9a-f-]{36}", config.func_id) and config.resource_id == config.func_id
    assert re.fullmatch(r"[0-9a-f]{32}", config.domain_id)
    assert config.namespace == "default" and config.project_name == "default"
    assert config.func_urn == f"urn:fss:local:default:function:default:{created.func_name}:latest"
    assert isinstance(config.last_modified, datetime)
    assert abs(config.last_modified.timestamp() - time.time()) < 60
    assert config.cpu == 300 and config.memory_size == 128 and config.timeout == 5
    assert config.version == "latest" and config.type == "v2"
    assert config.code_type == "zip" and isinstance(config.code_size, int) and len(config.digest) == 128
    assert config.user_data == "" and json.loads(config.encrypted_user_data) == {"SECRET": ""}
    assert config.depend_list == [] and config.depend_version_list == [] and config.dependencies == []
    assert config.strategy_config.concurrency == 400 and config.strategy_config.concurrent_num == 1
    assert config.func_vpc is None and config.long_time is False and config.gpu_memory == 0
    assert created.reserved_instance_count == 0
    # The same function made again under the same name is another function: another id.
    sdk.delete_function(m.DeleteFunctionRequest(function_urn=created.func_urn.removesuffix(":latest")))
    again = create(sdk, func_name=created.func_name)
    assert again.func_id != config.func_id


def test_list_functions_parses(sdk: FunctionGraphClient) -> None:
    created = create(sdk, user_data=json.dumps({"WHO": "lister"}))
    # The session daemon holds hundreds of other tests' functions: one page is every one of
    # them only while they fit, and the next marker says where the next page starts.
    listing = sdk.list_functions(m.ListFunctionsRequest(maxitems="400"))
    assert isinstance(listing.count, int) and listing.count >= 1
    assert listing.next_marker == (400 if listing.count > 400 else 0)
    listing = sdk.list_functions(m.ListFunctionsRequest(func_name=created.func_name))
    found = [f for f in listing.functions if f.func_name == created.func_name]
    assert len(found) == 1
    assert found[0].func_urn == created.func_urn and json.loads(found[0].user_data) == {"WHO": "lister"}
    assert isinstance(found[0].last_modified, datetime) and found[0].strategy_config.concurrency == 400


def test_user_data_as_json_string_and_as_object(sdk: FunctionGraphClient, daemon: Daemon) -> None:
    created = create(sdk, user_data=json.dumps({"WHO": "string"}))
    invoked = sdk.invoke_function(
        m.InvokeFunctionRequest(function_urn=created.func_urn, body={"n": 1}, x_cff_request_version="v1")
    )
    assert json.loads(invoked.result)["who"] == "string"
    update = m.UpdateFunctionConfigRequestBody(
        func_name=created.func_name, runtime=RUNTIME, handler="index.handler", timeout=5, memory_size=128
    )
    # The SDK sends whatever the attribute holds: an object works as well as its JSON string.
    update.user_data = {"WHO": "object"}
    updated = sdk.update_function_config(m.UpdateFunctionConfigRequest(function_urn=created.func_urn, body=update))
    assert json.loads(updated.user_data) == {"WHO": "object"}
    with daemon.client() as http:
        answer = http.post(f"/functions/{created.func_name}/invocations", json={}).json()
    assert answer["who"] == "object"


def test_update_config_keeps_metadata_and_changes_settings(sdk: FunctionGraphClient) -> None:
    created = create(sdk, enterprise_project_id="ep-1", tags="a=b")
    body = m.UpdateFunctionConfigRequestBody(
        func_name=created.func_name,
        runtime=RUNTIME,
        handler="index.handler",
        timeout=9,
        memory_size=256,
        description="changed",
        enterprise_project_id="ep-2",
        log_config=m.FuncLogConfig(group_id="g2", stream_id="s2"),
        strategy_config=m.StrategyConfig(concurrency=7, concurrent_num=2),
        extend_config='{"x": 1}',
        enable_auth_in_header=True,
        heartbeat_handler="index.beat",
        peering_cidr="",
    )
    updated = sdk.update_function_config(m.UpdateFunctionConfigRequest(function_urn=created.func_urn, body=body))
    assert updated.timeout == 9 and updated.memory_size == 256 and updated.cpu == 400
    assert updated.description == "changed" and updated.enterprise_project_id == "ep-2"
    assert updated.log_group_id == "g2" and updated.log_stream_id == "s2"
    assert updated.strategy_config.concurrency == 7 and updated.strategy_config.concurrent_num == 2
    assert updated.enable_auth_in_header is True
    shown = sdk.show_function_config(m.ShowFunctionConfigRequest(function_urn=created.func_urn))
    assert shown.heartbeat_handler == "index.beat" and shown.type == "v2"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"func_vpc": m.FuncVpc(vpc_id="vpc-1", subnet_id="subnet-1")}, "func_vpc"),
        ({"custom_image": m.CustomImage(enabled=True, image="swr.example/img:1")}, "custom_image"),
        ({"gpu_memory": 1024}, "gpu_memory"),
        ({"gpu_type": "nvidia-t4"}, "gpu_type"),
        (
            {"mount_config": m.MountConfig(func_mounts=[m.FuncMount(mount_type="sfs", local_mount_path="/mnt")])},
            "mount_config.func_mounts",
        ),
    ],
)
def test_fields_this_node_cannot_honour_are_refused_naming_them(
    sdk: FunctionGraphClient, fields: dict, named: str
) -> None:
    name = unique_name("refused")
    error = refused(lambda: create(sdk, func_name=name, **fields))
    assert error.status_code == 400 and error.error_code == "FSS.0400"
    assert named in error.error_msg
    assert "not supported" in error.error_msg
    # Nothing was made.
    missing = refused(lambda: sdk.show_function_config(m.ShowFunctionConfigRequest(function_urn=name)))
    assert missing.status_code == 404


def test_update_config_refuses_a_vpc_and_keeps_the_function(sdk: FunctionGraphClient) -> None:
    created = create(sdk)
    body = m.UpdateFunctionConfigRequestBody(
        func_name=created.func_name,
        runtime=RUNTIME,
        handler="index.handler",
        timeout=5,
        memory_size=128,
        func_vpc=m.FuncVpc(vpc_id="vpc-1", subnet_id="sub-1"),
    )
    error = refused(
        lambda: sdk.update_function_config(m.UpdateFunctionConfigRequest(function_urn=created.func_urn, body=body))
    )
    assert error.status_code == 400 and "func_vpc" in error.error_msg
    assert sdk.show_function_config(m.ShowFunctionConfigRequest(function_urn=created.func_urn)).func_vpc is None


def test_fields_in_no_functiongraph_model_are_still_refused(daemon: Daemon) -> None:
    with daemon.client() as http:
        body = {
            "func_name": unique_name("typo"),
            "runtime": RUNTIME,
            "handler": "index.handler",
            "code_type": "zip",
            "func_code": {"file": b64(make_zip({"index.py": SOURCE}))},
            "memroy_size": 256,
        }
        response = http.post("/functions", json=body)
        assert response.status_code == 400 and "memroy_size" in response.json()["error_msg"]
        # `type` is a create field, not an update one.
        del body["memroy_size"]
        assert http.post("/functions", json=body).status_code == 200
        response = http.put(f"/functions/{body['func_name']}/config", json={"type": "v1"})
        assert response.status_code == 400 and "type" in response.json()["error_msg"]
        # Answered beside the SDK's fields: tags and the whole log_config.
        created = http.post(
            "/functions",
            json={**body, "func_name": unique_name("meta"), "tags": "k=v", "log_config": {"group_id": "g"}},
        ).json()
        assert created["tags"] == "k=v" and created["log_config"]["group_id"] == "g"


def test_code_show_and_update_with_dependencies(sdk: FunctionGraphClient) -> None:
    dependency = sdk.create_dependency_version(
        m.CreateDependencyVersionRequest(
            body=m.CreateDependencyRequestBody(
                name=unique_name("greeting"),
                runtime=RUNTIME,
                description="a module for the code update",
                depend_type="zip",
                depend_file=b64(make_zip({"greeting.py": "WORD = 'hello from a dependency'\n"})),
            )
        )
    )
    created = create(sdk, func_code=m.FuncCode(file=b64(make_zip({"index.py": SOURCE})), link="obs://b/k.zip"))
    code = sdk.show_function_code(m.ShowFunctionCodeRequest(function_urn=created.func_urn))
    assert code.func_code.file == "" and code.func_code.link == "obs://b/k.zip"
    assert code.code_type == "zip" and isinstance(code.last_modified, datetime) and code.dependencies == []
    new_source = "import greeting\ndef handler(event, context):\n    return greeting.WORD\n"
    updated = sdk.update_function_code(
        m.UpdateFunctionCodeRequest(
            function_urn=created.func_urn,
            body=m.UpdateFunctionCodeRequestBody(
                code_type="zip",
                code_filename="new.zip",
                func_code=m.FuncCode(file=b64(make_zip({"index.py": new_source}))),
                depend_version_list=[dependency.id],
            ),
        )
    )
    assert updated.depend_version_list == [dependency.id] and updated.depend_list == [dependency.id]
    assert updated.code_filename == "new.zip"
    [listed] = updated.dependencies
    assert listed.id == dependency.id and listed.name == dependency.name and listed.version == 1
    assert isinstance(listed.last_modified, int) and listed.file_name.endswith(".zip")
    # Acted on: the new code imports the dependency.
    invoked = sdk.invoke_function(
        m.InvokeFunctionRequest(function_urn=created.func_urn, body={}, x_cff_request_version="v1")
    )
    assert invoked.status == 200 and invoked.result == "hello from a dependency"
    shown = sdk.show_function_code(m.ShowFunctionCodeRequest(function_urn=created.func_urn))
    assert [d.id for d in shown.dependencies] == [dependency.id]
    # A code update without depend_version_list keeps the dependencies.
    kept = sdk.update_function_code(
        m.UpdateFunctionCodeRequest(
            function_urn=created.func_urn,
            body=m.UpdateFunctionCodeRequestBody(
                code_type="zip", func_code=m.FuncCode(file=b64(make_zip({"index.py": new_source})))
            ),
        )
    )
    assert kept.depend_version_list == [dependency.id]


def test_max_instances_and_reserved_instances(sdk: FunctionGraphClient) -> None:
    created = create(sdk)
    urn = created.func_urn
    capped = sdk.update_function_max_instance_config(
        m.UpdateFunctionMaxInstanceConfigRequest(
            function_urn=urn, body=m.UpdateFunctionMaxInstanceConfigRequestBody(max_instance_num=3)
        )
    )
    assert capped.strategy_config.concurrency == 3 and capped.func_urn == urn
    reserved = sdk.update_function_reserved_instances_count(
        m.UpdateFunctionReservedInstancesCountRequest(
            function_urn=urn,
            body=m.UpdateFunctionReservedInstancesCountRequestBody(
                count=1, idle_mode=True, tactics_config=m.TacticsConfig(cron_configs=[], metric_configs=[])
            ),
        )
    )
    assert reserved.count == 1 and reserved.idle_mode is True
    config = sdk.show_function_config(m.ShowFunctionConfigRequest(function_urn=urn))
    assert config.reserved_instance_idle_mode is True
    error = refused(
        lambda: sdk.update_function_reserved_instances_count(
            m.UpdateFunctionReservedInstancesCountRequest(
                function_urn=urn,
                body=m.UpdateFunctionReservedInstancesCountRequestBody(
                    count=1,
                    tactics_config=m.TacticsConfig(cron_configs=[m.CronConfig(name="c", cron="0 * * * *", count=2)]),
                ),
            )
        )
    )
    assert error.status_code == 400 and "tactics_config" in error.error_msg
    released = sdk.update_function_reserved_instances_count(
        m.UpdateFunctionReservedInstancesCountRequest(
            function_urn=urn, body=m.UpdateFunctionReservedInstancesCountRequestBody(count=0)
        )
    )
    assert released.count == 0 and released.idle_mode is False


def test_invoke_sync_v0_and_v1(sdk: FunctionGraphClient) -> None:
    created = create(sdk, user_data=json.dumps({"WHO": "invoker"}))
    v1 = sdk.invoke_function(
        m.InvokeFunctionRequest(function_urn=created.func_urn, body={"a": 1}, x_cff_request_version="v1")
    )
    assert v1.status == 200 and isinstance(v1.request_id, str) and v1.request_id
    assert json.loads(v1.result) == {"got": {"a": 1}, "who": "invoker"}
    assert isinstance(v1.log, str)
    v0 = sdk.invoke_function(m.InvokeFunctionRequest(function_urn=created.func_urn, body={"a": 2}))
    assert v0.x_cff_request_id


def test_delete_function(sdk: FunctionGraphClient) -> None:
    created = create(sdk)
    # FunctionGraph: latest cannot be deleted on its own; the URN without a version deletes all.
    assert created.func_urn.endswith(":latest")
    latest = refused(lambda: sdk.delete_function(m.DeleteFunctionRequest(function_urn=created.func_urn)))
    assert latest.status_code == 400 and created.func_urn.removesuffix(":latest") in latest.error_msg
    sdk.delete_function(m.DeleteFunctionRequest(function_urn=created.func_urn.removesuffix(":latest")))
    error = refused(lambda: sdk.show_function_config(m.ShowFunctionConfigRequest(function_urn=created.func_urn)))
    assert error.status_code == 404 and error.error_code == "FSS.0404"
