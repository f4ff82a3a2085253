"""runtimes/python/instance.py's rehearsal in a pooled worker (issue 15) leaves nothing behind,
whether it runs to the end or is stopped between parts (a frame came)."""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Callable

from runtimes.python import context, instance
from tests.forked import in_child


def traces() -> dict:
    return {
        "environ": dict(os.environ),
        "level": context._LoggerState.level,
        "modules": [name for name in sys.modules if name == "fgd_warm_up"],
        "path": [p for p in sys.path if "fgd-warm-up" in p],
        "tmp": glob.glob("/tmp/.fgd-warm-up*"),
        "importer_cache": [p for p in sys.path_importer_cache if "fgd-warm-up" in p],
    }


CLEAN = {"environ": {}, "level": None, "modules": [], "path": [], "tmp": [], "importer_cache": []}


def test_a_whole_rehearsal_leaves_nothing_behind() -> None:
    def rehearse() -> dict:
        os.environ["LEFT_BY_THE_ZYGOTE"] = "x"
        before = set(glob.glob("/tmp/.fgd-warm-up*"))
        parts = sum(1 for _ in instance.warm_up(own_tmp=True))
        seen = traces()
        seen["tmp"] = sorted(set(seen["tmp"]) - before)
        return {"parts": parts, "traces": seen}

    outcome = in_child(rehearse)
    assert outcome["ok"], outcome
    result = outcome["value"]
    assert result["parts"] == 2
    assert result["traces"] == CLEAN


def test_a_rehearsal_stopped_between_parts_leaves_nothing_behind() -> None:
    def stopped_after(parts: int) -> Callable[[], dict]:
        def rehearse() -> dict:
            before = set(glob.glob("/tmp/.fgd-warm-up*"))
            rehearsal = instance.warm_up(own_tmp=True)
            for _ in range(parts):
                next(rehearsal)
            rehearsal.close()
            seen = traces()
            seen["tmp"] = sorted(set(seen["tmp"]) - before)
            return seen

        return rehearse

    for parts in (1, 2):
        assert in_child(stopped_after(parts)) == {"ok": True, "value": CLEAN}, parts
