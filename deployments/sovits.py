"""SoVITS stage: semantic tokens + target phones + ge -> latent frames (text encoder, MRTE, flow).

Batched with `@serve.batch`, then run item by item: on CPU, batching SoVITS across requests was
measured slower than serial (NOTES.md); one batch still amortises the hop overhead. Model versions
are multiplexed like the GPT stage. `backend` picks PyTorch or ONNX Runtime (fp32 / INT8).
"""
from __future__ import annotations

import asyncio
import weakref
from typing import Any

import numpy as np
from ray import serve

from deployments import metrics
from deployments.common import (MODELS_PER_REPLICA, apply_batch_config, limit_threads, probe_latent,
                                resolve_device, torch_dtype)
from deployments.model_registry import ModelRegistry
from models.onnx_runtime import load_sovits_backend
from models.pipeline import latent


@serve.deployment(name="SoVITS", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=16)
class SoVITSDeployment:
    def __init__(self, data_dir: str, device: str = "cpu", dtype: str = "float32", backend: str = "torch",
                 onnx_cache_dir: str | None = None, num_threads: int | None = None):
        limit_threads(num_threads)
        self.device, self.dtype, self.backend = resolve_device(device), torch_dtype(dtype), backend
        self.onnx_cache_dir, self.num_threads = onnx_cache_dir, num_threads
        self.registry = ModelRegistry(data_dir)
        self.loaded: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # what Serve's LRU holds

    def reconfigure(self, config: dict[str, Any]) -> None:
        apply_batch_config(self.latent, config)

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def get_model(self, key: str):
        ref = self.registry.resolve(key)
        model, _ = await asyncio.to_thread(load_sovits_backend, ref.paths.sovits, self.backend, self.device,
                                           self.onnx_cache_dir, self.num_threads, self.dtype, "latent")
        self.loaded[key] = model
        metrics.model_event("sovits", key, "load")
        return model

    def health(self) -> dict[str, str]:
        """Every loaded version answers a tiny decode (Serve calls check_health periodically)."""
        for key, model in list(self.loaded.items()):
            probe_latent(model)
        return {key: "ok" for key in self.loaded}

    def check_health(self) -> None:
        self.health()

    async def warm(self, key: str) -> str:
        await self.get_model(key)
        return key

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def latent(self, items: list[tuple]) -> list[np.ndarray]:
        metrics.batch_size("sovits", len(items))
        models = [await self.get_model(item[0]) for item in items]
        with metrics.timed("sovits", items[0][0]):
            return await asyncio.to_thread(
                lambda: [latent(model, *item[1:]) for model, item in zip(models, items)])
