"""fgd.bundled: FunctionGraph's list per interpreter, and finding a built tree."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from fgd.bundled import MANIFEST, Manifest, libraries_for, resolve_root, tree_for


def test_functiongraphs_list_for_3_9_and_what_3_12_adds() -> None:
    base = {library.module for library in libraries_for((3, 9))}
    assert {"requests", "obs", "numpy", "pkg_resources", "huaweicloudsdkcore", "redis", "yaml"} <= base
    assert "zipp" not in base
    newer = {library.module for library in libraries_for((3, 12))}
    assert newer - base == {
        "packaging",
        "platformdirs",
        "tomli",
        "typeguard",
        "inflect",
        "more_itertools",
        "zipp",
        "importlib_metadata",
    }
    setuptools = next(library for library in libraries_for((3, 9)) if library.module == "pkg_resources")
    assert setuptools.spec == "setuptools<81"


def test_a_tree_counts_only_with_its_manifest(tmp_path: Path) -> None:
    (tmp_path / "python3.9").mkdir()
    assert tree_for(tmp_path, (3, 9)) is None
    (tmp_path / "python3.9" / MANIFEST).write_bytes(msgspec.json.encode(Manifest(python="3.9.18")))
    assert tree_for(tmp_path, (3, 9)) == tmp_path / "python3.9"
    assert tree_for(tmp_path, (3, 10)) is None


def test_the_root_is_none_when_off_or_nothing_is_built(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="fgd.bundled")
    assert resolve_root(False, str(tmp_path)) is None
    assert "switched off" in caplog.text
    assert resolve_root(True, str(tmp_path / "absent")) is None
    assert "none built" in caplog.text
    (tmp_path / "python3.11").mkdir()
    (tmp_path / "python3.11" / MANIFEST).write_text("{}")
    assert resolve_root(True, str(tmp_path)) == tmp_path.resolve()
