"""Custom (`bootstrap` + runtime API) and HTTP (`bootstrap` starting a server) functions.

Both run an agent (runtimes/custom/) in an ordinary pooled Python instance of
the daemon's own interpreter, which starts the function's `bootstrap` after the
sandbox is entered. Their pool is their own (zygote and pool key "custom"): it
runs the same zygote program on the same interpreter as the daemon's Python
functions, but its sandbox root differs. Published HTTP-function bootstraps
call interpreters by FunctionGraph's absolute paths
(`/opt/function/runtime/python3.9/rtsp/python/bin/python3`,
`/opt/function/runtime/nodejs20.15/rtsp/nodejs/bin/node`, ...): in this pool's
root those paths are symlinks to the node's interpreters, whose installations
are bound read-only. Python functions keep a root holding only their own
interpreter.
"""

from __future__ import annotations

import base64
import os
import shutil
import stat
from pathlib import Path

import msgspec

from fgd.errors import InvalidParameter
from fgd.interpreters import CUSTOM_RUNTIMES, Catalogue, Interpreter
from fgd.zygote import Zygote, _covered
from sandbox.policy import ContainPolicy, Mount

_encoder = msgspec.json.Encoder()
# FunctionGraph runtime string -> what the instance becomes (Specialize.mode).
MODES = {"Custom": "custom", "http": "http"}
assert set(MODES) == set(CUSTOM_RUNTIMES)
POOL = "custom"
AGENT_MODULES = ("runtimes.custom.agent", "runtimes.custom.runtime_api", "runtimes.custom.http")
BOOTSTRAP = "bootstrap"
RUNTIME_ROOT = "/opt/function/runtime"
# FunctionGraph's interpreter folders (FUNCTIONGRAPH.md: runtimes and HTTP functions).
PYTHON_FOLDERS = ("3.6", "3.9", "3.10", "3.12")
NODE_FOLDERS = ("6.10", "8.10", "10.16", "12.13", "14.18", "16.17", "18.15", "20.15")


def mode_of(runtime: str) -> str:
    """ "custom", "http", or "python" for every other runtime."""
    return MODES.get(runtime, "python")


def seccomp_profile(runtime: str) -> str:
    # An HTTP function's server listens; a Custom bootstrap may not (the agent's socket is made
    # before the filter: runtimes/custom/agent.py).
    return "http" if runtime == "http" else "event"


def check_bootstrap(tree: Path, runtime: str) -> None:
    """A 400 unless the stored code has an executable regular file `bootstrap` at its root."""
    path = tree / BOOTSTRAP
    try:
        info = path.lstat()
    except OSError:
        raise InvalidParameter(
            f"a {runtime} function needs an executable file named {BOOTSTRAP!r} at the root of its code zip; "
            "there is none"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise InvalidParameter(f"{BOOTSTRAP!r} at the root of the code must be a regular file")
    if not info.st_mode & 0o111:
        raise InvalidParameter(
            f"{BOOTSTRAP!r} is not executable: set its mode (chmod +x bootstrap) before zipping; "
            "zip keeps Unix modes (zip -X is fine, an archive made on Windows is not)"
        )


def apig_answer(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """An HTTP function's answer as the APIG response a sync invocation returns: the body as text
    when it is UTF-8, else base64; a header the server sent several times is a list."""
    merged: dict[str, str | list[str]] = {}
    for name, value in headers:
        key = name.lower()
        previous = merged.get(key)
        if previous is None:
            merged[key] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            merged[key] = [previous, value]
    try:
        text, encoded = body.decode(), False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode(), True
    return _encoder.encode({"statusCode": status, "headers": merged, "body": text, "isBase64Encoded": encoded})


def _installation(executable: str) -> str:
    """The directory an interpreter is installed in (bin/.. of its real path)."""
    return os.path.dirname(os.path.dirname(os.path.realpath(executable)))


def runtime_links(catalogue: Catalogue, node: str | None) -> tuple[list[Mount], list[tuple[str, str]]]:
    """Binds of the interpreters' installations and FunctionGraph's paths leading to them."""
    mounts: list[Mount] = []
    links: list[tuple[str, str]] = []
    for minor in PYTHON_FOLDERS:
        interpreter: Interpreter | None = catalogue.serving(f"Python{minor}")
        if interpreter is None:
            continue
        real = os.path.realpath(interpreter.path)
        mounts.append(Mount(interpreter.prefix, interpreter.prefix))
        if os.path.realpath(interpreter.prefix) != interpreter.prefix:
            mounts.append(Mount(os.path.realpath(interpreter.prefix), os.path.realpath(interpreter.prefix)))
        folder = f"{RUNTIME_ROOT}/python{minor}/rtsp/python/bin"
        links += [(f"{folder}/python3", real), (f"{folder}/python", real), (f"{folder}/python{minor}", real)]
    if node:
        real = os.path.realpath(node)
        mounts.append(Mount(_installation(real), _installation(real)))
        for version in NODE_FOLDERS:
            links.append((f"{RUNTIME_ROOT}/nodejs{version}/rtsp/nodejs/bin/node", real))
    return mounts, links


class CustomZygote(Zygote):
    """The zygote of the Custom/http pool: the daemon's interpreter, a root with the runtimes' paths."""

    def __init__(self, *args, catalogue: Catalogue, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._catalogue = catalogue
        self._custom_policy: tuple[ContainPolicy, ContainPolicy] | None = None

    def contain_policy(self, base: ContainPolicy) -> ContainPolicy:
        if self._custom_policy is None or self._custom_policy[0] is not base:
            mounts, links = runtime_links(self._catalogue, shutil.which("node"))
            own = list(super().contain_policy(base).root_mounts)
            for mount in mounts:
                if not _covered(mount.source, own) and os.path.isdir(mount.source):
                    own.append(mount)
            policy = msgspec.structs.replace(base, root_mounts=own, symlinks=[*base.symlinks, *links])
            self._custom_policy = (base, policy)
        return self._custom_policy[1]


def custom_zygote(interpreter: Interpreter, catalogue: Catalogue, seccomp_programs: dict[str, bytes] | None) -> Zygote:
    """The (not started) zygote of the Custom/http pool."""
    # The agent's modules are imported before the sandbox hides fgd's packages.
    argv = [interpreter.path, "-s", "-m", "runtimes.python.zygote", f"--preload={','.join(AGENT_MODULES)}"]
    return CustomZygote(POOL, argv, interpreter=interpreter, seccomp_programs=seccomp_programs, catalogue=catalogue)
