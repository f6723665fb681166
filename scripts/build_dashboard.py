"""Write ops/grafana-dashboard.json: one Grafana dashboard for gsv-serve on Ray Serve.

    .venv/bin/python scripts/build_dashboard.py [--check]

The dashboard is generated so its ~30 panels stay consistent (datasource, label filters, quantile
queries); edit the panel list below and re-run. `--check` exits 1 when the JSON on disk differs.
Every series name used here is checked against a live scrape by tests/serving/test_metrics.py.

Names on the wire: Ray exports metrics recorded in replicas with a `ray_` prefix and adds the labels
`application`, `deployment` and `replica` to every gsv_* series (deployments/metrics.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "ops" / "grafana-dashboard.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
APP = 'application=~"$application"'
RATE = "[$__rate_interval]"


def quantiles(metric: str, by: str = "", where: str = APP, qs: tuple[float, ...] = (0.5, 0.95),
              legend: str = "") -> list[dict]:
    """histogram_quantile targets for p50/p95 of a Ray histogram (`metric` without _bucket)."""
    group = f"le, {by}" if by else "le"
    targets = []
    for q in qs:
        label = f"p{int(q * 100)}"
        targets.append({
            "expr": f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{where}}}{RATE})))",
            "legendFormat": f"{legend}{label}" if not by else f"{legend}{{{{{by}}}}} {label}",
        })
    return targets


class Dashboard:
    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.y = 0
        self.x = 0
        self.row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "id": len(self.panels) + 1})
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_height
            self.x, self.row_height = 0, 0

    def panel(self, title: str, targets: list[dict], description: str, unit: str = "short", width: int = 8,
              height: int = 8, kind: str = "timeseries", bars: bool = False, thresholds: list[dict] | None = None,
              instant: bool = False) -> None:
        if self.x + width > 24:
            self._newline()
        refs = "ABCDEFGH"
        defaults: dict = {"unit": unit}
        if kind == "timeseries":
            defaults["custom"] = {"drawStyle": "bars" if bars else "line", "fillOpacity": 60 if bars else 10,
                                  "lineWidth": 1, "showPoints": "never", "spanNulls": True}
        if thresholds:
            defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
            if kind == "timeseries":
                defaults["custom"]["thresholdsStyle"] = {"mode": "line"}
        panel = {
            "id": len(self.panels) + 1, "type": kind, "title": title, "description": description,
            "datasource": DS, "gridPos": {"h": height, "w": width, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "targets": [{"refId": refs[i], "datasource": DS, "expr": t["expr"],
                         "legendFormat": t.get("legendFormat", ""), "range": not instant, "instant": instant,
                         **({"format": "table"} if kind == "table" else {})} for i, t in enumerate(targets)],
        }
        if kind == "timeseries":
            panel["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                                "tooltip": {"mode": "multi", "sort": "desc"}}
        elif kind == "stat":
            panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                                "colorMode": "value", "graphMode": "area", "textMode": "auto"}
        elif kind == "table":
            panel["options"] = {"showHeader": True}
            panel["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True}}}]
        self.panels.append(panel)
        self.x += width
        self.row_height = max(self.row_height, height)


def build() -> dict:
    d = Dashboard()

    # ------------------------------------------------------------------------------ traffic
    d.row("Traffic and errors")
    d.panel("Requests / s by route and status", [
        {"expr": f"sum by (route, status) (rate(ray_gsv_requests_total{{{APP}}}{RATE}))",
         "legendFormat": "{{route}} {{status}}"}],
        "gsv_requests_total: every HTTP request the ingress answered, by route template and status.", "reqps")
    d.panel("Errors / s by code", [
        {"expr": f'sum by (status, code) (rate(ray_gsv_requests_total{{{APP}, code!="ok"}}{RATE}))',
         "legendFormat": "{{status}} {{code}}"}],
        "gsv_requests_total with code != ok: the stable error code of each 4xx/5xx (see the API's error body).",
        "reqps")
    d.panel("Active audio streams", [
        {"expr": f"sum(ray_gsv_active_streams{{{APP}}})", "legendFormat": "streams"},
        {"expr": "sum(ray_serve_num_ongoing_http_requests)", "legendFormat": "HTTP requests in proxies"}],
        "gsv_active_streams: streamed audio responses in flight (all ingress replicas); "
        "ray_serve_num_ongoing_http_requests: requests the Serve HTTP proxies hold.")
    d.panel("Serve proxy: requests / s by status", [
        {"expr": f"sum by (status_code) (rate(ray_serve_num_http_requests_total{{{APP}}}{RATE}))",
         "legendFormat": "{{status_code}}"},
        {"expr": f"sum by (error_code) (rate(ray_serve_num_http_error_requests_total{{{APP}}}{RATE}))",
         "legendFormat": "error {{error_code}}"}],
        "Ray Serve's HTTP proxy counters (independent of the app's own counters).", "reqps", width=12)
    d.panel("Serve proxy: end-to-end HTTP latency", quantiles("ray_serve_http_request_latency_ms"),
            "ray_serve_http_request_latency_ms: proxy-measured latency; for streams this is the whole stream.",
            "ms", width=12)

    # ------------------------------------------------------------------------------ speech QoS
    d.row("Speech: time to first audio and real-time factor")
    model = f'{APP}, model=~"$model"'
    d.panel("Time to first audio (p50 / p95)", quantiles("ray_gsv_ttfa_seconds", where=model),
            "gsv_ttfa_seconds: start of the synthesis (request validated) to the first audio of a streamed response.", "s")
    d.panel("Time to first audio p95 by format", quantiles("ray_gsv_ttfa_seconds", by="format", where=model,
                                                           qs=(0.95,)),
            "gsv_ttfa_seconds by response format (wav, pcm, mp3, opus, ...).", "s")
    d.panel("Real-time factor (p50 / p95)", quantiles("ray_gsv_rtf", where=model),
            "gsv_rtf: wall seconds per second of audio produced; above 1 a stream cannot keep up with playback.",
            "none", thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}])

    # ------------------------------------------------------------------------------ stages
    d.row("Stages")
    d.panel("Stage latency p50", quantiles("ray_gsv_stage_latency_seconds", by="stage", qs=(0.5,)),
            "gsv_stage_latency_seconds: one call into a stage (frontend batch, speaker-cache miss, GPT sentence, "
            "SoVITS batch, vocoder batch).", "s")
    d.panel("Stage latency p95", quantiles("ray_gsv_stage_latency_seconds", by="stage", qs=(0.95,)),
            "As left, 95th percentile.", "s")
    d.panel("Stage calls / s", [
        {"expr": f"sum by (stage) (rate(ray_gsv_stage_latency_seconds_count{{{APP}}}{RATE}))",
         "legendFormat": "{{stage}}"}], "Observations of gsv_stage_latency_seconds per second.", "ops")
    d.panel("Serve: replica processing latency p95 by deployment",
            quantiles("ray_serve_deployment_processing_latency_ms", by="deployment", qs=(0.95,)),
            "ray_serve_deployment_processing_latency_ms: time a replica spends on one request (Serve's view).",
            "ms", width=12)
    d.panel("Serve: replica exceptions / s", [
        {"expr": f"sum by (deployment) (rate(ray_serve_deployment_error_counter_total{{{APP}}}{RATE}))",
         "legendFormat": "{{deployment}}"}],
        "ray_serve_deployment_error_counter: exceptions raised in replicas (stage errors travel as values "
        "and are not counted here).", "ops", width=12)

    # ------------------------------------------------------------------------------ batching
    d.row("Batching and queues")
    d.panel("Batch size (p50 / p95) by stage", quantiles("ray_gsv_batch_size", by="stage"),
            "gsv_batch_size: items per batched call (frontend/SoVITS/vocoder @serve.batch) and rows per GPT "
            "decode step.")
    d.panel("Batches / s by stage", [
        {"expr": f"sum by (stage) (rate(ray_gsv_batch_size_count{{{APP}}}{RATE}))", "legendFormat": "{{stage}}"}],
        "Batched calls (GPT: decode steps) per second.", "ops")
    d.panel("GPT queue depth", [
        {"expr": f"sum by (stage, replica) (ray_gsv_queue_depth{{{APP}}})", "legendFormat": "{{stage}} {{replica}}"}],
        "gsv_queue_depth: requests waiting for a KV-cache slot; past max_queued the GPT answers 503.")
    d.panel("GPT active rows", [
        {"expr": f"sum by (stage, replica) (ray_gsv_active_rows{{{APP}}})", "legendFormat": "{{stage}} {{replica}}"}],
        "gsv_active_rows: sequences decoding together in the continuous batch (<= gpt_max_batch per model).")
    d.panel("Serve: requests queued in handles", [
        {"expr": f"sum by (deployment) (ray_serve_deployment_queued_queries{{{APP}}})",
         "legendFormat": "{{deployment}}"}],
        "ray_serve_deployment_queued_queries: requests a caller holds because every replica is at "
        "max_ongoing_requests.")
    d.panel("Serve: ongoing requests per deployment", [
        {"expr": f"sum by (deployment) (ray_serve_replica_processing_queries{{{APP}}})",
         "legendFormat": "{{deployment}}"}],
        "ray_serve_replica_processing_queries summed over replicas: what autoscaling divides by "
        "target_ongoing_requests.")

    # ------------------------------------------------------------------------------ replicas
    d.row("Replicas and autoscaling")
    d.panel("Healthy replicas by deployment", [
        {"expr": f"sum by (deployment) (ray_serve_deployment_replica_healthy{{{APP}}})",
         "legendFormat": "{{deployment}}"}], "ray_serve_deployment_replica_healthy summed per deployment.")
    d.panel("Autoscaling: target and raw decision", [
        {"expr": f"max by (deployment) (ray_serve_autoscaling_target_replicas{{{APP}}})",
         "legendFormat": "{{deployment}} target"},
        {"expr": f"max by (deployment) (ray_serve_autoscaling_desired_replicas{{{APP}}})",
         "legendFormat": "{{deployment}} decision"}],
        "target: replicas the controller aims for (after min/max and delays); decision: the policy's raw "
        "output before bounds.")
    d.panel("Autoscaling: requests seen by the policy", [
        {"expr": f"max by (deployment) (ray_serve_autoscaling_total_requests{{{APP}}})",
         "legendFormat": "{{deployment}}"}],
        "ray_serve_autoscaling_total_requests: ongoing + queued requests averaged over look_back_period_s.")

    # ------------------------------------------------------------------------------ models and cache
    d.row("Models and speaker cache")
    hit = f'sum(increase(ray_gsv_speaker_cache_events_total{{{APP}, event="hit"}}[$__range]))'
    both = f'sum(increase(ray_gsv_speaker_cache_events_total{{{APP}, event=~"hit|miss"}}[$__range]))'
    d.panel("Speaker cache hit ratio (range)", [{"expr": f"{hit} / {both}", "legendFormat": "hit ratio"}],
            "Hits / (hits + misses) over the dashboard range; a miss runs HuBERT + the reference encoder.",
            "percentunit", width=6, kind="stat",
            thresholds=[{"color": "red", "value": None}, {"color": "yellow", "value": 0.5},
                        {"color": "green", "value": 0.9}])
    d.panel("Speaker cache events / s", [
        {"expr": f"sum by (event) (rate(ray_gsv_speaker_cache_events_total{{{APP}}}{RATE}))",
         "legendFormat": "{{event}}"}],
        "gsv_speaker_cache_events_total: hit, miss, eviction (LRU beyond max_entries or idle past ttl_s).",
        "ops", width=9)
    d.panel("Model loads, unloads and swaps", [
        {"expr": f"sum by (stage, event) (increase(ray_gsv_model_events_total{{{APP}}}{RATE}))",
         "legendFormat": "{{stage}} {{event}}"}],
        "gsv_model_events_total: a model stage loaded/unloaded a version (multiplexing LRU), or the ingress "
        "activated a new version (swap).", width=9, bars=True)
    d.panel("Model events in range by version", [
        {"expr": f"sum by (model, stage, event) (increase(ray_gsv_model_events_total{{{APP}}}[$__range])) > 0"}],
        "Which model_id@version each stage loaded or unloaded, and swaps, over the dashboard range.",
        width=12, kind="table", instant=True)
    d.panel("Serve: multiplexed model loads / unloads", [
        {"expr": f"sum by (deployment) (increase(ray_serve_multiplexed_models_load_counter_total{{{APP}}}{RATE}))",
         "legendFormat": "{{deployment}} load"},
        {"expr": f"sum by (deployment) (increase(ray_serve_multiplexed_models_unload_counter_total{{{APP}}}{RATE}))",
         "legendFormat": "{{deployment}} unload"}],
        "Serve's own multiplexing counters (a load here = a version loaded into a replica).", width=12, bars=True)

    return {
        "title": "gsv-serve",
        "uid": "gsv-serve",
        "description": "GPT-SoVITS on Ray Serve: traffic, TTFA/RTF, stages, batching, replicas, models, cache.",
        "tags": ["gsv-serve", "ray-serve", "tts"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "annotations": {"list": [{
            "name": "model swaps", "datasource": DS, "enable": True, "iconColor": "orange",
            "expr": f'sum by (model) (increase(ray_gsv_model_events_total{{{APP}, event="swap"}}[1m])) > 0',
            "titleFormat": "swap to {{model}}", "step": "30s"}]},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1},
            {"name": "application", "label": "Serve application", "type": "query", "datasource": DS,
             "query": {"query": "label_values(ray_serve_deployment_replica_healthy, application)", "refId": "app"},
             "definition": "label_values(ray_serve_deployment_replica_healthy, application)",
             "current": {"text": "gsv", "value": "gsv"}, "includeAll": True, "allValue": ".*", "multi": False,
             "refresh": 2, "sort": 1, "hide": 0},
            {"name": "model", "label": "model version", "type": "query", "datasource": DS,
             "query": {"query": "label_values(ray_gsv_rtf_bucket, model)", "refId": "model"},
             "definition": "label_values(ray_gsv_rtf_bucket, model)",
             "current": {"text": "All", "value": "$__all"}, "includeAll": True, "allValue": ".*", "multi": True,
             "refresh": 2, "sort": 1, "hide": 0},
        ]},
        "panels": d.panels,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the file on disk is not up to date")
    args = parser.parse_args()
    text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
    if args.check:
        current = OUT.read_text("utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date: run scripts/build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, "utf-8")
    print(f"wrote {OUT} ({len(build()['panels'])} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
