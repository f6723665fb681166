"""Speaker cache stage: a stored reference clip -> VoicePrompt, cached per (voice, model version).

The prompt holds the reference's semantic tokens and `ge` (both depend on the SoVITS weights, so
a new model version recomputes them from the stored audio) and the transcript's phones + BERT
(from the Frontend stage). In memory: LRU with a bounded entry count and an idle TTL.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments import metrics
from deployments.common import MODELS_PER_REPLICA, StageError, limit_threads, resolve_device, torch_dtype
from deployments.model_registry import ModelRegistry, RegistryError
from deployments.voice_store import VoiceStore
from models import audio
from models.hubert import HubertFeatures
from models.pipeline import VoicePrompt, reference_features
from models.sovits import SoVITS

CacheKey = tuple[str, str, str, str, str]  # voice id, emotion, model key (id@version), transcript, language


@serve.deployment(name="SpeakerCache", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32)
class SpeakerCacheDeployment:
    def __init__(self, data_dir: str, frontend: DeploymentHandle, device: str = "cpu",
                 dtype: str = "float32", num_threads: int | None = None, max_entries: int = 256,
                 ttl_s: float = 3600.0):
        limit_threads(num_threads)
        self.device, self.dtype = resolve_device(device), torch_dtype(dtype)
        self.store = VoiceStore(data_dir)
        self.registry = ModelRegistry(data_dir)
        self.frontend = frontend
        self.huberts: dict[str, HubertFeatures] = {}  # by folder: shared by every model version
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self.entries: OrderedDict[CacheKey, tuple[VoicePrompt, float]] = OrderedDict()
        self.inflight: dict[CacheKey, asyncio.Future] = {}
        self.hits = self.misses = self.evictions = 0

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.max_entries = int(config.get("max_entries", self.max_entries))
        self.ttl_s = float(config.get("ttl_s", self.ttl_s))
        self._evict()

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def get_model(self, model_key: str) -> tuple[HubertFeatures, SoVITS]:
        """The reference-side models of one version: the SoVITS file (ssl_proj, quantizer, ref
        encoder are fine-tuned with it) and the shared HuBERT."""
        ref = self.registry.resolve(model_key)
        hubert = self.huberts.get(ref.paths.hubert_dir)
        if hubert is None:
            hubert = await asyncio.to_thread(HubertFeatures.from_dir, ref.paths.hubert_dir, device=self.device,
                                             dtype=self.dtype)
            self.huberts[ref.paths.hubert_dir] = hubert
        sovits = await asyncio.to_thread(SoVITS.from_checkpoint, ref.paths.sovits, device=self.device,
                                         dtype=self.dtype)
        metrics.model_event("speaker_cache", model_key, "load")
        return hubert, sovits

    async def warm(self, model_key: str) -> str:
        await self.get_model(model_key)
        return model_key

    async def get(self, model_key: str, voice_id: str, emotion: str, transcript: str,
                  language: str) -> VoicePrompt | StageError:
        try:
            self.registry.resolve(model_key)
        except RegistryError as exc:
            return StageError("model_version_unavailable", str(exc), 503)
        key = (voice_id, emotion, model_key, transcript, language)
        entry = self.entries.get(key)
        if entry is not None and time.monotonic() - entry[1] < self.ttl_s:
            self.entries.move_to_end(key)
            self.entries[key] = (entry[0], time.monotonic())
            self.hits += 1
            metrics.cache_event("hit")
            return entry[0]
        if key in self.inflight:  # the same voice requested concurrently: compute once
            return await asyncio.shield(self.inflight[key])
        self.misses += 1
        metrics.cache_event("miss")
        future = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        try:
            result = await self._compute(model_key, voice_id, emotion, transcript, language)
            if not isinstance(result, StageError):
                self.entries[key] = (result, time.monotonic())
                self._evict()
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            self.inflight.pop(key, None)

    async def forget(self, voice_id: str) -> int:
        """Drop every cached prompt of a voice (used when the voice is deleted)."""
        doomed = [k for k in self.entries if k[0] == voice_id]
        for key in doomed:
            del self.entries[key]
        return len(doomed)

    def stats(self) -> dict[str, int]:
        return {"entries": len(self.entries), "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions}

    async def _compute(self, model_key: str, voice_id: str, emotion: str, transcript: str,
                       language: str) -> VoicePrompt | StageError:
        try:
            samples, sr = await asyncio.to_thread(self.store.reference_audio, voice_id, emotion)
        except KeyError:
            return StageError("voice_not_found", f"no voice {voice_id!r}", 404)
        text_features = self.frontend.prompt_features.remote(transcript, language)
        hubert, sovits = await self.get_model(model_key)
        wav32k = audio.resample(samples, sr, audio.SAMPLE_RATE)
        with metrics.timed("speaker_cache", model_key):
            tokens, ge = await asyncio.to_thread(reference_features, hubert, sovits, wav32k)
        text = await text_features
        if isinstance(text, StageError):
            return text
        return VoicePrompt(tokens, ge, text.phone_ids, text.bert, model_key)

    def _evict(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, t) in self.entries.items() if now - t >= self.ttl_s]:
            del self.entries[key]
            self.evictions += 1
            metrics.cache_event("eviction")
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
            self.evictions += 1
            metrics.cache_event("eviction")
