"""Which model files the server loads: the configured checkpoints, or the built-in demo model.

The demo model is tiny and has random weights (it produces noise, clearly labelled as such); it is
generated on first start into `<data_dir>/demo-model/` so `make serve` works offline, and a demo
voice (`voice=demo`) is registered on it.
"""
from __future__ import annotations

import logging
from pathlib import Path

from deployments.model_registry import ModelRef, ModelRegistry
from deployments.voice_store import VoiceStore
from models.demo import build_demo_assets
from models.pipeline import ModelPaths, load_reference_wav
from models import audio
from serve_app.settings import Settings

log = logging.getLogger("gsv.models")

DEMO_VOICE_ID = "demo"


class ModelFilesError(ValueError):
    pass


def demo_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "demo-model"


def resolve_model_paths(settings: Settings) -> ModelPaths:
    spec = settings.model
    if spec.is_demo:
        assets = build_demo_assets(demo_dir(settings))
        return ModelPaths(gpt=str(assets["gpt"]), sovits=str(assets["sovits"]),
                          hubert_dir=str(assets["hubert_dir"]), bert_dir=str(assets["bert_dir"]))
    missing = [f"{name}={value!r}" for name, value in
               (("gpt", spec.gpt), ("sovits", spec.sovits), ("hubert_dir", spec.hubert_dir),
                ("bert_dir", spec.bert_dir)) if not value or not Path(value).exists()]
    if missing:
        raise ModelFilesError("model files not found: " + ", ".join(missing)
                              + " (set model.gpt, model.sovits, model.hubert_dir, model.bert_dir)")
    return ModelPaths(gpt=str(Path(spec.gpt).resolve()), sovits=str(Path(spec.sovits).resolve()),
                      hubert_dir=str(Path(spec.hubert_dir).resolve()), bert_dir=str(Path(spec.bert_dir).resolve()))


def register_declared_model(settings: Settings, paths: ModelPaths) -> ModelRef:
    """The model named in the Serve config becomes (or stays) a registry entry; see
    `ModelRegistry.register(declared=True)` for how it interacts with admin swaps."""
    return ModelRegistry(settings.data_dir).register(settings.model.model_id, paths, declared="args",
                                                     demo=settings.model.is_demo,
                                                     tag="demo" if settings.model.is_demo else "")


def ensure_demo_voice(settings: Settings) -> None:
    """On the demo model, register the built-in `demo` voice (a synthetic reference clip) once."""
    if not settings.model.is_demo:
        return  # a synthetic tone makes no sense as a reference for a real voice model
    store = VoiceStore(settings.data_dir)
    if store.get(DEMO_VOICE_ID) is not None:
        return
    assets = build_demo_assets(demo_dir(settings))
    wav = load_reference_wav(assets["reference_wav"])
    store.create(name=DEMO_VOICE_ID, voice_id=DEMO_VOICE_ID, transcript=assets["reference_text"],
                 language=assets["reference_language"], model_id=settings.model.model_id,
                 samples=wav, sample_rate=audio.SAMPLE_RATE)
    log.info("registered the demo voice %r", DEMO_VOICE_ID)
