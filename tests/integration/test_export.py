"""GET /functions/{urn}/export: streamed, byte for byte, without holding the package in memory."""

from __future__ import annotations

import io
import json
import os
import threading
import time
import zipfile
from collections.abc import Iterator

import psutil
import pytest

from tests.conftest import RUNTIME, Api, Daemon

MB = 1024 * 1024
HELLO = "def handler(event, context):\n    return 'exported'\n"


def large_package(size: int) -> bytes:
    """A zip holding index.py and `size` random (incompressible) bytes, stored."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("index.py", HELLO)
        archive.writestr("data/blob.bin", os.urandom(size))
    return buffer.getvalue()


def deploy_large(api: Api, size: int) -> tuple[str, bytes]:
    name = api.deploy(HELLO)["func_name"]
    package = large_package(size)
    response = api.http.put(
        f"/functions/{name}/code", content=package, headers={"Content-Type": "application/zip"}, timeout=60
    )
    assert response.status_code == 200, response.text
    return name, package


@pytest.fixture(scope="module")
def large(api: Api) -> tuple[str, bytes]:
    return deploy_large(api, 6 * MB)


def test_a_several_mb_package_exports_byte_for_byte(api: Api, large: tuple[str, bytes]) -> None:
    name, package = large
    response = api.http.get(f"/functions/{name}/export", params={"code": "true"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-length"] == str(len(package))
    assert response.content == package


def test_export_with_config_holds_config_json_and_the_exact_package(api: Api, large: tuple[str, bytes]) -> None:
    name, package = large
    response = api.http.get(f"/functions/{name}/export", params={"code": "true", "config": "true"})
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == ["code.zip", "config.json"]
        config = json.loads(archive.read("config.json"))
        assert archive.read("code.zip") == package
    assert config["func_name"] == name and config["runtime"] == RUNTIME
    assert config["code_size"] == len(package)


def test_export_of_config_alone_has_no_code(api: Api, large: tuple[str, bytes]) -> None:
    name, _ = large
    response = api.http.get(f"/functions/{name}/export", params={"code": "false", "config": "true"})
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.namelist() == ["config.json"]
        assert json.loads(archive.read("config.json"))["func_name"] == name


@pytest.fixture
def own_daemon(tmp_path) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path / "state")
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.mark.slow
def test_a_slow_export_neither_holds_the_package_in_memory_nor_blocks_other_requests(own_daemon: Daemon) -> None:
    api = Api(own_daemon)
    name, package = deploy_large(api, 48 * MB)
    process = psutil.Process(own_daemon.process.pid)
    before = process.memory_info().rss
    rss: list[int] = []
    received = bytearray()
    reading = threading.Event()

    def slow_reader() -> None:
        with (
            own_daemon.client(timeout=60) as http,
            http.stream("GET", f"/functions/{name}/export", params={"code": "true", "config": "true"}) as response,
        ):
            for chunk in response.iter_raw(1 * MB):
                received.extend(chunk)
                reading.set()
                time.sleep(0.02)

    reader = threading.Thread(target=slow_reader)
    reader.start()
    assert reading.wait(10)
    latencies = []
    while reader.is_alive():
        rss.append(process.memory_info().rss)
        started = time.monotonic()
        # Store-backed requests answer while the export runs.
        assert api.http.get(f"/functions/{name}/logs", params={"limit": 1}).status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    reader.join()
    with zipfile.ZipFile(io.BytesIO(bytes(received))) as archive:
        assert archive.read("code.zip") == package
    print(f"export of {len(package) / MB:.0f} MB: daemon RSS {before / MB:.0f} MB -> max {max(rss) / MB:.0f} MB")
    assert len(rss) >= 5, "the export finished too fast to watch"
    # Building the zip in memory would hold the package (48 MB) at least once.
    assert max(rss) - before < 16 * MB, (before, max(rss))
    assert max(latencies) < 0.5, max(latencies)
