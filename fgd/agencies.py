"""Agencies: named credential sets of the node config, handed to the functions that name them.

On FunctionGraph, `xrole` (configuration agency) and `app_xrole` (execution agency) name
IAM agencies whose temporary credentials the platform gives the function's code. A node
has no IAM: the operator defines the sets instead, in the config

    [agencies.obs_writer]
    access_key = "..."
    secret_key = "..."
    security_token = "..."
    auth_token = "..."

or as `file = "/etc/fgd/agencies/obs_writer.toml"` holding those four keys, re-read when
its modification time or size changes (credential rotation without a restart).

The function's code gets the set of its execution agency: `app_xrole`, or `xrole` when
`app_xrole` is empty (FunctionGraph's rule). Values travel only in the frames sent to that
function's instances (never argv, never the environment) and are never logged or
returned by the API.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from fgd.config import AgencyConfig
from fgd.errors import InvalidParameter

log = logging.getLogger("fgd.agencies")

# How often a credential file's metadata is looked at, at most (seconds).
RECHECK = 1.0
# A credential file is read on the daemon's event loop: at most this much of it (an IAM token,
# the largest value, is a few KB), and only a regular file (a FIFO would wait for a writer and
# hold every request of the node; /dev/zero would never end).
MAX_FILE = 256 * 1024


class Credentials(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One credential set; also the shape of an agency file."""

    access_key: str = ""
    secret_key: str = ""
    security_token: str = ""
    auth_token: str = ""

    def __repr__(self) -> str:
        # Never the values, should one end up in a log line or a traceback.
        return "Credentials(<redacted>)"

    def as_frame(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in self.__struct_fields__}


NONE = Credentials()


class _FileState(msgspec.Struct):
    signature: tuple[int, int, int] | None = None
    credentials: Credentials = NONE
    generation: int = 0
    checked: float = float("-inf")


def execution_agency(xrole: str, app_xrole: str) -> str:
    """The agency whose credentials the function's code gets."""
    return app_xrole or xrole


class Agencies:
    def __init__(self, configured: dict[str, AgencyConfig], clock: Callable[[], float] = time.monotonic) -> None:
        self._configured = dict(configured)
        self._clock = clock
        self._files: dict[str, _FileState] = {}

    def names(self) -> list[str]:
        return sorted(self._configured)

    def check(self, xrole: str, app_xrole: str, project: str | None = None) -> None:
        """Refuse a function naming an agency this node does not define, or does not let the
        function's project use (400)."""
        for field, name in (("xrole", xrole), ("app_xrole", app_xrole)):
            if name and name not in self._configured:
                # Only the ones this project may use: another team's agency names stay theirs.
                usable = [n for n in self.names() if _allowed(self._configured[n], project)]
                known = ", ".join(usable) or "none are defined"
                raise InvalidParameter(
                    f"{field}: agency {name!r} is not defined on this node ([agencies.{name}] in the "
                    f"node config); defined: {known}"
                )
            if name and not _allowed(self._configured[name], project):
                raise InvalidParameter(
                    f"{field}: agency {name!r} is not available to project {project!r} (its projects in "
                    f"the node config: {', '.join(self._configured[name].projects)})"
                )

    def credentials(
        self, xrole: str, app_xrole: str, project: str | None = None
    ) -> tuple[Credentials, tuple[str, int]]:
        """The function's credentials and a token that changes whenever they do."""
        name = execution_agency(xrole, app_xrole)
        agency = self._configured.get(name) if name else None
        # A function named it before its projects were limited: it gets nothing.
        if agency is None or not _allowed(agency, project):
            return NONE, ("", 0)
        if not agency.file:
            return (
                Credentials(agency.access_key, agency.secret_key, agency.security_token, agency.auth_token),
                (name, 0),
            )
        state = self._files.setdefault(name, _FileState())
        now = self._clock()
        if now - state.checked >= RECHECK:
            state.checked = now
            self._refresh(name, Path(agency.file), state)
        return state.credentials, (name, state.generation)

    def _refresh(self, name: str, path: Path, state: _FileState) -> None:
        try:
            info = path.stat()
        except OSError as exc:
            if state.signature is not None or state.generation == 0:
                log.warning(
                    "agency %s: cannot read %s (%s); its functions get no credentials", name, path, exc.strerror
                )
            state.signature, state.credentials = None, NONE
            state.generation += 1
            return
        signature = (info.st_mtime_ns, info.st_size, info.st_ino)
        if signature == state.signature:
            return
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("agency %s: %s is readable by other users; make it 0600", name, path)
        try:
            credentials = msgspec.toml.decode(_read_regular(path), type=Credentials)
        except (OSError, msgspec.DecodeError) as exc:
            # The message names the field, never a value.
            detail = exc.strerror if isinstance(exc, OSError) else str(exc).split("\n")[0]
            log.warning(
                "agency %s: %s is not a valid credential file (%s); keeping the previous values", name, path, detail
            )
            state.signature = signature
            return
        state.signature, state.credentials = signature, credentials
        state.generation += 1
        log.info("agency %s: credentials read from %s", name, os.fspath(path))


def _allowed(agency: AgencyConfig, project: str | None) -> bool:
    """Whether a function of `project` may use the agency (None: a caller that does not know)."""
    return not agency.projects or project in agency.projects


def _read_regular(path: Path) -> bytes:
    """The bytes of `path` (symlinks followed: secret stores hand files out through them), if it
    is a regular file of at most MAX_FILE bytes; OSError with a reason otherwise."""
    # O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
        data = os.read(fd, MAX_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE:
        raise OSError(0, f"over {MAX_FILE:,} bytes")
    return data
