"""Prometheus metrics of one proxy (its own registry, so several apps can live in one process)."""

from __future__ import annotations

import threading

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OVERHEAD_BUCKETS = (0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015,
                    0.025, 0.05, 0.1, 0.5)


class ProxyMetrics:
    """``refcal_requests_total{endpoint,calibrated}``, ``refcal_errors_total{kind}``,
    ``refcal_upstream_latency_seconds``, ``refcal_proxy_overhead_seconds`` (handler time minus upstream
    time), ``refcal_agreement_rate`` / ``refcal_mean_confidence`` (running over this process's calibrated
    requests; agreement over those with a reference sample), ``refcal_calibrated_total``,
    ``refcal_reference_samples_total``."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("refcal_requests", "Requests received", ["endpoint", "calibrated"], registry=r)
        self.errors = Counter("refcal_errors", "Requests answered with an error, by cause", ["kind"], registry=r)
        self.upstream_latency = Histogram("refcal_upstream_latency_seconds", "Upstream answer time (to the last byte)",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram("refcal_proxy_overhead_seconds", "Time spent in the proxy, upstream time excluded",
                                  buckets=OVERHEAD_BUCKETS, registry=r)
        self.calibrated = Counter("refcal_calibrated", "Calibrated answers served", ["task"], registry=r)
        self.reference = Counter("refcal_reference_samples", "Requests also scored by the reference model",
                                 ["outcome"], registry=r)
        self.agreement = Gauge("refcal_agreement_rate", "Running chat/reference agreement rate (reference samples)",
                               registry=r)
        self.confidence = Gauge("refcal_mean_confidence", "Running mean calibrated confidence", registry=r)
        self.agreement.set(float("nan"))
        self.confidence.set(float("nan"))
        self._lock = threading.Lock()
        self._n_conf = 0
        self._sum_conf = 0.0
        self._n_ref = 0
        self._n_agree = 0

    def observe_confidence(self, confidence: float) -> None:
        with self._lock:
            self._n_conf += 1
            self._sum_conf += confidence
            self.confidence.set(self._sum_conf / self._n_conf)

    def observe_agreement(self, agree: bool) -> None:
        with self._lock:
            self._n_ref += 1
            self._n_agree += bool(agree)
            self.agreement.set(self._n_agree / self._n_ref)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
