"""The Ray Serve application: five model stages composed behind one HTTP ingress.

    Ingress ──> Frontend       sentences, phones + BERT           (@serve.batch)
            ├─> SpeakerCache   voice -> VoicePrompt (LRU + TTL)   (calls Frontend for the transcript)
            ├─> GPT            continuous batching decode loop
            ├─> SoVITS         tokens -> latent                   (@serve.batch)
            └─> Vocoder        latent -> waveform                 (@serve.batch)

`build_app(args)` is the import path named in configs/*.yaml (`serve_app.graph:build_app`); every
deployment's resources, autoscaling and batch settings come from that file.
"""
from __future__ import annotations

import asyncio
import functools
from typing import Any, AsyncIterator

import numpy as np
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from deployments.common import StageError
from deployments.frontend import FrontendDeployment
from deployments.gpt import GPTDeployment
from deployments.sovits import SoVITSDeployment
from deployments.speaker_cache import SpeakerCacheDeployment
from deployments.vocoder import VocoderDeployment
from deployments.model_registry import ModelRegistry
from deployments.voice_store import VoiceRecord, VoiceStore
from models.pipeline import SynthesisSettings, TextFeatures, VoicePrompt
from serve_app.api import create_app
from serve_app.errors import ApiError
from serve_app.model_admin import ModelAdmin
from serve_app.model_files import ensure_demo_voice, register_declared_model, resolve_model_paths
from serve_app.settings import Settings


RETRY_AFTER_S = "2"


def _check(result: Any) -> Any:
    if isinstance(result, StageError):
        headers = {"Retry-After": RETRY_AFTER_S} if result.status == 503 else {}
        raise ApiError(result.status, result.code, result.message, headers=headers)
    return result


def _overloaded(exc: BackPressureError) -> ApiError:
    return ApiError(503, "overloaded", f"a stage is at capacity ({exc}); retry shortly",
                    headers={"Retry-After": RETRY_AFTER_S})


def _fast_503(method):
    """A stage whose queue is full (`max_queued_requests`) answers at once: 503 + Retry-After."""
    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except BackPressureError as exc:
            raise _overloaded(exc) from None
        except RayActorError:  # the replica died under this request; Serve is replacing it
            raise ApiError(503, "stage_unavailable", "a stage replica failed; retry shortly",
                           headers={"Retry-After": RETRY_AFTER_S}) from None
    return wrapper


class GraphStages:
    """`serve_app.synthesis.Stages` over DeploymentHandles: arrays travel through Ray's object store.
    Every model-stage call names its `model_id@version`, so Serve routes it to a replica holding
    that version (multiplexing) and the stage can only use those weights."""

    def __init__(self, frontend: DeploymentHandle, speaker_cache: DeploymentHandle, gpt: DeploymentHandle,
                 sovits: DeploymentHandle, vocoder: DeploymentHandle):
        self.frontend, self.speaker_cache, self.gpt = frontend, speaker_cache, gpt
        self.sovits, self.vocoder = sovits, vocoder

    def model_stages(self) -> dict[str, DeploymentHandle]:
        return {"speaker_cache": self.speaker_cache, "gpt": self.gpt, "sovits": self.sovits, "vocoder": self.vocoder}

    @_fast_503
    async def warm(self, model_key: str) -> None:
        """Load a version in every model stage (the swap waits for this before switching)."""
        await asyncio.gather(*(h.options(multiplexed_model_id=model_key).warm.remote(model_key)
                               for h in self.model_stages().values()))

    @_fast_503
    async def sentences(self, text: str, language: str, method: str) -> list[str]:
        return _check(await self.frontend.sentences.remote(text, language, method))

    @_fast_503
    async def text_features(self, text: str, language: str) -> TextFeatures:
        return _check(await self.frontend.text_features.remote((text, language)))

    @_fast_503
    async def voice_prompt(self, voice: VoiceRecord, emotion: str, prompt_text: str, prompt_language: str,
                           model_key: str) -> VoicePrompt:
        handle = self.speaker_cache.options(multiplexed_model_id=model_key)
        return _check(await handle.get.remote(model_key, voice.id, emotion, prompt_text, prompt_language))

    @_fast_503
    async def t2s(self, prompt: VoicePrompt, target: TextFeatures, settings: SynthesisSettings, seed: int,
                  model_key: str) -> np.ndarray:
        handle = self.gpt.options(multiplexed_model_id=model_key)
        return _check(await handle.generate.remote(model_key, prompt, target, settings.sampling.with_seed(seed)))

    async def t2s_stream(self, prompt: VoicePrompt, target: TextFeatures, settings: SynthesisSettings, seed: int,
                         model_key: str, chunk_sizes: tuple[int, int]) -> AsyncIterator[np.ndarray]:
        handle = self.gpt.options(stream=True, multiplexed_model_id=model_key)
        responses = handle.generate_stream.remote(model_key, prompt, target, settings.sampling.with_seed(seed),
                                                  *chunk_sizes)
        try:
            async for chunk in responses:
                yield _check(chunk)
        except BackPressureError as exc:
            raise _overloaded(exc) from None
        finally:
            responses.cancel()  # a no-op once the stream finished; stops the decode if we left early

    @_fast_503
    async def latent(self, codes: np.ndarray, target: TextFeatures, prompt: VoicePrompt,
                     settings: SynthesisSettings, seed: int, model_key: str) -> np.ndarray:
        item = (model_key, codes, target.phone_ids, prompt.ge, settings.noise_scale, settings.speed, seed)
        return await self.sovits.options(multiplexed_model_id=model_key).latent.remote(item)

    @_fast_503
    async def vocode(self, z: np.ndarray, prompt: VoicePrompt, model_key: str) -> np.ndarray:
        return await self.vocoder.options(multiplexed_model_id=model_key).vocode.remote((model_key, z, prompt.ge))

    @_fast_503
    async def forget_voice(self, voice_id: str) -> None:
        await self.speaker_cache.forget.remote(voice_id)

    @_fast_503
    async def ready(self) -> bool:
        return True  # the ingress only takes traffic once Serve reports every deployment healthy


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    def __init__(self, settings_args: dict[str, Any], frontend: DeploymentHandle,
                 speaker_cache: DeploymentHandle, gpt: DeploymentHandle, sovits: DeploymentHandle,
                 vocoder: DeploymentHandle):
        self.settings = Settings.from_args(settings_args)
        self.store = VoiceStore(self.settings.data_dir)
        self.store.cleanup_partial()
        self.registry = ModelRegistry(self.settings.data_dir)
        self.stages = GraphStages(frontend, speaker_cache, gpt, sovits, vocoder)
        self.models = ModelAdmin(self.registry, self.stages, self.settings)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """`serve deploy` with a changed `user_config.models`: swap declaratively, no restart."""
        await self.models.apply_declared(config.get("models") or {})

    def __serve_build_asgi_app__(self):
        return create_app(self.stages, self.store, self.settings, self.registry, self.models)


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """Serve config entry point: `import_path: serve_app.graph:build_app`, `args:` = Settings."""
    settings = Settings.from_args(args)
    paths = resolve_model_paths(settings)
    register_declared_model(settings, paths)
    ensure_demo_voice(settings)
    device, data_dir = settings.device, settings.data_dir
    frontend = FrontendDeployment.bind(paths.bert_dir, device=device)
    dtype = settings.dtype
    speaker_cache = SpeakerCacheDeployment.bind(data_dir, frontend, device=device, dtype=dtype)
    gpt = GPTDeployment.bind(data_dir, device=device, dtype=settings.gpt_weights_dtype,
                             max_batch=settings.gpt_max_batch, max_seq=settings.gpt_max_seq,
                             compile=settings.gpt_compile)
    sovits = SoVITSDeployment.bind(data_dir, device=device, dtype=dtype, backend=settings.sovits_backend)
    vocoder = VocoderDeployment.bind(data_dir, device=device, dtype=dtype, backend=settings.sovits_backend)
    return Ingress.bind(settings.to_args(), frontend, speaker_cache, gpt, sovits, vocoder)
