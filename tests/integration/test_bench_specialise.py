"""bench/cold_start.py --in-process: each step of a Python instance's specialisation, without the daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "cold_start.py"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root")


def test_in_process_mode_reports_every_step_of_specialisation() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--in-process", "--count", "2"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)["python_in_process"]
    for step in (
        "contain_round_trip",
        "specialize_round_trip",
        "instance.enter_sandbox",
        "instance.environment",
        "instance.load_handler",
        "first_invoke_round_trip",
        "second_invoke_round_trip",
    ):
        assert figures[step]["count"] == 2, step
        assert figures[step]["p50_ms"] > 0, step
    assert figures["worker_uss_kib"]["p50_ms"] > 0
    # The steps the instance timed fit in the round trip that carried them.
    inside = sum(figures[f"instance.{s}"]["p50_ms"] for s in ("enter_sandbox", "environment", "load_handler"))
    assert inside < figures["specialize_round_trip"]["p99_ms"]
