"""What the SoVITS and Vocoder stages share: both run one half of a SoVITS `.pth` file, loaded per
model version (multiplexed), through the configured backend (PyTorch or ONNX Runtime), and both
prove in their health check that every loaded version still answers."""
from __future__ import annotations

import asyncio
import weakref
from typing import Any

from ray import serve

from deployments import metrics
from deployments.common import MODELS_PER_REPLICA, limit_threads, resolve_device, torch_dtype
from deployments.model_registry import ModelRegistry
from models.onnx_runtime import load_sovits_backend


class SoVITSFileStage:
    stage = ""  # "sovits" | "vocoder": metrics label, and which half of the file to load

    def __init__(self, data_dir: str, device: str = "cpu", dtype: str = "float32", backend: str = "torch",
                 onnx_cache_dir: str | None = None, num_threads: int | None = None):
        limit_threads(num_threads)
        self.device, self.backend = resolve_device(device), backend
        self.dtype = torch_dtype(dtype, self.device)
        self.onnx_cache_dir, self.num_threads = onnx_cache_dir, num_threads
        self.registry = ModelRegistry(data_dir)
        self.loaded: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # what Serve's LRU holds

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def get_model(self, key: str) -> Any:
        ref = self.registry.resolve(key)
        part = "latent" if self.stage == "sovits" else "vocoder"
        latent_model, vocoder_model = await asyncio.to_thread(
            load_sovits_backend, ref.paths.sovits, self.backend, self.device, self.onnx_cache_dir,
            self.num_threads, self.dtype, part)
        model = latent_model if part == "latent" else vocoder_model
        self.loaded[key] = model
        metrics.model_event(self.stage, key, "load")
        return model

    async def warm(self, key: str) -> str:
        await self.get_model(key)
        return key

    def probe(self, model: Any) -> None:
        """A tiny inference on one loaded model; raises if it does not answer."""
        raise NotImplementedError

    def health(self) -> dict[str, str]:
        for model in list(self.loaded.values()):
            self.probe(model)
        return {key: "ok" for key in self.loaded}

    def check_health(self) -> None:  # Serve calls this periodically: a failure replaces the replica
        self.health()
