"""SoVITS stage: semantic tokens + target phones + ge -> latent frames (text encoder, MRTE, flow).

Batched with `@serve.batch`, then run item by item: on CPU, batching SoVITS across requests was
measured slower than serial (NOTES.md); one batch still amortises the hop overhead."""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from deployments.common import apply_batch_config, limit_threads, resolve_device, torch_dtype
from models.pipeline import ModelPaths, latent
from models.sovits import SoVITS


@serve.deployment(name="SoVITS", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=16)
class SoVITSDeployment:
    def __init__(self, paths: ModelPaths, device: str = "cpu", dtype: str = "float32",
                 num_threads: int | None = None):
        limit_threads(num_threads)
        device = resolve_device(device)
        self.model_version = paths.version()
        self.model = SoVITS.from_checkpoint(paths.sovits, device=device, dtype=torch_dtype(dtype))

    def reconfigure(self, config: dict[str, Any]) -> None:
        apply_batch_config(self.latent, config)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def latent(self, items: list[tuple]) -> list[np.ndarray]:
        return await asyncio.to_thread(lambda: [latent(self.model, *item) for item in items])
