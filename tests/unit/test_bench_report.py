"""bench/report.py: finds every benchmark by itself and gathers what each prints."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_report"] = module
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_script_is_found_and_helpers_are_not(report) -> None:
    found = report.benchmarks()
    assert {"async_queue", "cold_start", "density", "packages", "warm_invoke"} <= set(found)
    assert not {"report", "soak", "_common"} & set(found)
    assert not [name for name in found if name.startswith("baseline_")]  # servers the benchmarks start


def test_a_new_benchmark_needs_no_change_in_the_runner(report, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "network.py").write_text(
        "import json\nprint('warming up')\nprint(json.dumps({'benchmark': 'network', 'ratio_x': 1.5, "
        "'levels': {'1': {'p50_ms': 0.2}}}, indent=2))\n"
    )
    (tmp_path / "broken.py").write_text("raise SystemExit(3)\n")
    (tmp_path / "_helper.py").write_text("")
    monkeypatch.setattr(report, "BENCH", tmp_path)
    assert report.benchmarks() == ["broken", "network"]
    figures = report.run("network", [])
    assert figures["ratio_x"] == 1.5 and figures["levels"] == {"1": {"p50_ms": 0.2}}
    assert report.run("broken", [])["error"] == "exited with 3"
    table = report.table({"machine": report.machine(), "commit": "c", "benchmarks": {"network": figures}})
    assert re.search(r"^network +\| levels\.1\.p50_ms +\| 0\.2$", table, re.MULTILINE)
    assert re.search(r"^network +\| ratio_x +\| 1\.5 <$", table, re.MULTILINE)


def test_the_last_json_object_is_taken_whatever_came_before(report) -> None:
    text = "log line {not json\n" + json.dumps({"a": 1}) + "\n" + json.dumps({"b": {"c": 2}}, indent=2) + "\n"
    assert report.last_json_object(text) == {"b": {"c": 2}}
    with pytest.raises(ValueError):
        report.last_json_object("no figures at all\n")


def test_the_machine_is_described(report) -> None:
    machine = report.machine()
    assert machine["cpu_count"] >= 1 and machine["kernel"] and machine["python"]
