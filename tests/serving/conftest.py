"""Fixtures for the serving tests: the demo model built once per session, an in-process app."""
from __future__ import annotations

import io
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from deployments.voice_store import VoiceStore
from models import audio
from models.demo import build_demo_assets
from models.pipeline import ModelPaths, Pipeline, load_reference_wav
from serve_app.settings import Limits, Settings


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory) -> dict:
    torch.set_num_threads(1)
    return build_demo_assets(tmp_path_factory.mktemp("demo-model"))


@pytest.fixture(scope="session")
def demo_paths(demo_assets) -> ModelPaths:
    return ModelPaths(gpt=str(demo_assets["gpt"]), sovits=str(demo_assets["sovits"]),
                      hubert_dir=str(demo_assets["hubert_dir"]), bert_dir=str(demo_assets["bert_dir"]))


@pytest.fixture(scope="session")
def pipeline(demo_paths) -> Pipeline:
    return Pipeline(demo_paths)


def register_demo_voice(store: VoiceStore, demo_assets: dict, model_id: str = "default") -> None:
    wav = load_reference_wav(demo_assets["reference_wav"])
    store.create(name="demo", voice_id="demo", transcript=demo_assets["reference_text"],
                 language=demo_assets["reference_language"], model_id=model_id, samples=wav,
                 sample_rate=audio.SAMPLE_RATE)


def wav_bytes(seconds: float, sr: int = 32000, freq: float = 220.0, amplitude: float = 0.3,
              fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    tone = amplitude * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    buf = io.BytesIO()
    sf.write(buf, tone.astype(np.float32), sr, format=fmt)
    return buf.getvalue()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path), limits=Limits(max_text_chars=300))


@pytest.fixture
def client(settings, pipeline, demo_assets):
    from starlette.testclient import TestClient

    from serve_app.local import create_local_app

    store = VoiceStore(settings.data_dir)
    register_demo_voice(store, demo_assets)
    app = create_local_app(pipeline, settings)
    with TestClient(app) as c:
        yield c


ADMIN_KEY = "test-admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """Deploy configs/cpu.yaml (demo model, temp data dir) exactly as `gsv-serve serve` does."""
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api

    from serve_app.cli import deploy_local

    data_dir = tmp_path_factory.mktemp("served-data")
    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "cpu.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=free_port())
    config["applications"][0]["args"]["data_dir"] = str(data_dir)
    config["applications"][0]["args"]["admin_api_key"] = ADMIN_KEY
    # replica logs stay in Ray's session folder (/tmp/ray/session_latest/logs/serve), not the test output
    url = deploy_local(config, num_cpus=8, timeout_s=240, env_vars={"OMP_NUM_THREADS": "1"}, log_to_driver=False)
    client = serve_api.serve_start(http_options=config["http_options"])
    yield {"url": url, "data_dir": data_dir, "config": config, "client": client}
    serve.shutdown()
    ray.shutdown()
