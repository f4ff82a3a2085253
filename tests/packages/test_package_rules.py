"""Every package rule, with the offending zip, through the API: 400 naming the entry, nothing kept."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
import time
import unicodedata
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import RUNTIME, Api, b64, make_zip, unique_name
from tests.packages import corpus

HANDLER = b"def handler(e, c):\n    return 'ok'\n"


def disk_usage(state_dir: Path) -> tuple[int, int]:
    """Files and bytes under the state dir's package store and staging area."""
    files = size = 0
    for sub in ("blobs", "code", "tmp"):
        for root, _dirs, names in os.walk(state_dir / sub):
            for name in names:
                files += 1
                size += os.lstat(os.path.join(root, name)).st_size
    return files, size


def upload_raw(api: Api, name: str, path: Path):
    with open(path, "rb") as handle:
        return api.http.put(
            f"/functions/{name}/code", content=handle, headers={"Content-Type": "application/zip"}, timeout=120
        )


@pytest.fixture
def target(api: Api) -> str:
    return api.deploy(HANDLER.decode())["func_name"]


def assert_refused(api: Api, target: str, data: bytes, *words: str) -> None:
    before = disk_usage(api.daemon.state_dir)
    response = api.http.put(f"/functions/{target}/code", json={"code_type": "zip", "func_code": {"file": b64(data)}})
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error_code"] == "FSS.0400"
    for word in words:
        assert word in error["error_msg"], error["error_msg"]
    assert disk_usage(api.daemon.state_dir) == before
    assert api.invoke(target).content == b"ok"


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ([("index.py", HANDLER), ("a~", b"backup")], ["'a~'", "ending in '~'"]),
        ([("index.py", HANDLER), ("dir/notes.txt~", b"x")], ["'dir/notes.txt~'", "'~'"]),
        ([("index.py", HANDLER), ("../x", b"x")], ["'../x'", "'..'"]),
        ([("index.py", HANDLER), ("a/../../x", b"x")], ["'a/../../x'", "'..'"]),
        ([("index.py", HANDLER), ("/abs", b"x")], ["'/abs'", "absolute"]),
        ([("index.py", HANDLER), ("..\\x", b"x")], ["'..\\x'", "backslash"]),
        ([("index.py", HANDLER), ("C:/x", b"x")], ["'C:/x'", "absolute"]),
        ([("index.py", HANDLER), ("Index.py", b"x")], ["'Index.py'", "duplicate of 'index.py'"]),
        ([("index.py", HANDLER), ("x" * 256, b"x")], ["over 255 bytes"]),
        ([("index.py", HANDLER), ("/".join(["d"] * 70) + "/f", b"x")], ["71 levels deep"]),
    ],
)
def test_entry_name_rules(api: Api, target: str, entries: list, words: list[str]) -> None:
    assert_refused(api, target, corpus.zip_bytes(entries), *words)


def test_unicode_normalisation_duplicates(api: Api, target: str) -> None:
    composed = unicodedata.normalize("NFC", "café.py")
    decomposed = unicodedata.normalize("NFD", "café.py")
    data = corpus.zip_bytes([("index.py", HANDLER), (composed, b"1"), (decomposed, b"2")])
    assert_refused(api, target, data, "duplicate of")


def test_exact_duplicate_names(api: Api, target: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it is asked to write
        archive.writestr("index.py", HANDLER)
        archive.writestr("twice.py", b"1")
        archive.writestr("twice.py", b"2")
    assert_refused(api, target, buffer.getvalue(), "'twice.py'", "duplicate")


@pytest.mark.parametrize("name", ["nul\0byte.py", "bell\x07.py", "new\nline.py"])
def test_control_characters_in_names(api: Api, target: str, name: str) -> None:
    assert_refused(api, target, corpus.with_raw_name(name), "control characters")


def test_symlink_escaping_the_package(api: Api, target: str) -> None:
    assert_refused(api, target, corpus.symlink("evil", "../../../etc/shadow"), "'evil'", "points outside")
    assert_refused(api, target, corpus.symlink("abs", "/etc/shadow"), "'abs'", "points outside")


def test_symlink_inside_the_package_is_kept(api: Api) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.py", "import os\ndef handler(e, c):\n    return os.readlink('code/alias.py')\n")
        info = zipfile.ZipInfo("alias.py")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "index.py")
    name = unique_name("link")
    response = api.create(buffer.getvalue(), name=name)
    assert response.status_code == 200, response.text
    assert api.invoke(name).content == b"index.py"


def test_device_entry(api: Api, target: str) -> None:
    assert_refused(api, target, corpus.device("dev/null"), "'dev/null'", "device")


def test_encrypted_entry(api: Api, target: str) -> None:
    assert_refused(api, target, corpus.encrypted("secret.py"), "'secret.py'", "encrypted")


def test_unsupported_compression_method(api: Api, target: str) -> None:
    data = bytearray(corpus.zip_bytes([("weird.bin", b"x" * 100)], method=0))
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = data.find(signature)
        data[start + offset] = 99  # AES / unknown method
    assert_refused(api, target, bytes(data), "'weird.bin'", "compression method 99")


def test_truncated_archive(api: Api, target: str) -> None:
    assert_refused(api, target, corpus.truncated(), "not a valid zip file")


def test_not_a_zip(api: Api, target: str) -> None:
    assert_refused(api, target, b"just some text", "not a valid zip file")


def test_header_that_lies_about_its_size(api: Api, target: str) -> None:
    assert_refused(api, target, corpus.lying_size("liar.bin", real=100_000, declared=1_000), "'liar.bin'", "header")


def test_ten_gigabyte_bomb_is_refused_fast_and_leaves_nothing(api: Api, target: str, tmp_path: Path) -> None:
    for declared in (None, 4096):  # an honest header, and one that hides the size
        path = tmp_path / "bomb.zip"
        corpus.bomb(path, 10 * 1024**3, declared)
        before = disk_usage(api.daemon.state_dir)
        started = time.monotonic()
        response = upload_raw(api, target, path)
        elapsed = time.monotonic() - started
        assert response.status_code == 400, response.text
        assert "'bomb.bin'" in response.json()["error_msg"]
        assert elapsed < 1.0, elapsed
        assert disk_usage(api.daemon.state_dir) == before
    assert api.invoke(target).content == b"ok"


def test_high_compression_ratio_is_refused(api: Api, target: str) -> None:
    data = corpus.zip_bytes([("index.py", HANDLER), ("zeros.bin", b"\0" * (50 * 1024 * 1024))])
    assert_refused(api, target, data, "'zeros.bin'", "compression ratio")


def test_30001_files_refused_and_30000_accepted(api: Api, target: str, tmp_path: Path) -> None:
    corpus.many_files(tmp_path / "over.zip", 30_001)
    response = upload_raw(api, target, tmp_path / "over.zip")
    assert response.status_code == 400
    assert "30,001 files; the limit is 30,000" in response.json()["error_msg"]
    corpus.many_files(tmp_path / "limit.zip", 30_000)
    response = upload_raw(api, target, tmp_path / "limit.zip")
    assert response.status_code == 200, response.text
    assert api.invoke(target).content == b"many"


def test_300_mb_plus_one_refused_and_exactly_300_mb_accepted(api: Api, tmp_path: Path) -> None:
    name = api.deploy(HANDLER.decode())["func_name"]
    limit = 300 * 1024 * 1024
    corpus.sized(tmp_path / "over.zip", limit + 1)
    response = upload_raw(api, name, tmp_path / "over.zip")
    assert response.status_code == 400
    assert "inflates to over 314,572,800 bytes" in response.json()["error_msg"]
    (tmp_path / "over.zip").unlink()
    corpus.sized(tmp_path / "exact.zip", limit)
    response = upload_raw(api, name, tmp_path / "exact.zip")
    assert response.status_code == 200, response.text
    assert api.invoke(name).content == b"sized"
    tree = api.daemon.state_dir / "code"
    sizes = [sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) for d in tree.iterdir()]
    assert limit in sizes


def test_base64_over_10_mb_is_413_pointing_at_raw_upload(api: Api, target: str) -> None:
    data = os.urandom(10 * 1024 * 1024 + 1)
    response = api.http.put(f"/functions/{target}/code", json={"code_type": "zip", "func_code": {"file": b64(data)}})
    assert response.status_code == 413
    assert "application/zip" in response.json()["error_msg"]


def test_raw_upload_replaces_code(api: Api, target: str, tmp_path: Path) -> None:
    path = tmp_path / "code.zip"
    path.write_bytes(make_zip({"index.py": "def handler(e, c):\n    return 'raw'\n"}))
    response = upload_raw(api, target, path)
    assert response.status_code == 200, response.text
    assert api.invoke(target).content == b"raw"
    path.write_bytes(make_zip({"index.py": HANDLER.decode()}))
    assert upload_raw(api, target, path).status_code == 200
    assert api.invoke(target).content == b"ok"


# Links: refused, and nothing outside the package store changes ---------------------------


def surroundings(api: Api) -> dict[str, tuple]:
    """Everything around the daemon's package store: the state dir (bar code/ and tmp/, whose
    use assert_refused counts) and its parent, where the tests keep a sentinel directory.
    The database and the daemon's log change on their own: only their presence counts."""
    state = api.daemon.state_dir
    return corpus.listing(
        state.parent,
        skip=(f"{state.name}/code", f"{state.name}/tmp"),
        volatile=("fgd.db", "fgd.db-wal", "fgd.db-shm", api.daemon.log_path.name),
    )


@pytest.fixture
def sentinel(api: Api) -> Path:
    directory = api.daemon.state_dir.parent / "sentinel"
    directory.mkdir(exist_ok=True)
    (directory / "victim").write_text("precious\n")
    return directory


def assert_refused_in_place(api: Api, target: str, data: bytes, *words: str) -> None:
    before = surroundings(api)
    token = api.daemon.token
    assert_refused(api, target, data, *words)
    assert surroundings(api) == before
    assert api.daemon.token == token
    assert not (api.daemon.state_dir / "X").exists()


@pytest.mark.parametrize("case", list(corpus.LINK_CASES))
def test_link_rules(api: Api, target: str, sentinel: Path, case: str) -> None:
    items, words = corpus.LINK_CASES[case]
    assert_refused_in_place(api, target, corpus.package(items, HANDLER), *words)


def test_link_chains_climbing_to_the_state_dir_and_beyond(api: Api, target: str, sentinel: Path) -> None:
    state = str(api.daemon.state_dir)
    climbs = [
        (corpus.climb(state, "admin.token", b""), "'w/admin.token'"),  # truncate the node's token
        (corpus.climb(state, "fgd.db", b"garbage"), "'w/fgd.db'"),
        (corpus.climb(str(sentinel), "victim", b""), "'w/victim'"),
        (corpus.climb(str(sentinel), "new-file"), "'w/new-file'"),
        (corpus.climb(str(sentinel), "x")[:2], "'w'"),  # the link alone: it would lead out of the tree
    ]
    for items, word in climbs:
        assert_refused_in_place(api, target, corpus.package(items, HANDLER), word)
    assert (sentinel / "victim").read_text() == "precious\n"


def test_hostile_links_through_every_upload_route(api: Api, target: str, sentinel: Path, tmp_path: Path) -> None:
    """Create a function, raw upload, dependency: each refuses, and the daemon keeps serving."""
    exploit = corpus.package([*corpus.EXPLOIT, *corpus.climb(str(sentinel), "victim", b"")], HANDLER)
    before = surroundings(api)
    usage = disk_usage(api.daemon.state_dir)
    name = unique_name("linked")
    response = api.create(exploit, name=name)
    assert response.status_code == 400, response.text
    assert "'l/X'" in response.json()["error_msg"]
    assert api.http.get(f"/functions/{name}/config").status_code == 404
    path = tmp_path / "exploit.zip"
    path.write_bytes(exploit)
    response = upload_raw(api, target, path)
    assert response.status_code == 400, response.text
    body = {"name": unique_name("dep"), "runtime": RUNTIME, "depend_type": "zip", "depend_file": b64(exploit)}
    response = api.http.post("/dependencies/version", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "FSS.0400"
    assert surroundings(api) == before
    assert disk_usage(api.daemon.state_dir) == usage
    assert not (api.daemon.state_dir / "X").exists()
    assert api.daemon.process is not None and api.daemon.process.poll() is None
    assert api.http.get("/functions").status_code == 200
    assert api.invoke(target).content == b"ok"


def test_links_that_stay_inside_work_in_the_function(api: Api) -> None:
    handler = (
        b"def handler(e, c):\n    return open('code/via/lib/up/data.txt').read() + open('code/alias.txt').read()\n"
    )
    items = [
        corpus.Link("alias.txt", "data.txt"),  # a link to a file written later
        ("data.txt", b"d"),
        corpus.Link("via", "lib/up"),  # a link to a link to the root
        corpus.Link("lib/up", ".."),
    ]
    name = unique_name("links")
    response = api.create(corpus.package(items, handler), name=name)
    assert response.status_code == 200, response.text
    assert api.invoke(name).content == b"dd"


def test_identical_uploads_at_once_through_the_api(api: Api) -> None:
    names = [api.deploy(HANDLER.decode())["func_name"] for _ in range(6)]
    data = make_zip({"index.py": "def handler(e, c):\n    return 'same'\n", "blob.bin": os.urandom(2 << 20)})
    body = {"code_type": "zip", "func_code": {"file": b64(data)}}
    start = threading.Barrier(len(names))

    def upload(name: str) -> int:
        with api.daemon.client() as client:
            start.wait(10)
            return client.put(f"/functions/{name}/code", json=body).status_code

    with ThreadPoolExecutor(len(names)) as pool:
        assert list(pool.map(upload, names)) == [200] * len(names)
    sha = hashlib.sha256(data).hexdigest()
    tree = api.daemon.state_dir / "code" / sha
    assert (tree / "blob.bin").stat().st_size == 2 << 20
    assert not [p for p in (api.daemon.state_dir / "tmp").iterdir() if p.name.startswith("tree-")]
    for name in names:
        assert api.invoke(name).content == b"same"
