"""Streaming synthesis of one sentence: semantic tokens arrive in chunks, audio leaves in pieces.

SoVITS is not causal (its text encoder attends over the whole token sequence and the flow and
generator are convolutional), so a piece of audio is final only once enough tokens to its right
exist. The scheme:

* After each token chunk, SoVITS decodes the whole token prefix (cheap next to T2S) with the same
  per-frame noise the whole-sentence decode uses (`pipeline.frame_noise`).
* Audio is emitted only up to `lookahead_tokens` before the newest token; the rest waits for the
  next chunk, when it has right context.
* The vocoder runs on a window of latent frames with `vocoder_context_frames` of left context
  (its convolutions then see the same past as in a whole-sentence run) and right context.
* Consecutive pieces overlap by `crossfade_samples`, joined with an equal-power (sin/cos) fade, so
  no discontinuity is audible where a piece computed with less context meets the next one.

The state lives in `SentenceStream` (plain numpy); the two model calls are passed in, so the same
logic runs in-process (`Pipeline`) and across Ray Serve deployments (the ingress holds the state).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from models.audio import HOP_LENGTH

LatentFn = Callable[[np.ndarray], np.ndarray]  # tokens [n] -> z [1, C, F]
VocodeFn = Callable[[np.ndarray], np.ndarray]  # z window [1, C, f] -> wav [f * HOP_LENGTH]


@dataclass(frozen=True)
class StreamingConfig:
    first_chunk_tokens: int = 12  # 0.48 s of audio: small, for time to first audio
    chunk_tokens: int = 48  # later chunks: larger, fewer SoVITS re-decodes and hops
    lookahead_tokens: int = 4  # right context a piece waits for before it is emitted
    vocoder_context_frames: int = 32  # left/right latent context for the vocoder window
    crossfade_samples: int = 1280  # 40 ms equal-power crossfade at every join

    def chunk_sizes(self) -> tuple[int, int]:
        return self.first_chunk_tokens, self.chunk_tokens


def _fade_curves(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    return np.cos(t * np.pi / 2).astype(np.float32), np.sin(t * np.pi / 2).astype(np.float32)


@dataclass
class SentenceStream:
    """Feed token chunks with `push`, finish with `finish`; each returns the audio ready now."""

    latent_fn: LatentFn
    vocode_fn: VocodeFn
    config: StreamingConfig = field(default_factory=StreamingConfig)
    speed: float = 1.0
    tokens: list[int] = field(default_factory=list)
    emitted: int = 0  # samples already handed out
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # computed past `emitted`

    def push(self, chunk: np.ndarray) -> np.ndarray:
        self.tokens.extend(int(t) for t in np.asarray(chunk).reshape(-1))
        stable = len(self.tokens) - self.config.lookahead_tokens
        if stable <= 0:
            return np.zeros(0, np.float32)
        return self._emit(self._frames(stable), final=False)

    def finish(self) -> np.ndarray:
        if not self.tokens:
            return np.zeros(0, np.float32)
        return self._emit(None, final=True)

    # ---------------------------------------------------------------------------------------
    def _frames(self, n_tokens: int) -> int:
        """Latent frames covering the first `n_tokens` tokens (fractional tokens at speed != 1)."""
        return int(2 * n_tokens / self.speed)

    def _emit(self, end_frame: int | None, final: bool) -> np.ndarray:
        cfg = self.config
        emitted_frames = self.emitted // HOP_LENGTH
        if not final and (end_frame - emitted_frames) * HOP_LENGTH <= cfg.crossfade_samples:
            return np.zeros(0, np.float32)  # not enough new stable audio yet
        z = self.latent_fn(np.asarray(self.tokens, dtype=np.int64))
        total_frames = z.shape[-1]
        end = total_frames if final else min(end_frame, total_frames)
        start = max(0, emitted_frames - cfg.vocoder_context_frames)
        stop = total_frames if final else min(total_frames, end + cfg.vocoder_context_frames)
        wav = self.vocode_fn(z[:, :, start:stop])
        wav = wav[(emitted_frames - start) * HOP_LENGTH:]  # from the first not-yet-emitted sample
        keep = (end - emitted_frames) * HOP_LENGTH  # samples this call hands out
        piece = wav[:keep].astype(np.float32, copy=True)
        if self.tail.size:
            n = min(self.tail.size, piece.size)
            fade_out, fade_in = _fade_curves(n)
            piece[:n] = self.tail[:n] * fade_out + piece[:n] * fade_in
        self.tail = wav[keep:keep + cfg.crossfade_samples].astype(np.float32) if not final else np.zeros(0, np.float32)
        self.emitted += piece.size
        return piece
