"""Every gsv_* series in deployments/metrics.py reaches Ray's Prometheus endpoint with the right labels.

A few requests (plain, streamed, one bad) go through the real graph (the session's `served` Ray),
then we scrape the node's metrics export port the way Prometheus would (ops/prometheus.yml).
Ray pushes replica metrics to its metrics agent every few seconds, so each check polls the scrape
until its condition holds, up to one shared deadline (SCRAPE_WAIT_S after the traffic).
Counters are cumulative over the session (other tests share these replicas): assert lower bounds.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.ray

SCRAPE_WAIT_S = 60.0
TEXT = "Metrics please."
PLAIN, STREAMED = 2, 2
SPEECH = "/v1/audio/speech"
MODEL_STAGES = ("frontend", "gpt", "sovits", "vocoder")

Sample = tuple[str, dict[str, str], float]


def metrics_endpoints() -> list[str]:
    """Every live node's metrics agent (`ray.nodes()` knows the port Ray picked)."""
    import ray

    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in ray.nodes() if n["Alive"] and n.get("MetricsExportPort")]


def scrape() -> list[Sample]:
    samples: list[Sample] = []
    for url in metrics_endpoints():
        text = requests.get(url, timeout=10).text
        for family in text_string_to_metric_families(text):
            samples.extend((s.name, s.labels, s.value) for s in family.samples)
    return samples


def select(samples: list[Sample], name: str, **labels: str) -> list[Sample]:
    return [s for s in samples if s[0] == name and all(s[1].get(k) == v for k, v in labels.items())]


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s[2] for s in select(samples, name, **labels))


def body(**overrides) -> dict:
    return {"model": "tts-1", "input": TEXT, "voice": "demo", "response_format": "pcm", "language": "en",
            "seed": 3} | overrides


@pytest.fixture(scope="module")
def traffic(served) -> dict:
    """PLAIN whole responses, STREAMED streamed WAV responses, one request for an unknown voice."""
    url = served["url"] + SPEECH
    for i in range(PLAIN):
        r = requests.post(url, json=body(seed=i), timeout=120)
        assert r.status_code == 200, r.text
    for i in range(STREAMED):
        with requests.post(url, json=body(response_format="wav", stream=True, seed=10 + i), stream=True,
                           timeout=120) as r:
            assert r.status_code == 200, r.text
            assert sum(len(c) for c in r.iter_content(4096)) > 44
    r = requests.post(url, json=body(voice="no-such-voice"), timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "voice_not_found"
    return {"deadline": time.monotonic() + SCRAPE_WAIT_S}


def wait_for(traffic: dict, condition: Callable[[list[Sample]], bool]) -> list[Sample]:
    """Scrape until `condition(samples)` holds or the shared deadline passes; return the last scrape."""
    while True:
        samples = scrape()
        if condition(samples) or time.monotonic() > traffic["deadline"]:
            return samples
        time.sleep(2)


def names(samples: list[Sample], prefix: str) -> set[str]:
    return {s[0] for s in samples if s[0].startswith(prefix)}


# ------------------------------------------------------------------------------ endpoint
def test_metrics_endpoint_is_found_and_speaks_prometheus(served):
    endpoints = metrics_endpoints()
    assert endpoints, "no node reports a MetricsExportPort"
    response = requests.get(endpoints[0], timeout=10)
    assert response.status_code == 200
    assert "# TYPE ray_" in response.text


# ------------------------------------------------------------------------------ stages
def test_stage_latency_has_every_model_stage(traffic):
    name = "ray_gsv_stage_latency_seconds_count"
    samples = wait_for(traffic, lambda s: all(total(s, name, stage=st) > 0 for st in MODEL_STAGES))
    for stage in MODEL_STAGES:
        assert total(samples, name, stage=stage) >= 1, f"no {stage} latency observed"
    # every synthesis runs GPT, SoVITS and the vocoder once per sentence (one sentence here)
    for stage in ("gpt", "sovits", "vocoder"):
        assert total(samples, name, stage=stage) >= PLAIN
    # the GPT/SoVITS/vocoder series name the exact model version (model_id@version)
    assert all("@" in s[1]["model"] for s in select(samples, name, stage="gpt"))
    # buckets are cumulative and end at +Inf == count
    inf = total(samples, "ray_gsv_stage_latency_seconds_bucket", stage="gpt", le="+Inf")
    assert inf == total(samples, name, stage="gpt")


def test_stage_series_carry_serve_deployment_labels(traffic):
    name = "ray_gsv_stage_latency_seconds_count"
    samples = wait_for(traffic, lambda s: total(s, name, stage="gpt") > 0)
    deployments = {s[1].get("deployment") for s in select(samples, name, stage="gpt")}
    assert deployments == {"GPT"}
    assert all(s[1].get("application") == "gsv" and s[1].get("replica") for s in select(samples, name))


def bucket(samples: list[Sample], name: str, le: float, **labels: str) -> float:
    return sum(s[2] for s in select(samples, name + "_bucket", **labels) if float(s[1]["le"]) == le)


def test_batch_size_per_batched_stage(traffic):
    name = "ray_gsv_batch_size"
    samples = wait_for(traffic, lambda s: all(total(s, name + "_count", stage=st) > 0 for st in MODEL_STAGES))
    # configs/cpu.yaml: Frontend max_batch_size 16, SoVITS/Vocoder 8; the GPT decodes <= gpt_max_batch (8) rows
    for stage, largest in (("frontend", 16), ("gpt", 8), ("sovits", 8), ("vocoder", 8)):
        count = total(samples, name + "_count", stage=stage)
        assert count >= 1, f"no {stage} batch observed"
        assert bucket(samples, name, largest, stage=stage) == count, f"a {stage} batch over {largest}"
        # Ray rebuilds histograms from bucket counts: _sum is bucket midpoints (a batch of 1 sums as 0.5)
        assert total(samples, name + "_sum", stage=stage) > 0


def test_gpt_queue_depth_and_active_rows_gauges(traffic):
    def ready(s):
        return select(s, "ray_gsv_queue_depth", stage="gpt") and select(s, "ray_gsv_active_rows", stage="gpt")

    samples = wait_for(traffic, ready)
    assert select(samples, "ray_gsv_queue_depth", stage="gpt"), "gsv_queue_depth{stage=gpt} missing"
    assert select(samples, "ray_gsv_active_rows", stage="gpt"), "gsv_active_rows{stage=gpt} missing"
    # nothing is decoding now: the loop reports 0 rows when it goes idle
    idle = wait_for(traffic, lambda s: total(s, "ray_gsv_active_rows", stage="gpt") == 0)
    assert total(idle, "ray_gsv_active_rows", stage="gpt") == 0


def test_speaker_cache_hits_and_misses(traffic):
    name = "ray_gsv_speaker_cache_events_total"
    samples = wait_for(traffic, lambda s: total(s, name, event="miss") > 0 and total(s, name, event="hit") > 0)
    assert total(samples, name, event="miss") >= 1  # first request per (voice, version)
    assert total(samples, name, event="hit") >= 1  # our later requests reuse the prompt


def test_model_loads_in_every_model_stage(traffic):
    name = "ray_gsv_model_events_total"
    stages = ("speaker_cache", "gpt", "sovits", "vocoder")
    samples = wait_for(traffic, lambda s: all(total(s, name, stage=st, event="load") > 0 for st in stages))
    for stage in stages:
        loads = select(samples, name, stage=stage, event="load")
        assert loads, f"no model load recorded by {stage}"
        assert any(s[1]["model"].startswith("default@") for s in loads)  # model_id@version


# ------------------------------------------------------------------------------ ingress
def test_requests_counted_by_route_status_and_code(traffic):
    name = "ray_gsv_requests_total"

    def ok(s):
        return (total(s, name, route=SPEECH, status="200") >= PLAIN + STREAMED
                and total(s, name, route=SPEECH, status="404", code="voice_not_found") >= 1)

    samples = wait_for(traffic, ok)
    assert total(samples, name, route=SPEECH, status="200") >= PLAIN + STREAMED, select(samples, name)
    assert total(samples, name, route=SPEECH, status="404", code="voice_not_found") >= 1, select(samples, name)


def test_ttfa_observed_for_each_streamed_request(traffic):
    name = "ray_gsv_ttfa_seconds_count"
    samples = wait_for(traffic, lambda s: total(s, name, format="wav") >= STREAMED)
    assert total(samples, name, format="wav") >= STREAMED, select(samples, name)
    assert total(samples, "ray_gsv_ttfa_seconds_sum", format="wav") > 0


def test_rtf_observed_for_finished_syntheses(traffic):
    samples = wait_for(traffic, lambda s: total(s, "ray_gsv_rtf_count") >= PLAIN)
    assert total(samples, "ray_gsv_rtf_count") >= PLAIN, select(samples, "ray_gsv_rtf_count")
    assert total(samples, "ray_gsv_rtf_sum") > 0


def test_active_streams_back_to_zero_after_streams_close(traffic):
    name = "ray_gsv_active_streams"
    samples = wait_for(traffic, lambda s: bool(select(s, name)) and total(s, name) == 0)
    assert select(samples, name), "gsv_active_streams missing"
    assert total(samples, name) == 0


# ------------------------------------------------------------------------------ Serve's own
def test_serve_proxy_counts_http_requests(traffic):
    name = "ray_serve_num_http_requests_total"

    def ok(s):
        return total(s, name, application="gsv", status_code="200") >= PLAIN + STREAMED and \
            total(s, name, application="gsv", status_code="404") >= 1

    samples = wait_for(traffic, ok)
    assert total(samples, name, application="gsv", status_code="200") >= PLAIN + STREAMED
    assert total(samples, name, application="gsv", status_code="404") >= 1
    assert select(samples, "ray_serve_http_request_latency_ms_count", application="gsv")


def test_serve_replica_series_for_every_deployment(traffic):
    deployments = {"Ingress", "Frontend", "SpeakerCache", "GPT", "SoVITS", "Vocoder"}
    name = "ray_serve_deployment_replica_healthy"

    def seen(s):
        return {x[1].get("deployment") for x in select(s, name, application="gsv") if x[2] == 1}

    samples = wait_for(traffic, lambda s: deployments <= seen(s))
    assert deployments <= seen(samples)
    counted = {x[1].get("deployment") for x in select(samples, "ray_serve_deployment_request_counter_total",
                                                      application="gsv") if x[2] > 0}
    assert {"Ingress", "GPT", "SoVITS", "Vocoder"} <= counted


# ------------------------------------------------------------------------------ dashboard + docs
REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "ops" / "grafana-dashboard.json"
# Serve creates these series on the first event of their kind only (an exception in a replica,
# a multiplexed model evicted): a healthy short session may never export them.
ONLY_AFTER_RARE_EVENTS = {"ray_serve_deployment_error_counter_total",
                          "ray_serve_multiplexed_models_unload_counter_total"}


def defined_series() -> set[str]:
    """Every series name deployments/metrics.py registers."""
    source = (REPO / "deployments" / "metrics.py").read_text()
    return set(re.findall(r'"(gsv_[a-z_]+)"', source))


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    exprs += [v["definition"] for v in board["templating"]["list"] if v.get("definition")]
    return exprs


def test_dashboard_charts_every_gsv_series():
    used = " ".join(dashboard_exprs())
    missing = {name for name in defined_series() if f"ray_{name}" not in used}
    assert not missing, f"no dashboard panel for {sorted(missing)}"


def test_operations_doc_explains_every_gsv_series():
    doc = (REPO / "docs" / "OPERATIONS.md").read_text()
    missing = {name for name in defined_series() if name not in doc}
    assert not missing, f"docs/OPERATIONS.md does not describe {sorted(missing)}"


def test_every_series_the_dashboard_queries_is_exported(traffic):
    wanted = {name for expr in dashboard_exprs() for name in re.findall(r"\bray_[a-z0-9_]+", expr)}
    wanted -= ONLY_AFTER_RARE_EVENTS
    samples = wait_for(traffic, lambda s: wanted <= {x[0] for x in s})
    missing = wanted - {x[0] for x in samples}
    assert not missing, f"the dashboard queries series Ray does not export: {sorted(missing)}"
