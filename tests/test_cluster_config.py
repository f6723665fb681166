"""cluster.yaml passes Ray's own cluster-launcher validation; k8s/rayservice.yaml embeds the GPU profile.

Nothing here talks to a cloud: `prepare_config` + `validate_config` are the offline half of what
`ray up` does before it calls the provider (ray-schema.json, node types, worker bounds, docker).
"""
from __future__ import annotations

import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

ROOT = Path(__file__).resolve().parents[1]
GPU_CONFIG = yaml.safe_load((ROOT / "configs" / "gpu.yaml").read_text())
GPU_APP = GPU_CONFIG["applications"][0]
GPU_STAGES = {"GPT", "SoVITS", "Vocoder"}


def cluster_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def prepared() -> dict:
    config = prepare_config(cluster_config())
    validate_config(config)
    return config


def rayservice() -> dict:
    docs = [d for d in yaml.safe_load_all((ROOT / "k8s" / "rayservice.yaml").read_text()) if d]
    return next(d for d in docs if d["kind"] == "RayService")


def gpu_set(deployments: list[dict]) -> tuple[float, float]:
    """(CPUs, GPUs) one replica of each GPU stage asks for."""
    opts = [d["ray_actor_options"] for d in deployments if d["name"] in GPU_STAGES]
    return sum(o.get("num_cpus", 1) for o in opts), sum(o.get("num_gpus", 0) for o in opts)


# ------------------------------------------------------------------------------ cluster.yaml
def test_cluster_yaml_passes_ray_validation():
    config = prepared()
    assert config["head_node_type"] in config["available_node_types"]


def test_ray_validation_is_strict_enough_to_catch_a_typo():
    broken = cluster_config()
    broken["available_node_types"]["gpu_worker"]["resource"] = broken["available_node_types"]["gpu_worker"].pop(
        "resources")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_gpu_worker_fits_one_set_of_gpu_stages():
    cpus, gpus = gpu_set(GPU_APP["deployments"])
    workers = [t for t in prepared()["available_node_types"].values() if t["resources"].get("GPU", 0) > 0]
    assert workers, "no node type advertises a GPU"
    for node_type in workers:
        assert node_type["resources"]["GPU"] >= gpus
        assert node_type["resources"]["CPU"] >= cpus
        assert node_type["max_workers"] >= node_type.get("min_workers", 0) >= 1


def test_setup_installs_the_synced_checkout_with_the_gpu_extra_under_the_lock():
    config = prepared()
    mounts = {remote: (ROOT / local).resolve() for remote, local in config["file_mounts"].items()}
    assert ROOT.resolve() in mounts.values(), "the repository checkout is not synced to the nodes"
    checkout = next(remote for remote, local in mounts.items() if local == ROOT.resolve())
    installs = [shlex.split(c) for c in config["setup_commands"] if c.startswith("pip install")]
    assert any(any(arg.endswith("gsv-serve[gpu]") for arg in cmd) for cmd in installs)
    assert any(f"{checkout}/requirements.lock" in cmd for cmd in installs)


def test_shared_data_dir_is_mounted_into_every_container():
    data_dir = GPU_APP["args"]["data_dir"]
    run_options = " ".join(prepared()["docker"]["run_options"])
    assert f"-v {data_dir}:{data_dir}" in run_options
    assert any(data_dir in c for c in cluster_config()["initialization_commands"])


def test_start_commands_start_a_head_and_join_workers_to_it():
    config = prepared()
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])


def test_dashboard_is_not_exposed_on_the_network():
    head = " ".join(prepared()["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head


# ------------------------------------------------------------------------------ k8s/rayservice.yaml
def test_rayservice_serve_config_validates_and_matches_the_gpu_profile():
    embedded = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(embedded)
    app = schema.applications[0]
    assert app.import_path == GPU_APP["import_path"]
    assert {d.name for d in app.deployments} == {d["name"] for d in GPU_APP["deployments"]}
    assert embedded == GPU_CONFIG, "k8s/rayservice.yaml serveConfigV2 drifted from configs/gpu.yaml"


def test_rayservice_gpu_group_fits_one_set_of_gpu_stages():
    cpus, gpus = gpu_set(GPU_APP["deployments"])
    groups = rayservice()["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    gpu_groups = [g for g in groups if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu_groups
    for group in gpu_groups:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= gpus
        assert float(limits["cpu"]) >= cpus
        assert group["maxReplicas"] >= group["minReplicas"] >= 1


def test_rayservice_mounts_data_dir_in_every_pod():
    data_dir = GPU_APP["args"]["data_dir"]
    cluster = rayservice()["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        mounts = pod["spec"]["containers"][0]["volumeMounts"]
        assert data_dir in {m["mountPath"] for m in mounts}
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["spec"]["volumes"]}
        assert all(claims.get(m["name"]) for m in mounts if m["mountPath"] == data_dir)


def test_rayservice_ray_version_matches_the_installed_ray():
    import ray

    assert rayservice()["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
