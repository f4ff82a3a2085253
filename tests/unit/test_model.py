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
        ("pkg:hello", FunctionRef("p1", "pkg", "hello")),
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
