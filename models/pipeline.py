"""In-process GPT-SoVITS v2 synthesis: reference clip + transcript + text -> 32 kHz waveform.

No Ray here. The stage functions below are the single implementation of each step; the Ray Serve
deployments call the same functions, and `Pipeline` composes them in one process. That is what
makes `Pipeline` the numerical reference for the Serve graph: same inputs and seed, same samples.

Flow per request (upstream `TTS.run` with `parallel_infer=False`, `batch_size=1`):
  split text into sentences -> per sentence: phones + BERT -> T2S tokens -> SoVITS latent ->
  vocoder -> peak-normalise -> append `fragment_interval` seconds of silence -> concatenate.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from models import audio
from models.audio import to_int16  # noqa: F401  (re-exported: the Pipeline's final conversion)
from models.hubert import HubertFeatures
from models.sovits import SoVITS
from models.guard import GuardConfig, GuardedStream, SentenceContext, SentenceOutcome, guard_cap, guarded_generate
from models.streaming import SentenceStream, StreamingConfig
from models.t2s import SamplingParams, Text2Semantic, generate, generate_stream, upstream_sovits_codes
from models.text.frontend import TextFrontend
from models.text.split import SPLITS
from models.vocoder import Vocoder

BERT_DIM = 1024  # T2S bert_proj input width, hard-wired upstream


@dataclass(frozen=True)
class ModelPaths:
    """The files of one voice model: a GPT/SoVITS pair plus the shared HuBERT and BERT folders."""

    gpt: str
    sovits: str
    hubert_dir: str
    bert_dir: str

    def version(self) -> str:
        """Content-derived version tag: changes whenever either checkpoint's bytes change."""
        digest = hashlib.sha256()
        for path in (self.gpt, self.sovits):
            digest.update(_file_digest(path).encode())
        return digest.hexdigest()[:12]


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class TextFeatures:
    """Frontend output for one piece of text."""

    phone_ids: np.ndarray  # int64 [n]
    bert: np.ndarray  # float32 [1024, n]
    norm_text: str


@dataclass
class VoicePrompt:
    """Everything synthesis needs from a reference clip, for one SoVITS model version."""

    prompt_tokens: np.ndarray  # int64 [T25] semantic tokens of the reference audio
    ge: np.ndarray  # float32 [1, gin, 1] global timbre embedding
    prompt_phones: np.ndarray  # int64 [n] phones of the transcript
    prompt_bert: np.ndarray  # float32 [1024, n]
    model_version: str = ""


@dataclass
class SynthesisSettings:
    """Per-request knobs (upstream api_v2 names where they exist)."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    text_split_method: str = "cut5"
    speed: float = 1.0
    noise_scale: float = 0.5
    fragment_interval: float = 0.3
    seed: int = 0
    guard: GuardConfig = field(default_factory=GuardConfig)

    def guard_context(self, prompt: "VoicePrompt", target: "TextFeatures") -> SentenceContext:
        """What the generation guard checks one sentence's tokens against (models/guard.py)."""
        return SentenceContext.from_request(prompt.prompt_tokens, prompt.prompt_phones, target.phone_ids, self.guard)

    @property
    def guard_cap(self) -> int | None:
        return guard_cap(self.sampling.max_new_tokens)


# --------------------------------------------------------------------------------------------
# stage functions (shared with deployments/)
# --------------------------------------------------------------------------------------------
def sentence_seed(request_seed: int, index: int) -> int:
    """Seed for sentence `index` of a request: deterministic, distinct per sentence."""
    digest = hashlib.blake2b(f"{request_seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def prompt_text_for_frontend(text: str, language: str) -> str:
    """The reference transcript as upstream feeds it: no newlines, never split into sentences, and
    ending in sentence punctuation (`.` for English, `。` otherwise) if it does not already."""
    text = text.strip("\n").replace("\n", " ")
    if text and text[-1] not in SPLITS:
        text += "." if language == "en" else "。"
    return text


def reference_features(hubert: HubertFeatures, sovits: SoVITS, wav32k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference clip at 32 kHz -> (prompt semantic tokens [T25], ge [1, gin, 1])."""
    wav32k = audio.normalize_reference_peak(np.asarray(wav32k, dtype=np.float32))
    with torch.inference_mode():
        ssl = hubert(torch.from_numpy(audio.hubert_input(wav32k)))
        tokens = sovits.extract_prompt_tokens(ssl)
        spec = audio.spectrogram(torch.from_numpy(wav32k))
        ge = sovits.reference_embedding([spec])
    return tokens.cpu().numpy().astype(np.int64), ge.float().cpu().numpy()


def t2s_inputs(prompt: VoicePrompt, target: TextFeatures) -> tuple[np.ndarray, np.ndarray]:
    """T2S conditioning: the transcript's phones and BERT rows followed by the sentence's."""
    return (np.concatenate([prompt.prompt_phones, target.phone_ids]),
            np.concatenate([prompt.prompt_bert, target.bert], axis=1))


def t2s_tokens(model: Text2Semantic, prompt: VoicePrompt, target: TextFeatures, params: SamplingParams) -> np.ndarray:
    """Semantic tokens for one sentence, as upstream hands them to SoVITS."""
    phones, bert = t2s_inputs(prompt, target)
    result = generate(model, torch.from_numpy(phones), torch.from_numpy(bert),
                      torch.from_numpy(prompt.prompt_tokens), params)
    return upstream_sovits_codes(result).cpu().numpy().astype(np.int64)


NOISE_BLOCK_FRAMES = 256


def latent_frames(n_codes: int, speed: float) -> int:
    """SoVITS latent frames for `n_codes` semantic tokens (50 Hz; stretched by 1/speed)."""
    return 2 * n_codes if speed == 1.0 else int(2 * n_codes / speed) + 1


def frame_noise(seed: int, channels: int, frames: int) -> torch.Tensor:
    """The flow's Gaussian noise for frames [0, frames), drawn in fixed blocks of frames, each from
    its own seed: frame i gets the same noise however long the sequence is, so a streamed prefix
    decode and the whole-sentence decode see identical noise."""
    blocks = []
    for block in range((frames + NOISE_BLOCK_FRAMES - 1) // NOISE_BLOCK_FRAMES):
        generator = torch.Generator().manual_seed(sentence_seed(seed, 1_000_000 + block))
        blocks.append(torch.randn(channels, NOISE_BLOCK_FRAMES, generator=generator))
    return torch.cat(blocks, dim=1)[None, :, :frames]


def latent(sovits: SoVITS, codes: np.ndarray, phone_ids: np.ndarray, ge: np.ndarray,
           noise_scale: float, speed: float, seed: int) -> np.ndarray:
    """SoVITS tokens -> latent frames [1, inter, F] (the flow's output), with seeded noise."""
    noise = None
    if noise_scale != 0:
        noise = frame_noise(seed, sovits.config.inter_channels, latent_frames(len(codes), speed))
    with torch.inference_mode():
        z = sovits.decode_latent(torch.from_numpy(codes), torch.from_numpy(phone_ids), torch.from_numpy(ge),
                                 noise_scale=noise_scale, speed=speed, noise=noise)
    return z.float().cpu().numpy()


def vocode(vocoder: Vocoder, z: np.ndarray, ge: np.ndarray) -> np.ndarray:
    """Latent frames -> float32 waveform [N] at 32 kHz."""
    with torch.inference_mode():
        wav = vocoder(torch.from_numpy(z), torch.from_numpy(ge))
    return wav.float().cpu().numpy().reshape(-1)


def finish_fragment(wav: np.ndarray, fragment_interval: float) -> np.ndarray:
    """Upstream post-processing of one sentence: peak-normalise above 1, then append silence."""
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if peak > 1.0:
        wav = wav / peak
    pause = np.zeros(int(audio.SAMPLE_RATE * fragment_interval), dtype=np.float32)
    return np.concatenate([wav.astype(np.float32), pause])


# --------------------------------------------------------------------------------------------
class Pipeline:
    """All stages of one voice model in this process."""

    def __init__(self, paths: ModelPaths, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.paths = paths
        self.model_version = paths.version()
        self.frontend = TextFrontend(paths.bert_dir, device=device)
        self.hubert = HubertFeatures.from_dir(paths.hubert_dir, device=device, dtype=dtype)
        self.t2s = Text2Semantic.from_checkpoint(paths.gpt, device=device, dtype=dtype)
        self.sovits = SoVITS.from_checkpoint(paths.sovits, device=device, dtype=dtype)
        self.vocoder = Vocoder.from_checkpoint(paths.sovits, device=device, dtype=dtype)

    def text_features(self, text: str, lang: str) -> TextFeatures:
        (phones, bert, norm_text), = self.frontend.process_batch([(text, lang)])
        bert = bert.float().cpu().numpy() if isinstance(bert, torch.Tensor) else np.asarray(bert, dtype=np.float32)
        return TextFeatures(np.asarray(phones, dtype=np.int64), bert, norm_text)

    def voice_prompt(self, wav32k: np.ndarray, prompt_text: str, prompt_lang: str) -> VoicePrompt:
        tokens, ge = reference_features(self.hubert, self.sovits, wav32k)
        text = self.text_features(prompt_text_for_frontend(prompt_text, prompt_lang), prompt_lang)
        return VoicePrompt(tokens, ge, text.phone_ids, text.bert, self.model_version)

    def sentences(self, text: str, lang: str, method: str) -> list[str]:
        return self.frontend.split_sentences(text, lang, method)

    def trace(self, prompt: VoicePrompt, text: str, lang: str, settings: SynthesisSettings) -> Iterator[dict]:
        """Per sentence, every intermediate: the T2S input (all_phones, bert, prompt), its sampled
        tokens, the codes handed to SoVITS, the target phones and the raw SoVITS waveform."""
        for index, sentence in enumerate(self.sentences(text, lang, settings.text_split_method)):
            seed = sentence_seed(settings.seed, index)
            target = self.text_features(sentence, lang)
            phones, bert = t2s_inputs(prompt, target)

            def decode(attempt_seed: int | None):
                return generate(self.t2s, torch.from_numpy(phones), torch.from_numpy(bert),
                                torch.from_numpy(prompt.prompt_tokens), settings.sampling.with_seed(attempt_seed))

            result, attempts, verdicts = guarded_generate(
                decode, seed, settings.guard_context(prompt, target), settings.guard, cap=settings.guard_cap,
                tokens_of=upstream_sovits_codes)
            codes = upstream_sovits_codes(result).cpu().numpy().astype(np.int64)
            z = latent(self.sovits, codes, target.phone_ids, prompt.ge, settings.noise_scale, settings.speed, seed)
            yield {"sentence": sentence, "all_phones": phones, "bert": bert, "prompt": prompt.prompt_tokens,
                   "tokens": result.tokens.cpu().numpy(), "codes": codes, "text": target.phone_ids,
                   "wav": vocode(self.vocoder, z, prompt.ge),
                   "guard": SentenceOutcome.from_attempts(index, attempts, verdicts)}

    def synthesize_stream(self, prompt: VoicePrompt, text: str, lang: str,
                          settings: SynthesisSettings) -> Iterator[np.ndarray]:
        """Yield one finished fragment (sentence audio + pause) per sentence, float32 32 kHz."""
        for step in self.trace(prompt, text, lang, settings):
            yield finish_fragment(step["wav"], settings.fragment_interval)

    def synthesize_streaming(self, prompt: VoicePrompt, text: str, lang: str, settings: SynthesisSettings,
                             config: StreamingConfig | None = None) -> Iterator[np.ndarray]:
        """Token-chunk streaming: T2S yields chunks, each becomes audio as soon as it is stable
        (see models/streaming.py), under the generation guard; after each sentence its pause.
        The reference for the Serve graph's streamed responses."""
        config = config or StreamingConfig()
        for index, sentence in enumerate(self.sentences(text, lang, settings.text_split_method)):
            seed = sentence_seed(settings.seed, index)
            target = self.text_features(sentence, lang)
            phones, bert = t2s_inputs(prompt, target)

            def open_stream(attempt_seed: int | None):
                return (c.numpy() for c in generate_stream(
                    self.t2s, torch.from_numpy(phones), torch.from_numpy(bert),
                    torch.from_numpy(prompt.prompt_tokens), settings.sampling.with_seed(attempt_seed),
                    chunk_sizes=config.chunk_sizes()))

            def step(stream: SentenceStream, final: bool) -> np.ndarray:
                z = latent(self.sovits, stream.token_array(), target.phone_ids, prompt.ge, settings.noise_scale,
                           settings.speed, seed)
                window = stream.window(z.shape[-1], final)
                return stream.take(vocode(self.vocoder, z[:, :, window.start:window.stop], prompt.ge), window, final)

            guarded = GuardedStream(open_stream, seed, settings.guard_context(prompt, target), settings.guard,
                                    cap=settings.guard_cap, chunk_sizes=config.chunk_sizes(), index=index)
            stream, current, sent = SentenceStream(config, settings.speed), 0, False
            for attempt, chunk in guarded.chunks_sync(committed=lambda: sent):
                if attempt != current:  # a retried attempt: nothing of the dropped one was heard
                    stream, current = SentenceStream(config, settings.speed), attempt
                stream.add(chunk)
                if stream.ready():
                    piece = step(stream, final=False)
                    if piece.size:
                        sent = True
                        yield piece
            if stream.ready(final=True):
                yield step(stream, final=True)
            yield np.zeros(int(audio.SAMPLE_RATE * settings.fragment_interval), dtype=np.float32)

    def synthesize(self, prompt: VoicePrompt, text: str, lang: str, settings: SynthesisSettings) -> np.ndarray:
        parts = list(self.synthesize_stream(prompt, text, lang, settings))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def load_reference_wav(path: str | Path) -> np.ndarray:
    """A reference clip file -> float32 mono at 32 kHz."""
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.resample(data.mean(axis=1), sr, audio.SAMPLE_RATE)
