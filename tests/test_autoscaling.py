"""GPU profile on a simulated 3-node cluster: fractional GPU packing and GPT autoscaling.

scripts/autoscale_sim.py starts `ray.cluster_utils.Cluster` (a CPU-only head, two workers with one
logical GPU each), deploys configs/gpu.yaml with the demo model on CPU (GPT/SoVITS/Vocoder keep their
0.5/0.25/0.25 GPU shares) and drives GPT autoscaling with a few HTTP clients. It runs in its own
process (and its own RAY_TMPDIR) because this pytest process may already hold a Ray instance.
One run (~1.5 min here, bounded by SIM_TIMEOUT_S) feeds every test below.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(330)]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "autoscale_sim.py"
SIM_TIMEOUT_S = 240
GPU_STAGES = ("GPT", "SoVITS", "Vocoder")


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> dict:
    out_dir = tmp_path_factory.mktemp("autoscale")
    log_path, result_path = out_dir / "sim.log", out_dir / "result.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    env["PYTHONPATH"] = str(REPO)
    started = time.monotonic()
    with open(log_path, "wb") as log:
        # its own session: on timeout we stop the script and every Ray process it started, nothing else
        proc = subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(result_path)], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=SIM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the script shuts its cluster down on SIGTERM
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    elapsed = time.monotonic() - started
    tail = log_path.read_text(errors="replace")[-3000:]
    assert result_path.exists(), f"simulation gave no result after {elapsed:.0f} s (rc={proc.returncode}):\n{tail}"
    result = json.loads(result_path.read_text())
    result["wall_s"] = elapsed
    return result


def gpu_node_of_set(sim: dict) -> str:
    nodes = {node for stage in GPU_STAGES for node in sim["placement"][stage]}
    assert len(nodes) == 1, f"GPT/SoVITS/Vocoder split over nodes: {sim['placement']}"
    return nodes.pop()


def test_one_set_of_model_stages_shares_one_logical_gpu(sim):
    for stage in GPU_STAGES:
        assert len(sim["placement"][stage]) == 1, sim["placement"]
    node = gpu_node_of_set(sim)
    assert node in sim["gpu_node_ids"] and node != sim["head_node_id"]
    # 0.5 + 0.25 + 0.25 of that node's one GPU are taken; the other GPU node is untouched
    assert sim["node_gpus_after_deploy"][node] == {"total": 1.0, "available": 0.0}
    (other,) = set(sim["gpu_node_ids"]) - {node}
    assert sim["node_gpus_after_deploy"][other] == {"total": 1.0, "available": 1.0}


def test_gpt_scales_up_under_load(sim):
    assert sim["max_gpt_replicas_running"] == 2, sim["gpt_replicas_over_time"]
    times = sim["timings_s"]
    # upscale_delay_s 1 + a 2 s look-back: ~5 s here, 15 s with the machine at load 50; Serve's
    # defaults (30 s delay, 30 s look-back, 10 s metric pushes) could not decide within 30 s
    assert times["upscale_decided"] - times["app_running"] < 30, times


def test_extra_gpt_replica_takes_half_of_the_other_gpu(sim):
    first = gpu_node_of_set(sim)
    nodes = sim["placement_scaled"]["GPT"]
    assert sorted(nodes) == sorted(sim["gpu_node_ids"]), nodes
    (other,) = set(sim["gpu_node_ids"]) - {first}
    assert sim["node_gpus_scaled"][other] == {"total": 1.0, "available": 0.5}


def test_scales_back_down_after_the_load_stops(sim):
    times = sim["timings_s"]
    assert "downscaled" in times, sim["gpt_replicas_over_time"][-10:]
    assert sim["final_gpt_replicas"] == 1
    assert times["downscaled"] - times["load_stopped"] < 30, times  # downscale_delay_s 5 + replica stop
    gpu_node = gpu_node_of_set(sim)
    assert sim["node_gpus_final"][gpu_node]["available"] == 0.0  # the original set stays where it was


def test_no_request_failed_while_scaling(sim):
    load = sim["load"]
    assert load["ok"] > 0 and load["failed"] == 0, load


def test_simulation_stays_within_its_budget(sim):
    assert sim["wall_s"] < SIM_TIMEOUT_S
