"""The capability steps' own checks (issue 15 made them cheaper; they must still catch a leftover).

Each case runs in a forked child of this (root) test process, so nothing it drops is lost here.
"""

from __future__ import annotations

import os

import pytest

from sandbox import capabilities
from tests.forked import in_child

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping capabilities needs root")


def cap_sets() -> dict[str, str]:
    with open("/proc/self/status") as status:
        return {
            name: value.strip()
            for name, _, value in (line.partition(":") for line in status)
            if name in capabilities.CAP_SETS
        }


def test_dropping_the_bounding_set_reads_it_back_empty() -> None:
    def drop() -> dict:
        capabilities.drop_bounding()
        return {"flag": capabilities.bounding_empty, "sets": cap_sets()}

    outcome = in_child(drop)
    assert outcome["ok"], outcome
    assert outcome["value"]["flag"] is True
    assert outcome["value"]["sets"]["CapBnd"] == "0000000000000000"
    assert outcome["value"]["sets"]["CapInh"] == "0000000000000000"
    assert outcome["value"]["sets"]["CapAmb"] == "0000000000000000"


def test_a_worker_forked_after_the_drop_empties_every_set_without_redoing_it() -> None:
    def worker() -> dict:
        capabilities.drop_bounding()
        # As the sandbox's worker: forked after PID 1 dropped the bounding set.
        return in_child(lambda: (capabilities.drop_remaining(), cap_sets())[1])

    outcome = in_child(worker)
    assert outcome["ok"] and outcome["value"]["ok"], outcome
    assert set(outcome["value"]["value"].values()) == {"0000000000000000"}


def test_a_bounding_set_nobody_dropped_is_still_caught() -> None:
    # Root, the bounding set full, and no earlier drop recorded: the one capset empties the
    # other sets, and the bounding set read back from /proc/self/status fails the check.
    outcome = in_child(capabilities.drop_remaining)
    assert not outcome["ok"]
    assert outcome["error"].startswith("OSError: CapBnd is "), outcome
