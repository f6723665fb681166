"""Model version swaps: validate, load and warm the new version beside the old, then switch.

    validate files -> register (inactive) -> every model stage loads it (warm) -> activate

Until the last step nothing changes for traffic; a failure at any step leaves the old version
serving and answers with a clear error. After the switch, requests in flight keep the version
they started with (their `model_id@version` key), and the old version is unloaded by each
replica's LRU once newer versions push it out. Voice prompts are cached per version, so the new
SoVITS recomputes them from the stored reference audio on first use.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Protocol

from deployments import metrics
from deployments.model_registry import ModelRef, ModelRegistry
from models.checkpoints import CheckpointError, UnsupportedVersionError, load_gpt_checkpoint, load_sovits_checkpoint
from models.pipeline import ModelPaths
from serve_app.errors import ApiError
from serve_app.settings import Settings

log = logging.getLogger("gsv.models")


class Warmable(Protocol):
    async def warm(self, model_key: str) -> None: ...


class ModelAdmin:
    def __init__(self, registry: ModelRegistry, stages: Warmable, settings: Settings):
        self.registry, self.stages, self.settings = registry, stages, settings
        self.lock = asyncio.Lock()  # one swap at a time

    def confine(self, path: str, param: str) -> str:
        """A checkpoint path from a request: relative to (and never outside) `models_dir`."""
        root = Path(self.settings.models_dir).resolve()
        if "\x00" in path:
            raise ApiError(400, "path_not_allowed", f"{param} must be a plain path inside the models folder", param)
        candidate = Path(path)
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
        if not resolved.is_relative_to(root):
            raise ApiError(400, "path_not_allowed", f"{param} must be inside the models folder", param)
        if not resolved.is_file():
            raise ApiError(400, "file_not_found", f"{param}: no such file in the models folder", param)
        return str(resolved)

    async def swap(self, model_id: str, gpt: str, sovits: str, tag: str = "") -> ModelRef:
        paths = self._paths(model_id, self.confine(gpt, "gpt"), self.confine(sovits, "sovits"))
        return await self._install(model_id, paths, tag=tag, declared=False)

    async def apply_declared(self, models: dict[str, dict[str, Any]]) -> None:
        """Serve-config models (trusted operator input, not confined to models_dir)."""
        for model_id, spec in models.items():
            paths = self._paths(model_id, str(spec["gpt"]), str(spec["sovits"]),
                                spec.get("hubert_dir"), spec.get("bert_dir"))
            await self._install(model_id, paths, tag=str(spec.get("tag", "")), declared=True)

    # ------------------------------------------------------------------------------------
    def _paths(self, model_id: str, gpt: str, sovits: str, hubert_dir: str | None = None,
               bert_dir: str | None = None) -> ModelPaths:
        base = self.registry.active(model_id) or self.registry.active(self.settings.model.model_id)
        if base is None and not (hubert_dir and bert_dir):
            raise ApiError(400, "missing_shared_models", "no HuBERT/BERT folders known for this model")
        return ModelPaths(gpt=gpt, sovits=sovits, hubert_dir=hubert_dir or base.paths.hubert_dir,
                          bert_dir=bert_dir or base.paths.bert_dir)

    async def _install(self, model_id: str, paths: ModelPaths, tag: str, declared: bool) -> ModelRef:
        async with self.lock:
            await asyncio.to_thread(_validate, paths)
            version = await asyncio.to_thread(paths.version)
            ref = self.registry.register(model_id, paths, version=version, tag=tag, activate=False)
            try:
                await self.stages.warm(ref.key)
            except ApiError:
                raise
            except Exception as exc:  # noqa: BLE001 - the old version keeps serving
                log.exception("warming %s failed", ref.key)
                raise ApiError(503, "warm_failed", f"the new version could not be loaded: {exc}") from None
            if declared:
                ref = self.registry.register(model_id, paths, version=version, tag=tag, declared="user_config")
            else:
                ref = self.registry.activate(model_id, version)
            metrics.model_event("ingress", ref.key, "swap")
            log.info("model %s now serves version %s", model_id, ref.version)
            return ref


def _validate(paths: ModelPaths) -> None:
    """Refuse files that are missing, not upstream checkpoints, or of an unsupported version."""
    try:
        gpt = load_gpt_checkpoint(paths.gpt)
        sovits = load_sovits_checkpoint(paths.sovits)
    except UnsupportedVersionError as exc:
        raise ApiError(400, "unsupported_model_version", str(exc)) from None
    except CheckpointError as exc:
        raise ApiError(400, "invalid_checkpoint", str(exc)) from None
    if not any(key.startswith("model.h.layers.") for key in gpt.weights):
        raise ApiError(400, "invalid_checkpoint", f"{paths.gpt} is not a GPT (T2S) checkpoint")
    phonemes = int(gpt.config.get("model", {}).get("phoneme_vocab_size", 0))
    expected = 512 if sovits.version == "v1" else 732  # v1 GPT configs say 512 (322 used)
    if phonemes and phonemes != expected:
        raise ApiError(400, "incompatible_checkpoints",
                       f"the GPT file has {phonemes} phoneme symbols but the {sovits.version} SoVITS file needs {expected}")
