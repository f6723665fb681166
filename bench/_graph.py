"""Shared by the HTTP benchmarks: start the Serve graph on the demo model (or real checkpoints)."""
from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_graph(data_dir: str | None = None, model: dict | None = None, num_cpus: float = 8) -> tuple[str, dict]:
    """Deploy configs/cpu.yaml on a local Ray at 127.0.0.1; return (url, config)."""
    from serve_app.cli import deploy_local, prepare_models

    config = yaml.safe_load((REPO / "configs" / "cpu.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=free_port())
    args = config["applications"][0]["args"]
    args["data_dir"] = data_dir or tempfile.mkdtemp(prefix="gsv-bench-")
    if model:
        args["model"].update(model)
    prepare_models(config)
    return deploy_local(config, num_cpus=num_cpus, env_vars={"OMP_NUM_THREADS": "1"}), config


def stop_graph() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
