"""fgd's request and answer Structs against the SDK models' openapi_types, so they cannot drift.

The comparison is scripts/sdk-shapes' (run it to see every difference, fgd's extras included).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "sdk-shapes"


def _load():
    loader = importlib.machinery.SourceFileLoader("sdk_shapes", str(SCRIPT))
    spec = importlib.util.spec_from_loader("sdk_shapes", loader)
    module = importlib.util.module_from_spec(spec)
    # Its dataclasses look their module up in sys.modules.
    sys.modules["sdk_shapes"] = module
    loader.exec_module(module)
    return module


shapes = _load()

# SDK answer fields fgd leaves out on purpose (the SDK then reads None).
NOT_ANSWERED = {
    # A bridge-function count and bindings: fgd has no bridge functions.
    "ListFunctions": {"functions.fail_count: int", "functions.bind_bridge_funcUrns: list[str]"},
}

# FunctionGraph's event_data fields of the two trigger types fgd runs.
TRIGGER_FIELDS = {
    "TIMER": {"name", "schedule_type", "schedule", "user_event"},
    "APIG": {
        "name", "type", "path", "protocol", "req_method", "group_id", "group_name", "match_mode",
        "env_name", "env_id", "auth", "func_info", "sl_domain", "backend_type", "instance_id",
    },
}  # fmt: skip

OPERATIONS = {operation.name: operation for operation in shapes.OPERATIONS}


@pytest.mark.parametrize("name", [n for n, o in OPERATIONS.items() if o.sdk_request and o.request is not None])
def test_every_functiongraph_request_field_is_accepted_with_its_type(name: str) -> None:
    operation = OPERATIONS[name]
    found = shapes.compare(operation.sdk_request, operation.request, answer=False, apart=operation.read_apart)
    assert found.types == []
    if operation.one_trigger_type:
        kind = name.split()[1]
        refused = {entry.split(":")[0] for entry in found.sdk_only}
        assert not refused & TRIGGER_FIELDS[kind], f"{kind} fields fgd refuses"
    else:
        assert found.sdk_only == [], "FunctionGraph request fields fgd would refuse as unknown"


@pytest.mark.parametrize("name", [n for n, o in OPERATIONS.items() if o.sdk_response and o.answer is not None])
def test_every_answer_has_the_sdk_models_fields_and_types(name: str) -> None:
    operation = OPERATIONS[name]
    found = shapes.compare(operation.sdk_response, operation.answer, answer=True)
    assert found.types == [], "answer fields the SDK would parse into the wrong type"
    assert set(found.sdk_only) == NOT_ANSWERED.get(name, set()), "SDK answer fields fgd leaves out"


def test_the_comparison_catches_a_wrong_type() -> None:
    import msgspec

    class Wrong(msgspec.Struct):
        request_id: str
        status: str
        error_code: str  # the SDK wants an int
        error_message: str
        start_time: str | None
        end_time: str | None

    found = shapes.compare("ListFunctionAsyncInvocationsResult", Wrong, answer=True)
    assert found.types == ["error_code: SDK int, fgd str"]


def test_the_script_reports_no_differences_that_matter(capsys: pytest.CaptureFixture[str]) -> None:
    assert shapes.main(["--brief"]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")] == []
