"""SoVITS stage: semantic tokens + target phones + ge -> latent frames (text encoder, MRTE, flow).

Batched with `@serve.batch`, then run item by item: on CPU, batching SoVITS across requests was
measured slower than serial (NOTES.md); one batch still amortises the hop overhead. Model versions
are multiplexed like the GPT stage. `backend` picks PyTorch or ONNX Runtime (fp32 / INT8).
"""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from deployments import metrics
from deployments.common import apply_batch_config, probe_latent
from deployments.sovits_file_stage import SoVITSFileStage
from models.pipeline import latent


@serve.deployment(name="SoVITS", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=16)
class SoVITSDeployment(SoVITSFileStage):
    stage = "sovits"

    def reconfigure(self, config: dict[str, Any]) -> None:
        apply_batch_config(self.latent, config)

    def probe(self, model: Any) -> None:
        probe_latent(model)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def latent(self, items: list[tuple]) -> list[np.ndarray]:
        metrics.batch_size("sovits", len(items))
        models = [await self.get_model(item[0]) for item in items]
        with metrics.timed("sovits", items[0][0]):
            return await asyncio.to_thread(
                lambda: [latent(model, *item[1:]) for model, item in zip(models, items)])
