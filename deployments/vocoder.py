"""Vocoder stage: latent frames + ge -> 32 kHz waveform (the HiFi-GAN generator of the SoVITS file)."""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from deployments.common import apply_batch_config, limit_threads, resolve_device, torch_dtype
from models.pipeline import ModelPaths, vocode
from models.vocoder import Vocoder


@serve.deployment(name="Vocoder", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=16)
class VocoderDeployment:
    def __init__(self, paths: ModelPaths, device: str = "cpu", dtype: str = "float32",
                 num_threads: int | None = None):
        limit_threads(num_threads)
        device = resolve_device(device)
        self.model = Vocoder.from_checkpoint(paths.sovits, device=device, dtype=torch_dtype(dtype))

    def reconfigure(self, config: dict[str, Any]) -> None:
        apply_batch_config(self.vocode, config)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def vocode(self, items: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return await asyncio.to_thread(lambda: [vocode(self.model, z, ge) for z, ge in items])
