"""What the Ingress measures: Prometheus metrics through Ray Serve's metrics API (scraped from Ray's
metrics endpoint with every other Ray metric) and the same figures, per replica, for /v1/stats."""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any

from ray.serve import metrics

LATENCY_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900]
WINDOW = 1000  # latencies kept per model for the percentiles of /v1/stats


class RequestMetrics:
    """Requests by route, model and status, and their latency."""

    def __init__(self) -> None:
        self._requests = metrics.Counter(
            "superres_requests",
            description="Image requests answered, by route, model and HTTP status.",
            tag_keys=("route", "model", "status"),  # type: ignore[arg-type]  # Ray types tuple[str]
        )
        self._latency = metrics.Histogram(
            "superres_request_seconds",
            description="Latency of image requests answered 200, by route and model.",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=("route", "model"),  # type: ignore[arg-type]
        )
        self._counts: dict[tuple[str, str, int], int] = defaultdict(int)
        self._recent: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=WINDOW))

    def observe(self, route: str, model: str, status: int, seconds: float) -> None:
        self._requests.inc(tags={"route": route, "model": model, "status": str(status)})
        self._counts[(route, model, status)] += 1
        if status == 200:
            self._latency.observe(seconds, tags={"route": route, "model": model})
            self._recent[model].append(seconds)

    def stats(self) -> dict[str, Any]:
        per_model: dict[str, Any] = defaultdict(lambda: {"requests": {}, "latency_s": None})
        for (route, model, status), count in self._counts.items():
            per_model[model]["requests"][f"{route} {status}"] = count
        for model, recent in self._recent.items():
            ordered = sorted(recent)
            per_model[model]["latency_s"] = {
                f"p{q}": round(ordered[min(len(ordered) - 1, len(ordered) * q // 100)], 4)
                for q in (50, 90, 99)
            }
        return dict(per_model)
