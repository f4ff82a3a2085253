"""The whole FunctionGraph context and its logger, in a real instance."""

from __future__ import annotations

import time

from tests.conftest import Api


def lines(api: Api, name: str, request_id: str) -> list[dict]:
    deadline = time.monotonic() + 5
    while True:
        logs = api.http.get(f"/functions/{name}/logs", params={"request_id": request_id}).json()["logs"]
        if any(line["stream"] == "platform" for line in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.05)


def logger_lines(api: Api, name: str, request_id: str) -> list[str]:
    return [line["message"] for line in lines(api, name, request_id) if line["stream"] == "logger"]


EVERY_GETTER = """
def handler(event, context):
    names = ["getRequestID", "getRemainingTimeInMilliSeconds", "getAccessKey", "getSecretKey",
             "getSecurityAccessKey", "getSecuritySecretKey", "getSecurityToken", "getToken",
             "getFunctionName", "getRunningTimeInSeconds", "getVersion", "getMemorySize",
             "getCPUNumber", "getPackage", "getProjectID", "getAlias"]
    out = {name: getattr(context, name)() for name in names}
    out["getUserData"] = [context.getUserData("A"), context.getUserData("B", "dflt"), context.getUserData("B")]
    logger = context.getLogger()
    out["logger"] = [m for m in ("debug", "info", "warn", "warning", "error", "critical", "exception",
                                 "log", "setLevel") if callable(getattr(logger, m, None))]
    return out
"""


def test_every_getter_of_functiongraphs_context_answers(api: Api) -> None:
    config = api.deploy(EVERY_GETTER, memory_size=256, timeout=9, user_data={"A": "a"})
    response = api.invoke(config["func_name"])
    body = response.json()
    assert body["getRequestID"] == response.headers["x-cff-request-id"]
    assert 0 < body["getRemainingTimeInMilliSeconds"] <= 9000
    assert body["getFunctionName"] == config["func_name"]
    assert body["getRunningTimeInSeconds"] == 9
    assert body["getMemorySize"] == 256
    assert body["getCPUNumber"] == config["cpu"]
    assert body["getPackage"] == "default"
    assert body["getProjectID"] == "default"
    assert body["getVersion"] == "latest"
    assert body["getUserData"] == ["a", "dflt", None]
    assert body["logger"] == ["debug", "info", "warn", "warning", "error", "critical", "exception", "log", "setLevel"]


LOG_EVERY_LEVEL = """
import logging

def handler(event, context):
    logger = context.getLogger()
    if event.get("level"):
        logger.setLevel(event["level"])
    logger.debug("d %s", 1)
    logger.info("i %s", 2)
    logger.warn("w")
    logger.warning("wg")
    logger.error("e")
    logger.critical("c")
    logger.log(logging.INFO, "log-int %d", 3)
    logger.log("ERROR", "log-name")
    try:
        {}["missing"]
    except KeyError:
        logger.exception("caught")
    return context.getRequestID()
"""


def test_the_logger_writes_each_level_with_the_request_id_and_defaults_to_info(api: Api) -> None:
    name = api.deploy(LOG_EVERY_LEVEL)["func_name"]
    request_id = api.invoke(name).headers["x-cff-request-id"]
    logged = lines(api, name, request_id)
    messages = [line["message"] for line in logged if line["stream"] == "logger"]
    assert all(line["request_id"] == request_id for line in logged)
    assert messages[:7] == [
        "[INFO] i 2",
        "[WARN] w",
        "[WARN] wg",
        "[ERROR] e",
        "[CRITICAL] c",
        "[INFO] log-int 3",
        "[ERROR] log-name",
    ]
    # exception(): an ERROR line with the trace of the exception being handled.
    assert messages[7].startswith("[ERROR] caught")
    assert "KeyError: 'missing'" in " ".join(messages[7:])


def test_runtime_log_level_in_user_data_is_accepted_and_sets_the_threshold(api: Api) -> None:
    debug = api.deploy(LOG_EVERY_LEVEL, user_data={"RUNTIME_LOG_LEVEL": "DEBUG"})["func_name"]
    messages = logger_lines(api, debug, api.invoke(debug).headers["x-cff-request-id"])
    assert messages[0] == "[DEBUG] d 1"
    quiet = api.deploy(LOG_EVERY_LEVEL, user_data={"RUNTIME_LOG_LEVEL": "ERROR"})["func_name"]
    messages = logger_lines(api, quiet, api.invoke(quiet).headers["x-cff-request-id"])
    assert messages[:3] == ["[ERROR] e", "[CRITICAL] c", "[ERROR] log-name"]
    # The value is the user's: returned as given, and in the function's environment.
    config = api.http.get(f"/functions/{quiet}/config").json()
    assert '"RUNTIME_LOG_LEVEL": "ERROR"' in config["user_data"] or '"RUNTIME_LOG_LEVEL":"ERROR"' in config["user_data"]


def test_set_level_changes_the_threshold_for_later_lines(api: Api) -> None:
    name = api.deploy(LOG_EVERY_LEVEL)["func_name"]
    messages = logger_lines(api, name, api.invoke(name, {"level": "CRITICAL"}).headers["x-cff-request-id"])
    assert messages == ["[CRITICAL] c"]
    messages = logger_lines(api, name, api.invoke(name, {"level": 10}).headers["x-cff-request-id"])
    assert messages[0] == "[DEBUG] d 1"


def test_an_unknown_level_is_the_functions_error(api: Api) -> None:
    name = api.deploy(LOG_EVERY_LEVEL)["func_name"]
    response = api.invoke(name, {"level": "LOUD"})
    assert response.headers["x-is-func-err"] == "true"
    assert response.json()["errorType"] == "ValueError"
    assert "LOUD" in response.json()["errorMessage"]


def test_only_preset_runtime_names_are_reserved_in_user_data(api: Api) -> None:
    for preset in ("RUNTIME_FUNC_NAME", "RUNTIME_PROJECT_ID", "RUNTIME_CODE_ROOT", "RUNTIME_API_ADDR"):
        response = api.create(b"", user_data={preset: "mine"})
        assert response.status_code == 400, preset
        assert preset in response.json()["error_msg"] and "reserved" in response.json()["error_msg"]
    name = api.deploy(
        "import os\ndef handler(e, c):\n    return [os.environ['RUNTIME_CUSTOM'], c.getUserData('RUNTIME_CUSTOM')]\n",
        user_data={"RUNTIME_CUSTOM": "ok", "RUNTIME_LOG_LEVEL": "INFO"},
    )["func_name"]
    assert api.invoke(name).json() == ["ok", "ok"]


INITIALIZER = """
def init(context):
    print("printed by the initializer")
    context.getLogger().info("logged by the initializer as %s", context.getRequestID())

def handler(event, context):
    return context.getRequestID()
"""


def test_initializer_prints_and_logger_lines_both_reach_the_logs_under_its_id(api: Api) -> None:
    name = api.deploy(INITIALIZER, initializer_handler="index.init", initializer_timeout=5)["func_name"]
    request_id = api.invoke(name).headers["x-cff-request-id"]
    logged = lines(api, name, request_id)
    by_stream = [(line["stream"], line["message"]) for line in logged]
    assert ("stdout", "printed by the initializer") in by_stream
    assert ("logger", f"[INFO] logged by the initializer as {request_id}") in by_stream
    assert all(line["request_id"] == request_id for line in logged)
