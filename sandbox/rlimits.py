"""Resource limits that cgroups do not cover: open files and core dumps."""

from __future__ import annotations

import resource


def apply(nofile: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
