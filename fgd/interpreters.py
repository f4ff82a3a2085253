"""The Python interpreters on this node, and which one serves each `Python3.x` runtime name.

FunctionGraph names its Python runtimes `Python3.6`, `Python3.9`, `Python3.10`,
`Python3.12` (and `Python2.7`). fgd serves every `Python3.x` from 3.6 up to the
newest interpreter it can use: by the same minor version when the node has it
and it can run fgd's shim, else by the nearest newer one (unless
`[runtimes] exact_versions`). `Python2.7` is refused: Python 2 is end of life.

Discovery asks each candidate (operator-listed, the daemon's own, the search
globs) for its version in a subprocess with a timeout; one that hangs, crashes
or prints something else is skipped with a log line. The same probe tries to
import the runtime shim with the interpreter's shim packages, so an interpreter
that cannot run it is known at start ("unusable", with the reason).

Public API for the rest of fgd (and the builders of per-interpreter things,
such as shim packages and bundled libraries):
  `discover(config) -> list[Interpreter]`, `Catalogue(interpreters, exact)`,
  `Catalogue.serving(name)`, `Catalogue.check(name)`, `Catalogue.in_use()`.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from fgd.config import RuntimesConfig
from fgd.errors import InvalidParameter

if TYPE_CHECKING:
    from fgd.nodejs import NodeCatalogue, NodeRuntime

log = logging.getLogger("fgd.interpreters")

# FunctionGraph's oldest Python 3 runtime; names below it are not accepted.
OLDEST_MINOR = 6
# The shim (runtimes/, sandbox/) and msgspec need at least this (msgspec 0.19+ is for 3.9+, with
# eval_type_backport for the `X | None` annotations on 3.9); older minors are served by newer ones.
SHIM_MIN = (3, 9)
# ASCII digits, at most 4 of each (\d also takes other scripts' digits, and int() refuses more
# than 4,300 of them: "Python3." + 5,000 digits was an uncaught ValueError).
NAME = re.compile(r"Python([0-9]{1,4})\.([0-9]{1,4})\Z")
EXECUTABLE = re.compile(r"^python3\.\d+\Z")
PYTHON2 = (
    "FunctionGraph's Python 2 runtime is not offered: Python 2 reached its end of life in "
    "January 2020 and gets no security fixes; port the function to Python 3"
)
MAX_PROBE_OUTPUT = 64 * 1024
# In a shim directory: what built it (fgd.shims), and the key of the last successful check.
STAMP = ".fgd-shim"
CHECKED = ".fgd-checked"

# Runs under any Python 2 or 3: prints what it is, then (3.9+) whether it can run the shim.
PROBE = r"""
import sys, json, platform
info = {"version": list(sys.version_info[:3]), "implementation": platform.python_implementation(),
        "prefix": getattr(sys, "base_prefix", sys.prefix)}
sys.stdout.write("FGD-PROBE " + json.dumps(info) + "\n")
sys.stdout.flush()
if sys.version_info[:2] >= (3, 9) and "--shim" in sys.argv:
    try:
        import runtimes.python.zygote
        from runtimes import protocol
        protocol.decode(protocol.encode_packet(protocol.Fork("probe")))
        failure = ""
    except BaseException as exc:
        failure = "%s: %s" % (type(exc).__name__, exc)
    sys.stdout.write("FGD-SHIM " + json.dumps(failure) + "\n")
"""


class Interpreter(msgspec.Struct, frozen=True, kw_only=True):
    """One CPython 3 interpreter the node has."""

    path: str
    # "3.12.1"
    version: str
    minor: int
    # Where its standard library lives (bound read-only into each sandbox it serves).
    prefix: str
    # "config" (listed by the operator), "daemon" (fgd's own), "search" (found by a glob).
    origin: str
    usable: bool
    # Why it cannot serve (set when not usable).
    reason: str = ""
    # The shim packages it runs with (None for the daemon's own: its environment has them).
    shim: str | None = None

    @property
    def key(self) -> str:
        """One per minor version: names its zygote, pool and per-interpreter directories."""
        return f"python3.{self.minor}"

    def describe(self) -> dict[str, object]:
        return {"path": self.path, "version": self.version}


def source_root() -> str:
    """The directory holding fgd's `runtimes` and `sandbox` packages."""
    import runtimes

    return os.path.dirname(os.path.dirname(os.path.abspath(runtimes.__file__ or "")))


def default_shim_dir() -> str:
    return os.path.join(sys.prefix, "runtimes")


def shim_dir(config: RuntimesConfig) -> str:
    return config.shim_dir or default_shim_dir()


def daemon_interpreter() -> str:
    """The daemon's own interpreter as it was started (its venv's, which has the shim's packages)."""
    return sys.executable


def zygote_environment(interpreter: Interpreter | None = None) -> dict[str, str]:
    """What a zygote (and the probe) starts with: a PATH, a locale, and where fgd's packages are.

    Never the daemon's environment (the operator's variables, credentials), which every
    instance would inherit. The shim packages come first: the source root may be a
    site-packages built for the daemon's interpreter, whose compiled modules another
    interpreter cannot load.
    """
    paths = [interpreter.shim] if interpreter is not None and interpreter.shim else []
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": ":".join([*paths, source_root()])}


def candidates(config: RuntimesConfig, environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(path, origin) to probe, in order of preference, without repeats (by real path)."""
    environ = os.environ if environ is None else environ
    found: list[tuple[str, str]] = [(path, "config") for path in config.python]
    found.append((daemon_interpreter(), "daemon"))
    searched: list[str] = []
    for pattern in config.search:
        expanded = expand(pattern, environ)
        if expanded is not None:
            searched += [p for p in glob.glob(expanded) if EXECUTABLE.match(os.path.basename(p))]
    # Newest patch release first within a minor, so it is the one chosen.
    found += [(path, "search") for path in sorted(set(searched), key=_version_in_path, reverse=True)]
    seen: set[str] = set()
    unique = []
    for path, origin in found:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        unique.append((path, origin))
    return unique


def expand(pattern: str, environ: Mapping[str, str]) -> str | None:
    """`pattern` with $VARIABLES and a leading ~ expanded; None if it names an unset variable."""
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        name = match[1] or match[2]
        if not environ.get(name):
            missing = True
            return ""
        return environ[name]

    expanded = re.sub(r"\$\{(\w+)\}|\$(\w+)", value, pattern)
    if expanded.startswith("~"):
        home = environ.get("HOME")
        if not home:
            return None
        expanded = home + expanded[1:]
    return None if missing else expanded


def _version_in_path(path: str) -> tuple[int, ...]:
    numbers = re.findall(r"(\d+)\.(\d+)(?:\.(\d+))?", path)
    return tuple(int(n or 0) for group in numbers for n in group) if numbers else ()


def _run_probe(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """Run a probe in its own session: (exit code, start of its output), or (None, "") on timeout.

    At most MAX_PROBE_OUTPUT bytes are read (a script that floods its output cannot fill the
    daemon's memory at start); past the deadline or that size the whole group is killed.
    """
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd="/",
        start_new_session=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    out = bytearray()
    timed_out = False
    with process.stdout, selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while len(out) <= MAX_PROBE_OUTPUT:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            if not selector.select(remaining):
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
    try:
        code = None if timed_out else process.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        code = None
    # Whatever it left running (its children, or itself when it flooded or hung) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    if code is None and len(out) <= MAX_PROBE_OUTPUT:
        return None, ""
    return (code if code is not None else process.returncode), out[:MAX_PROBE_OUTPUT].decode("utf-8", "replace")


class Identity(msgspec.Struct, frozen=True):
    """What an interpreter said it is."""

    major: int
    minor: int
    micro: int
    prefix: str

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}.{self.micro}"


def identify(path: str, timeout: float) -> Identity | None:
    """Ask `path` what it is. None (and a log line) for anything that is not a CPython 3."""
    if not os.path.isabs(path):
        log.warning("interpreter %s skipped: [runtimes] python takes absolute paths", path)
        return None
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        log.warning("interpreter %s skipped: not an executable file", path)
        return None
    try:
        code, out = _run_probe([path, "-s", "-c", PROBE], zygote_environment(), timeout)
    except OSError as exc:
        log.warning("interpreter %s skipped: cannot run it: %s", path, exc.strerror or exc)
        return None
    if code is None:
        log.warning("interpreter %s skipped: no answer within %.0f s", path, timeout)
        return None
    info = _parse(out, "FGD-PROBE ")
    if not isinstance(info, dict) or not _looks_like_probe(info):
        log.warning("interpreter %s skipped: it did not answer like a Python interpreter (exit %s)", path, code)
        return None
    identity = Identity(*info["version"], prefix=os.path.realpath(info["prefix"]))
    if identity.major != 3:
        log.warning("interpreter %s skipped: Python %s is not Python 3", path, identity.version)
        return None
    if info["implementation"] != "CPython":
        log.warning("interpreter %s skipped: %s %s is not CPython", path, info["implementation"], identity.version)
        return None
    return identity


def judge(path: str, origin: str, identity: Identity, config: RuntimesConfig) -> Interpreter:
    """Whether an identified interpreter can run the shim with its shim packages (a probe that imports it)."""
    minor = identity.minor
    base = {"path": path, "version": identity.version, "minor": minor, "prefix": identity.prefix, "origin": origin}
    if (3, minor) < SHIM_MIN:
        reason = f"fgd's runtime shim needs Python {SHIM_MIN[0]}.{SHIM_MIN[1]} or newer (msgspec does)"
        return Interpreter(**base, usable=False, reason=reason)
    # The daemon's own interpreter runs from the daemon's environment, which has the packages.
    shim_path = None if origin == "daemon" else str(shim_environment_path(config, minor))
    if shim_path is not None and not os.path.isdir(shim_path):
        reason = f"no shim packages in {shim_path}: build them with `make runtimes` (python -m fgd.shims build)"
        return Interpreter(**base, usable=False, reason=reason, shim=shim_path)
    candidate = Interpreter(**base, usable=True, shim=shim_path)
    if shim_path is None:
        # The daemon's own: it runs this code already, from the environment its zygote gets.
        return candidate
    checked = os.path.join(shim_path, CHECKED)
    key = _check_key(path, shim_path)
    if _read(checked) == key:
        return candidate
    try:
        code, out = _run_probe([path, "-s", "-c", PROBE, "--shim"], zygote_environment(candidate), config.probe_timeout)
    except OSError as exc:
        code, out = 1, f"FGD-SHIM {json.dumps(str(exc))}"
    failure = _parse(out, "FGD-SHIM ")
    if code is None:
        failure = f"loading the runtime shim took longer than {config.probe_timeout:.0f} s"
    elif not isinstance(failure, str):
        failure = f"the runtime shim check did not finish (exit {code})"
    if failure:
        return Interpreter(**base, usable=False, reason=f"cannot run the runtime shim: {failure}", shim=shim_path)
    # Remembered (when the directory is writable), so the next start need not ask again: the
    # import costs 0.1-0.2 s an interpreter, and a daemon starts often in tests.
    with contextlib.suppress(OSError):
        Path(checked).write_text(key)
    return candidate


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _check_key(interpreter: str, shim_path: str) -> str:
    """What a successful shim check depends on: the interpreter, its shim packages, fgd's shim code."""
    digest = hashlib.sha256()
    stat = os.stat(os.path.realpath(interpreter))
    digest.update(f"{os.path.realpath(interpreter)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    digest.update((_read(os.path.join(shim_path, STAMP)) or "no stamp").encode())
    for package in ("runtimes", "sandbox"):
        for top, dirs, files in os.walk(os.path.join(source_root(), package)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(f for f in files if f.endswith(".py")):
                stat = os.stat(os.path.join(top, name))
                digest.update(f"{top}/{name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _parse(out: str, marker: str) -> object:
    for line in out.splitlines():
        if line.startswith(marker):
            try:
                return json.loads(line[len(marker) :])
            except ValueError:
                return None
    return None


def _looks_like_probe(info: dict) -> bool:
    version = info.get("version")
    return (
        isinstance(version, list)
        and len(version) == 3
        and all(isinstance(n, int) and 0 <= n < 1000 for n in version)
        and isinstance(info.get("implementation"), str)
        and isinstance(info.get("prefix"), str)
        and os.path.isabs(info["prefix"])
    )


def discover(config: RuntimesConfig, environ: Mapping[str, str] | None = None) -> list[Interpreter]:
    """Every CPython 3 interpreter found; broken ones are left out (logged).

    All are identified in parallel; then per minor version the shim is tried on the preferred
    one first (all minors in parallel), and on the next only if it cannot run it. One that is
    not needed (its minor is served by a preferred one) is listed as such, untried.
    """
    found = candidates(config, environ)
    workers = min(8, max(1, len(found)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        identities = list(pool.map(lambda item: identify(item[0], config.probe_timeout), found))
    by_minor: dict[int, list[int]] = {}
    for index, identity in enumerate(identities):
        if identity is not None:
            by_minor.setdefault(identity.minor, []).append(index)
    judged: dict[int, Interpreter] = {}
    pending = {minor: list(indexes) for minor, indexes in by_minor.items()}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pending:
            tries = {minor: indexes.pop(0) for minor, indexes in pending.items()}
            results = pool.map(lambda i: judge(found[i][0], found[i][1], identities[i], config), tries.values())
            for (minor, index), interpreter in zip(tries.items(), results, strict=True):
                judged[index] = interpreter
                if interpreter.usable or (3, minor) < SHIM_MIN:
                    for rest in pending[minor]:
                        identity = identities[rest]
                        assert identity is not None
                        judged[rest] = _standby(found[rest], identity, interpreter)
                    pending[minor] = []
            pending = {minor: indexes for minor, indexes in pending.items() if indexes}
    interpreters = [judged[i] for i in sorted(judged)]
    for interpreter in interpreters:
        if not interpreter.usable:
            log.info("interpreter %s (%s) not used: %s", interpreter.path, interpreter.version, interpreter.reason)
    return interpreters


def _standby(candidate: tuple[str, str], identity: Identity, chosen: Interpreter) -> Interpreter:
    """An interpreter of a minor version another one serves (or that none can)."""
    reason = (
        f"Python 3.{identity.minor} is served by {chosen.path}"
        if chosen.usable
        else f"fgd's runtime shim needs Python {SHIM_MIN[0]}.{SHIM_MIN[1]} or newer (msgspec does)"
    )
    path, origin = candidate
    return Interpreter(
        path=path,
        version=identity.version,
        minor=identity.minor,
        prefix=identity.prefix,
        origin=origin,
        usable=False,
        reason=reason,
    )


def is_nodejs(name: str) -> bool:
    """Issue 13 (nodejs): a Node.js runtime name (fgd.nodejs serves those)."""
    return name.startswith("Node.js")


# Issue 13 (fgd.custom): Custom and http functions run an agent on the daemon's own interpreter.
CUSTOM_RUNTIMES = ("Custom", "http")


class Catalogue:
    """Which interpreter serves each accepted `Python3.x` name."""

    def __init__(self, interpreters: Iterable[Interpreter], exact: bool = False) -> None:
        self.interpreters = list(interpreters)
        self.exact = exact
        # Per minor: the first usable one in order of preference (config, daemon, newest found).
        self.chosen: dict[int, Interpreter] = {}
        for interpreter in self.interpreters:
            if interpreter.usable and interpreter.minor not in self.chosen:
                self.chosen[interpreter.minor] = interpreter
        self.mapping: dict[str, Interpreter] = {}
        # Issue 13 (nodejs): the Node.js names (fgd.nodejs.NodeCatalogue), set by the daemon.
        self.nodejs: NodeCatalogue | None = None
        newest = max(self.chosen, default=OLDEST_MINOR - 1)
        for minor in range(OLDEST_MINOR, newest + 1):
            serving = self._serving_minor(minor)
            if serving is not None:
                self.mapping[f"Python3.{minor}"] = serving
        # Issue 13: Custom and http are served by the daemon's interpreter (their agent's).
        daemon = next((i for i in self.interpreters if i.origin == "daemon" and i.usable), None)
        if daemon is not None:
            for name in CUSTOM_RUNTIMES:
                self.mapping[name] = daemon

    def _serving_minor(self, minor: int) -> Interpreter | None:
        if minor in self.chosen:
            return self.chosen[minor]
        if self.exact:
            return None
        newer = [m for m in self.chosen if m > minor]
        return self.chosen[min(newer)] if newer else None

    def python_names(self) -> list[str]:
        """The names the interpreters serve: Python3.x by minor, then Custom and http (issue 13)."""
        return sorted(self.mapping, key=lambda name: (not name.startswith("Python3."), _minor_of(name), name))

    def names(self) -> list[str]:
        # Issue 13 (nodejs): the Node.js names the node's `node` serves come after Python's, before
        # Custom and http (FunctionGraph's order).
        names = self.python_names()
        pythons = [name for name in names if name.startswith("Python")]
        nodes = self.nodejs.names() if self.nodejs is not None else []
        return pythons + nodes + names[len(pythons) :]

    def serving(self, name: str) -> Interpreter | NodeRuntime | None:
        if self.nodejs is not None and is_nodejs(name):  # Issue 13 (nodejs)
            return self.nodejs.serving(name)
        return self.mapping.get(name)

    def in_use(self) -> list[Interpreter]:
        """The interpreters that serve at least one name (one per minor), oldest first."""
        return [self.chosen[m] for m in sorted(self.chosen) if self.chosen[m] in self.mapping.values()]

    def default_name(self) -> str | None:
        """The name the daemon's own interpreter serves exactly (the one fgd always had)."""
        for name, interpreter in self.mapping.items():
            if interpreter.origin == "daemon" and name == f"Python3.{interpreter.minor}":
                return name
        names = self.python_names()
        return names[-1] if names else None

    def check(self, name: str) -> Interpreter:
        """The interpreter for `name`, or a 400 saying why there is none."""
        if self.nodejs is not None and is_nodejs(name):  # Issue 13 (nodejs)
            return self.nodejs.check(name)
        interpreter = self.mapping.get(name)
        if interpreter is not None:
            return interpreter
        raise InvalidParameter(self.refusal(name))

    def refusal(self, name: str) -> str:
        if self.nodejs is not None and is_nodejs(name):  # Issue 13 (nodejs)
            return self.nodejs.refusal(name)
        shown = repr(name[:64]) + ("..." if len(name) > 64 else "")
        installed = ", ".join(f"{i.version} ({i.path})" for i in self.in_use()) or "none"
        match = NAME.fullmatch(name)
        if match and name != f"Python{int(match[1])}.{int(match[2])}":
            match = None  # "Python3.012": not a name FunctionGraph or fgd uses
        if match and match[1] == "2":
            return f"runtime {shown}: {PYTHON2}; available: {', '.join(self.names())}"
        if match and match[1] == "3":
            minor = int(match[2])
            if minor < OLDEST_MINOR:
                return f"runtime {shown} is not a FunctionGraph runtime; available: {', '.join(self.names())}"
            if self.exact:
                return (
                    f"runtime {shown} needs Python 3.{minor}, which this node does not have (or cannot use), and "
                    f"[runtimes] exact_versions = true forbids a newer one; installed: {installed}"
                )
            return (
                f"runtime {shown} needs Python 3.{minor} or newer, which this node does not have; "
                f"installed: {installed}"
            )
        return f"runtime {shown} is not available on this node; available: {', '.join(self.names())}"

    def served_by(self) -> dict[str, dict[str, object]]:
        """GET /runtimes: every accepted name and the interpreter that serves it."""
        served = {
            name: {**self.mapping[name].describe(), "exact": self.mapping[name].minor == _minor_of(name)}
            for name in self.python_names()
        }
        # Issue 13 (nodejs)
        return served | (self.nodejs.served_by() if self.nodejs is not None else {})

    def describe_interpreters(self) -> list[dict[str, object]]:
        served = {}
        for name in self.python_names():
            served.setdefault(self.mapping[name].path, []).append(name)
        return [
            {
                "path": i.path,
                "version": i.version,
                "origin": i.origin,
                "usable": i.usable,
                **({"reason": i.reason} if i.reason else {}),
                "serves": served.get(i.path, []),
            }
            for i in self.interpreters
        ]


def _minor_of(name: str) -> int:
    """3.x's x of a `Python3.x` name; -1 for the names no minor version serves (issue 13: Custom, http)."""
    return int(name.rpartition(".")[2]) if name.startswith("Python3.") else -1


def catalogue(config: RuntimesConfig) -> Catalogue:
    return Catalogue(discover(config), config.exact_versions)


def shim_environment_path(config: RuntimesConfig, minor: int) -> Path:
    return Path(shim_dir(config)) / f"python3.{minor}"
