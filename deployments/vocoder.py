"""Vocoder stage: latent frames + ge -> 32 kHz waveform (the HiFi-GAN generator of the SoVITS file).
Model versions are multiplexed; `backend` picks PyTorch or ONNX Runtime."""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from deployments import metrics
from deployments.common import apply_batch_config, probe_vocoder
from deployments.sovits_file_stage import SoVITSFileStage
from models.pipeline import vocode


@serve.deployment(name="Vocoder", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=16)
class VocoderDeployment(SoVITSFileStage):
    stage = "vocoder"

    def reconfigure(self, config: dict[str, Any]) -> None:
        apply_batch_config(self.vocode, config)

    def probe(self, model: Any) -> None:
        config = getattr(model, "config", None)  # the PyTorch vocoder; ORT sessions are not probed
        if config is not None:
            probe_vocoder(model, config.in_channels, config.gin_channels)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def vocode(self, items: list[tuple[str, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        metrics.batch_size("vocoder", len(items))
        models = [await self.get_model(key) for key, _, _ in items]
        with metrics.timed("vocoder", items[0][0]):
            return await asyncio.to_thread(
                lambda: [vocode(model, z, ge) for model, (_, z, ge) in zip(models, items)])
