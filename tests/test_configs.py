"""The shipped Serve configs are valid for Ray's own schema and name every deployment of the graph."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
STAGES = {"Ingress", "Frontend", "SpeakerCache", "GPT", "SoVITS", "Vocoder"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_against_ray_schema(path):
    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    app = schema.applications[0]
    assert app.import_path == "serve_app.graph:build_app"
    assert {d.name for d in app.deployments} == STAGES


def test_gpu_profile_packs_three_model_stages_on_one_gpu():
    config = yaml.safe_load((CONFIGS[0].parent / "gpu.yaml").read_text())
    gpus = {d["name"]: d["ray_actor_options"].get("num_gpus", 0) for d in config["applications"][0]["deployments"]}
    assert 0 < gpus["GPT"] + gpus["SoVITS"] + gpus["Vocoder"] <= 1.0


def test_settings_in_configs_are_known():
    from serve_app.settings import Settings

    for path in CONFIGS:
        Settings.from_args(yaml.safe_load(path.read_text())["applications"][0]["args"])


def test_model_precision_is_checked_when_settings_load():
    from serve_app.settings import Settings

    with pytest.raises(ValueError, match="dtype"):
        Settings.from_args({"dtype": "float8"})


def test_gpt_precision_defaults_to_the_model_stages_precision():
    from serve_app.settings import Settings

    assert Settings.from_args({"dtype": "float16"}).gpt_weights_dtype == "float16"
    assert Settings.from_args({"gpt_dtype": "bfloat16"}).gpt_weights_dtype == "bfloat16"


def test_a_gpu_profile_stage_on_a_cpu_runs_float32_not_float16():
    import torch

    from deployments.common import torch_dtype

    assert torch_dtype("float16", "cpu") == torch.float32
    assert torch_dtype("float16", "cuda") == torch.float16
    assert torch_dtype("bfloat16", "cpu") == torch.bfloat16
