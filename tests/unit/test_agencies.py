"""fgd.agencies: which set a function gets, unknown names, credential files and their rotation."""

from __future__ import annotations

import logging
import os
import threading
import time
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


def test_a_credential_file_replaced_by_a_fifo_never_blocks_the_daemon(tmp_path: Path, caplog) -> None:
    # Reading a FIFO waits for a writer: on the daemon's event loop that stopped every request
    # (and /healthz) of the node. Only a regular file is read; the last values stay.
    path = tmp_path / "a.toml"
    path.write_text('access_key = "before"\n')
    path.chmod(0o600)
    clock = Clock()
    agencies = Agencies({"a": AgencyConfig(file=str(path))}, clock)
    assert agencies.credentials("a", "")[0].access_key == "before"
    path.unlink()
    os.mkfifo(path, 0o600)
    # A writer that answers a blocked reader (so a regression fails here instead of hanging).
    writer = threading.Thread(target=_feed_fifo, args=(path, b'access_key = "from-the-fifo"\n'), daemon=True)
    writer.start()
    clock.now += RECHECK
    started = time.monotonic()
    assert agencies.credentials("a", "")[0].access_key == "before"
    assert time.monotonic() - started < 0.5
    assert "not a regular file" in caplog.text
    writer.join()


def _feed_fifo(path: Path, data: bytes, within: float = 1.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            time.sleep(0.02)
            continue
        os.write(fd, data)
        os.close(fd)
        return


@pytest.mark.parametrize("target", ["/dev/null", "/dev/zero"])
def test_a_credential_file_linked_to_a_device_is_not_read(tmp_path: Path, target: str, caplog) -> None:
    path = tmp_path / "a.toml"
    path.symlink_to(target)
    agencies = Agencies({"a": AgencyConfig(file=str(path))})
    assert agencies.credentials("a", "")[0] == NONE
    assert "not a regular file" in caplog.text


def test_a_huge_credential_file_is_not_read_into_memory(tmp_path: Path, caplog) -> None:
    path = tmp_path / "a.toml"
    path.write_text('access_key = "small"\n')
    path.chmod(0o600)
    clock = Clock()
    agencies = Agencies({"a": AgencyConfig(file=str(path))}, clock)
    assert agencies.credentials("a", "")[0].access_key == "small"
    with path.open("w") as handle:
        handle.write('access_key = "' + "k" * (2 * 1024 * 1024) + '"\n')
    clock.now += RECHECK
    assert agencies.credentials("a", "")[0].access_key == "small"
    assert "over 262,144 bytes" in caplog.text


def test_a_credential_file_reached_through_a_symlink_is_read(tmp_path: Path) -> None:
    # Secret stores (Kubernetes secrets, systemd credentials) hand files out through symlinks.
    real = tmp_path / "..data" / "a.toml"
    real.parent.mkdir()
    real.write_text('auth_token = "linked"\n')
    real.chmod(0o600)
    link = tmp_path / "a.toml"
    link.symlink_to(real)
    assert Agencies({"a": AgencyConfig(file=str(link))}).credentials("a", "")[0].auth_token == "linked"


def test_an_agency_limited_to_projects_is_refused_to_the_others_and_gives_them_nothing() -> None:
    # Agencies are the node's: without a limit, a key of any project could name one meant for
    # another project and read its credentials from its function's context.
    agencies = Agencies({"team_a": AgencyConfig(access_key="AKA", projects=["proj_a"]), "shared": READER})
    agencies.check("team_a", "", project="proj_a")
    agencies.check("shared", "", project="proj_b")
    with pytest.raises(InvalidParameter, match=r"xrole: agency 'team_a' is not available to project 'proj_b'"):
        agencies.check("team_a", "", project="proj_b")
    with pytest.raises(InvalidParameter, match="app_xrole"):
        agencies.check("", "team_a", project="proj_b")
    assert agencies.credentials("team_a", "", project="proj_a")[0].access_key == "AKA"
    # Named before the limit was set (or the limit changed since): no credentials.
    assert agencies.credentials("team_a", "", project="proj_b") == (NONE, ("", 0))
    assert agencies.credentials("shared", "", project="proj_b")[0].access_key == "AKR"


def test_the_config_takes_an_agencys_projects() -> None:
    text = b'[agencies.a]\naccess_key = "a"\nprojects = ["p1", "default"]\n'
    assert msgspec.toml.decode(text, type=Config).agencies["a"].projects == ["p1", "default"]
    with pytest.raises(msgspec.ValidationError):
        msgspec.toml.decode(b'[agencies.a]\nprojects = ["bad project"]\n', type=Config)


def test_an_unknown_agency_names_only_the_agencies_the_project_may_use() -> None:
    agencies = Agencies({"team_a_secret_store": AgencyConfig(projects=["proj_a"]), "shared": READER})
    with pytest.raises(InvalidParameter) as refused:
        agencies.check("ghost", "", project="proj_b")
    assert "defined: shared" in refused.value.message
    assert "team_a_secret_store" not in refused.value.message
