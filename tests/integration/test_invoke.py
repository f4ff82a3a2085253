"""Synchronous invocation through the real daemon, zygote and forked instance."""

from __future__ import annotations

import base64
import json
import textwrap
import time

from tests.conftest import INSTANCE_TOKEN, Api, assert_tail_is_this_invocations

CONTEXT_PROBE = """
    import os

    def handler(event, context):
        names = ["RUNTIME_PROJECT_ID", "RUNTIME_FUNC_NAME", "RUNTIME_FUNC_VERSION", "RUNTIME_PACKAGE",
                 "RUNTIME_HANDLER", "RUNTIME_TIMEOUT", "RUNTIME_USERDATA", "RUNTIME_CPU", "RUNTIME_MEMORY",
                 "RUNTIME_MAX_RESP_BODY_SIZE", "RUNTIME_INITIALIZER_HANDLER", "RUNTIME_INITIALIZER_TIMEOUT",
                 "RUNTIME_ROOT", "RUNTIME_CODE_ROOT", "RUNTIME_LOG_DIR", "GREETING", "SECRET"]
        return {
            "event": event,
            "request_id": context.getRequestID(),
            "remaining": context.getRemainingTimeInMilliSeconds(),
            "running_time": context.getRunningTimeInSeconds(),
            "function_name": context.getFunctionName(),
            "version": context.getVersion(),
            "alias": context.getAlias(),
            "memory": context.getMemorySize(),
            "cpu": context.getCPUNumber(),
            "package": context.getPackage(),
            "project": context.getProjectID(),
            "user_data": context.getUserData("GREETING"),
            "secret": context.getUserData("SECRET"),
            "missing": context.getUserData("NOPE", "fallback"),
            "credentials": [context.getToken(), context.getAccessKey(), context.getSecretKey(),
                            context.getSecurityAccessKey(), context.getSecuritySecretKey(),
                            context.getSecurityToken()],
            "env": {name: os.environ.get(name) for name in names},
            "cwd_has_code": os.path.isdir(os.environ["RUNTIME_CODE_ROOT"]),
            "logger": [callable(getattr(context.getLogger(), m)) for m in ("info", "warn", "error", "debug")],
        }
"""


def test_round_trip_exposes_every_context_method_and_variable(api: Api) -> None:
    config = api.deploy(
        CONTEXT_PROBE,
        memory_size=256,
        timeout=7,
        user_data={"GREETING": "hi"},
        encrypted_user_data={"SECRET": "s3cret"},
    )
    name = config["func_name"]
    response = api.invoke(name, {"k": [1, 2]})
    assert response.status_code == 200, response.text
    assert response.headers["x-is-func-err"] == "false"
    body = response.json()
    assert body["event"] == {"k": [1, 2]}
    assert body["request_id"] == response.headers["x-cff-request-id"]
    assert 0 < body["remaining"] <= 7000
    assert body["running_time"] == 7
    assert body["function_name"] == name
    assert body["version"] == "latest"
    assert body["alias"] == ""
    assert body["memory"] == 256
    assert body["cpu"] == 256 * 100 // 128 + 200
    assert body["package"] == "default"
    assert body["project"] == "default"
    assert body["user_data"] == "hi"
    assert body["secret"] == "s3cret"
    assert body["missing"] == "fallback"
    assert body["credentials"] == [""] * 6
    assert body["logger"] == [True] * 4
    assert body["cwd_has_code"] is True
    env = body["env"]
    assert env["RUNTIME_PROJECT_ID"] == "default"
    assert env["RUNTIME_FUNC_NAME"] == name
    assert env["RUNTIME_FUNC_VERSION"] == "latest"
    assert env["RUNTIME_PACKAGE"] == "default"
    assert env["RUNTIME_HANDLER"] == "index.handler"
    assert env["RUNTIME_TIMEOUT"] == "7"
    assert json.loads(env["RUNTIME_USERDATA"]) == {"GREETING": "hi"}
    assert env["RUNTIME_CPU"] == str(256 * 100 // 128 + 200)
    assert env["RUNTIME_MEMORY"] == "256"
    assert env["RUNTIME_MAX_RESP_BODY_SIZE"] == "6291456"
    assert env["RUNTIME_INITIALIZER_HANDLER"] == ""
    assert env["RUNTIME_INITIALIZER_TIMEOUT"] == "30"
    assert env["RUNTIME_CODE_ROOT"] and env["RUNTIME_ROOT"] and env["RUNTIME_LOG_DIR"]
    assert env["GREETING"] == "hi"
    assert env["SECRET"] == "s3cret"


def test_summary_header_reports_cold_then_warm(api: Api) -> None:
    name = api.deploy("def handler(event, context):\n    return 1\n")["func_name"]
    first = json.loads(api.invoke(name).headers["x-cff-invoke-summary"])
    second = json.loads(api.invoke(name).headers["x-cff-invoke-summary"])
    assert first["coldStart"] is True and first["initDuration"] > 0
    assert second["coldStart"] is False and "initDuration" not in second
    for summary in (first, second):
        assert summary["memorySize"] == 128
        assert summary["duration"] > 0
        assert summary["billingDuration"] >= 1
        assert summary["memoryUsed"] > 1


def test_warm_instance_is_reused(api: Api) -> None:
    name = api.deploy(INSTANCE_TOKEN + "def handler(event, context):\n    return INSTANCE\n")["func_name"]
    tokens = {api.invoke(name).text for _ in range(5)}
    assert len(tokens) == 1


def test_string_result_is_sent_as_is(api: Api) -> None:
    name = api.deploy("def handler(event, context):\n    return 'plain <text>'\n")["func_name"]
    response = api.invoke(name)
    assert response.content == b"plain <text>"
    assert response.headers["x-is-func-err"] == "false"


def test_exception_is_reported_with_type_message_and_stack(api: Api) -> None:
    source = """
        class BadInput(Exception):
            pass

        def check(event):
            raise BadInput("missing field 'id'")

        def handler(event, context):
            check(event)
    """
    name = api.deploy(source)["func_name"]
    response = api.invoke(name)
    assert response.status_code == 200
    assert response.headers["x-is-func-err"] == "true"
    assert response.headers["x-func-err-code"] == "BadInput"
    body = response.json()
    assert body["errorType"] == "BadInput"
    assert body["errorMessage"] == "missing field 'id'"
    assert any("check" in line for line in body["stackTrace"])
    assert not any("runtimes/python" in line for line in body["stackTrace"])
    # The instance survives a handled exception.
    assert api.invoke(name).json()["errorType"] == "BadInput"


def test_import_error_is_runtime_import_module_error(api: Api) -> None:
    name = api.deploy("import does_not_exist_anywhere\ndef handler(e, c):\n    return 1\n")["func_name"]
    body = api.invoke(name).json()
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert "does_not_exist_anywhere" in body["errorMessage"]


def test_missing_module_is_runtime_import_module_error(api: Api) -> None:
    config = api.deploy("def handler(e, c):\n    return 1\n", handler="main.handler")
    body = api.invoke(config["func_name"]).json()
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert "'main'" in body["errorMessage"]


def test_syntax_error_is_runtime_import_module_error(api: Api) -> None:
    name = api.deploy("def handler(e, c)\n    return 1\n")["func_name"]
    body = api.invoke(name).json()
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert "SyntaxError" in body["errorMessage"]


def test_missing_handler_is_runtime_handler_not_found(api: Api) -> None:
    name = api.deploy("def other(e, c):\n    return 1\n")["func_name"]
    response = api.invoke(name)
    assert response.headers["x-is-func-err"] == "true"
    body = response.json()
    assert body["errorType"] == "Runtime.HandlerNotFound"
    assert "'handler'" in body["errorMessage"]


def test_handler_in_subdirectory(api: Api) -> None:
    files = {
        "src/app.py": "from src import util\ndef main(e, c):\n    return util.x()\n",
        "src/util.py": "def x():\n    return 'nested'\n",
    }
    name = api.deploy("", files=files, handler="src/app.main")["func_name"]
    assert api.invoke(name).content == b"nested"


def test_non_json_result_is_runtime_invalid_response(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    return {1, 2}\n")["func_name"]
    body = api.invoke(name).json()
    assert body["errorType"] == "Runtime.InvalidResponse"


def test_oversized_result_is_runtime_response_too_large(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    return 'x' * (6 * 1024 * 1024 + 1)\n")["func_name"]
    body = api.invoke(name).json()
    assert body["errorType"] == "Runtime.ResponseTooLarge"


def test_crash_is_runtime_exit_error_and_instance_is_replaced(api: Api) -> None:
    source = INSTANCE_TOKEN + textwrap.dedent("""
        def handler(event, context):
            if event.get("crash"):
                os._exit(3)
            return INSTANCE
    """)
    name = api.deploy(source)["func_name"]
    first = api.invoke(name).text
    crashed = api.invoke(name, {"crash": True})
    assert crashed.headers["x-is-func-err"] == "true"
    body = crashed.json()
    assert body["errorType"] == "Runtime.ExitError"
    assert "status 3" in body["errorMessage"]
    replacement = api.invoke(name)
    assert replacement.headers["x-is-func-err"] == "false"
    assert replacement.text != first
    assert json.loads(replacement.headers["x-cff-invoke-summary"])["coldStart"] is True


def test_sys_exit_is_runtime_exit_error(api: Api) -> None:
    name = api.deploy("import sys\ndef handler(e, c):\n    sys.exit(4)\n")["func_name"]
    body = api.invoke(name).json()
    assert body["errorType"] == "Runtime.ExitError"
    assert "status 4" in body["errorMessage"]


def test_initializer_runs_once_before_requests(api: Api) -> None:
    source = """
        STATE = {"inits": 0}

        def init(context):
            STATE["inits"] += 1
            STATE["name"] = context.getFunctionName()

        def handler(event, context):
            return STATE
    """
    config = api.deploy(source, initializer_handler="index.init", initializer_timeout=5)
    for _ in range(3):
        body = api.invoke(config["func_name"]).json()
    assert body == {"inits": 1, "name": config["func_name"]}


def test_initializer_failure_is_runtime_init_error(api: Api) -> None:
    source = """
        def init(context):
            raise ValueError("no database")

        def handler(event, context):
            return "never"
    """
    config = api.deploy(source, initializer_handler="index.init")
    response = api.invoke(config["func_name"])
    assert response.headers["x-is-func-err"] == "true"
    body = response.json()
    assert body["errorType"] == "Runtime.InitError"
    assert "no database" in body["errorMessage"]


def test_initializer_timeout_is_runtime_init_error(api: Api) -> None:
    source = """
        import time

        def init(context):
            time.sleep(30)

        def handler(event, context):
            return "never"
    """
    config = api.deploy(source, initializer_handler="index.init", initializer_timeout=1)
    started = time.monotonic()
    body = api.invoke(config["func_name"]).json()
    assert time.monotonic() - started < 3
    assert body["errorType"] == "Runtime.InitError"
    assert "within 1 s" in body["errorMessage"]


def test_request_version_v1_wraps_result_and_log(api: Api) -> None:
    source = """
        def handler(event, context):
            print("printed line")
            return {"ok": True}
    """
    name = api.deploy(source)["func_name"]
    response = api.invoke(name, headers={"X-Cff-Request-Version": "v1"})
    body = response.json()
    assert set(body) == {"request_id", "result", "log", "status"}
    assert body["request_id"] == response.headers["x-cff-request-id"]
    assert json.loads(body["result"]) == {"ok": True}
    assert "printed line" in body["log"]
    assert body["status"] == 200


def test_log_tail_header_carries_this_invocations_output(api: Api) -> None:
    source = """
        import subprocess, sys

        def handler(event, context):
            print("to stdout", event["n"])
            print("to stderr", file=sys.stderr)
            context.getLogger().info("from logger %s", event["n"])
            subprocess.run(["echo", "from a child process"])
            return "ok"
    """
    name = api.deploy(source)["func_name"]
    api.invoke(name, {"n": 1})
    response = api.invoke(name, {"n": 2}, headers={"X-Cff-Log-Type": "tail"})
    assert_tail_is_this_invocations(response)
    assert len(base64.b64decode(response.headers["x-cff-function-log"])) <= 2000


def test_log_tail_is_at_most_2000_bytes(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    print('y' * 5000)\n    return 1\n")["func_name"]
    response = api.invoke(name, headers={"X-Cff-Log-Type": "tail"})
    assert len(base64.b64decode(response.headers["x-cff-function-log"])) == 2000


def test_event_over_6_mb_is_refused_with_413(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    return 1\n")["func_name"]
    event = json.dumps({"blob": "x" * (6 * 1024 * 1024)})
    response = api.http.post(f"/functions/{name}/invocations", content=event)
    assert response.status_code == 413
    assert response.json()["error_code"] == "FSS.0413"


def test_event_that_is_not_json_is_refused_with_400(api: Api) -> None:
    name = api.deploy("def handler(e, c):\n    return 1\n")["func_name"]
    response = api.http.post(f"/functions/{name}/invocations", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error_code"] == "FSS.0400"


def test_unknown_function_is_404(api: Api) -> None:
    response = api.invoke("nosuchfunction")
    assert response.status_code == 404
    assert response.json()["error_code"] == "FSS.0404"


def test_function_addressed_by_urn_and_package_name(api: Api) -> None:
    config = api.deploy("def handler(e, c):\n    return 'yes'\n")
    for ref in (config["func_urn"], f"default:{config['func_name']}", config["func_name"]):
        assert api.invoke(ref).content == b"yes", ref


def test_disabled_function_is_throttled_with_429(api: Api) -> None:
    config = api.deploy("def handler(e, c):\n    return 1\n", strategy_config={"concurrency": 0})
    response = api.invoke(config["func_name"])
    assert response.status_code == 429
    assert response.json()["error_code"] == "FSS.0429"
    assert "disabled" in response.json()["error_msg"]


def test_several_instances_serve_one_function_side_by_side(api: Api) -> None:
    import concurrent.futures

    source = INSTANCE_TOKEN + textwrap.dedent("""
        import time

        def handler(event, context):
            began = time.time()
            time.sleep(0.5)
            return {"instance": INSTANCE, "began": began, "ended": time.time()}
    """)
    name = api.deploy(source)["func_name"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = list(
            pool.map(lambda _: api.daemon.client().post(f"/functions/{name}/invocations", json={}).json(), range(4))
        )
    assert len({run["instance"] for run in runs}) == 4
    # Side by side: each began before any ended (the cold starts before them may take their time).
    assert max(run["began"] for run in runs) < min(run["ended"] for run in runs), runs
