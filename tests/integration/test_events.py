"""`fgd event NAME`: FunctionGraph-shaped test events, piped into `fgd invoke --data @-`."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from fgd.events import TEMPLATES
from tests.conftest import Api, Daemon


def fgd(daemon: Daemon | None, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FGD_")}
    if daemon is not None:
        environ |= {"FGD_ENDPOINT": daemon.url, "FGD_STATE_DIR": str(daemon.state_dir)}
    argv = [sys.executable, "-m", "fgd", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=environ, input=input, timeout=60)


def shape(name: str, event: dict) -> None:
    """The fields a FunctionGraph function written for this trigger reads."""
    if name == "timer":
        assert event["trigger_type"] == "TIMER" and event["version"] == "v1.0"
        assert {"time", "trigger_name", "user_event"} <= set(event)
    elif name == "apig":
        assert event["isBase64Encoded"] is True
        assert json.loads(base64.b64decode(event["body"])) == {"test": "body"}
        assert {"httpMethod", "path", "headers", "queryStringParameters", "pathParameters"} <= set(event)
        assert {"apiId", "requestId", "stage"} <= set(event["requestContext"])
    elif name == "smn":
        record = event["record"][0]
        assert record["event_source"] == "smn"
        assert {"topic_urn", "message", "subject", "message_id", "timestamp", "type"} <= set(record["smn"])
        assert record["event_subscription_urn"].startswith("urn:fss:local:default:function:")
    elif name == "obs":
        record = event["Records"][0]
        assert record["eventName"].startswith("ObjectCreated")
        assert record["s3"]["bucket"]["name"] and record["s3"]["object"]["key"] == "job.png"
    elif name == "kafka":
        assert event["trigger_type"] == "KAFKA"
        assert event["records"][0]["topic_id"] and event["records"][0]["messages"]
        assert isinstance(event["event_time"], int)
    elif name == "dms":
        assert event["event_type"] == "MessageCreated"
        message = event["events"][0]["message"]
        assert message["body"] == "TEST" and "attributes" in message
    elif name == "lts":
        data = json.loads(base64.b64decode(event["lts"]["data"]))
        assert json.loads(data["logs"])[0]["message"]
        assert {"owner", "log_group_id", "topic_id"} <= set(data)
    elif name == "cts":
        record = event["cts"]
        assert record["service_type"] == "FunctionGraph" and record["trace_type"] == "ConsoleAction"
        assert {"user", "request", "response", "code", "trace_id", "trace_status"} <= set(record)
    elif name == "dds":
        record = event["records"][0]
        assert record["event_source"] == "dds"
        assert json.loads(record["dds"]["ns"]) == {"db": "functiongraph", "coll": "person"}
        assert "_id" in json.loads(record["dds"]["full_document"])
    else:
        raise AssertionError(f"no shape check for {name}")


EXPECTED = ["apig", "cts", "dds", "dms", "kafka", "lts", "obs", "smn", "timer"]


def test_every_trigger_of_the_issue_has_a_template() -> None:
    assert sorted(TEMPLATES) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_fgd_event_prints_a_functiongraph_shaped_event(name: str) -> None:
    done = fgd(None, "event", name)
    assert done.returncode == 0, done.stderr
    shape(name, json.loads(done.stdout))


def test_region_and_project_go_into_the_urns() -> None:
    done = fgd(None, "event", "smn", "--region", "eu-de", "--project", "p1")
    record = json.loads(done.stdout)["record"][0]
    assert record["smn"]["topic_urn"].startswith("urn:smn:eu-de:p1:")
    assert record["event_subscription_urn"].startswith("urn:fss:eu-de:p1:function:")


def test_an_unknown_event_name_is_one_clear_error() -> None:
    done = fgd(None, "event", "sqs")
    assert done.returncode == 2
    assert "invalid choice: 'sqs'" in done.stderr and "timer" in done.stderr
    assert "Traceback" not in done.stderr


ECHO = "def handler(event, context):\n    return event\n"


@pytest.mark.parametrize("name", EXPECTED)
def test_each_event_piped_into_invoke_reaches_the_function_unchanged(daemon: Daemon, api: Api, name: str) -> None:
    function = api.deploy(ECHO)["func_name"]
    printed = fgd(None, "event", name).stdout
    invoked = fgd(daemon, "invoke", function, "--data", "@-", input=printed)
    assert invoked.returncode == 0, invoked.stderr
    assert json.loads(invoked.stdout) == json.loads(printed)


def test_a_shell_pipe_from_event_to_invoke(daemon: Daemon, api: Api) -> None:
    source = (
        "import base64, json\n"
        "def handler(event, context):\n"
        "    return {'method': event['httpMethod'], 'body': json.loads(base64.b64decode(event['body']))}\n"
    )
    function = api.deploy(source)["func_name"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FGD_")}
    environ |= {"FGD_ENDPOINT": daemon.url, "FGD_STATE_DIR": str(daemon.state_dir)}
    command = f"{sys.executable} -m fgd event apig | {sys.executable} -m fgd invoke {function} --data @-"
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=environ, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"method": "GET", "body": {"test": "body"}}


def test_invoke_data_from_stdin_must_be_json(daemon: Daemon, api: Api) -> None:
    function = api.deploy(ECHO)["func_name"]
    done = fgd(daemon, "invoke", function, "--data", "@-", input="not json")
    assert done.returncode == 1
    assert done.stderr.startswith("fgd: error: --data is not valid JSON")
