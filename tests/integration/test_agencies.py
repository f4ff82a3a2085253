"""Agencies: credential sets of the node config reach the functions naming them, and nothing else."""

from __future__ import annotations

import io
import os
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RUNTIME, Api, Daemon, b64, make_zip, unique_name

# Distinct, greppable values: none may show up anywhere but in the function's getters.
SECRETS = {name: f"{name}-{uuid.uuid4().hex}" for name in ("access_key", "secret_key", "security_token", "auth_token")}
READER = {name: f"reader-{name}-{uuid.uuid4().hex}" for name in SECRETS}

GETTERS = """
import os, subprocess

CHILD = []
INSTANCE = os.urandom(8).hex()

def handler(event, context):
    if event.get("spawn") and not CHILD:
        # An exec'd child: its environ is the function's, on the host's /proc.
        CHILD.append(subprocess.Popen(["sleep", "30"]))
    return {
        "getAccessKey": context.getAccessKey(),
        "getSecretKey": context.getSecretKey(),
        "getSecurityAccessKey": context.getSecurityAccessKey(),
        "getSecuritySecretKey": context.getSecuritySecretKey(),
        "getSecurityToken": context.getSecurityToken(),
        "getToken": context.getToken(),
        "in_environ": [k for k, v in os.environ.items() if "-" in v and v.split("-")[-1] in event.get("look", [])],
        "instance": INSTANCE,
    }
"""


def expected(values: dict[str, str]) -> dict[str, str]:
    """Which getter reads which field (docs/api.md, "Agencies")."""
    return {
        "getAccessKey": values["access_key"],
        "getSecretKey": values["secret_key"],
        "getSecurityAccessKey": values["access_key"],
        "getSecuritySecretKey": values["secret_key"],
        "getSecurityToken": values["security_token"],
        "getToken": values["auth_token"],
    }


def toml_values(values: dict[str, str]) -> str:
    return "".join(f'{key} = "{value}"\n' for key, value in values.items())


@pytest.fixture(scope="module")
def agency_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("agencies")
    rotating = base / "rotating.toml"
    rotating.write_text(toml_values({k: f"v1-{k}" for k in SECRETS}))
    rotating.chmod(0o600)
    config = (
        "[agencies.writer]\n"
        + toml_values(SECRETS)
        + "[agencies.reader]\n"
        + toml_values(READER)
        + f'[agencies.rotating]\nfile = "{rotating}"\n'
        + '[agencies.default_only]\nauth_token = "only-for-default"\nprojects = ["default"]\n'
    )
    daemon = Daemon(base / "state", config)
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def agency_api(agency_daemon: Daemon) -> Api:
    return Api(agency_daemon)


def test_a_function_naming_an_agency_gets_its_credentials(agency_api: Api) -> None:
    name = agency_api.deploy(GETTERS, xrole="writer")["func_name"]
    body = agency_api.invoke(name).json()
    assert {k: body[k] for k in expected(SECRETS)} == expected(SECRETS)


def test_the_execution_agency_app_xrole_wins_over_xrole(agency_api: Api) -> None:
    name = agency_api.deploy(GETTERS, xrole="writer", app_xrole="reader")["func_name"]
    body = agency_api.invoke(name).json()
    assert {k: body[k] for k in expected(READER)} == expected(READER)


def test_a_function_without_an_agency_gets_empty_credentials(agency_api: Api) -> None:
    name = agency_api.deploy(GETTERS)["func_name"]
    body = agency_api.invoke(name).json()
    assert {k: body[k] for k in expected(SECRETS)} == dict.fromkeys(expected(SECRETS), "")


def test_naming_an_unknown_agency_is_refused_at_create_and_update(agency_api: Api) -> None:
    for field in ("xrole", "app_xrole"):
        response = agency_api.create(make_zip({"index.py": GETTERS}), **{field: "nosuch"})
        assert response.status_code == 400, response.text
        assert response.json()["error_code"] == "FSS.0400"
        assert f"{field}: agency 'nosuch' is not defined" in response.json()["error_msg"]
    name = agency_api.deploy(GETTERS)["func_name"]
    response = agency_api.http.put(f"/functions/{name}/config", json={"handler": "index.handler", "app_xrole": "ghost"})
    assert response.status_code == 400
    assert "ghost" in response.json()["error_msg"]
    response = agency_api.http.put(f"/functions/{name}/config", json={"handler": "index.handler", "xrole": "reader"})
    assert response.status_code == 200, response.text
    assert response.json()["xrole"] == "reader"
    assert agency_api.invoke(name).json()["getToken"] == READER["auth_token"]


def test_secrets_appear_in_no_answer_log_or_export(agency_api: Api, agency_daemon: Daemon) -> None:
    name = agency_api.deploy(GETTERS, xrole="writer", user_data={"PLAIN": "x"})["func_name"]
    assert agency_api.invoke(name).status_code == 200
    answers = [
        agency_api.http.get(f"/functions/{name}/config").text,
        agency_api.http.get("/functions").text,
        agency_api.http.get(f"/functions/{name}/logs").text,
        agency_api.invoke(name, headers={"X-Cff-Log-Type": "tail"}).headers.get("x-cff-function-log", ""),
    ]
    export = agency_api.http.get(f"/functions/{name}/export", params={"code": "true", "config": "true"})
    assert export.status_code == 200
    with zipfile.ZipFile(io.BytesIO(export.content)) as archive:
        answers += [archive.read(entry).decode(errors="replace") for entry in archive.namelist()]
        assert '"xrole": "writer"' in archive.read("config.json").decode()
    answers.append(agency_daemon.log())
    for text in answers:
        for secret in SECRETS.values():
            assert secret not in text


def _proc_text(pid: str, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def test_secrets_are_in_no_process_environment_or_command_line(agency_api: Api) -> None:
    name = agency_api.deploy(GETTERS, xrole="writer")["func_name"]
    look = [value.split("-")[-1] for value in SECRETS.values()]
    body = agency_api.invoke(name, {"spawn": True, "look": look}).json()
    assert body["getToken"] == SECRETS["auth_token"]
    assert body["in_environ"] == []
    # The instance, its sleeping child, its zygote and the daemon are all alive now: look at every
    # process on the host, as `ps e` would.
    seen = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        seen += 1
        for what in ("environ", "cmdline"):
            text = _proc_text(pid, what)
            for secret in SECRETS.values():
                assert secret.encode() not in text, f"the secret is in /proc/{pid}/{what}"
    assert seen > 10


def test_a_rotated_credential_file_reaches_a_warm_instance(agency_api: Api, agency_daemon: Daemon) -> None:
    name = agency_api.deploy(GETTERS, xrole="rotating")["func_name"]
    first = agency_api.invoke(name).json()
    assert first["getSecurityToken"] == "v1-security_token"
    rotating = Path(agency_daemon.config_path.read_text().split('file = "')[1].split('"')[0])
    rotating.write_text(toml_values({k: f"v2-{k}" for k in SECRETS}))
    # The daemon looks at the file at most once a second.
    time.sleep(1.1)
    second = agency_api.invoke(name).json()
    assert second["instance"] == first["instance"], "the same warm instance"
    assert second["getSecurityToken"] == "v2-security_token"
    assert second["getAccessKey"] == "v2-access_key"
    assert "agency rotating: credentials read from" in agency_daemon.log()
    assert "v2-security_token" not in agency_daemon.log()


def test_a_credential_file_that_goes_bad_keeps_the_last_values(agency_api: Api, agency_daemon: Daemon) -> None:
    name = unique_name("bad")
    agency_api.deploy(GETTERS, name=name, xrole="rotating")
    rotating = Path(agency_daemon.config_path.read_text().split('file = "')[1].split('"')[0])
    good = agency_api.invoke(name).json()["getToken"]
    rotating.write_text('auth_token = "unterminated\n')
    time.sleep(1.1)
    assert agency_api.invoke(name).json()["getToken"] == good
    assert "is not a valid credential file" in agency_daemon.log()


def test_an_agency_limited_to_a_project_is_refused_to_functions_of_another(
    agency_api: Api, agency_daemon: Daemon
) -> None:
    name = agency_api.deploy(GETTERS, xrole="default_only")["func_name"]
    assert agency_api.invoke(name).json()["getToken"] == "only-for-default"
    other = agency_daemon.client()
    other.base_url = agency_daemon.url + "/v2/other_team/fgs"
    body = {
        "func_name": unique_name(),
        "runtime": RUNTIME,
        "handler": "index.handler",
        "code_type": "zip",
        "func_code": {"file": b64(make_zip({"index.py": GETTERS}))},
    }
    for field in ("xrole", "app_xrole"):
        response = other.post("/functions", json={**body, field: "default_only"})
        assert response.status_code == 400, response.text
        assert "not available to project 'other_team'" in response.json()["error_msg"]
    created = other.post("/functions", json=body)
    assert created.status_code == 200, created.text
    response = other.put(
        f"/functions/{body['func_name']}/config", json={"handler": "index.handler", "xrole": "default_only"}
    )
    assert response.status_code == 400, response.text
