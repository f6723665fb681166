"""Text frontend stage: sentence splitting, phonemes and BERT features (batched across requests)."""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from deployments import metrics
from deployments.common import StageError, apply_batch_config, limit_threads, resolve_device, text_error
from models.pipeline import TextFeatures, prompt_text_for_frontend
from models.text.frontend import TextFrontend


@serve.deployment(name="Frontend", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32)
class FrontendDeployment:
    def __init__(self, bert_dir: str, device: str = "cpu", num_threads: int | None = None):
        limit_threads(num_threads)
        device = resolve_device(device)
        self.frontend = TextFrontend(bert_dir, device=device)

    def reconfigure(self, config: dict[str, Any]) -> None:
        apply_batch_config(self.text_features, config)

    async def sentences(self, text: str, language: str, method: str) -> list[str] | StageError:
        try:
            return await asyncio.to_thread(self.frontend.split_sentences, text, language, method)
        except ValueError as exc:
            return text_error(exc)

    async def prompt_features(self, text: str, language: str) -> TextFeatures | StageError:
        return await self.text_features((prompt_text_for_frontend(text, language), language))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def text_features(self, items: list[tuple[str, str]]) -> list[TextFeatures | StageError]:
        metrics.batch_size("frontend", len(items))
        with metrics.timed("frontend", ""):
            return await asyncio.to_thread(self._process, items)

    def _process(self, items: list[tuple[str, str]]) -> list[TextFeatures | StageError]:
        try:
            return [_features(r) for r in self.frontend.process_batch(items)]
        except ValueError:
            pass  # one bad item: redo one by one so the others still succeed
        out: list[TextFeatures | StageError] = []
        for item in items:
            try:
                out.append(_features(self.frontend.process_batch([item])[0]))
            except ValueError as exc:
                out.append(text_error(exc))
        return out


def _features(result: Any) -> TextFeatures:
    phones, bert, norm_text = result
    return TextFeatures(np.asarray(phones, dtype=np.int64), np.asarray(bert, dtype=np.float32), norm_text)
