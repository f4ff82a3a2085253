"""Content-addressed code: stored once, extracted read-only, bad names refused."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fgd import codestore, packages
from fgd.codestore import CodeStore, PackageRejected, inline_zip
from fgd.packages import Entry, PackageLimits, TreePlan, check_name
from tests.conftest import make_zip
from tests.packages import corpus


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


# Links: nothing is written outside the tree, and the stored tree has no way out ----------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the store with a file an escape would overwrite."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "victim").write_text("precious\n")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "victim").write_text("precious too\n")
    return directory


def hostile_cases(tmp_path: Path) -> dict[str, tuple[list, list[str]]]:
    outside_dir = str(tmp_path / "outside")
    return {
        **corpus.LINK_CASES,
        "climb-to-a-sibling-dir": (corpus.climb(outside_dir, "X"), ["'w/X'", "symbolic link"]),
        "climb-and-truncate": (corpus.climb(outside_dir, "victim", b""), ["'w/victim'", "symbolic link"]),
        "climb-alone": (corpus.climb(outside_dir, "X")[:2], ["'w'", "outside"]),
        "climb-to-the-state-dir": (corpus.climb(str(tmp_path / "state"), "victim"), ["'w/victim'"]),
    }


CASE_NAMES = [
    *corpus.LINK_CASES,
    "climb-to-a-sibling-dir",
    "climb-and-truncate",
    "climb-alone",
    "climb-to-the-state-dir",
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_hostile_links_are_refused_and_change_nothing_outside(tmp_path: Path, outside: Path, case: str) -> None:
    items, words = hostile_cases(tmp_path)[case]
    store = CodeStore(tmp_path / "state")
    before = corpus.listing(tmp_path)
    with pytest.raises(PackageRejected) as refused:
        store.put(corpus.package(items))
    for word in words:
        assert word in str(refused.value)
    assert corpus.listing(tmp_path) == before
    assert list((tmp_path / "state" / "tmp").iterdir()) == []


def test_climb_reaches_anywhere_yet_writes_nothing_in_tmp(outside: Path, tmp_path: Path) -> None:
    """The longer chain aimed at a directory under /tmp (outside the test's own tree)."""
    target = Path(tempfile.mkdtemp(prefix="fgd-sentinel-"))
    try:
        (target / "victim").write_text("precious\n")
        store = CodeStore(tmp_path / "state")
        before = corpus.listing(target)
        with pytest.raises(PackageRejected, match="'w/victim'"):
            store.put(corpus.package(corpus.climb(str(target), "victim", b"")))
        with pytest.raises(PackageRejected, match="'w'"):
            store.put(corpus.package(corpus.climb(str(target), "victim")[:2]))
        assert corpus.listing(target) == before
    finally:
        shutil.rmtree(target)


def _unchecked_entries(infos: list[zipfile.ZipInfo], limits: PackageLimits) -> list[Entry]:
    """The entries as check_entries would give them, without its duplicate rule."""
    return [
        Entry(i.orig_filename, check_name(i.orig_filename, limits), packages._kind(i), i.file_size, i.compress_size, 0)
        for i in infos
    ]


@pytest.mark.parametrize(
    "items",
    [
        corpus.EXPLOIT,
        [corpus.Link("etc", "/"), ("etc/X", b"x")],
        [corpus.Link("l", "/"), ("l", b"truncated!\n")],  # a duplicate: the file would be opened through it
        [corpus.Link("d", ".."), corpus.Dir("d/made-outside")],
        [corpus.Link("s/u", ".."), corpus.Link("w", "s/u/../../victim"), ("w", b"")],
    ],
    ids=["exploit", "absolute-link-dir", "duplicate-through-absolute-link", "dir-through-link", "truncate-via-chain"],
)
def test_extraction_itself_never_writes_through_a_link(
    tmp_path: Path, outside: Path, monkeypatch: pytest.MonkeyPatch, items: list
) -> None:
    """With every rule about links switched off, the no-follow extraction alone still holds."""
    monkeypatch.setattr(codestore.TreePlan, "add", lambda self, entry, target="": None)
    monkeypatch.setattr(codestore.TreePlan, "check_links", lambda self: None)
    monkeypatch.setattr(codestore, "check_symlink_target", lambda *args: None)
    monkeypatch.setattr(codestore, "check_entries", _unchecked_entries)
    store = CodeStore(tmp_path / "state")
    before = corpus.listing(tmp_path, skip=("state/tmp",))
    # Pointed at the real root too: "/" holds nothing this test could lose.
    with pytest.raises(PackageRejected, match="runs into a symbolic link"):
        store.put(corpus.package(items))
    assert corpus.listing(tmp_path, skip=("state/tmp",)) == before
    assert list((tmp_path / "state" / "tmp").iterdir()) == []
    assert not Path("/X").exists() and not Path("/made-outside").exists()


def test_links_inside_the_package_are_kept(tmp_path: Path) -> None:
    items = [
        corpus.Link("alias.py", "real.py"),  # a link to a file written later
        ("real.py", b"x = 1\n"),
        corpus.Link("a", "b"),  # a chain of links to a directory
        corpus.Link("b", "lib/inner"),
        ("lib/inner/mod.py", b"y = 2\n"),
        corpus.Link("lib/up", ".."),  # back to the root, by a link inside it
        corpus.Link("via", "lib/up/lib/up/real.py"),
        corpus.Link("dangling", "missing.py"),
    ]
    store = CodeStore(tmp_path)
    tree = store.tree_path(store.put(corpus.package(items)).sha256)
    assert (tree / "alias.py").read_text() == "x = 1\n"
    assert (tree / "a" / "mod.py").read_text() == "y = 2\n"
    assert (tree / "via").read_text() == "x = 1\n"
    assert os.readlink(tree / "dangling") == "missing.py"
    root = os.path.realpath(tree)
    for link in ("alias.py", "a", "b", "lib/up", "via"):
        assert os.path.realpath(tree / link).startswith(root)


def test_link_target_over_the_name_limit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackageRejected, match="'long': symbolic link target is over 1024 bytes"):
        CodeStore(tmp_path).put(corpus.package([corpus.Link("long", "a/" * 600)]))


def _chained_links(count: int) -> list:
    # Each d/e/l<i> is 500 './' then l<i/2> (chains about log2(count) deep); l0 is the package root.
    return [corpus.Link(f"d/e/l{i}", "./" * 500 + (f"l{i // 2}" if i else "../..")) for i in range(count)]


def test_a_link_is_refused_when_its_chain_leads_out(tmp_path: Path) -> None:
    items = _chained_links(300)
    CodeStore(tmp_path / "good").put(corpus.package(items))
    # Lexically d/e, but l299 is the root, so its '..' leads out.
    with pytest.raises(PackageRejected, match=re.escape("'bad': symbolic link to 'd/e/l299/..' leads outside")):
        CodeStore(tmp_path / "bad").put(corpus.package([*items, corpus.Link("bad", "d/e/l299/..")]))


def test_following_the_most_links_a_package_may_hold_is_fast() -> None:
    """Each link is followed once (remembered): 30,000 links of 1,000+ bytes, in chains 15 deep."""
    plan = TreePlan()
    for link in _chained_links(30_000):
        parts = tuple(link.name.split("/"))
        plan.add(Entry(link.name, parts, "symlink", len(link.target), 0, 0), link.target)
    started = time.process_time()
    plan.check_links()
    assert time.process_time() - started < 5  # about 0.6 s


# Concurrent uploads and the collector ------------------------------------------------------


def _run_all(functions: list) -> list:
    """Run each function in its own thread at once; their results (the first error is raised)."""
    with ThreadPoolExecutor(len(functions)) as pool:
        futures = [pool.submit(function) for function in functions]
        return [future.result(30) for future in futures]


def _assert_one_valid_tree(store: CodeStore, tmp_path: Path, data: bytes) -> None:
    sha = hashlib.sha256(data).hexdigest()
    assert [p.name for p in (tmp_path / "code").iterdir()] == [sha]
    assert (store.tree_path(sha) / "pkg" / "mod.py").read_text() == "y = 2\n"
    assert store.blob_path(sha).read_bytes() == data
    assert list((tmp_path / "tmp").iterdir()) == []


def test_identical_uploads_racing_each_other_all_succeed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every thread extracts before any installs: all but the first find the tree there."""
    store = CodeStore(tmp_path)
    data = make_zip({"index.py": "x = 1\n", "pkg/mod.py": "y = 2\n"})
    threads = 4
    all_extracted = threading.Barrier(threads)
    extract = store._validated_tree

    def extract_then_wait(path: Path) -> Path:
        staging = extract(path)
        all_extracted.wait(10)
        return staging

    monkeypatch.setattr(store, "_validated_tree", extract_then_wait)
    refs = _run_all([lambda: store.put(data)] * threads)
    assert len(set(refs)) == 1
    _assert_one_valid_tree(store, tmp_path, data)


def test_identical_uploads_at_once_through_put_file(tmp_path: Path) -> None:
    store = CodeStore(tmp_path)
    data = make_zip({"index.py": "x = 1\n", "pkg/mod.py": "y = 2\n", "big.bin": os.urandom(1 << 20)})
    start = threading.Barrier(8)

    def upload() -> object:
        fd, path = store.temp_file()
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        start.wait(10)
        try:
            return store.put_file(path)
        finally:
            path.unlink(missing_ok=True)

    assert len(set(_run_all([upload] * 8))) == 1
    sha = hashlib.sha256(data).hexdigest()
    assert [p.name for p in (tmp_path / "code").iterdir()] == [sha]
    assert store.blob_path(sha).read_bytes() == data
    assert list((tmp_path / "tmp").iterdir()) == []


def _age(store: CodeStore, sha: str, seconds: float) -> None:
    then = time.time() - seconds
    for path in (store.tree_path(sha), store.blob_path(sha)):
        os.utime(path, (then, then))


def test_reusing_an_old_package_restarts_its_grace_period(tmp_path: Path) -> None:
    store = CodeStore(tmp_path)
    data = make_zip({"index.py": "x = 1\n", "pkg/mod.py": "y = 2\n"})
    sha = store.put(data).sha256
    _age(store, sha, 3600)  # uploaded an hour ago, since unreferenced
    # The daemon's collector reads the cutoff (grace 600 s), then what is in use: nothing yet,
    # since the function the re-upload is for has not been saved.
    older_than = time.time() - 600
    assert store.put(data).sha256 == sha
    assert store.collect(set(), older_than) == []
    assert store.stored()[sha] >= older_than + 600 - 1
    _assert_one_valid_tree(store, tmp_path, data)
    # Even with no grace at all, a package handed out after the cutoff was read is kept.
    _age(store, sha, 3600)
    older_than = time.time()
    store.put(data)
    assert store.collect(set(), older_than) == []
    _assert_one_valid_tree(store, tmp_path, data)
    # Once nothing uses it and it is old, it goes.
    assert store.collect(set(), time.time() + 1) == [sha]
    assert list((tmp_path / "code").iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_reupload_while_the_collector_removes_the_same_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The upload waits for the collector, then finds the package gone and extracts it again."""
    store = CodeStore(tmp_path)
    data = make_zip({"index.py": "x = 1\n", "pkg/mod.py": "y = 2\n"})
    sha = store.put(data).sha256
    _age(store, sha, 3600)
    collecting, resume = threading.Event(), threading.Event()
    stored = store.stored

    def paused_stored() -> dict[str, float]:
        found = stored()
        collecting.set()
        assert resume.wait(10)
        return found

    monkeypatch.setattr(store, "stored", paused_stored)
    collector = threading.Thread(target=lambda: removed.extend(store.collect(set(), time.time() - 600)))
    removed: list[str] = []
    refs: list = []
    collector.start()
    assert collecting.wait(10)
    upload = threading.Thread(target=lambda: refs.append(store.put(data)))
    upload.start()
    upload.join(0.3)
    waited = upload.is_alive()  # it cannot hand the package out while the collector decides
    resume.set()
    collector.join(10)
    upload.join(10)
    assert waited
    assert removed == [sha]
    assert [ref.sha256 for ref in refs] == [sha]
    _assert_one_valid_tree(store, tmp_path, data)


def test_collector_removes_nothing_being_extracted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A collection in the middle of an extraction neither sees nor disturbs the staging tree."""
    store = CodeStore(tmp_path)
    data = make_zip({"index.py": "x = 1\n", "pkg/mod.py": "y = 2\n"})
    extract = store._validated_tree
    removed: list[str] = []

    def extract_then_collect(path: Path) -> Path:
        staging = extract(path)
        removed.extend(store.collect(set(), time.time() + 1))
        return staging

    monkeypatch.setattr(store, "_validated_tree", extract_then_collect)
    store.put(data)
    assert removed == []
    _assert_one_valid_tree(store, tmp_path, data)


def test_link_with_corrupt_data_is_refused(tmp_path: Path) -> None:
    data = corpus.package([corpus.Link("alias", "index.py")])
    # The link's target is stored as written: change it without fixing the CRC.
    corrupt = data.replace(b"index.pyPK", b"indeX.pyPK", 1)
    assert corrupt != data
    with pytest.raises(PackageRejected, match="'alias': corrupt data"):
        CodeStore(tmp_path).put(corrupt)
    assert list((tmp_path / "tmp").iterdir()) == []


# -- issue 15: one pass per file, one sync per package -------------------------------------------


def executable_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, mode in (("index.py", 0o644), ("bin/tool", 0o755)):
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.create_system = 3
            archive.writestr(info, b"data of " + name.encode())
    return buffer.getvalue()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o277])
def test_files_get_their_read_only_modes_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int
) -> None:
    # The mode is given at creation; a umask that takes bits away is made up for with fchmod.
    monkeypatch.setattr(codestore, "_UMASK", umask)
    previous = os.umask(umask)
    try:
        tree = CodeStore(tmp_path).tree_path(CodeStore(tmp_path).put(executable_zip()).sha256)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.lstat(tree / "index.py").st_mode) == 0o444
    assert stat.S_IMODE(os.lstat(tree / "bin" / "tool").st_mode) == 0o555
    assert (tree / "bin" / "tool").read_bytes() == b"data of bin/tool"


def test_the_umask_is_read_without_changing_it() -> None:
    previous = os.umask(0o027)
    try:
        assert codestore._umask() == 0o027
        assert os.umask(0o027) == 0o027  # still what it was set to
    finally:
        os.umask(previous)


def test_a_package_is_synced_once_not_file_by_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_syncfs, real_fsync = codestore._sync_filesystem, os.fsync
    monkeypatch.setattr(codestore, "_sync_filesystem", lambda fd: (calls.append("syncfs"), real_syncfs(fd))[1])
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    store = CodeStore(tmp_path)
    data = make_zip({f"pkg{n // 100}/file{n}.py": f"n = {n}\n" for n in range(500)})
    ref = store.put(data)
    # One sync of the file system for the 500 files, then the blob and the two renames' directories.
    assert calls.count("syncfs") == 1
    assert calls.count("fsync") <= 3
    # Synced before it is installed: the tree the function record will point at is whole after a crash.
    assert (store.tree_path(ref.sha256) / "pkg4" / "file499.py").read_text() == "n = 499\n"
    calls.clear()
    store.put(data)  # the same package again: nothing new to extract or sync
    assert calls.count("syncfs") == 0


def test_a_failed_sync_refuses_the_package_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(fd: int) -> None:
        raise OSError(5, "syncfs of the package store failed: Input/output error")

    monkeypatch.setattr(codestore, "_sync_filesystem", failing)
    store = CodeStore(tmp_path)
    with pytest.raises(OSError, match="syncfs"):
        store.put(make_zip({"index.py": "x = 1\n"}))
    assert list((tmp_path / "code").iterdir()) == []
    assert [p.name for p in (tmp_path / "tmp").iterdir()] == []


# -- the direct reader of stored and deflated entries (issue 15) ---------------------------------


def zip_of(entries: list[tuple[str, bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data, method in entries:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buffer.getvalue()


def test_every_method_and_size_extracts_byte_for_byte(tmp_path: Path) -> None:
    noise = os.urandom(3 * codestore.CHUNK + 17)  # several reads, in both directions
    entries = [
        ("empty-stored", b"", zipfile.ZIP_STORED),
        ("empty-deflated", b"", zipfile.ZIP_DEFLATED),
        ("big-stored", noise, zipfile.ZIP_STORED),
        ("big-deflated", noise, zipfile.ZIP_DEFLATED),
        # Many times the read size out of one read (under the 1000:1 ratio rule).
        ("sparse-deflated", (os.urandom(100) + b"\0" * 50_000) * 80, zipfile.ZIP_DEFLATED),
        ("small-bzip2", b"bz" * 1000, zipfile.ZIP_BZIP2),
        ("small-lzma", b"xz" * 1000, zipfile.ZIP_LZMA),
    ]
    store = CodeStore(tmp_path)
    tree = store.tree_path(store.put(zip_of(entries)).sha256)
    for name, data, _ in entries:
        assert (tree / name).read_bytes() == data, name


def patched(data: bytes, find: bytes, replace: bytes, count: int = 1) -> bytes:
    assert data.count(find) >= count
    return data.replace(find, replace, count)


def test_a_local_header_naming_another_file_is_refused(tmp_path: Path) -> None:
    # The central directory says a.py; the local header (what some extractors use) says b.py.
    data = zip_of([("a.py", b"x = 1\n", zipfile.ZIP_DEFLATED)])
    with pytest.raises(PackageRejected, match=r"local header names it 'b\.py'"):
        CodeStore(tmp_path).put(patched(data, b"a.py", b"b.py"))


def test_data_that_does_not_match_its_crc_is_refused(tmp_path: Path) -> None:
    data = zip_of([("a.txt", b"hello, world", zipfile.ZIP_STORED)])
    with pytest.raises(PackageRejected, match="bad CRC"):
        CodeStore(tmp_path).put(patched(data, b"hello, world", b"HELLO, world"))


def test_a_deflate_stream_cut_short_is_refused(tmp_path: Path) -> None:
    body = os.urandom(4000)
    data = bytearray(zip_of([("a.bin", body, zipfile.ZIP_DEFLATED)]))
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("a.bin")
    start = info.header_offset + 30 + len("a.bin")
    # The stream's first block header says "final, stored" with a length longer than what follows.
    data[start : start + 5] = bytes([0x01, 0xFF, 0xFF, 0x00, 0x00])
    with pytest.raises(PackageRejected, match=r"'a\.bin': corrupt data"):
        CodeStore(tmp_path).put(bytes(data))
    assert list((tmp_path / "code").iterdir()) == []


def test_an_entry_whose_data_runs_past_the_archive_is_refused(tmp_path: Path) -> None:
    data = zip_of([("a.bin", os.urandom(2000), zipfile.ZIP_STORED)])
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("a.bin")
    # Central directory and local header both claim far more compressed data than there is.
    bigger = (info.compress_size + 10**6).to_bytes(4, "little")
    declared = info.compress_size.to_bytes(4, "little")
    with pytest.raises(PackageRejected, match=r"'a\.bin'"):
        CodeStore(tmp_path).put(patched(data, declared * 2, bigger * 2, count=2))


def test_patched_data_flag_is_refused(tmp_path: Path) -> None:
    data = bytearray(zip_of([("a.txt", b"x", zipfile.ZIP_STORED)]))
    central = data.rindex(b"PK\x01\x02")
    data[central + 8] |= 0x20  # general purpose flag bit 5 in the central directory
    with pytest.raises(PackageRejected, match=r"'a\.txt': corrupt data \(patched data"):
        CodeStore(tmp_path).put(bytes(data))


# -- large zips: hashed beside extraction (issue 15) ---------------------------------------------


def many_files(count: int, size: int) -> bytes:
    return zip_of([(f"d{n // 500}/f{n}.bin", os.urandom(size), zipfile.ZIP_STORED) for n in range(count)])


class HashedAtOnce(codestore._Hashing):
    """The hash known before the first entry is extracted (deterministic, unlike the thread's pace)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.result()


def test_a_large_zip_is_hashed_beside_its_extraction(tmp_path: Path) -> None:
    data = many_files(600, 8192)
    assert len(data) > codestore.PARALLEL_HASHING
    store = CodeStore(tmp_path)
    ref = store.put(data)
    assert (ref.sha256, ref.sha512, ref.size) == (
        hashlib.sha256(data).hexdigest(),
        hashlib.sha512(data).hexdigest(),
        len(data),
    )
    assert store.read(ref) == data
    assert len(list(store.tree_path(ref.sha256).rglob("*.bin"))) == 600


def test_a_large_reupload_stops_extracting_once_its_hash_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = many_files(600, 8192)
    store = CodeStore(tmp_path)
    first = store.put(data)
    extracted: list[str] = []
    real = codestore._inflate_direct
    monkeypatch.setattr(codestore, "_Hashing", HashedAtOnce)
    monkeypatch.setattr(codestore, "_inflate_direct", lambda *a: (extracted.append(a[2].name), real(*a))[1])
    assert store.put(data) == first
    assert extracted == []  # found stored before the first entry: nothing extracted again
    assert [p.name for p in (tmp_path / "tmp").iterdir()] == []
    other = many_files(600, 8192)  # new bytes: extracted in full
    store.put(other)
    assert len(extracted) == 600


def test_a_stored_package_refused_by_stricter_limits_is_still_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = many_files(600, 8192)
    ref = CodeStore(tmp_path).put(data)
    strict = CodeStore(tmp_path, PackageLimits(max_files=10))
    # Small or large, the same bytes already stored were judged by the rules in force then.
    assert strict.put(data) == ref
    with pytest.raises(PackageRejected, match="600 files"):
        strict.put(many_files(600, 8192))


def test_inflating_one_read_never_holds_more_than_a_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 40 MiB of zeros deflate to about 40 KiB: one read of the zip; its output comes a chunk at a time.
    limits = PackageLimits(max_ratio=10_000)
    data = zip_of([("zeros", b"\0" * (40 * codestore.CHUNK), zipfile.ZIP_DEFLATED)])
    writes: list[int] = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, view: (writes.append(len(view)), real_write(fd, view))[1])
    store = CodeStore(tmp_path, limits)
    tree = store.tree_path(store.put(data).sha256)
    assert os.path.getsize(tree / "zeros") == 40 * codestore.CHUNK
    assert max(writes) <= codestore.CHUNK
