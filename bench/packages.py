"""A 300 MB / 30,000-file package through the API, against plain extraction of the same zip.

Uploads the zip as a raw application/zip body to PUT .../code (received, hashed,
validated, extracted and made durable by the daemon) and reports the seconds it
took and how much the daemon's RSS grew at its peak. The baseline, in the same
run, is Python's zipfile.extractall of the same archive into a directory on the
same file system; a second baseline adds one syncfs (what fgd does to make the
tree durable before it is used).

Each timed phase starts from the same state: dirty pages written out (syncfs) and,
when the bench may (root), the page cache dropped, so one phase's writeback never
lands in the next (an earlier figure of 0.43x came from a baseline slowed that
way). Phases alternate (baseline, fgd, baseline, fgd, ...) --repetitions times,
each fgd run on a fresh daemon (a second upload of the same zip would be found
already stored), and the medians are reported.

Usage: python bench/packages.py [--files 30000] [--megabytes 300] [--repetitions 3] [--keep-page-cache]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
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

DROP_CACHES = Path("/proc/sys/vm/drop_caches")
_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs")
    finally:
        os.close(fd)


DROP = [True]  # --keep-page-cache: not on a machine others are using


def settle(path: Path) -> str:
    """Write out dirty pages (and drop the page cache when allowed) before a timed phase."""
    syncfs(path)
    os.sync()
    if not DROP[0]:
        return "synced (page cache kept: --keep-page-cache)"
    try:
        DROP_CACHES.write_text("3\n")
        return "synced, page cache dropped"
    except OSError:
        return "synced (page cache kept: not allowed to drop it)"


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


def baseline(archive: Path, target: Path, sync: bool) -> float:
    started = time.perf_counter()
    with zipfile.ZipFile(archive) as source:
        source.extractall(target)
    if sync:
        syncfs(target)
    seconds = time.perf_counter() - started
    shutil.rmtree(target)
    return seconds


def through_fgd(archive: Path, work: Path) -> tuple[float, float, float]:
    """Seconds to upload the zip to a fresh daemon (answered 200), its RSS before and its peak growth (MB)."""
    daemon = Daemon()
    try:
        daemon.deploy("big", "def handler(e, c):\n    return 'small'\n")
        settle(work)
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
            seconds = time.perf_counter() - started
        answer = daemon.request("POST", "/functions/big/invocations", {})
        assert answer["body"] == "big", answer
    finally:
        daemon.stop()
    return seconds, rss.start / 2**20, (rss.peak - rss.start) / 2**20


def median(samples: list[float]) -> float:
    return round(statistics.median(samples), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=30_000)
    parser.add_argument("--megabytes", type=int, default=300)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--keep-page-cache", action="store_true", help="sync only; do not drop the page cache")
    args = parser.parse_args()
    DROP[0] = not args.keep_page_cache
    # The daemons' state goes under the system's temporary directory too: the same file system.
    work = Path(tempfile.mkdtemp(prefix="fgd-bench-packages-"))
    archive = work / "package.zip"
    build(archive, args.files, args.megabytes * 1024 * 1024)
    results: dict = {
        "benchmark": "packages",
        "files": args.files,
        "megabytes": args.megabytes,
        "zip_bytes": archive.stat().st_size,
        "repetitions": args.repetitions,
    }
    runs: dict[str, list[float]] = {"baseline": [], "baseline_syncfs": [], "fgd": [], "rss_growth": []}
    try:
        for _ in range(args.repetitions):
            results["before_each_phase"] = settle(work)
            runs["baseline"].append(baseline(archive, work / "baseline", sync=False))
            settle(work)
            seconds, rss_before, growth = through_fgd(archive, work)
            runs["fgd"].append(seconds)
            runs["rss_growth"].append(growth)
            settle(work)
            runs["baseline_syncfs"].append(baseline(archive, work / "baseline", sync=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["baseline_zipfile_extractall_s"] = median(runs["baseline"])
    results["baseline_extractall_and_syncfs_s"] = median(runs["baseline_syncfs"])
    results["fgd_upload_validate_store_extract_s"] = median(runs["fgd"])
    results["samples_s"] = {name: [round(x, 3) for x in runs[name]] for name in ("baseline", "baseline_syncfs", "fgd")}
    results["daemon_rss_before_mb"] = round(rss_before, 1)
    results["daemon_rss_growth_mb"] = round(statistics.median(runs["rss_growth"]), 1)
    results["daemon_rss_growth_max_mb"] = round(max(runs["rss_growth"]), 1)
    results["ratio_to_baseline"] = round(
        results["fgd_upload_validate_store_extract_s"] / results["baseline_zipfile_extractall_s"], 3
    )
    results["ratio_to_baseline_with_syncfs"] = round(
        results["fgd_upload_validate_store_extract_s"] / results["baseline_extractall_and_syncfs_s"], 3
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
