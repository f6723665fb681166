"""Prometheus series of the generation guard (models/guard.py), per model. Same conventions as
`deployments.metrics` (Ray Serve's metrics API, `ray_` prefix on the wire, a no-op outside a Ray
worker), and the same metric cache, so a series is defined once per process.

    gsv_guard_checks_total{model, mode}            sentences decodes checked (each attempt counts)
    gsv_guard_failures_total{model, reason, mode}  failed checks, by reason
    gsv_guard_retries_total{model, reason, mode}   extra decodes, by the reason that caused them
    gsv_guard_kept_failures_total{model, reason, mode}  sentences served although they failed
    gsv_guard_cuts_total{model, reason}            streamed sentences cut at a loop after audio left

mode: "whole" (whole-sentence T2S) or "stream" (token-chunk streaming).
"""
from __future__ import annotations

from deployments.metrics import _metric


def guard_check(model: str, mode: str, n: int = 1) -> None:
    _metric("counter", "gsv_guard_checks_total", "T2S decodes checked by the generation guard",
            ("model", "mode")).inc(n, tags={"model": model, "mode": mode})


def guard_failure(model: str, reason: str, mode: str) -> None:
    _metric("counter", "gsv_guard_failures_total", "generation guard check failures by reason",
            ("model", "reason", "mode")).inc(1, tags={"model": model, "reason": reason, "mode": mode})


def guard_retry(model: str, reason: str, mode: str) -> None:
    _metric("counter", "gsv_guard_retries_total", "sentences decoded again after a failed guard check",
            ("model", "reason", "mode")).inc(1, tags={"model": model, "reason": reason, "mode": mode})


def guard_kept_failure(model: str, reason: str, mode: str) -> None:
    _metric("counter", "gsv_guard_kept_failures_total", "sentences served although every attempt failed",
            ("model", "reason", "mode")).inc(1, tags={"model": model, "reason": reason, "mode": mode})


def guard_cut(model: str, reason: str) -> None:
    _metric("counter", "gsv_guard_cuts_total", "streamed sentences cut at a failure after audio was sent",
            ("model", "reason")).inc(1, tags={"model": model, "reason": reason})


def record_outcome(model: str, outcome) -> None:
    """Record one sentence's `models.guard.SentenceOutcome` (duck-typed: attempts, verdicts, kept,
    mode). Every verdict is a check; every failed one a failure; each failed attempt followed by
    another a retry; a failed kept attempt a kept failure (and, streamed, a cut)."""
    verdicts, mode = outcome.verdicts, outcome.mode
    if not verdicts:  # guard disabled
        return
    guard_check(model, mode, len(verdicts))
    for i, verdict in enumerate(verdicts):
        if verdict.ok:
            continue
        guard_failure(model, verdict.reason, mode)
        if i + 1 < len(verdicts):
            guard_retry(model, verdict.reason, mode)
    kept = verdicts[outcome.kept]
    if not kept.ok:
        guard_kept_failure(model, kept.reason, mode)
        if mode == "stream" and kept.position is not None:
            guard_cut(model, kept.reason)
