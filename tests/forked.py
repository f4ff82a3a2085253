"""Running a piece of a test in a forked child: for steps that change the process for good
(dropping capabilities, emptying the environment) and must not change the test runner."""

from __future__ import annotations

import json
import os
from collections.abc import Callable


def in_child(action: Callable[[], object]) -> dict:
    """Run `action` in a forked child: {"ok": True, "value": what it returned (as JSON)} or
    {"ok": False, "error": "Type: message"} for what it raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            outcome = {"ok": True, "value": action()}
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        try:
            os.write(write, json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        data = answer.read()
    os.waitpid(pid, 0)
    return json.loads(data)
