"""Prometheus text exposition (format 0.0.4), written by hand.

Why not `prometheus_client`: its default registry is process-global, so two apps in one process (the tests
build several) would share or collide on counters; a per-app registry object would avoid that but the whole
need here is a few counters and one histogram family, which take fewer lines than the glue. Values are
guarded by one lock; rendering copies them under it.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Histogram:
    """Cumulative buckets per label set, with _sum and _count."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts: dict[tuple[tuple[str, str], ...], list[int]] = defaultdict(
            lambda: [0] * (len(buckets) + 1)
        )
        self.sums: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)

    def observe(self, labels: tuple[tuple[str, str], ...], value: float) -> None:
        c = self.counts[labels]
        for i, b in enumerate(self.buckets):
            if value <= b:
                c[i] += 1
        c[-1] += 1
        self.sums[labels] += value

    def render(self, name: str) -> list[str]:
        out = []
        for labels, c in sorted(self.counts.items()):
            for b, n in zip(self.buckets, c, strict=False):
                out.append(f"{name}_bucket{_labels((*labels, ('le', _num(b))))} {n}")
            out.append(f"{name}_bucket{_labels((*labels, ('le', '+Inf')))} {c[-1]}")
            out.append(f"{name}_sum{_labels(labels)} {_num(self.sums[labels])}")
            out.append(f"{name}_count{_labels(labels)} {c[-1]}")
        return out


class Metrics:
    """Request counts by endpoint and status, request latency by endpoint, micro-batch sizes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[tuple[str, str], ...], int] = defaultdict(int)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_users = Histogram(BATCH_BUCKETS)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(("endpoint", endpoint), ("status", str(status)))] += 1
            self.latency.observe((("endpoint", endpoint),), seconds)

    def batch(self, users: int) -> None:
        with self._lock:
            self.batch_users.observe((), float(users))

    def render(self, state: dict[str, object]) -> str:
        """The exposition: counters and histograms here plus `state` (the version manager's gauges)."""
        lines: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")

        with self._lock:
            family("derm_requests_total", "counter", "HTTP requests by endpoint and status code.")
            for labels, n in sorted(self.requests.items()):
                lines.append(f"derm_requests_total{_labels(labels)} {n}")
            family("derm_request_seconds", "histogram", "HTTP request latency by endpoint.")
            lines += self.latency.render("derm_request_seconds")
            family("derm_batch_users", "histogram", "Users per ranker pass (micro-batch size).")
            lines += self.batch_users.render("derm_batch_users")
        family("derm_ready", "gauge", "1 when a checked version set is serving.")
        lines.append(f"derm_ready {1 if state['ready'] else 0}")
        family("derm_serving_day", "gauge", "The query day being served (-1: none).")
        lines.append(f"derm_serving_day {state['day']}")
        family("derm_serving_version_info", "gauge", "The versions being served (labels), value 1.")
        versions = state.get("versions") or {}
        assert isinstance(versions, dict)
        if versions:
            pairs = tuple((k, str(v)) for k, v in sorted(versions.items()))
            lines.append(f"derm_serving_version_info{_labels(pairs)} 1")
        family(
            "derm_pending_version_set",
            "gauge",
            "1 while a newer set waits for the online store to publish its store version.",
        )
        lines.append(f"derm_pending_version_set {1 if state.get('pending') else 0}")
        family("derm_swaps_total", "counter", "Version sets swapped in after the first.")
        lines.append(f"derm_swaps_total {state['swaps']}")
        family("derm_swap_failures_total", "counter", "Version sets that failed to load or check.")
        lines.append(f"derm_swap_failures_total {state['swap_failures']}")
        family(
            "derm_last_swap_failure_info",
            "gauge",
            "The last failure since the last successful swap (label error), value 1; absent when none.",
        )
        failure = state.get("last_failure")
        if isinstance(failure, dict):
            lines.append(f"derm_last_swap_failure_info{_labels((('error', str(failure['error'])[:300]),))} 1")
        return "\n".join(lines) + "\n"
