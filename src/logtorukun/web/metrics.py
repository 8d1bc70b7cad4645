"""`/metrics` in the Prometheus text format, written by hand: a handful of series does
not justify a dependency, and the format is plain text.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in pairs) + "}"


class Metrics:
    """Counters and one latency histogram; gauges are read from callbacks at scrape time."""

    def __init__(self) -> None:
        self.requests: dict[tuple[tuple[str, str], ...], int] = defaultdict(int)
        self.bytes_sent: dict[tuple[tuple[str, str], ...], int] = defaultdict(int)
        self.lines_sent = 0
        self.logins: dict[tuple[tuple[str, str], ...], int] = defaultdict(int)
        self.refused: dict[tuple[tuple[str, str], ...], int] = defaultdict(int)
        self.audit_failures = 0
        self._hist: dict[str, list[int]] = {}
        self._hist_sum: dict[str, float] = defaultdict(float)
        self._hist_count: dict[str, int] = defaultdict(int)
        self.gauges: list[tuple[str, str, Callable[[], list[tuple[dict[str, str], float]]]]] = []

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests[(("route", route), ("method", method), ("status", str(status)))] += 1
        counts = self._hist.setdefault(route, [0] * (len(BUCKETS) + 1))
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self._hist_sum[route] += seconds
        self._hist_count[route] += 1

    def sent(self, action: str, nbytes: int, nlines: int) -> None:
        self.bytes_sent[(("action", action),)] += nbytes
        self.lines_sent += nlines

    def gauge(
        self, name: str, help_text: str, read: Callable[[], list[tuple[dict[str, str], float]]]
    ) -> None:
        self.gauges.append((name, help_text, read))

    def render(self, extra_counters: dict[str, tuple[str, float]] | None = None) -> str:
        out: list[str] = []

        def counter(
            name: str, help_text: str, series: dict[tuple[tuple[str, str], ...], int]
        ) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} counter")
            for labels, value in sorted(series.items()):
                out.append(f"{name}{_labels(labels)} {value}")

        counter(
            "logtorukun_http_requests_total", "HTTP requests by route and status.", self.requests
        )
        counter("logtorukun_sent_bytes_total", "Log bytes sent to clients.", self.bytes_sent)
        counter("logtorukun_logins_total", "Sign-in attempts by result.", self.logins)
        counter("logtorukun_refused_total", "Requests refused, by HTTP status.", self.refused)
        out.append("# HELP logtorukun_sent_lines_total Log lines sent to clients.")
        out.append("# TYPE logtorukun_sent_lines_total counter")
        out.append(f"logtorukun_sent_lines_total {self.lines_sent}")
        for name, (help_text, value) in (extra_counters or {}).items():
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} counter")
            out.append(f"{name} {value:g}")
        name = "logtorukun_http_request_duration_seconds"
        out.append(f"# HELP {name} Time to the response's end, by route.")
        out.append(f"# TYPE {name} histogram")
        for route, counts in sorted(self._hist.items()):
            running = 0
            for bound, n in zip((*BUCKETS, float("inf")), counts, strict=True):
                running += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                out.append(f'{name}_bucket{{route="{_esc(route)}",le="{le}"}} {running}')
            out.append(f'{name}_sum{{route="{_esc(route)}"}} {self._hist_sum[route]:.6f}')
            out.append(f'{name}_count{{route="{_esc(route)}"}} {self._hist_count[route]}')
        for gname, help_text, read in self.gauges:
            out.append(f"# HELP {gname} {help_text}")
            out.append(f"# TYPE {gname} gauge")
            for labels, value in read():
                out.append(f"{gname}{_labels(tuple(sorted(labels.items())))} {value:g}")
        return "\n".join(out) + "\n"
