"""FunctionGraph functions as its documentation writes them, deployed with FunctionGraph's
runtime strings (Python3.6 served by the nearest newer interpreter, Python3.9, Python3.10,
Python3.12) and checked end to end: timer trigger, APIG trigger, initializer, logger and user
data, every bundled library, an agency."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from fgd import events
from fgd.bundled import libraries_for
from tests.compat import samples
from tests.conftest import Api, Daemon, make_zip, skip_unless_served, unique_name

# FunctionGraph's own Python runtime strings, each served by an interpreter of this node.
FUNCTIONGRAPH_RUNTIMES = ["Python3.9", "Python3.10", "Python3.12"]

AGENCY = {
    "access_key": f"AK{uuid.uuid4().hex[:18].upper()}",
    "secret_key": uuid.uuid4().hex,
    "security_token": f"st-{uuid.uuid4().hex}",
    "auth_token": f"MII{uuid.uuid4().hex}",
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A node whose operator defined the agency the samples name (fgs_obs_agency)."""
    values = "".join(f'{key} = "{value}"\n' for key, value in AGENCY.items())
    daemon = Daemon(tmp_path_factory.mktemp("compat") / "state", "[agencies.fgs_obs_agency]\n" + values)
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def fg(node: Daemon) -> Api:
    return Api(node)


def deploy(api: Api, source: str, runtime: str, **settings: object) -> str:
    """Create the function as FunctionGraph's API takes it: runtime string, handler, zip."""
    skip_unless_served(api, runtime)
    name = unique_name("fg")
    response = api.create(make_zip({"index.py": source}), name=name, runtime=runtime, **settings)
    assert response.status_code == 200, response.text
    assert response.json()["runtime"] == runtime
    return name


def logs_of(api: Api, name: str) -> list[str]:
    return [line["message"] for line in api.http.get(f"/functions/{name}/logs", params={"limit": 500}).json()["logs"]]


def test_timer_sample_runs_from_a_real_timer_trigger_and_from_the_test_event(fg: Api) -> None:
    # FunctionGraph's older samples declare Python3.6: served by the nearest newer interpreter.
    name = deploy(fg, samples.TIMER, "Python3.6")
    # The console's test event first.
    response = fg.invoke(name, events.event("timer"))
    assert response.headers["x-is-func-err"] == "false", response.text
    assert response.text == "timer Timer_001 fired with User Custom Payload"
    trigger = {
        "trigger_type_code": "TIMER",
        "trigger_status": "ACTIVE",
        "event_data": {"name": "every_second", "schedule_type": "Cron", "schedule": "@every 1s", "user_event": "go"},
    }
    created = fg.http.post(f"/triggers/{name}", json=trigger)
    assert created.status_code == 201, created.text
    try:
        deadline = time.monotonic() + 5
        fired: list[dict] = []
        while not fired and time.monotonic() < deadline:
            time.sleep(0.2)
            fired = [
                json.loads(message.split("timer event: ", 1)[1])
                for message in logs_of(fg, name)
                if "timer event: " in message and '"every_second"' in message
            ]
        assert fired, "the timer did not fire within 5 s"
        assert fired[0]["trigger_type"] == "TIMER" and fired[0]["user_event"] == "go"
    finally:
        fg.http.delete(f"/triggers/{name}/TIMER/{created.json()['trigger_id']}")


def test_apig_sample_answers_through_the_gateway(fg: Api, node: Daemon) -> None:
    name = deploy(fg, samples.APIG, "Python3.9")
    assert fg.route(name, f"/greet-{name}").status_code == 201
    response = httpx.get(f"{node.gateway_url}/greet-{name}", params={"name": "fgd"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"greeting": "hello fgd", "method": "GET", "path": f"/greet-{name}"}
    # The console's APIG test event through the API gives the APIG response object itself.
    direct = fg.invoke(name, events.event("apig")).json()
    assert direct["statusCode"] == 200 and direct["isBase64Encoded"] is False
    assert json.loads(direct["body"])["path"] == "/apig-event-template"


def test_initializer_sample_runs_once_per_instance(fg: Api) -> None:
    name = deploy(
        fg, samples.INITIALIZER, "Python3.10", initializer_handler="index.my_initializer", initializer_timeout=10
    )
    first = fg.invoke(name).json()
    second = fg.invoke(name).json()
    assert first["function"] == name
    assert second["connected_at"] == first["connected_at"]
    assert (first["calls"], second["calls"]) == (1, 2)
    assert f"[INFO] initializer: connection pool ready for {name}" in logs_of(fg, name)


def test_logger_and_user_data_sample(fg: Api) -> None:
    name = deploy(
        fg,
        samples.LOGGER_AND_USER_DATA,
        "Python3.12",
        user_data={"obs_bucket": "my-bucket", "RUNTIME_LOG_LEVEL": "DEBUG"},
    )
    response = fg.invoke(name)
    assert response.json() == {"bucket": "my-bucket", "region": "cn-north-4", "missing": None}
    request_id = response.headers["x-cff-request-id"]
    lines = fg.http.get(f"/functions/{name}/logs", params={"request_id": request_id}).json()["logs"]
    logged = [line["message"] for line in lines if line["stream"] == "logger"]
    assert logged == [
        "[DEBUG] debug is on",
        "[INFO] bucket=my-bucket region=cn-north-4",
        "[WARN] disk almost full",
        "[ERROR] could not reach db",
    ]


def minor_of(runtime: str) -> tuple[int, int]:
    return (3, int(runtime.removeprefix("Python3.")))


@pytest.fixture(scope="module", params=FUNCTIONGRAPH_RUNTIMES)
def bundled_results(fg: Api, request: pytest.FixtureRequest) -> tuple[str, dict[str, list]]:
    runtime = request.param
    name = deploy(fg, samples.BUNDLED, runtime, memory_size=512, timeout=60)
    modules = [library.module for library in libraries_for(minor_of(runtime))]
    response = fg.invoke(name, {"also_import": modules})
    assert response.headers["x-is-func-err"] == "false", response.text
    return runtime, response.json()


# FunctionGraph's Python 3.12 list is the longest; a library 3.9 lacks is checked only where bundled.
@pytest.mark.parametrize("library", libraries_for((3, 12)), ids=lambda library: library.module)
def test_each_bundled_library_works_in_a_sample(bundled_results: tuple[str, dict[str, list]], library) -> None:
    runtime, results = bundled_results
    if library not in libraries_for(minor_of(runtime)):
        assert library.module not in results
        return
    ok, detail = results[library.module]
    assert ok, f"{runtime} {library.module}: {detail}"


def test_bundled_samples_give_the_expected_answers(bundled_results: tuple[str, dict[str, list]]) -> None:
    answers = {name: detail for name, (ok, detail) in bundled_results[1].items() if ok}
    assert answers["requests"] == "application/json"
    assert answers["numpy"] == "45"
    assert answers["cloudpickle"] == "42"
    assert answers["idna"] == "xn--bcher-kva.example"
    assert answers["pkg_resources"] == "requests"
    assert answers["huaweicloudsdksmn"] == "m"


def test_agency_sample_builds_an_obs_client_from_the_context(fg: Api) -> None:
    name = deploy(fg, samples.AGENCY, "Python3.9", xrole="fgs_obs_agency")
    body = fg.invoke(name).json()
    assert body == {
        "ak": AGENCY["access_key"],
        "sk": AGENCY["secret_key"],
        "token": AGENCY["security_token"],
        "iam_token": AGENCY["auth_token"],
        "legacy_ak": AGENCY["access_key"],
    }
    refused = fg.create(make_zip({"index.py": samples.AGENCY}), runtime="Python3.9", xrole="fgs_other_agency")
    assert refused.status_code == 400
