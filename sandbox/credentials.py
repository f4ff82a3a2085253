"""Credentials: the workload runs as an unprivileged uid/gid with no supplementary groups."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess


def drop_to(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid or os.getgroups():
        raise OSError("credentials did not change as asked")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise OSError("could regain uid 0 after dropping privileges")


class UserUnavailable(Exception):
    """The function user does not exist and cannot be created."""


def ensure_user(name: str) -> tuple[int, int]:
    """The uid and gid of `name`, creating it as a system user if missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        if not os.path.exists(useradd):
            raise UserUnavailable(f"user {name!r} does not exist and useradd is not available to create it") from None
        result = subprocess.run(
            [
                useradd,
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                name,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise UserUnavailable(f"cannot create user {name!r}: {result.stderr.strip()}") from None
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise UserUnavailable(f"user {name!r} has uid or gid 0; functions must not run as root")
    return entry.pw_uid, entry.pw_gid
