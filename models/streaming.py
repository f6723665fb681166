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

The state lives in `SentenceStream` (plain numpy) and the caller makes the two model calls, so the
same logic runs in-process (`Pipeline`) and across Ray Serve deployments (the ingress holds the state).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.audio import HOP_LENGTH


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


@dataclass(frozen=True)
class VocoderWindow:
    start: int  # first latent frame fed to the vocoder (left context included)
    stop: int  # one past the last frame fed
    end: int  # frames up to here are handed out now
    emitted_frames: int  # frames handed out before this window


@dataclass
class SentenceStream:
    """The state of one streamed sentence. Per token chunk:

        stream.add(chunk)
        if stream.ready():                       # enough new stable audio to be worth a decode
            z = latent(stream.token_array())     # SoVITS over the whole prefix
            w = stream.window(z.shape[-1])
            piece = stream.take(vocode(z[:, :, w.start:w.stop]), w)

    and once the tokens are complete the same with `final=True` (always ready). `Pipeline`
    drives it with in-process model calls, the Serve ingress with stage calls.
    """

    config: StreamingConfig = field(default_factory=StreamingConfig)
    speed: float = 1.0
    tokens: list[int] = field(default_factory=list)
    emitted: int = 0  # samples already handed out
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # computed past `emitted`

    def add(self, chunk: np.ndarray) -> None:
        self.tokens.extend(int(t) for t in np.asarray(chunk).reshape(-1))

    def token_array(self) -> np.ndarray:
        return np.asarray(self.tokens, dtype=np.int64)

    def ready(self, final: bool = False) -> bool:
        if final:
            return bool(self.tokens)
        stable = len(self.tokens) - self.config.lookahead_tokens
        new_frames = self._frames(stable) - self.emitted // HOP_LENGTH
        return stable > 0 and new_frames * HOP_LENGTH > self.config.crossfade_samples

    def window(self, total_frames: int, final: bool = False) -> VocoderWindow:
        cfg = self.config
        emitted_frames = self.emitted // HOP_LENGTH
        if final:
            end = stop = total_frames
        else:
            end = min(self._frames(len(self.tokens) - cfg.lookahead_tokens), total_frames)
            stop = min(total_frames, end + cfg.vocoder_context_frames)
        return VocoderWindow(max(0, emitted_frames - cfg.vocoder_context_frames), stop, end, emitted_frames)

    def take(self, wav: np.ndarray, w: VocoderWindow, final: bool = False) -> np.ndarray:
        """The vocoder's output for window `w` -> the next piece of audio (crossfaded onto the last)."""
        wav = np.asarray(wav, dtype=np.float32).reshape(-1)[(w.emitted_frames - w.start) * HOP_LENGTH:]
        keep = max(0, (w.end - w.emitted_frames) * HOP_LENGTH)
        piece = wav[:keep].copy()
        if self.tail.size and piece.size:
            n = min(self.tail.size, piece.size)
            fade_out, fade_in = _fade_curves(n)
            piece[:n] = self.tail[:n] * fade_out + piece[:n] * fade_in
        self.tail = np.zeros(0, np.float32) if final else wav[keep:keep + self.config.crossfade_samples].copy()
        self.emitted += piece.size
        return piece

    def _frames(self, n_tokens: int) -> int:
        """Latent frames covering the first `n_tokens` tokens (stretched by 1/speed)."""
        return max(0, int(2 * n_tokens / self.speed))
