"""Simulated multi-node GPU cluster on one machine: fractional GPU placement and autoscaling.

    .venv/bin/python scripts/autoscale_sim.py [--load-s 15] [--clients 4] [--spread] [--out result.json]

Starts `ray.cluster_utils.Cluster`: a head (CPUs only) and two worker nodes that each advertise one
*logical* GPU (nothing runs on a real GPU: the config says `device: cpu`). It deploys the GPU profile
(configs/gpu.yaml: GPT/SoVITS/Vocoder ask for 0.5/0.25/0.25 GPU) with the demo model, then:

1. placement: reads where every replica landed (Serve's own instance details) and each node's GPU
   accounting, so we can see one GPT + SoVITS + Vocoder set sharing one logical GPU;
2. autoscaling: GPT autoscales on ongoing requests (target 1, 1..2 replicas, short delays). A few
   HTTP clients keep requests in flight; we sample the replica count until a second GPT replica is
   running (it must land on the other GPU node, the first one is full), stop the load, and wait for
   the count to fall back to 1.

Prints one JSON object (and writes it to --out): timings, replica placements and replica counts over
time. tests/test_autoscaling.py runs this in a subprocess and asserts on that JSON.

Serve schedules replicas with SPREAD by default, which can split one set across GPU nodes; with
`RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY=1` in the controller's environment it packs them (best
fit), which is what lets three fractions share one GPU. This script sets it unless --spread.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

APP = "gsv"
GPU_STAGES = ("GPT", "SoVITS", "Vocoder")
SCALED = "GPT"

# Serve pushes autoscaling metrics every 10 s by default; these reach every process the cluster
# starts (raylets pass their environment on to workers), so they must be set before Cluster().
FAST_AUTOSCALING_ENV = {
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "OMP_NUM_THREADS": "1",
    "RAY_DEDUP_LOGS": "0",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sim_config(data_dir: str, port: int) -> dict[str, Any]:
    """configs/gpu.yaml with CPU compute, the demo model, tiny CPU shares and one autoscaled stage.
    GPU fractions stay as the profile has them: that is what we test."""
    config = copy.deepcopy(yaml.safe_load((REPO / "configs" / "gpu.yaml").read_text()))
    config["proxy_location"] = "HeadOnly"
    config["http_options"] = {"host": "127.0.0.1", "port": port, "request_timeout_s": 120}
    app = config["applications"][0]
    app["args"].update(data_dir=data_dir, device="cpu", dtype="float32",  # float16 is for GPUs
                       model={"model_id": "default", "gpt": "", "sovits": "", "hubert_dir": "", "bert_dir": ""},
                       require_auth=False)  # loopback-only simulation: no API keys
    for d in app["deployments"]:
        opts = d.setdefault("ray_actor_options", {})
        opts["num_cpus"] = 0.1  # logical shares only; three nodes on one 2-core machine
        d["graceful_shutdown_timeout_s"] = 5
        d["graceful_shutdown_wait_loop_s"] = 0.5
        d.pop("autoscaling_config", None)
        d["num_replicas"] = 1
        if d["name"] == SCALED:
            d.pop("num_replicas")
            d["autoscaling_config"] = {
                "min_replicas": 1, "max_replicas": 2,
                "target_ongoing_requests": 1,   # a couple of requests in flight is already "busy"
                "upscale_delay_s": 1, "downscale_delay_s": 5,
                "look_back_period_s": 2,        # average ongoing requests over 2 s, not 30
                "metrics_interval_s": 0.5,      # deprecated knob; must stay below look_back_period_s
            }
    return config


def replica_view(client) -> dict[str, list[dict[str, Any]]]:
    """deployment -> its replicas (state, node id, actor id), from Serve's instance details."""
    details = client.get_serve_details()
    deployments = details["applications"][APP]["deployments"]
    return {name: [{"state": r["state"], "node_id": r.get("node_id"), "replica_id": r["replica_id"]}
                   for r in d["replicas"]] for name, d in deployments.items()}


def running(view: dict[str, list[dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    return [r for r in view.get(name, []) if r["state"] == "RUNNING"]


def node_gpus() -> dict[str, dict[str, float]]:
    import ray
    from ray._private.state import available_resources_per_node

    available = available_resources_per_node()
    return {n["NodeID"]: {"total": n["Resources"].get("GPU", 0.0),
                          "available": available.get(n["NodeID"], {}).get("GPU", 0.0)}
            for n in ray.nodes() if n["Alive"]}


class Load:
    """`clients` threads posting short non-streamed requests until stopped."""

    def __init__(self, url: str, clients: int):
        self.url, self.stop = url, threading.Event()
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, i: int) -> None:
        import requests

        body = {"model": "tts-1", "input": "Scaling out under load.", "voice": "demo", "response_format": "pcm",
                "language": "en", "seed": i}
        while not self.stop.is_set():
            try:
                r = requests.post(self.url + "/v1/audio/speech", json=body, timeout=120)
                if r.status_code == 200:
                    self.ok += 1
                else:
                    self.failed += 1
                    self.errors.append(f"{r.status_code} {r.text[:200]}")
            except Exception as exc:  # noqa: BLE001 - counted and reported
                self.failed += 1
                self.errors.append(repr(exc)[:200])

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=150)


def measure(config: dict[str, Any], args: argparse.Namespace, result: dict[str, Any], mark) -> None:
    """Deploy, read placement, drive the load, watch GPT scale up and back down."""
    from ray.serve.context import _get_global_client

    from serve_app.cli import deploy_local

    url = deploy_local(config, timeout_s=180)
    mark("app_running")
    client = _get_global_client()
    view = replica_view(client)
    result["placement"] = {name: [r["node_id"] for r in running(view, name)] for name in view}
    result["node_gpus_after_deploy"] = node_gpus()

    # ---------------------------------------------------------------------- scale up
    load = Load(url, args.clients)
    samples: list[tuple[float, int, int]] = []  # (t, running GPT replicas, all GPT replicas)
    load_start = time.monotonic()
    load.start()
    try:
        while True:
            view = replica_view(client)
            n_run, n_all = len(running(view, SCALED)), len(view.get(SCALED, []))
            elapsed = time.monotonic() - load_start
            samples.append((round(elapsed, 2), n_run, n_all))
            if n_all >= 2 and "upscale_decided" not in result["timings_s"]:
                mark("upscale_decided")
            if n_run >= 2 and "upscale_running" not in result["timings_s"]:
                mark("upscale_running")
                result["placement_scaled"] = {SCALED: [r["node_id"] for r in running(view, SCALED)]}
                result["node_gpus_scaled"] = node_gpus()
            if (elapsed >= args.load_s and n_run >= 2) or elapsed >= args.max_load_s:
                break
            time.sleep(0.5)
    finally:
        load.finish()
    mark("load_stopped")
    result["load"] = {"seconds": round(time.monotonic() - load_start, 1), "clients": args.clients,
                      "ok": load.ok, "failed": load.failed, "errors": load.errors[:5]}

    # -------------------------------------------------------------------- scale down
    down_start = time.monotonic()
    while time.monotonic() - down_start < args.down_timeout_s:
        view = replica_view(client)
        n_run, n_all = len(running(view, SCALED)), len(view.get(SCALED, []))
        samples.append((round(time.monotonic() - load_start, 2), n_run, n_all))
        if n_all == 1 and n_run == 1:
            mark("downscaled")
            break
        time.sleep(0.5)
    result["gpt_replicas_over_time"] = samples
    result["max_gpt_replicas_running"] = max(s[1] for s in samples)
    result["final_gpt_replicas"] = samples[-1][2]
    result["node_gpus_final"] = node_gpus()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-s", type=float, default=15, help="minimum seconds of load")
    parser.add_argument("--max-load-s", type=float, default=60, help="stop the load by then even without a 2nd replica")
    parser.add_argument("--down-timeout-s", type=float, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--spread", action="store_true", help="keep Serve's default SPREAD replica scheduling")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    os.environ.update(FAST_AUTOSCALING_ENV)
    if not args.spread:
        os.environ["RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY"] = "1"
    # Cluster() records its address in <RAY_TMPDIR>/ray/ray_current_cluster, and a plain `ray.init()`
    # anywhere on this machine would then join our cluster instead of starting its own: keep every
    # file of this cluster in a private folder.
    private_tmp = None
    if "RAY_TMPDIR" not in os.environ:
        private_tmp = tempfile.mkdtemp(prefix="gsvas", dir="/tmp")
        os.environ["RAY_TMPDIR"] = private_tmp
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on `kill`
    t0 = time.monotonic()
    result: dict[str, Any] = {"scheduling": "spread" if args.spread else "pack", "timings_s": {}}

    def mark(name: str) -> None:
        result["timings_s"][name] = round(time.monotonic() - t0, 2)

    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from serve_app.cli import prepare_models

    data_dir = tempfile.mkdtemp(prefix="gsv-autoscale-")
    cluster = None
    try:
        config = sim_config(data_dir, free_port())
        prepare_models(config)  # demo model + demo voice, before any replica starts
        mark("demo_model")
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0,
                                                                "include_dashboard": False})
        gpu_nodes = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
        ray.init(address=cluster.address, logging_level="WARNING")
        cluster.wait_for_nodes()
        result["head_node_id"] = cluster.head_node.node_id
        result["gpu_node_ids"] = sorted(n.node_id for n in gpu_nodes)
        mark("cluster_up")
        measure(config, args, result, mark)
    finally:
        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        mark("shutdown")
        shutil.rmtree(data_dir, ignore_errors=True)
        if private_tmp:
            shutil.rmtree(private_tmp, ignore_errors=True)
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(text)
    print("RESULT " + text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
