"""Descriptors: nothing of the parent's leaks into the workload."""

from __future__ import annotations

import os


def close_all_but(keep: set[int]) -> None:
    """Close every descriptor except `keep` (stdio is the caller's choice)."""
    highest = os.sysconf("SC_OPEN_MAX")
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, highest)
