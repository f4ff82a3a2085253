"""What both cgroup backends share: the limits and the error type."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import msgspec

FGD_SUBTREE = "fgd"
CPU_PERIOD_US = 100_000


class CgroupError(Exception):
    """A cgroup operation failed; the message names the file."""


class Limits(msgspec.Struct, frozen=True):
    memory_bytes: int
    pids: int = 1024
    cpu_millicores: int | None = None


def write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as handle:
            handle.write(value)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


def read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise CgroupError(f"cannot read {path}: {exc.strerror}") from None


def key_value(path: Path, key: str) -> int:
    """An integer from a flat-keyed file such as memory.events."""
    for line in read(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def procs(path: Path) -> list[int]:
    try:
        return [int(pid) for pid in (path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def remove_dir(path: Path) -> bool:
    """rmdir a cgroup; False while it still has processes."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise CgroupError(f"cannot remove {path}: {exc.strerror}") from None
    return True


def check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or name == FGD_SUBTREE:
        raise CgroupError(f"invalid cgroup name {name!r}")
