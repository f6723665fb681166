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

from typing import Any, AsyncIterator

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.common import StageError
from deployments.frontend import FrontendDeployment
from deployments.gpt import GPTDeployment
from deployments.sovits import SoVITSDeployment
from deployments.speaker_cache import SpeakerCacheDeployment
from deployments.vocoder import VocoderDeployment
from deployments.voice_store import VoiceRecord, VoiceStore
from models.pipeline import ModelPaths, SynthesisSettings, TextFeatures, VoicePrompt
from serve_app.api import create_app
from serve_app.errors import ApiError
from serve_app.model_files import ensure_demo_voice, resolve_model_paths
from serve_app.settings import Settings


def _check(result: Any) -> Any:
    if isinstance(result, StageError):
        raise ApiError(result.status, result.code, result.message)
    return result


class GraphStages:
    """`serve_app.synthesis.Stages` over DeploymentHandles: arrays travel through Ray's object store."""

    def __init__(self, model_version: str, frontend: DeploymentHandle, speaker_cache: DeploymentHandle,
                 gpt: DeploymentHandle, sovits: DeploymentHandle, vocoder: DeploymentHandle):
        self.version = model_version
        self.frontend, self.speaker_cache, self.gpt = frontend, speaker_cache, gpt
        self.sovits, self.vocoder = sovits, vocoder

    async def model_version(self, model_id: str) -> str:
        return self.version

    async def sentences(self, text: str, language: str, method: str) -> list[str]:
        return _check(await self.frontend.sentences.remote(text, language, method))

    async def text_features(self, text: str, language: str) -> TextFeatures:
        return _check(await self.frontend.text_features.remote((text, language)))

    async def voice_prompt(self, voice: VoiceRecord, prompt_text: str, prompt_language: str,
                           model_version: str) -> VoicePrompt:
        return _check(await self.speaker_cache.get.remote(voice.id, prompt_text, prompt_language, model_version))

    async def t2s(self, prompt: VoicePrompt, target: TextFeatures, settings: SynthesisSettings, seed: int,
                  model_version: str) -> np.ndarray:
        params = settings.sampling.with_seed(seed)
        return _check(await self.gpt.generate.remote(prompt, target, params))

    async def t2s_stream(self, prompt: VoicePrompt, target: TextFeatures, settings: SynthesisSettings, seed: int,
                         model_version: str, chunk_sizes: tuple[int, int]) -> AsyncIterator[np.ndarray]:
        params = settings.sampling.with_seed(seed)
        responses = self.gpt.options(stream=True).generate_stream.remote(prompt, target, params, *chunk_sizes)
        try:
            async for chunk in responses:
                yield _check(chunk)
        finally:
            responses.cancel()  # a no-op once the stream finished; stops the decode if we left early

    async def latent(self, codes: np.ndarray, target: TextFeatures, prompt: VoicePrompt,
                     settings: SynthesisSettings, seed: int, model_version: str) -> np.ndarray:
        item = (codes, target.phone_ids, prompt.ge, settings.noise_scale, settings.speed, seed)
        return await self.sovits.latent.remote(item)

    async def vocode(self, z: np.ndarray, prompt: VoicePrompt, model_version: str) -> np.ndarray:
        return await self.vocoder.vocode.remote((z, prompt.ge))

    async def forget_voice(self, voice_id: str) -> None:
        await self.speaker_cache.forget.remote(voice_id)

    async def ready(self) -> bool:
        return True  # the ingress only takes traffic once Serve reports every deployment healthy


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    def __init__(self, settings_args: dict[str, Any], paths: ModelPaths, frontend: DeploymentHandle,
                 speaker_cache: DeploymentHandle, gpt: DeploymentHandle, sovits: DeploymentHandle,
                 vocoder: DeploymentHandle):
        self.settings = Settings.from_args(settings_args)
        self.store = VoiceStore(self.settings.data_dir)
        self.store.cleanup_partial()
        self.stages = GraphStages(paths.version(), frontend, speaker_cache, gpt, sovits, vocoder)

    def __serve_build_asgi_app__(self):
        return create_app(self.stages, self.store, self.settings)


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """Serve config entry point: `import_path: serve_app.graph:build_app`, `args:` = Settings."""
    settings = Settings.from_args(args)
    paths = resolve_model_paths(settings)
    ensure_demo_voice(settings)
    device = settings.device
    frontend = FrontendDeployment.bind(paths, device=device)
    speaker_cache = SpeakerCacheDeployment.bind(paths, settings.data_dir, frontend, device=device)
    gpt = GPTDeployment.bind(paths, device=device)
    sovits = SoVITSDeployment.bind(paths, device=device)
    vocoder = VocoderDeployment.bind(paths, device=device)
    return Ingress.bind(settings.to_args(), paths, frontend, speaker_cache, gpt, sovits, vocoder)
