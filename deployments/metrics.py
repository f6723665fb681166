"""Prometheus metrics recorded inside replicas (Ray Serve's metrics API, exported by Ray's metrics
agent, names prefixed `ray_` on the wire). The one place every series is defined.

Outside a Ray worker (unit tests, the in-process server) recording is a no-op, so model and API
code can call these unconditionally.
"""
from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from typing import Iterator

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
RTF_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64]


def _in_ray_worker() -> bool:
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    except Exception:  # noqa: BLE001 - no Ray, no metrics
        return False


class _Noop:
    def inc(self, *args, **kwargs) -> None: ...
    def observe(self, *args, **kwargs) -> None: ...
    def set(self, *args, **kwargs) -> None: ...


@functools.lru_cache(maxsize=None)
def _metric(kind: str, name: str, description: str, tag_keys: tuple[str, ...], buckets: tuple[float, ...] = ()):
    if not _in_ray_worker():
        return _Noop()
    from ray.serve import metrics

    if kind == "counter":
        return metrics.Counter(name, description=description, tag_keys=tag_keys)
    if kind == "gauge":
        return metrics.Gauge(name, description=description, tag_keys=tag_keys)
    return metrics.Histogram(name, description=description, boundaries=list(buckets), tag_keys=tag_keys)


def stage_latency(stage: str, model: str, seconds: float) -> None:
    _metric("histogram", "gsv_stage_latency_seconds", "time spent in one stage call",
            ("stage", "model"), tuple(LATENCY_BUCKETS)).observe(seconds, tags={"stage": stage, "model": model})


@contextmanager
def timed(stage: str, model: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        stage_latency(stage, model, time.perf_counter() - start)


def batch_size(stage: str, size: int) -> None:
    _metric("histogram", "gsv_batch_size", "items per batched call", ("stage",),
            tuple(BATCH_BUCKETS)).observe(size, tags={"stage": stage})


def queue_depth(stage: str, depth: int) -> None:
    _metric("gauge", "gsv_queue_depth", "requests waiting in a stage", ("stage",)).set(depth, tags={"stage": stage})


def active_rows(stage: str, rows: int) -> None:
    _metric("gauge", "gsv_active_rows", "sequences decoding at once", ("stage",)).set(rows, tags={"stage": stage})


def cache_event(event: str) -> None:
    _metric("counter", "gsv_speaker_cache_events_total", "speaker cache hits, misses and evictions",
            ("event",)).inc(1, tags={"event": event})


def model_event(stage: str, model: str, event: str) -> None:
    _metric("counter", "gsv_model_events_total", "model loads, unloads and swaps", ("stage", "model", "event")).inc(
        1, tags={"stage": stage, "model": model, "event": event})


def request_done(route: str, status: int, code: str) -> None:
    _metric("counter", "gsv_requests_total", "HTTP requests by route and outcome", ("route", "status", "code")).inc(
        1, tags={"route": route, "status": str(status), "code": code})


def ttfa(model: str, fmt: str, seconds: float) -> None:
    _metric("histogram", "gsv_ttfa_seconds", "time from request to first audio byte", ("model", "format"),
            tuple(LATENCY_BUCKETS)).observe(seconds, tags={"model": model, "format": fmt})


def rtf(model: str, value: float) -> None:
    _metric("histogram", "gsv_rtf", "real-time factor: wall seconds per audio second", ("model",),
            tuple(RTF_BUCKETS)).observe(value, tags={"model": model})


def active_streams(delta: int) -> None:
    _active_streams[0] += delta
    _metric("gauge", "gsv_active_streams", "audio responses being streamed", ()).set(_active_streams[0])


_active_streams = [0]
