"""Vocoder stage: latent frames + ge -> 32 kHz waveform (the HiFi-GAN generator of the SoVITS file).
Model versions are multiplexed; `backend` picks PyTorch or ONNX Runtime."""
from __future__ import annotations

import asyncio
import weakref
from typing import Any

import numpy as np
from ray import serve

from deployments import metrics
from deployments.common import (MODELS_PER_REPLICA, apply_batch_config, limit_threads, probe_vocoder,
                                resolve_device, torch_dtype)
from deployments.model_registry import ModelRegistry
from models.onnx_runtime import load_sovits_backend
from models.pipeline import vocode


@serve.deployment(name="Vocoder", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=16)
class VocoderDeployment:
    def __init__(self, data_dir: str, device: str = "cpu", dtype: str = "float32", backend: str = "torch",
                 onnx_cache_dir: str | None = None, num_threads: int | None = None):
        limit_threads(num_threads)
        self.device, self.dtype, self.backend = resolve_device(device), torch_dtype(dtype), backend
        self.onnx_cache_dir, self.num_threads = onnx_cache_dir, num_threads
        self.registry = ModelRegistry(data_dir)
        self.loaded: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # what Serve's LRU holds

    def reconfigure(self, config: dict[str, Any]) -> None:
        apply_batch_config(self.vocode, config)

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def get_model(self, key: str):
        ref = self.registry.resolve(key)
        _, model = await asyncio.to_thread(load_sovits_backend, ref.paths.sovits, self.backend, self.device,
                                           self.onnx_cache_dir, self.num_threads, self.dtype, "vocoder")
        self.loaded[key] = model
        metrics.model_event("vocoder", key, "load")
        return model

    def health(self) -> dict[str, str]:
        """Every loaded version answers a tiny vocoder run (Serve calls check_health periodically)."""
        for model in list(self.loaded.values()):
            config = getattr(model, "config", None)  # the PyTorch vocoder; ORT sessions are not probed
            if config is not None:
                probe_vocoder(model, config.in_channels, config.gin_channels)
        return {key: "ok" for key in self.loaded}

    def check_health(self) -> None:
        self.health()

    async def warm(self, key: str) -> str:
        await self.get_model(key)
        return key

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def vocode(self, items: list[tuple[str, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        metrics.batch_size("vocoder", len(items))
        models = [await self.get_model(key) for key, _, _ in items]
        with metrics.timed("vocoder", items[0][0]):
            return await asyncio.to_thread(
                lambda: [vocode(model, z, ge) for model, (_, z, ge) in zip(models, items)])
