"""A 300 MB / 30,000-file package through the API, against plain extraction of the same zip.

Uploads the zip as a raw application/zip body to PUT .../code (validated,
stored and extracted by the daemon) and reports the seconds it took and how
much the daemon's RSS grew at its peak; in the same run, the baseline is
Python's zipfile.extractall of the same archive into a temporary directory.

Usage: python bench/packages.py [--files 30000] [--megabytes 300]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))

from _common import Daemon


def build(path: Path, files: int, total: int) -> None:
    seed = os.urandom(1 << 16)
    handler = b"def handler(e, c):\n    return 'big'\n"
    total -= len(handler)
    per_file = total // (files - 1)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("index.py", handler)
        for i in range(files - 1):
            size = per_file if i < files - 2 else total - per_file * (files - 2)
            body = (seed[: size // 2] + b"\0" * (size - size // 2)) if size <= len(seed) * 2 else b"\0" * size
            archive.writestr(f"pkg{i // 1000:02d}/file{i:05d}.bin", body)


class PeakRss:
    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.start = self._process.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=30_000)
    parser.add_argument("--megabytes", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fgd-bench-packages-"))
    archive = work / "package.zip"
    build(archive, args.files, args.megabytes * 1024 * 1024)
    results: dict = {
        "benchmark": "packages",
        "files": args.files,
        "megabytes": args.megabytes,
        "zip_bytes": archive.stat().st_size,
    }

    started = time.perf_counter()
    with zipfile.ZipFile(archive) as source:
        source.extractall(work / "baseline")
    results["baseline_zipfile_extractall_s"] = round(time.perf_counter() - started, 3)
    shutil.rmtree(work / "baseline")

    daemon = Daemon()
    try:
        daemon.deploy("big", "def handler(e, c):\n    return 'small'\n")
        with PeakRss(daemon.process.pid) as rss:
            started = time.perf_counter()
            with open(archive, "rb") as body:
                request = urllib.request.Request(
                    f"{daemon.url}/v2/default/fgs/functions/big/code",
                    data=body,
                    method="PUT",
                    headers={
                        "X-Auth-Token": daemon.token,
                        "Content-Type": "application/zip",
                        "Content-Length": str(archive.stat().st_size),
                    },
                )
                with urllib.request.urlopen(request, timeout=600) as response:
                    assert response.status == 200
            results["fgd_upload_validate_store_extract_s"] = round(time.perf_counter() - started, 3)
        results["daemon_rss_before_mb"] = round(rss.start / 2**20, 1)
        results["daemon_rss_growth_mb"] = round((rss.peak - rss.start) / 2**20, 1)
        answer = daemon.request("POST", "/functions/big/invocations", {})
        assert answer["body"] == "big", answer
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["ratio_to_baseline"] = round(
        results["fgd_upload_validate_store_extract_s"] / results["baseline_zipfile_extractall_s"], 3
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
