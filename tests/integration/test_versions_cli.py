"""`fgd publish`, `fgd versions`, `fgd alias set|ls|rm` and `fgd invoke NAME:QUALIFIER`."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import RUNTIME, Daemon, unique_name
from tests.integration.test_cli import fgd, write_function

HANDLER = "def handler(e, c):\n    return {'code': %r, 'version': c.getVersion(), 'alias': c.getAlias()}\n"


def deploy(daemon: Daemon, directory: Path, name: str, code: str) -> None:
    write_function(directory, HANDLER % code)
    done = fgd(daemon, "deploy", str(directory), "--name", name, "--runtime", RUNTIME, "--handler", "index.handler")
    assert done.returncode == 0, done.stderr


def test_publish_versions_alias_and_qualified_invoke(daemon: Daemon, tmp_path: Path) -> None:
    name = unique_name("cliv")
    deploy(daemon, tmp_path / "fn", name, "one")
    published = fgd(daemon, "publish", name, "--version", "v1", "--description", "first cut")
    assert published.returncode == 0, published.stderr
    assert f"published {name}:v1" in published.stdout
    again = fgd(daemon, "publish", name)
    assert again.returncode == 1 and "FSS.1016" in again.stderr and "Traceback" not in again.stderr
    deploy(daemon, tmp_path / "fn", name, "two")
    assert fgd(daemon, "publish", name, "--version", "v2").returncode == 0

    listed = fgd(daemon, "versions", name)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:2] == ["VERSION", "MEMORY"]
    assert [row.split()[0] for row in rows] == ["latest", "v1", "v2"]
    assert "first cut" in rows[1]

    made = fgd(daemon, "alias", "set", name, "prod", "v1", "--weight", "v2=0")
    assert made.returncode == 0, made.stderr
    assert json.loads(fgd(daemon, "invoke", f"{name}:!prod").stdout) == {
        "code": "one",
        "version": "v1",
        "alias": "prod",
    }
    assert json.loads(fgd(daemon, "invoke", f"{name}:v2").stdout)["code"] == "two"
    assert json.loads(fgd(daemon, "invoke", name).stdout) == {"code": "two", "version": "latest", "alias": ""}
    moved = fgd(daemon, "alias", "set", name, "prod", "v2")
    assert moved.returncode == 0 and "moved" in moved.stdout
    assert json.loads(fgd(daemon, "invoke", f"{name}:!prod").stdout)["version"] == "v2"
    aliases = fgd(daemon, "alias", "ls", name)
    assert aliases.returncode == 0
    assert aliases.stdout.splitlines()[1].split()[:2] == ["prod", "v2"]
    bad = fgd(daemon, "alias", "set", name, "beta", "v1", "--weight", "v2=lots")
    assert bad.returncode == 1 and "VERSION=PERCENT" in bad.stderr
    assert fgd(daemon, "alias", "rm", name, "prod").returncode == 0
    assert "no aliases" in fgd(daemon, "alias", "ls", name).stdout
