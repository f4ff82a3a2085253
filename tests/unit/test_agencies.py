"""fgd.agencies: which set a function gets, unknown names, credential files and their rotation."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec
import pytest

from fgd.agencies import NONE, RECHECK, Agencies, Credentials
from fgd.config import AgencyConfig, Config
from fgd.errors import InvalidParameter

WRITER = AgencyConfig(access_key="AKW", secret_key="SKW", security_token="STW", auth_token="TW")
READER = AgencyConfig(access_key="AKR", secret_key="SKR")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_app_xrole_is_the_execution_agency_and_xrole_the_fallback() -> None:
    agencies = Agencies({"writer": WRITER, "reader": READER})
    assert agencies.credentials("writer", "")[0].access_key == "AKW"
    assert agencies.credentials("writer", "reader")[0].access_key == "AKR"
    assert agencies.credentials("", "reader")[0].secret_key == "SKR"
    assert agencies.credentials("", "") == (NONE, ("", 0))


def test_an_unknown_agency_is_an_invalid_parameter_naming_the_field_and_the_defined_ones() -> None:
    agencies = Agencies({"writer": WRITER})
    agencies.check("writer", "")
    with pytest.raises(InvalidParameter, match=r"app_xrole: agency 'ghost' is not defined.*defined: writer"):
        agencies.check("writer", "ghost")
    with pytest.raises(InvalidParameter, match="none are defined"):
        Agencies({}).check("x", "")


def test_credentials_never_print_their_values() -> None:
    text = repr(Credentials("AKSECRET", "SKSECRET", "STSECRET", "TSECRET"))
    assert "SECRET" not in text


def test_a_credential_file_is_read_and_re_read_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('access_key = "one"\nsecurity_token = "t1"\n')
    clock = Clock()
    agencies = Agencies({"a": AgencyConfig(file=str(path))}, clock)
    first, token = agencies.credentials("a", "")
    assert (first.access_key, first.security_token, first.secret_key) == ("one", "t1", "")
    path.write_text('access_key = "two"\n')
    os.utime(path, ns=(1, 1))
    # Not looked at again within RECHECK seconds: no stat per invocation.
    assert agencies.credentials("a", "")[0].access_key == "one"
    clock.now += RECHECK
    second, renewed = agencies.credentials("a", "")
    assert second.access_key == "two"
    assert renewed != token
    clock.now += RECHECK
    assert agencies.credentials("a", "")[1] == renewed


def test_a_broken_file_keeps_the_last_values_and_logs_no_secret(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="fgd.agencies")
    path = tmp_path / "a.toml"
    path.write_text('access_key = "keepme-secret"\n')
    path.chmod(0o600)
    clock = Clock()
    agencies = Agencies({"a": AgencyConfig(file=str(path))}, clock)
    assert agencies.credentials("a", "")[0].access_key == "keepme-secret"
    path.write_text('access_key = "half-written-secret\n')
    clock.now += RECHECK
    assert agencies.credentials("a", "")[0].access_key == "keepme-secret"
    path.write_text('access_key = 5\nsecret_key = "typed-secret"\n')
    clock.now += RECHECK
    assert agencies.credentials("a", "")[0].access_key == "keepme-secret"
    path.write_text('unknown_field = "x"\n')
    clock.now += RECHECK
    assert agencies.credentials("a", "")[0].access_key == "keepme-secret"
    assert "is not a valid credential file" in caplog.text
    assert "secret" not in caplog.text.replace("secret_key", "")


def test_a_missing_file_gives_no_credentials_and_says_so(tmp_path: Path, caplog) -> None:
    agencies = Agencies({"a": AgencyConfig(file=str(tmp_path / "absent.toml"))})
    assert agencies.credentials("a", "")[0] == NONE
    assert "cannot read" in caplog.text


def test_a_world_readable_file_is_warned_about(tmp_path: Path, caplog) -> None:
    path = tmp_path / "a.toml"
    path.write_text('access_key = "x"\n')
    path.chmod(0o644)
    Agencies({"a": AgencyConfig(file=str(path))}).credentials("a", "")
    assert "readable by other users" in caplog.text


def test_the_config_takes_agencies_and_refuses_file_with_values() -> None:
    text = b'[agencies.obs_writer]\naccess_key = "a"\n[agencies.rotating]\nfile = "/etc/fgd/agencies/r.toml"\n'
    config = msgspec.toml.decode(text, type=Config)
    assert config.agencies["obs_writer"].access_key == "a"
    assert config.agencies["rotating"].file == "/etc/fgd/agencies/r.toml"
    with pytest.raises(msgspec.ValidationError, match="either file or its values"):
        msgspec.toml.decode(b'[agencies.x]\naccess_key = "a"\nfile = "/f"\n', type=Config)
    with pytest.raises(msgspec.ValidationError):
        msgspec.toml.decode(b'[agencies."bad name"]\naccess_key = "a"\n', type=Config)
    with pytest.raises(msgspec.ValidationError):
        msgspec.toml.decode(b'[agencies.x]\npassword = "a"\n', type=Config)
