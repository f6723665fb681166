"""One synthesis request, orchestrated over five stages.

`Stages` is what the orchestration needs; `serve_app.graph.GraphStages` implements it with Ray
Serve DeploymentHandles and `serve_app.local.LocalStages` with an in-process `models.Pipeline`.
Both run the same stage functions from `models.pipeline`, so for the same request and seed the
Serve graph returns the samples the in-process Pipeline returns.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

import numpy as np

from models.audio import SAMPLE_RATE
from models.pipeline import SynthesisSettings, TextFeatures, VoicePrompt, finish_fragment, sentence_seed
from models.guard import GuardedStream, GuardLog, SentenceOutcome, guarded_generate_async
from models.streaming import SentenceStream, StreamingConfig
from deployments import guard_metrics
from deployments.model_registry import ModelRef
from deployments.voice_store import VoiceRecord


@dataclass(frozen=True)
class SynthesisJob:
    voice: VoiceRecord
    text: str
    language: str
    settings: SynthesisSettings
    model: ModelRef  # one exact version for every stage of this request
    prompt_text: str  # the reference transcript (the voice's own unless the request overrides it)
    prompt_language: str
    emotion: str = "default"  # which of the voice's reference clips
    requested_emotion: str = "default"  # what the request asked for (differs when it fell back)


class Stages(Protocol):
    async def sentences(self, text: str, language: str, method: str) -> list[str]: ...
    async def text_features(self, text: str, language: str) -> TextFeatures: ...
    async def voice_prompt(self, voice: VoiceRecord, emotion: str, prompt_text: str, prompt_language: str,
                           model_key: str) -> VoicePrompt: ...
    async def t2s(self, prompt: VoicePrompt, target: TextFeatures, settings: SynthesisSettings,
                  seed: int, model_key: str) -> np.ndarray: ...
    def t2s_stream(self, prompt: VoicePrompt, target: TextFeatures, settings: SynthesisSettings, seed: int,
                   model_key: str, chunk_sizes: tuple[int, int]) -> AsyncIterator[np.ndarray]: ...
    async def latent(self, codes: np.ndarray, target: TextFeatures, prompt: VoicePrompt,
                     settings: SynthesisSettings, seed: int, model_key: str) -> np.ndarray: ...
    async def vocode(self, z: np.ndarray, prompt: VoicePrompt, model_key: str) -> np.ndarray: ...
    async def forget_voice(self, voice_id: str) -> None: ...
    async def ready(self) -> bool: ...


class PreparedSynthesis:
    """A request whose sentences and voice prompt are ready: errors in those surface before any
    audio byte is sent, so a streamed response can still answer with a clean 4xx."""

    def __init__(self, stages: Stages, job: SynthesisJob, sentences: list[str], prompt: VoicePrompt,
                 started: float):
        self.stages, self.job, self.sentences, self.prompt = stages, job, sentences, prompt
        self.started = started  # perf_counter() when the request began: TTFA and RTF count from here
        self.deadline = float("inf")  # event-loop time after which the request is cancelled
        self.guard_log = GuardLog()  # one outcome per sentence: the X-Generation-Guard header

    async def fragments(self) -> AsyncIterator[np.ndarray]:
        """Yield each sentence's finished audio (float32, 32 kHz, pause appended), in order.

        T2S of sentence i+1 runs while SoVITS and the vocoder work on sentence i."""
        job, stages = self.job, self.stages
        features = await asyncio.gather(*(stages.text_features(s, job.language) for s in self.sentences))

        def start_t2s(index: int) -> asyncio.Task:
            seed = sentence_seed(job.settings.seed, index)

            async def decode(attempt_seed: int | None) -> np.ndarray:
                return await stages.t2s(self.prompt, features[index], job.settings, attempt_seed, job.model.key)

            return asyncio.ensure_future(guarded_generate_async(
                decode, seed, job.settings.guard_context(self.prompt, features[index]), job.settings.guard,
                cap=job.settings.guard_cap))

        pending = start_t2s(0)
        try:
            for index, target in enumerate(features):
                codes, attempts, verdicts = await pending
                self._record(SentenceOutcome.from_attempts(index, attempts, verdicts))
                pending = start_t2s(index + 1) if index + 1 < len(features) else None
                seed = sentence_seed(job.settings.seed, index)
                z = await stages.latent(codes, target, self.prompt, job.settings, seed, job.model.key)
                wav = await stages.vocode(z, self.prompt, job.model.key)
                yield finish_fragment(wav, job.settings.fragment_interval)
        finally:
            if pending is not None and not pending.done():
                pending.cancel()

    async def pieces(self, config: StreamingConfig) -> AsyncIterator[np.ndarray]:
        """Token-chunk streaming: each sentence's audio leaves in pieces while T2S still decodes
        it (models/streaming.py has the scheme), under the generation guard (a failure seen
        before the sentence's first audio is retried unheard, later ones are cut), then the
        sentence's pause. Leaving the loop early (client gone) closes the T2S stream, which stops
        decoding that request."""
        job, stages = self.job, self.stages
        features = await asyncio.gather(*(stages.text_features(s, job.language) for s in self.sentences))
        pause = np.zeros(int(SAMPLE_RATE * job.settings.fragment_interval), dtype=np.float32)
        for index, target in enumerate(features):
            seed = sentence_seed(job.settings.seed, index)
            stream, current, sent = SentenceStream(config, job.settings.speed), 0, False

            async def step(final: bool) -> np.ndarray:
                z = await stages.latent(stream.token_array(), target, self.prompt, job.settings, seed,
                                        job.model.key)
                window = stream.window(z.shape[-1], final)
                wav = await stages.vocode(z[:, :, window.start:window.stop], self.prompt, job.model.key)
                return stream.take(wav, window, final)

            def open_stream(attempt_seed: int | None, target: TextFeatures = target) -> AsyncIterator[np.ndarray]:
                return stages.t2s_stream(self.prompt, target, job.settings, attempt_seed, job.model.key,
                                         config.chunk_sizes())

            guarded = GuardedStream(open_stream, seed, job.settings.guard_context(self.prompt, target),
                                    job.settings.guard, cap=job.settings.guard_cap, chunk_sizes=config.chunk_sizes(),
                                    index=index)
            chunks = guarded.chunks(committed=lambda: sent)
            try:
                async for attempt, chunk in chunks:
                    if attempt != current:  # a retried attempt: nothing of the dropped one was heard
                        stream, current = SentenceStream(config, job.settings.speed), attempt
                    stream.add(chunk)
                    if stream.ready():
                        piece = await step(final=False)
                        if piece.size:
                            sent = True
                            yield piece
            finally:
                await chunks.aclose()
            if guarded.outcome is not None:
                self._record(guarded.outcome)
            if stream.ready(final=True):
                yield await step(final=True)
            if pause.size:
                yield pause

    def _record(self, outcome: SentenceOutcome) -> None:
        guard_metrics.record_outcome(self.job.model.key, self.guard_log.add(outcome))


async def prepare(stages: Stages, job: SynthesisJob) -> PreparedSynthesis:
    started = time.perf_counter()
    sentences, prompt = await asyncio.gather(
        stages.sentences(job.text, job.language, job.settings.text_split_method),
        stages.voice_prompt(job.voice, job.emotion, job.prompt_text, job.prompt_language, job.model.key),
    )
    return PreparedSynthesis(stages, job, sentences, prompt, started)
