"""In-process implementation of the stages over a `models.Pipeline` (no Ray).

Used by fast API tests and by `gsv-serve serve --no-ray`. Model calls run in a worker thread,
one at a time (a lock), so the event loop stays free for other requests.
"""
from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator

import numpy as np

from fastapi import FastAPI

from deployments.common import text_error
from deployments.model_registry import ModelRegistry
from deployments.voice_store import VoiceRecord, VoiceStore
from models import audio
from models.pipeline import (Pipeline, t2s_inputs, SynthesisSettings, TextFeatures, VoicePrompt, latent,
                             prompt_text_for_frontend, reference_features, t2s_tokens, vocode)
from models.t2s import generate_stream
from serve_app.errors import ApiError
from serve_app.settings import Settings


def _as_api_error(exc: ValueError) -> ApiError:
    error = text_error(exc)
    return ApiError(error.status, error.code, error.message)


class LocalStages:
    def __init__(self, pipeline: Pipeline, store: VoiceStore):
        self.pipeline, self.store = pipeline, store
        self.lock = threading.Lock()
        self.prompts: dict[tuple, VoicePrompt] = {}

    async def _run(self, fn, *args):
        def locked():
            with self.lock:
                return fn(*args)
        return await asyncio.to_thread(locked)

    def _check_model(self, model_key: str) -> None:
        if not model_key.endswith("@" + self.pipeline.model_version):
            raise ApiError(503, "model_version_unavailable",
                           f"this in-process server holds only version {self.pipeline.model_version}")

    async def warm(self, model_key: str) -> None:
        raise ApiError(501, "not_supported", "model swaps need the Ray Serve graph")

    async def sentences(self, text: str, language: str, method: str) -> list[str]:
        try:
            return await self._run(self.pipeline.sentences, text, language, method)
        except ValueError as exc:
            raise _as_api_error(exc) from None

    async def text_features(self, text: str, language: str) -> TextFeatures:
        try:
            return await self._run(self.pipeline.text_features, text, language)
        except ValueError as exc:
            raise _as_api_error(exc) from None

    async def voice_prompt(self, voice: VoiceRecord, emotion: str, prompt_text: str, prompt_language: str,
                           model_key: str) -> VoicePrompt:
        self._check_model(model_key)
        key = (voice.id, emotion, model_key, prompt_text, prompt_language)
        if key not in self.prompts:
            try:
                samples, sr = self.store.reference_audio(voice.id, emotion)
            except KeyError:
                raise ApiError(404, "voice_not_found", f"no voice {voice.id!r}") from None
            wav32k = audio.resample(samples, sr, audio.SAMPLE_RATE)
            tokens, ge = await self._run(reference_features, self.pipeline.hubert, self.pipeline.sovits, wav32k)
            text = await self.text_features(prompt_text_for_frontend(prompt_text, prompt_language), prompt_language)
            self.prompts[key] = VoicePrompt(tokens, ge, text.phone_ids, text.bert, model_key)
        return self.prompts[key]

    async def t2s(self, prompt: VoicePrompt, target: TextFeatures, settings: SynthesisSettings, seed: int,
                  model_key: str) -> np.ndarray:
        return await self._run(t2s_tokens, self.pipeline.t2s, prompt, target, settings.sampling.with_seed(seed))

    async def t2s_stream(self, prompt: VoicePrompt, target: TextFeatures, settings: SynthesisSettings, seed: int,
                         model_key: str, chunk_sizes: tuple[int, int]) -> AsyncIterator[np.ndarray]:
        phones, bert = t2s_inputs(prompt, target)
        chunks = generate_stream(self.pipeline.t2s, phones, bert, prompt.prompt_tokens,
                                 settings.sampling.with_seed(seed), chunk_sizes=chunk_sizes)
        try:
            while True:
                chunk = await self._run(next, chunks, None)
                if chunk is None:
                    return
                yield chunk.numpy()
        finally:
            await self._run(chunks.close)  # cancels the decode when the consumer leaves early

    async def latent(self, codes: np.ndarray, target: TextFeatures, prompt: VoicePrompt,
                     settings: SynthesisSettings, seed: int, model_key: str) -> np.ndarray:
        return await self._run(latent, self.pipeline.sovits, codes, target.phone_ids, prompt.ge,
                               settings.noise_scale, settings.speed, seed)

    async def vocode(self, z: np.ndarray, prompt: VoicePrompt, model_key: str) -> np.ndarray:
        return await self._run(vocode, self.pipeline.vocoder, z, prompt.ge)

    async def forget_voice(self, voice_id: str) -> None:
        for key in [k for k in self.prompts if k[0] == voice_id]:
            del self.prompts[key]

    async def ready(self) -> bool:
        return True


def create_local_app(pipeline: Pipeline, settings: Settings, stages: LocalStages | None = None) -> FastAPI:
    """The full HTTP API over one in-process Pipeline (no Ray): for tests, the playground test
    and quick local use. Model swaps answer 501 here."""
    from serve_app.api import create_app

    store = VoiceStore(settings.data_dir)
    store.cleanup_partial()
    registry = ModelRegistry(settings.data_dir)
    registry.register(settings.model.model_id, pipeline.paths, version=pipeline.model_version,
                      demo=settings.model.is_demo, tag="demo" if settings.model.is_demo else "")
    return create_app(stages or LocalStages(pipeline, store), store, settings, registry)
