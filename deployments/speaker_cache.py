"""Speaker cache stage: a stored reference clip -> VoicePrompt, cached per (voice, model version).

The prompt holds the reference's semantic tokens and `ge` (both depend on the SoVITS weights, so
a new model version recomputes them from the stored audio) and the transcript's phones + BERT
(from the Frontend stage). In memory: LRU with a bounded entry count and an idle TTL.

Staleness across replicas: `forget` (called when a voice is deleted or a clip replaced) is one
handle call and reaches one replica. Every replica therefore also checks, on each hit, that the
clip a prompt was computed from is still the stored one: each entry keeps the clip's
`VoiceStore.reference_signature` (mtime, size, inode) taken before the clip was read. The voice
store is the same shared folder for the ingress and every SpeakerCache replica (`data_dir`, shared
storage on a cluster), so a stat here sees what the ingress wrote there (on NFS, after at most
the client's attribute-cache time, `actimeo`). A clip that is gone answers 404 as a miss would; a
changed one is recomputed; `_evict` also sweeps out, at most once per SWEEP_INTERVAL_S (and from
Serve's health check, so on an idle replica too), entries whose clip is gone or changed, so a
deleted voice's features do not linger in memory.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, NamedTuple

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
Signature = tuple[int, int, int]  # VoiceStore.reference_signature of the clip a prompt came from
log = logging.getLogger("gsv.speaker_cache")
SWEEP_INTERVAL_S = 60.0  # how often `_evict` stats the clips of every cached entry


class CacheEntry(NamedTuple):
    prompt: VoicePrompt
    used_at: float  # time.monotonic() of the last hit
    signature: Signature


@serve.deployment(name="SpeakerCache", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32)
class SpeakerCacheDeployment:
    def __init__(self, data_dir: str, frontend: DeploymentHandle, device: str = "cpu",
                 dtype: str = "float32", num_threads: int | None = None, max_entries: int = 256,
                 ttl_s: float = 3600.0):
        limit_threads(num_threads)
        self.device = resolve_device(device)
        self.dtype = torch_dtype(dtype, self.device)
        self.store = VoiceStore(data_dir)
        self.registry = ModelRegistry(data_dir)
        self.frontend = frontend
        self.huberts: dict[str, HubertFeatures] = {}  # by folder: shared by every model version
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self.entries: OrderedDict[CacheKey, CacheEntry] = OrderedDict()
        self.inflight: dict[CacheKey, asyncio.Future] = {}
        self.hits = self.misses = self.evictions = 0
        self.swept_at = time.monotonic()

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
        if entry is not None and time.monotonic() - entry.used_at < self.ttl_s:
            # the voice may have been deleted, or this clip replaced, through the ingress since
            # (`forget` reaches one replica only): one stat of the stored clip tells
            signature = await asyncio.to_thread(self.store.reference_signature, voice_id, emotion)
            if signature is None:
                self._drop(key)
                return _voice_not_found(voice_id)
            entry = self.entries.get(key)  # re-read: other requests ran during the stat
            if entry is not None and entry.signature == signature:
                self.entries.move_to_end(key)
                self.entries[key] = entry._replace(used_at=time.monotonic())
                self.hits += 1
                metrics.cache_event("hit")
                return entry.prompt
            self._drop(key)  # computed from a clip that was replaced since: compute again
        if key in self.inflight:  # the same voice requested concurrently: compute once
            return await asyncio.shield(self.inflight[key])
        self.misses += 1
        metrics.cache_event("miss")
        future = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        try:
            result = await self._compute_current(key)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            self.inflight.pop(key, None)

    async def forget(self, voice_id: str) -> int:
        """Drop every cached prompt of a voice (when it is deleted or a clip replaced). This frees
        the memory at once on the replica the call reaches; the others notice on their next hit
        or sweep (see the module docstring)."""
        doomed = [k for k in self.entries if k[0] == voice_id]
        for key in doomed:
            del self.entries[key]
        return len(doomed)

    async def check_health(self) -> None:
        """Serve calls this on every replica periodically (`health_check_period_s`, 10 s): it is
        the cache's clock, so an idle replica also drops expired entries and those of deleted
        voices. Async on purpose: it then runs on the event loop that serves `get` (Serve runs a
        sync method in a thread, racing the requests that change `entries`). A failed sweep must
        not get the replica replaced, so it is only logged."""
        try:
            self._evict()
        except Exception:
            log.exception("speaker cache sweep failed")

    def stats(self) -> dict[str, int]:
        return {"entries": len(self.entries), "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions}

    async def _compute_current(self, key: CacheKey) -> VoicePrompt | StageError:
        """Compute and cache the prompt of `key`, remembering which clip it came from. The clip's
        signature is taken before the clip is read: if it is replaced in between, the entry holds
        the old signature and the next hit recomputes (never a new signature on old features)."""
        voice_id, emotion, model_key, transcript, language = key
        signature = await asyncio.to_thread(self.store.reference_signature, voice_id, emotion)
        if signature is None:
            return _voice_not_found(voice_id)
        result = await self._compute(model_key, voice_id, emotion, transcript, language)
        if not isinstance(result, StageError):
            self.entries[key] = CacheEntry(result, time.monotonic(), signature)
            self.entries.move_to_end(key)
            self._evict()
        return result

    async def _compute(self, model_key: str, voice_id: str, emotion: str, transcript: str,
                       language: str) -> VoicePrompt | StageError:
        try:
            samples, sr = await asyncio.to_thread(self.store.reference_audio, voice_id, emotion)
        except KeyError:
            return _voice_not_found(voice_id)
        text_features = self.frontend.prompt_features.remote(transcript, language)
        hubert, sovits = await self.get_model(model_key)
        wav32k = audio.resample(samples, sr, audio.SAMPLE_RATE)
        with metrics.timed("speaker_cache", model_key):
            tokens, ge = await asyncio.to_thread(reference_features, hubert, sovits, wav32k)
        text = await text_features
        if isinstance(text, StageError):
            return text
        return VoicePrompt(tokens, ge, text.phone_ids, text.bert, model_key)

    def _drop(self, key: CacheKey) -> None:
        if self.entries.pop(key, None) is not None:
            self.evictions += 1
            metrics.cache_event("eviction")

    def _evict(self) -> None:
        """Drop entries idle past the TTL, then the least recently used beyond `max_entries`; at
        most every SWEEP_INTERVAL_S also those whose clip is gone (a voice deleted through another
        replica) or was replaced (one stat per cached clip, on the shared voice folder)."""
        now = time.monotonic()
        for key in [k for k, e in self.entries.items() if now - e.used_at >= self.ttl_s]:
            self._drop(key)
        if now - self.swept_at >= SWEEP_INTERVAL_S:
            self.swept_at = now
            current: dict[tuple[str, str], Signature | None] = {}
            for key, entry in list(self.entries.items()):
                clip = key[:2]  # (voice id, emotion)
                if clip not in current:
                    current[clip] = self.store.reference_signature(*clip)
                if current[clip] != entry.signature:
                    self._drop(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
            self.evictions += 1
            metrics.cache_event("eviction")


def _voice_not_found(voice_id: str) -> StageError:
    return StageError("voice_not_found", f"no voice {voice_id!r}", 404)
