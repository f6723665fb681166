"""SpeakerCache stays true to the voice store on every replica (no Ray: the deployment's class is
driven directly, its model step replaced by a fake that reads the stored clip).

A replica is never told when a voice is deleted or a clip replaced through another replica's
`forget`; it must notice by itself, from the shared voice folder."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from deployments import speaker_cache
from deployments.common import StageError
from deployments.model_registry import ModelRegistry
from deployments.voice_store import DEFAULT_EMOTION, VoiceStore
from models.pipeline import ModelPaths, VoicePrompt

SR = 16000
MODEL_KEY = "default@v1"


def clip(level: float, seconds: float = 4.0) -> np.ndarray:
    """A clip whose every sample is `level`: the fake prompt carries it, so a test can tell
    which stored clip a prompt was computed from."""
    return np.full(int(seconds * SR), level, dtype=np.float32)


class Cache:
    """A SpeakerCacheDeployment over `data_dir` whose model step is a fake counting its calls."""

    def __init__(self, data_dir, **kwargs):
        self.deployment = speaker_cache.SpeakerCacheDeployment.func_or_class(data_dir, frontend=None, **kwargs)
        self.computed: list[tuple[str, str]] = []
        self.deployment._compute = self._fake_compute

    async def _fake_compute(self, model_key, voice_id, emotion, transcript, language):
        try:
            samples, _ = self.deployment.store.reference_audio(voice_id, emotion)
        except KeyError:
            return StageError("voice_not_found", f"no voice {voice_id!r}", 404)
        self.computed.append((voice_id, emotion))
        return VoicePrompt(np.zeros(1, np.int64), np.array([samples[0]]), np.zeros(1, np.int64),
                           np.zeros((1024, 1), np.float32), model_key)

    def get(self, voice_id: str, emotion: str = DEFAULT_EMOTION):
        return asyncio.run(self.deployment.get(MODEL_KEY, voice_id, emotion, "Hello there.", "en"))

    def cached_voices(self) -> set[str]:
        return {key[0] for key in self.deployment.entries}


@pytest.fixture
def data_dir(tmp_path):
    paths = ModelPaths(gpt="g.ckpt", sovits="s.pth", hubert_dir="hubert", bert_dir="bert")
    ModelRegistry(tmp_path).register("default", paths, version="v1")
    return tmp_path


@pytest.fixture
def ingress_store(data_dir) -> VoiceStore:
    """The voice store as the ingress sees it: the same folder, another VoiceStore."""
    return VoiceStore(data_dir)


def make_voice(store: VoiceStore, level: float = 0.1) -> str:
    return store.create(name="", transcript="Hello there.", language="en", model_id="default",
                        samples=clip(level), sample_rate=SR).id


def test_repeated_request_is_a_hit_while_the_clip_is_unchanged(data_dir, ingress_store):
    voice = make_voice(ingress_store)
    cache = Cache(data_dir)
    first, second = cache.get(voice), cache.get(voice)
    assert second is first
    assert cache.computed == [(voice, DEFAULT_EMOTION)]
    assert cache.deployment.stats()["hits"] == 1


def test_hit_after_the_voice_was_deleted_answers_404_and_drops_the_entry(data_dir, ingress_store):
    voice = make_voice(ingress_store)
    cache = Cache(data_dir)
    assert isinstance(cache.get(voice), VoicePrompt)
    ingress_store.delete(voice)  # through the ingress: this replica's `forget` is never called
    answer = cache.get(voice)
    assert answer == StageError("voice_not_found", f"no voice {voice!r}", 404)
    assert voice not in cache.cached_voices()


def test_hit_after_the_clip_was_replaced_recomputes_from_the_new_clip(data_dir, ingress_store):
    voice = make_voice(ingress_store)
    ingress_store.add_emotion(voice, "happy", "Hello there.", "en", clip(0.2), SR)
    cache = Cache(data_dir)
    assert cache.get(voice, "happy").ge[0] == pytest.approx(0.2)
    ingress_store.add_emotion(voice, "happy", "Hello there.", "en", clip(0.6), SR)  # replaced, no forget
    assert cache.get(voice, "happy").ge[0] == pytest.approx(0.6)
    assert cache.computed == [(voice, "happy"), (voice, "happy")]


def test_replacing_one_emotion_keeps_the_other_clips_cached(data_dir, ingress_store):
    voice = make_voice(ingress_store)
    ingress_store.add_emotion(voice, "happy", "Hello there.", "en", clip(0.2), SR)
    cache = Cache(data_dir)
    default = cache.get(voice)
    ingress_store.add_emotion(voice, "happy", "Hello there.", "en", clip(0.6), SR)
    assert cache.get(voice) is default
    assert cache.computed == [(voice, DEFAULT_EMOTION)]


def test_evict_sweeps_out_entries_of_deleted_voices(data_dir, ingress_store, monkeypatch):
    kept, deleted = make_voice(ingress_store), make_voice(ingress_store)
    cache = Cache(data_dir)
    cache.get(kept)
    cache.get(deleted)
    ingress_store.delete(deleted)
    monkeypatch.setattr(speaker_cache, "SWEEP_INTERVAL_S", 0.0)
    cache.deployment._evict()
    assert cache.cached_voices() == {kept}


def test_evict_sweeps_entries_of_replaced_clips(data_dir, ingress_store, monkeypatch):
    voice = make_voice(ingress_store)
    ingress_store.add_emotion(voice, "happy", "Hello there.", "en", clip(0.2), SR)
    cache = Cache(data_dir)
    cache.get(voice)
    cache.get(voice, "happy")
    ingress_store.add_emotion(voice, "happy", "Hello there.", "en", clip(0.6), SR)
    monkeypatch.setattr(speaker_cache, "SWEEP_INTERVAL_S", 0.0)
    cache.deployment._evict()
    assert [key[1] for key in cache.deployment.entries] == [DEFAULT_EMOTION]


def test_sweep_waits_for_its_interval(data_dir, ingress_store):
    voice = make_voice(ingress_store)
    cache = Cache(data_dir)
    cache.get(voice)
    ingress_store.delete(voice)
    cache.deployment._evict()  # the sweep ran at start-up, SWEEP_INTERVAL_S has not passed
    assert cache.cached_voices() == {voice}


def test_health_check_sweeps_an_idle_replica(data_dir, ingress_store, monkeypatch):
    voice = make_voice(ingress_store)
    cache = Cache(data_dir)
    cache.get(voice)
    ingress_store.delete(voice)
    monkeypatch.setattr(speaker_cache, "SWEEP_INTERVAL_S", 0.0)
    asyncio.run(cache.deployment.check_health())  # Serve calls it every few seconds
    assert cache.cached_voices() == set()


def test_forget_frees_the_entries_of_a_voice_at_once(data_dir, ingress_store):
    kept, forgotten = make_voice(ingress_store), make_voice(ingress_store)
    cache = Cache(data_dir)
    cache.get(kept)
    cache.get(forgotten)
    assert asyncio.run(cache.deployment.forget(forgotten)) == 1
    assert cache.cached_voices() == {kept}


def test_reference_signature_changes_when_a_clip_is_replaced(ingress_store):
    voice = make_voice(ingress_store)
    ingress_store.add_emotion(voice, "happy", "Hello there.", "en", clip(0.2), SR)
    before = ingress_store.reference_signature(voice, "happy")
    ingress_store.add_emotion(voice, "happy", "Hello there.", "en", clip(0.2), SR)  # same audio, new file
    assert before is not None and ingress_store.reference_signature(voice, "happy") != before


def test_reference_signature_is_none_when_the_clip_is_gone(ingress_store):
    voice = make_voice(ingress_store)
    assert ingress_store.reference_signature(voice) is not None
    assert ingress_store.reference_signature(voice, "happy") is None  # no such emotion clip
    ingress_store.delete(voice)
    assert ingress_store.reference_signature(voice) is None
    assert ingress_store.reference_signature("../etc") is None
