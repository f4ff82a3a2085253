"""Prometheus text metrics, kept as plain counters (cheap on the invoke path).

Exposed at GET /metrics (authenticated like /v2). Function labels are
`<project>/<package>:<name>`.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Callable, Mapping

from fgd.history import History, Sample
from fgd.invoker import Outcome
from fgd.logs import LogSink, billed_ms
from fgd.model import FunctionRecord

Key = tuple[str, str, str]
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
OUTCOMES = {
    "Runtime.Timeout": "timeout",
    "Runtime.OutOfMemory": "out_of_memory",
    "Runtime.ExitError": "crash",
    "Runtime.InitError": "init_error",
    "Runtime.ImportModuleError": "init_error",
    "Runtime.HandlerNotFound": "init_error",
}


def _label(key: Key) -> str:
    project, package, name = key
    # Names and packages are restricted to [A-Za-z0-9_-]: nothing to escape.
    return f"{project}/{package}:{name}"


label_of = _label


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total += seconds

    def render(self, name: str, labels: str) -> list[str]:
        lines = []
        cumulative = 0
        for bound, count in zip(DURATION_BUCKETS, self.counts, strict=False):
            cumulative += count
            lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}')
        cumulative += self.counts[-1]
        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {cumulative}')
        lines.append(f"{name}_sum{{{labels}}} {self.total:.6f}")
        lines.append(f"{name}_count{{{labels}}} {cumulative}")
        return lines


class Metrics:
    def __init__(
        self,
        gauges: Callable[[], dict[str, dict[str, float]]],
        functions: Mapping[Key, FunctionRecord] | None = None,
        logs: LogSink | None = None,
        instances: Callable[[Key], Sample] | None = None,
    ) -> None:
        self.invocations: dict[tuple[Key, str], int] = defaultdict(int)
        self.cold_starts: dict[Key, int] = defaultdict(int)
        self.throttles: dict[tuple[Key, str], int] = defaultdict(int)
        self.durations: dict[Key, Histogram] = defaultdict(Histogram)
        self.init_durations: dict[Key, Histogram] = defaultdict(Histogram)
        self._gauges = gauges
        # More series, rendered as given (issue 14: fgd.network's per-function traffic counters).
        self.extra: list[Callable[[], list[str]]] = []
        # The live functions (the store's map): series of a deleted function are dropped at
        # the next scrape, also those an invocation still running at the delete adds later,
        # and a new function of the same name (another `created`) starts from zero.
        self._functions = functions
        self._created: dict[Key, float] = {}
        self._logs = logs
        # Per-minute history for the statistics routes (fgd.web.api.statistics), and how a
        # function's instances are sampled into it as an invocation ends.
        self.history = History()
        self._instances = instances

    def _seen(self, key: Key) -> None:
        """Before counting for `key`: start from zero if it is a new function of an old name."""
        if self._functions is None:
            return
        record = self._functions.get(key)
        if record is not None and self._created.get(key) != record.created:
            if key in self._created:
                self._forget({key})
            self._created[key] = record.created

    def _alive(self, key: Key) -> bool:
        if self._functions is None:
            return True
        record = self._functions.get(key)
        return record is not None and self._created.get(key, record.created) == record.created

    def _forget(self, dead: set[Key]) -> None:
        for key in dead:
            self._created.pop(key, None)
            self.cold_starts.pop(key, None)
            self.durations.pop(key, None)
            self.init_durations.pop(key, None)
        self.history.forget(dead)
        for by_outcome in (self.invocations, self.throttles):
            for label in [label for label in by_outcome if label[0] in dead]:
                del by_outcome[label]

    def invoked(self, key: Key, outcome: Outcome) -> None:
        self._seen(key)
        kind = "success" if outcome.error is None else OUTCOMES.get(outcome.error.error_type, "function_error")
        self.invocations[key, kind] += 1
        self.durations[key].observe(outcome.duration_ms / 1000)
        if outcome.cold:
            self.cold_starts[key] += 1
            if outcome.init_ms is not None:
                self.init_durations[key].observe(outcome.init_ms / 1000)
        sample = self._instances(key) if self._instances is not None else Sample()
        self.history.invoked(
            key,
            time.time(),
            outcome.duration_ms,
            function_error=outcome.error is not None,
            # FunctionGraph's resource usage: memory in GB times billed duration in seconds.
            gb_seconds=outcome.memory_size / 1024 * billed_ms(outcome.duration_ms) / 1000,
            # The invocation has just released its instance: count it as still running.
            sample=Sample(sample.running + 1, max(sample.instances, 1), sample.reserved),
        )

    def system_error(self, key: Key) -> None:
        """An invocation that failed inside fgd (not the function's doing)."""
        self._seen(key)
        self.history.system_error(key, time.time())

    def refused(self, key: Key, reason: str) -> None:
        self._seen(key)
        self.throttles[key, reason] += 1
        self.history.refused(key, time.time())

    def prune(self) -> None:
        """Drop the series of deleted functions (also those an invocation still running at the
        delete added afterwards), so a new function of an old name starts from zero."""
        known = set(self._created) | {label[0] for series in (self.invocations, self.throttles) for label in series}
        self._forget({key for key in known if not self._alive(key)})

    def render(self) -> str:
        self.prune()
        out = [
            "# HELP fgd_invocations_total Invocations by function and outcome.",
            "# TYPE fgd_invocations_total counter",
        ]
        for (key, kind), count in sorted(self.invocations.items()):
            out.append(f'fgd_invocations_total{{function="{_label(key)}",outcome="{kind}"}} {count}')
        for metric, source, help_text in (
            ("fgd_timeouts_total", "timeout", "Invocations killed at their timeout."),
            ("fgd_oom_kills_total", "out_of_memory", "Invocations whose instance ran out of memory."),
        ):
            out += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
            for (key, kind), count in sorted(self.invocations.items()):
                if kind == source:
                    out.append(f'{metric}{{function="{_label(key)}"}} {count}')
        out += [
            "# HELP fgd_cold_starts_total Invocations that started an instance.",
            "# TYPE fgd_cold_starts_total counter",
        ]
        out += [f'fgd_cold_starts_total{{function="{_label(k)}"}} {v}' for k, v in sorted(self.cold_starts.items())]
        out += [
            "# HELP fgd_throttles_total Requests refused for capacity (429 throttled or disabled, 503 node full).",
            "# TYPE fgd_throttles_total counter",
        ]
        for (key, reason), count in sorted(self.throttles.items()):
            out.append(f'fgd_throttles_total{{function="{_label(key)}",reason="{reason}"}} {count}')
        out += [
            "# HELP fgd_invocation_duration_seconds Handler run time.",
            "# TYPE fgd_invocation_duration_seconds histogram",
        ]
        for key, histogram in sorted(self.durations.items()):
            out += histogram.render("fgd_invocation_duration_seconds", f'function="{_label(key)}"')
        out += [
            "# HELP fgd_init_duration_seconds Cold start: instance start, handler import and initializer.",
            "# TYPE fgd_init_duration_seconds histogram",
        ]
        for key, histogram in sorted(self.init_durations.items()):
            out += histogram.render("fgd_init_duration_seconds", f'function="{_label(key)}"')
        if self._logs is not None:
            for metric, counter, help_text in (
                ("fgd_log_lines_dropped_total", self._logs.dropped_lines, "Stored log lines removed"),
                ("fgd_log_bytes_dropped_total", self._logs.dropped_bytes, "Stored log bytes removed"),
            ):
                out += [
                    f"# HELP {metric} {help_text} by function and reason (a byte cap, or retention age).",
                    f"# TYPE {metric} counter",
                ]
                for (key, reason), count in sorted(counter.items()):
                    if self._alive(key):
                        out.append(f'{metric}{{function="{_label(key)}",reason="{reason}"}} {count}')
            out += [
                "# HELP fgd_log_stored_bytes Log bytes stored on this node (what logs.max_bytes_total bounds).",
                "# TYPE fgd_log_stored_bytes gauge",
                f"fgd_log_stored_bytes {self._logs.stored_bytes}",
            ]
        # Issue 14: the per-function traffic counters (fgd.network), when the node has networking.
        for lines in self.extra:
            out += lines()
        for name, series in self._gauges().items():
            metric, _, help_text = name.partition(" ")
            out += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
            for labels, value in series.items():
                out.append(f"{metric}{{{labels}}} {value}" if labels else f"{metric} {value}")
        return "\n".join(out) + "\n"
