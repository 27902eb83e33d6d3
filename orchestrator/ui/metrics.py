"""The UI's own Prometheus metrics: requests by route and status, and how long they took.

A registry of its own (not the process-wide default), so that two UI apps in one process (tests) never
register the same names twice; ``orchestrator ui --metrics-port`` serves it with prometheus-client's
HTTP server. The route label is the route's path template (``/runs/{run_id}``), never the raw path: one
label value per route, whatever the run ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server


class UIMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "orchestrator_ui_requests",
            "HTTP requests the web UI answered, by route template and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "orchestrator_ui_request_duration_seconds",
            "Time to answer a web UI request (pages that read topics take longest).",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.duration.labels(route).observe(seconds)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``port`` from a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
