"""Function references, CPU rule, and validation messages."""

from __future__ import annotations

import pytest

from fgd.errors import InvalidParameter
from fgd.model import (
    FunctionRef,
    FunctionSettings,
    convert,
    cpu_millicores,
    normalise_settings,
    parse_function_ref,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello", FunctionRef("p1", "default", "hello")),
        # package:name, or name:qualifier when no such package holds it (fgd.versions.lookup).
        ("pkg:hello", FunctionRef("p1", "pkg", "hello", ambiguous=True)),
        ("hello:!prod", FunctionRef("p1", "default", "hello", "!prod")),
        ("p1:pkg:hello", FunctionRef("p1", "pkg", "hello")),
        ("p1:pkg:hello:v1.2_3-x", FunctionRef("p1", "pkg", "hello", "v1.2_3-x")),
        ("urn:fss:local:p1:function:pkg:hello", FunctionRef("p1", "pkg", "hello")),
        ("urn:fss:local:p1:function:pkg:hello:latest", FunctionRef("p1", "pkg", "hello")),
        ("urn:fss:local:p1:function:pkg:hello:v2", FunctionRef("p1", "pkg", "hello", "v2")),
        ("urn:fss:local:p1:function:pkg:hello:!prod", FunctionRef("p1", "pkg", "hello", "!prod")),
    ],
)
def test_function_refs(text: str, expected: FunctionRef) -> None:
    assert parse_function_ref("p1", text, "local") == expected


@pytest.mark.parametrize(
    "text",
    [
        "urn:fss:other:p1:function:pkg:hello",
        "urn:fss:local:p2:function:pkg:hello",
        "urn:fss:local:p1:trigger:pkg:hello",
        "urn:fss:local",
        "a:b:c",
        "p2:pkg:hello:v1",
        "hello:!",
        "hello:!-x",
        "hello:!x_",
        "urn:fss:local:p1:function:pkg:hello:",
        "urn:fss:local:p1:function:pkg:hello:!",
        "urn:fss:local:p1:function:pkg:hello:v1\n",
        "urn:fss:local:p1:function:pkg:hello:!prod\n",
        "urn:fss:local:p1:function:pkg:hello:v1:extra",
        "urn:fss:local:p1:function:pkg:hello:" + "v" * 43,
        "urn:fss:local:p1:function:pkg:hello:../v1",
        "p1:pkg:hello:v1:x",
    ],
)
def test_bad_function_refs(text: str) -> None:
    with pytest.raises(InvalidParameter):
        parse_function_ref("p1", text, "local")


@pytest.mark.parametrize(("memory", "cpu"), [(128, 300), (256, 400), (1024, 1000), (64, 250), (10240, 8200)])
def test_cpu_follows_functiongraph_rule(memory: int, cpu: int) -> None:
    assert cpu_millicores(memory) == cpu


def test_validation_message_names_nested_field() -> None:
    with pytest.raises(InvalidParameter, match=r"invalid strategy_config\.concurrent_num"):
        convert({"handler": "a.b", "strategy_config": {"concurrent_num": 0}}, FunctionSettings, "config")


def test_user_data_string_is_normalised_to_object() -> None:
    settings = normalise_settings(FunctionSettings(handler="a.b", user_data='{"K": "v"}'))
    assert settings.user_data == {"K": "v"}


def test_same_variable_in_plain_and_encrypted_is_refused() -> None:
    with pytest.raises(InvalidParameter, match="'K'"):
        normalise_settings(FunctionSettings(handler="a.b", user_data={"K": "1"}, encrypted_user_data={"K": "2"}))


@pytest.mark.parametrize("handler", ["index.handler", "dir/file.func", "a/b/c.d_e", "my-file.handler"])
def test_good_handlers(handler: str) -> None:
    assert normalise_settings(FunctionSettings(handler=handler)).handler == handler


@pytest.mark.parametrize("handler", ["index", ".handler", "index.", "/abs.h", "../x.h", "a/../b.h", "a.1bad", "a b.c"])
def test_bad_handlers(handler: str) -> None:
    with pytest.raises(InvalidParameter, match="handler"):
        normalise_settings(FunctionSettings(handler=handler))


def _settings(**fields: object) -> FunctionSettings:
    return normalise_settings(convert({"handler": "index.handler", **fields}, FunctionSettings, "config"))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"func_vpc": {"vpc_id": "vpc-1", "subnet_id": "sub-1"}}, "func_vpc"),
        ({"func_vpc": {"cidr": "10.0.0.0/8"}}, "func_vpc"),
        ({"peering_cidr": "10.0.0.0/8"}, "peering_cidr"),
        ({"mount_config": {"func_mounts": [{"mount_type": "sfs"}]}}, "mount_config.func_mounts"),
        ({"custom_image": {"enabled": True}}, "custom_image"),
        ({"gpu_memory": 1024}, "gpu_memory"),
        ({"gpu_type": "t4"}, "gpu_type"),
    ],
)
def test_fields_the_node_cannot_honour_are_refused_by_name(fields: dict, named: str) -> None:
    with pytest.raises(InvalidParameter, match=rf"^{named}: .* not supported on this node"):
        _settings(**fields)


def test_off_values_of_unsupported_fields_are_kept() -> None:
    settings = _settings(
        func_vpc={"vpc_id": "", "security_groups": []},
        peering_cidr="",
        mount_config={"mount_user": {"user_id": 1, "user_group_id": 1}, "func_mounts": []},
        custom_image={"enabled": False, "image": "kept"},
        gpu_memory=0,
        gpu_type="",
    )
    assert settings.custom_image.image == "kept" and settings.mount_config.mount_user.user_id == 1


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"lts_custom_tag": {f"k{i}": "v" for i in range(65)}}, "lts_custom_tag"),
        ({"lts_custom_tag": {"k": "v" * 257}}, "lts_custom_tag"),
        ({"xrole": "x" * 257}, "xrole"),
        ({"network_controller": {"trigger_access_vpcs": [{"vpc_id": "v"}] * 65}}, "trigger_access_vpcs"),
        ({"func_vpc": {"security_groups": ["g"] * 65}}, "security_groups"),
        ({"domain_names": "d" * 4097}, "domain_names"),
        ({"pre_stop_timeout": 91}, "pre_stop_timeout"),
        ({"pre_stop_handler": "../evil"}, "pre_stop_handler"),
        ({"enterprise_project_id": 7}, "enterprise_project_id"),
    ],
)
def test_stored_metadata_is_bounded_and_typed(fields: dict, named: str) -> None:
    # Everything kept is returned by every config answer: an unbounded field would make each one huge.
    with pytest.raises(InvalidParameter, match=named):
        _settings(**fields)


def test_code_link_is_bounded() -> None:
    from fgd.model import CreateFunction

    body = {"func_name": "f", "runtime": "Python3.11", "handler": "index.handler"}
    with pytest.raises(InvalidParameter, match=r"func_code\.link"):
        convert({**body, "func_code": {"file": "", "link": "l" * 2049}}, CreateFunction, "the function")


# msgspec checks patterns with re.search, where "$" also matches before a final newline:
# every pattern ends in \Z, so a name with a trailing newline is refused like any other.
@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        ("CreateFunction", {"runtime": "Python3.11", "handler": "index.handler", "func_name": "fn"}, "func_name"),
        ("CreateFunction", {"runtime": "Python3.11", "handler": "index.handler", "func_name": "fn"}, "package"),
        ("CreateDependency", {"runtime": "Python3.11", "name": "dep"}, "name"),
        ("TimerEventData", {"schedule_type": "Rate", "schedule": "1m", "name": "t"}, "name"),
        ("ApigEventData", {"name": "r", "path": "/p"}, "path"),
    ],
)
def test_a_trailing_newline_is_refused(kind: str, body: dict, field: str) -> None:
    import fgd.model

    if kind == "CreateFunction":
        body = {**body, "func_code": {"file": "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="}}
    good = {**body, field: body.get(field, "pkg")}
    convert(good, getattr(fgd.model, kind), "the body")
    with pytest.raises(InvalidParameter, match=field):
        convert({**good, field: good[field] + "\n"}, getattr(fgd.model, kind), "the body")


def test_a_project_with_a_trailing_newline_is_refused() -> None:
    from fgd.model import check_project

    check_project("default")
    with pytest.raises(InvalidParameter):
        check_project("default\n")


def test_config_region_with_a_trailing_newline_is_refused(tmp_path) -> None:
    from fgd.config import ConfigError, load

    path = tmp_path / "fgd.toml"
    path.write_text('[server]\nregion = "local"\n')
    load(str(path))
    path.write_text('[server]\nregion = "local\\n"\n')
    with pytest.raises(ConfigError):
        load(str(path))
