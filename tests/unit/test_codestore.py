"""Content-addressed code: stored once, extracted read-only, bad names refused."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile

import pytest

from fgd.codestore import CodeStore, PackageRejected, inline_zip
from tests.conftest import make_zip


def test_put_stores_blob_and_read_only_tree(tmp_path) -> None:
    store = CodeStore(tmp_path)
    data = make_zip({"index.py": "x = 1\n", "pkg/mod.py": "y = 2\n"})
    ref = store.put(data)
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert ref.sha512 == hashlib.sha512(data).hexdigest()
    assert store.read(ref) == data
    tree = store.tree_path(ref.sha256)
    assert (tree / "pkg" / "mod.py").read_text() == "y = 2\n"
    assert not stat.S_IMODE(os.stat(tree / "index.py").st_mode) & 0o222
    assert not stat.S_IMODE(os.stat(tree / "pkg").st_mode) & 0o222


def test_identical_code_is_stored_once(tmp_path) -> None:
    store = CodeStore(tmp_path)
    data = make_zip({"index.py": "x = 1\n"})
    assert store.put(data) == store.put(data)
    assert len(list((tmp_path / "code").iterdir())) == 1


def test_inline_zip_is_reproducible_and_named_after_handler(tmp_path) -> None:
    first = inline_zip(b"def h(e, c): pass\n", "app/main.h")
    assert first == inline_zip(b"def h(e, c): pass\n", "app/main.h")
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        assert archive.namelist() == ["app/main.py"]


@pytest.mark.parametrize("name", ["../x", "/abs", "a/../../x", "a\\b"])
def test_escaping_names_are_refused_and_leave_nothing(tmp_path, name: str) -> None:
    store = CodeStore(tmp_path)
    with pytest.raises(PackageRejected, match="package entry"):
        store.put(make_zip({"ok.py": "", name: "x"}))
    assert list((tmp_path / "code").iterdir()) == []
    assert list((tmp_path / "blobs" / "sha256").iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_symlink_entry_is_refused(tmp_path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/shadow")
    with pytest.raises(PackageRejected, match="'link'"):
        CodeStore(tmp_path).put(buffer.getvalue())


def test_remove_deletes_blob_and_tree(tmp_path) -> None:
    store = CodeStore(tmp_path)
    ref = store.put(make_zip({"index.py": ""}))
    store.remove(ref.sha256)
    assert not store.blob_path(ref.sha256).exists()
    assert not store.tree_path(ref.sha256).exists()
