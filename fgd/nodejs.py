"""Issue 13: the Node.js runtime family (`Node.js6.10` ... `Node.js20.15`).

The node's installed `node` serves FunctionGraph's Node.js names by the same policy as
Python (fgd.interpreters): a name whose major version is the installed one's is served
exactly, an older one by the nearest newer node (unless `[runtimes] exact_versions`), a
newer one is refused with a 400 naming what is installed.

Node.js cannot fork a warmed V8, so its pool holds contained, started `node` processes.
A Node pool is a `NodeZygote`: the daemon's own Python zygote program (it forks and
contains instances exactly as for Python), whose instances get a `Launch` frame right
after `Contain`: the contained worker becomes the node's privileged keeper
(runtimes/nodejs/keeper.py) and starts `node runtimes/nodejs/instance.js` as the
instance's own uid under seccomp. The shim, its msgpack codec and FunctionGraph's bundled
modules are shown read-only in these sandboxes only (shared trees, mounted once per sandbox).

V8 heap: `v8.setFlagsFromString('--max-old-space-size=N')` after start does not change the
limit (measured: heap_size_limit stays what node started with). A bound far above the
function's memory is no answer either: V8 then lets garbage pile up past the cgroup's limit
(a function allocating 2 GB of short-lived arrays was OOM-killed at 128 MB). So there is one
Node pool per memory size in use (`node20-128m`, `node20-1024m`, each its own zygote, started
on first use), whose nodes start with `--max-old-space-size` = that memory size: V8 collects
within the function's memory, and since the process always holds more than its heap, the
cgroup's limit is reached before V8's own: a function that needs more is OOM-killed by the
kernel and reported as `Runtime.OutOfMemory` like a Python one.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec

from fgd.errors import InvalidParameter
from fgd.interpreters import Interpreter, is_nodejs
from fgd.zygote import Zygote
from runtimes import protocol
from sandbox.policy import ContainPolicy, EnterPolicy, Mount

log = logging.getLogger("fgd.nodejs")

# FunctionGraph's Node.js runtime names, oldest first.
NAMES = (
    "Node.js6.10",
    "Node.js8.10",
    "Node.js10.16",
    "Node.js12.13",
    "Node.js14.18",
    "Node.js16.17",
    "Node.js18.15",
    "Node.js20.15",
)
# Only the names above; the version part in ASCII digits, a few of them.
NAME = re.compile(r"Node\.js([0-9]{1,3})\.([0-9]{1,3})\Z")
# The oldest node the shim runs on (AsyncLocalStorage, fs/promises, resourceUsage).
OLDEST_MAJOR = 18
SEARCH_PATH = "/usr/local/bin:/usr/bin:/bin"
PROBE_TIMEOUT = 10.0

SOURCE_ROOT = Path(__file__).resolve().parent.parent
SHIM_SOURCE = SOURCE_ROOT / "runtimes" / "nodejs"
# What `make` (scripts/build-nodejs) builds: the shim's msgpack codec and the bundled modules.
# In a checkout it is build/nodejs next to the source tree; an installed fgd (scripts/install,
# `make install`, the .deb) has it in its virtualenv's prefix, next to bundled/ and runtimes/.
CHECKOUT_BUILD_DIR = SOURCE_ROOT / "build" / "nodejs"
INSTALLED_BUILD_DIR = Path(sys.prefix) / "nodejs"


def default_build_dir() -> Path:
    """A checkout has its pyproject.toml above the package; an installed fgd is in
    site-packages, which has none (the same test as fgd.bundled.default_root)."""
    return CHECKOUT_BUILD_DIR if (SOURCE_ROOT / "pyproject.toml").is_file() else INSTALLED_BUILD_DIR


BUILD_DIR = default_build_dir()
# Where the sandbox shows them (read-only, no host path in mountinfo).
SHIM_DIR = "/opt/function/runtime/nodejs-shim"
SHIM_MODULES_DIR = "/opt/function/runtime/nodejs-shim-modules"
BUNDLED_DIR = "/opt/function/runtime/nodejs-bundled"
# A Node pool's memory size when none is asked for (a preloaded name): FunctionGraph's default.
DEFAULT_MEMORY_MB = 128


class NodeRuntime(msgspec.Struct, frozen=True, kw_only=True):
    """The node installed on this host."""

    path: str
    version: str
    major: int
    # Where it is installed (bound read-only into its sandboxes when outside /usr).
    prefix: str

    @property
    def key(self) -> str:
        """Names its zygote and pool."""
        return f"node{self.major}"

    def describe(self) -> dict[str, object]:
        return {"path": self.path, "version": self.version}


def find_node(path: str = "") -> NodeRuntime | None:
    """The node at `path` (or on the standard PATH), asked for its version; None if there is none."""
    found = path or shutil.which("node", path=SEARCH_PATH)
    if not found:
        return None
    try:
        out = subprocess.run(
            [found, "--version"],
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env={"PATH": SEARCH_PATH, "LANG": "C.UTF-8"},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("node %s skipped: %s", found, exc)
        return None
    match = re.fullmatch(r"v([0-9]{1,3})\.([0-9]{1,4})\.([0-9]{1,4})\s*", out.stdout.decode(errors="replace"))
    if out.returncode != 0 or match is None:
        log.warning("node %s skipped: it did not answer `--version` like Node.js (exit %s)", found, out.returncode)
        return None
    real = os.path.realpath(found)
    return NodeRuntime(
        path=real,
        version=f"{match[1]}.{match[2]}.{match[3]}",
        major=int(match[1]),
        prefix=os.path.dirname(os.path.dirname(real)),
    )


class NodeCatalogue:
    """Which node serves each accepted Node.js name (none: every Node.js name is refused)."""

    def __init__(self, node: NodeRuntime | None, exact: bool = False, *, built: bool = True) -> None:
        # Without the shim's codec (`make nodejs` not run) no node can serve.
        self.unbuilt = node is not None and not built
        usable = node is not None and node.major >= OLDEST_MAJOR and built
        self.node = node if usable else None
        self.unusable = node if node is not None and self.node is None else None
        self.exact = exact
        self.mapping: dict[str, NodeRuntime] = {}
        if self.node is not None:
            for name in NAMES:
                major = int(NAME.fullmatch(name)[1])  # type: ignore[index]
                if major == self.node.major or (major < self.node.major and not exact):
                    self.mapping[name] = self.node

    def names(self) -> list[str]:
        return list(self.mapping)

    def serving(self, name: str) -> NodeRuntime | None:
        return self.mapping.get(name)

    def check(self, name: str) -> NodeRuntime:
        node = self.mapping.get(name)
        if node is None:
            raise InvalidParameter(self.refusal(name))
        return node

    def refusal(self, name: str) -> str:
        shown = repr(name[:64]) + ("..." if len(name) > 64 else "")
        if self.node is None:
            if self.unbuilt:
                why = (
                    "the Node.js runtime's npm modules are not built "
                    f"(run `make nodejs`, or reinstall fgd: {shim_codec()} is missing)"
                )
            elif self.unusable is not None:
                why = f"its node {self.unusable.version} ({self.unusable.path}) is older than Node.js {OLDEST_MAJOR}"
            else:
                why = "it has no `node` (install Debian's nodejs package: `make` does)"
            return f"runtime {shown} is not available on this node: {why}"
        installed = f"{self.node.version} ({self.node.path})"
        match = NAME.fullmatch(name)
        if match is None or name not in NAMES:
            return f"runtime {shown} is not a FunctionGraph Node.js runtime; available: {', '.join(self.names())}"
        major = int(match[1])
        if major < self.node.major and self.exact:
            return (
                f"runtime {shown} needs Node.js {major}, which this node does not have, and "
                f"[runtimes] exact_versions = true forbids a newer one; installed: {installed}"
            )
        return f"runtime {shown} needs Node.js {major} or newer, which this node does not have; installed: {installed}"

    def served_by(self) -> dict[str, dict[str, object]]:
        return {
            name: {**node.describe(), "exact": int(NAME.fullmatch(name)[1]) == node.major}  # type: ignore[index]
            for name, node in self.mapping.items()
        }


def shim_codec(build_dir: Path = BUILD_DIR) -> Path:
    """The msgpack codec instance.js needs, as `make nodejs` installs it."""
    return build_dir / "runtime" / "node_modules" / "@msgpack" / "msgpack" / "package.json"


def shim_built(build_dir: Path = BUILD_DIR) -> bool:
    return shim_codec(build_dir).is_file()


def shared_trees(bundled: bool, build_dir: Path = BUILD_DIR) -> list[Mount]:
    """The shim, its modules, and (unless switched off) the bundled modules, for Node sandboxes."""
    trees = [Mount(str(SHIM_SOURCE), SHIM_DIR), Mount(str(build_dir / "runtime" / "node_modules"), SHIM_MODULES_DIR)]
    if bundled and (build_dir / "bundled" / "node_modules").is_dir():
        trees.append(Mount(str(build_dir / "bundled" / "node_modules"), BUNDLED_DIR))
    return trees


def pool_key(node: NodeRuntime, memory_mb: int) -> str:
    """The key of the Node pool (and its zygote) for functions of `memory_mb`: "node20-128m"."""
    return f"{node.key}-{memory_mb}m"


class NodeZygote(Zygote):
    """A Node pool: the daemon interpreter's zygote; each instance is launched into a node."""

    def __init__(
        self,
        node: NodeRuntime,
        interpreter: Interpreter,
        argv: list[str],
        *,
        memory_mb: int,
        seccomp_programs: dict[str, bytes] | None,
        bundled: bool,
        build_dir: Path = BUILD_DIR,
    ) -> None:
        super().__init__(pool_key(node, memory_mb), argv, interpreter=interpreter, seccomp_programs=seccomp_programs)
        self.node = node
        # Its nodes' V8 heap bound: the memory size of the functions this pool serves.
        self.memory_mb = memory_mb
        self.bundled = bundled and (build_dir / "bundled" / "node_modules").is_dir()
        self._build_dir = build_dir
        self._node_policy: tuple[ContainPolicy, ContainPolicy] | None = None

    def contain_policy(self, base: ContainPolicy) -> ContainPolicy:
        """The daemon interpreter's sandbox, with node's installation and the Node trees."""
        if self._node_policy is None or self._node_policy[0] is not base:
            policy = super().contain_policy(base)
            # The keeper has everything it runs loaded before the sandbox is built: the daemon
            # interpreter's own installation (a pyenv under /root, a venv) is not shown to node.
            own = self.interpreter.prefix if self.interpreter is not None else ""
            mounts = [m for m in policy.root_mounts if not (m.source == own and m.target == own)]
            prefix = self.node.prefix
            if not any(prefix == m.source or prefix.startswith(m.source.rstrip("/") + "/") for m in mounts):
                mounts.append(Mount(prefix, prefix))
            policy = msgspec.structs.replace(
                policy,
                root_mounts=mounts,
                shared_trees=[*policy.shared_trees, *shared_trees(self.bundled, self._build_dir)],
            )
            self._node_policy = (base, policy)
        return self._node_policy[1]

    def launch(self, policy: EnterPolicy | None) -> protocol.Launch:
        """What a contained pool member starts: node on the shim, as `policy`'s uid."""
        mounted = policy is not None and policy.protections.mounts and policy.protections.namespaces
        # Without the sandbox's mounts (a degraded host) the trees are read where they are.
        shim, modules, bundled = (
            (SHIM_DIR, SHIM_MODULES_DIR, BUNDLED_DIR)
            if mounted
            else (
                str(SHIM_SOURCE),
                str(self._build_dir / "runtime" / "node_modules"),
                str(self._build_dir / "bundled" / "node_modules"),
            )
        )
        argv = [self.node.path, f"--max-old-space-size={self.memory_mb}", f"{shim}/instance.js"]
        environ = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": "/tmp",
            "FGD_NODEJS_SHIM_MODULES": modules,
            "FGD_NODEJS_BUNDLED": bundled if self.bundled else "",
        }
        return protocol.Launch(argv, environ, policy)


def launch_policy(sandbox, instance_id: str) -> EnterPolicy | None:
    """The drop half for a pool member: its own uid (kept for its function: the same owner),
    the event seccomp profile. Mounts come at specialise (the keeper, from Specialize)."""
    if sandbox is None:
        return None
    uid = sandbox.uids.take(instance_id) if sandbox.protections.credentials else 0
    return EnterPolicy(
        binds=[], workdir="/opt/function", tmp_size_mb=512, uid=uid, gid=uid, protections=sandbox.protections
    )


__all__ = [
    "NAMES",
    "NodeCatalogue",
    "NodeRuntime",
    "NodeZygote",
    "find_node",
    "is_nodejs",
    "launch_policy",
    "pool_key",
    "shim_built",
]
