"""Build the shim packages each Python interpreter needs to run fgd's runtime shim.

The shim (runtimes/, sandbox/) imports msgspec, python-prctl and pyseccomp. The
daemon's own environment has them for its interpreter only; every other
interpreter that serves a runtime gets its own directory of them,
<shim_dir>/python3.X, added to its zygote's PYTHONPATH (fgd.interpreters).

    python -m fgd.shims build [--config FILE] [--shim-dir DIR] [--wheelhouse DIR]

Wheels (python-prctl is built from source) are kept in a wheelhouse, so a
rebuild works offline once they have been fetched. A directory is rebuilt only
when the pins or the interpreter changed. An interpreter that cannot be built
for is reported and skipped: the daemon then lists it as unusable, with why.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from fgd import config as config_module
from fgd.interpreters import SHIM_MIN, STAMP, candidates, identify, shim_dir

REQUIREMENTS = Path(__file__).resolve().parent.parent / "runtimes" / "python" / "shim-requirements.txt"
PIP_TIMEOUT = 900


def default_wheelhouse() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fgd", "wheels")


def wanted(config: config_module.RuntimesConfig) -> list[tuple[str, int, str]]:
    """(path, minor, version) of the interpreter chosen per minor that needs shim packages."""
    chosen: dict[int, tuple[str, str, str]] = {}
    for path, origin in candidates(config):
        identity = identify(path, config.probe_timeout)
        if identity is None or (3, identity.minor) < SHIM_MIN or identity.minor in chosen:
            continue
        chosen[identity.minor] = (path, origin, identity.version)
    return [(path, minor, version) for minor, (path, origin, version) in sorted(chosen.items()) if origin != "daemon"]


def pip_for(interpreter: str) -> list[str]:
    """The interpreter's own pip, else this environment's pip working on its behalf."""
    own = subprocess.run([interpreter, "-m", "pip", "--version"], capture_output=True, timeout=60, check=False)
    if own.returncode == 0:
        return [interpreter, "-m", "pip"]
    return [sys.executable, "-m", "pip", "--python", interpreter]


def stamp_of(interpreter: str, version: str) -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    return f"{digest} {version} {os.path.realpath(interpreter)}\n"


def build_one(interpreter: str, version: str, target: Path, wheelhouse: Path) -> str:
    """Install the pins for one interpreter into `target`; returns a line saying what happened."""
    stamp = stamp_of(interpreter, version)
    if (target / STAMP).is_file() and (target / STAMP).read_text() == stamp:
        return f"ok       {target.name}: up to date ({interpreter})"
    pip = [*pip_for(interpreter), "--disable-pip-version-check", "--no-input", "-q"]
    staging = target.with_name(target.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    install = [*pip, "install", "--target", str(staging), "--no-index", "--find-links", str(wheelhouse)]
    install += ["-r", str(REQUIREMENTS)]
    offline = subprocess.run(install, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
    if offline.returncode != 0:
        # Not in the wheelhouse yet: fetch (and build) the wheels once, then install from it.
        # --use-pep517: python-prctl is an sdist, and an interpreter without the `wheel` package
        # (pyenv's 3.9 and 3.10 come with only pip and setuptools) cannot run its setup.py
        # bdist_wheel; a PEP 517 build fetches what it needs into an isolated environment.
        fetch = [*pip, "wheel", "--use-pep517", "--wheel-dir", str(wheelhouse), "-r", str(REQUIREMENTS)]
        fetched = subprocess.run(fetch, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
        if fetched.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            last = (fetched.stderr.strip().splitlines() or ["?"])[-1]
            return f"FAILED   {target.name}: cannot fetch the shim packages for {interpreter}: {last}"
        shutil.rmtree(staging, ignore_errors=True)
        again = subprocess.run(install, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
        if again.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            last = (again.stderr.strip().splitlines() or ["?"])[-1]
            return f"FAILED   {target.name}: cannot install the shim packages for {interpreter}: {last}"
    (staging / STAMP).write_text(stamp)
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return f"built    {target.name}: {interpreter} ({version})"


def build(config: config_module.RuntimesConfig, wheelhouse: Path) -> int:
    root = Path(shim_dir(config))
    root.mkdir(parents=True, exist_ok=True)
    wheelhouse.mkdir(parents=True, exist_ok=True)
    jobs = wanted(config)
    if not jobs:
        print("fgd shims: no interpreter besides the daemon's own needs shim packages")
        return 0
    # Two at a time: python-prctl compiles, and machines this runs on may have two cores.
    with ThreadPoolExecutor(max_workers=2) as pool:
        lines = list(pool.map(lambda job: build_one(job[0], job[2], root / f"python3.{job[1]}", wheelhouse), jobs))
    for line in lines:
        print(f"fgd shims: {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fgd.shims", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    command = sub.add_parser("build", help="build <shim_dir>/python3.X for every interpreter found")
    command.add_argument("--config", help="the daemon's config file ([runtimes] search, python, shim_dir)")
    command.add_argument("--shim-dir", help="where to build (default: [runtimes] shim_dir, else <prefix>/runtimes)")
    command.add_argument("--wheelhouse", default=default_wheelhouse(), help="where fetched wheels are kept")
    args = parser.parse_args(argv)
    try:
        config = config_module.load(args.config).runtimes
    except config_module.ConfigError as exc:
        print(f"fgd shims: {exc}", file=sys.stderr)
        return 2
    if args.shim_dir:
        config = msgspec.structs.replace(config, shim_dir=os.path.abspath(args.shim_dir))
    return build(config, Path(args.wheelhouse))


if __name__ == "__main__":
    sys.exit(main())
