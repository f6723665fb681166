"""Audio facts and signal processing shared by every stage (SPEC 3.1-3.2).

The one place for sample rates, STFT parameters and the reference-clip preprocessing that
upstream GPT-SoVITS v2 applies before HuBERT and the reference encoder.
"""

from __future__ import annotations

import functools

import numpy as np
import soxr
import torch

SAMPLE_RATE = 32000  # SoVITS output and reference spectrogram rate
SSL_SAMPLE_RATE = 16000  # HuBERT input rate
N_FFT = 2048
HOP_LENGTH = 640  # 50 Hz latent frames
WIN_LENGTH = 2048
SPEC_BINS = N_FFT // 2 + 1  # 1025
SAMPLES_PER_TOKEN = 2 * HOP_LENGTH  # one 25 Hz semantic token = two latent frames = 1280 samples
# Upstream appends int(0.3 * 32000) zeros to the *16 kHz* prompt waveform: 0.6 s of silence.
PROMPT_PAD_SAMPLES = 9600
REF_MIN_SECONDS = 3
REF_MAX_SECONDS = 10

# librosa 0.10's default resampler is soxr with quality "soxr_hq", i.e. soxr's "HQ".
_SOXR_QUALITY = "HQ"


def resample(wav: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Resample a float waveform ``[N]`` (or ``[C, N]``) the way ``librosa.load(sr=...)`` does.

    soxr "HQ", then the length fixed to ``ceil(N * sr_to / sr_from)`` as librosa does.
    """
    wav = np.asarray(wav, dtype=np.float32)
    if sr_from == sr_to:
        return wav
    n_out = int(np.ceil(wav.shape[-1] * sr_to / sr_from))
    # soxr wants [frames, channels]; process 1-D directly.
    if wav.ndim == 1:
        out = soxr.resample(wav, sr_from, sr_to, quality=_SOXR_QUALITY)
    else:
        out = soxr.resample(wav.T, sr_from, sr_to, quality=_SOXR_QUALITY).T
    return _fix_length(np.ascontiguousarray(out, dtype=np.float32), n_out)


def _fix_length(wav: np.ndarray, n: int) -> np.ndarray:
    if wav.shape[-1] > n:
        return wav[..., :n]
    if wav.shape[-1] < n:
        pad = [(0, 0)] * (wav.ndim - 1) + [(0, n - wav.shape[-1])]
        return np.pad(wav, pad)
    return wav


def normalize_reference_peak(wav):
    """Upstream's reference scaling: if the peak exceeds 1, divide by ``min(2, peak)``."""
    peak = float(abs(wav).max()) if len(wav) else 0.0
    if peak > 1.0:
        return wav / min(2.0, peak)
    return wav


@functools.lru_cache(maxsize=8)
def _hann(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.hann_window(WIN_LENGTH, periodic=True, device=device, dtype=dtype)


def spectrogram(wav32k) -> torch.Tensor:
    """Linear-magnitude STFT of a 32 kHz waveform: ``[N] -> [1025, T]`` (``[B, N] -> [B, 1025, T]``).

    Reflect-pad ``(n_fft - hop) / 2 = 704`` samples each side, ``center=False``, periodic Hann,
    magnitude ``sqrt(re^2 + im^2 + 1e-8)``; ``T = N // 640`` for ``N`` a multiple of 640.
    """
    x = torch.as_tensor(wav32k)
    if not x.is_floating_point():
        x = x.float()
    squeeze = x.dim() == 1
    if squeeze:
        x = x[None]
    pad = (N_FFT - HOP_LENGTH) // 2
    x = torch.nn.functional.pad(x[:, None], (pad, pad), mode="reflect")[:, 0]
    spec = torch.stft(
        x,
        N_FFT,
        hop_length=HOP_LENGTH,
        win_length=WIN_LENGTH,
        window=_hann(x.device, x.dtype),
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    mag = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-8)
    return mag[0] if squeeze else mag


def hubert_input(wav32k):
    """32 kHz reference -> the 16 kHz HuBERT input upstream builds (resample + 9600 zeros).

    Accepts a numpy array or a tensor ``[N]`` and returns the same kind (float32, ``[M]``).
    """
    as_tensor = isinstance(wav32k, torch.Tensor)
    wav = wav32k.detach().cpu().numpy() if as_tensor else np.asarray(wav32k)
    wav16k = resample(wav.astype(np.float32, copy=False), SAMPLE_RATE, SSL_SAMPLE_RATE)
    out = np.concatenate([wav16k, np.zeros(PROMPT_PAD_SAMPLES, dtype=np.float32)])
    return torch.from_numpy(out) if as_tensor else out


def to_int16(wav: np.ndarray) -> np.ndarray:
    """float waveform -> int16 as upstream serves it: `(x * 32768).astype(int16)`, i.e. truncation
    toward zero. Upstream does not clip (+1.0 wraps to -32768); we clip, and map NaN to 0 - the
    only deviations, and they only touch samples that would otherwise be garbage."""
    scaled = np.nan_to_num(np.asarray(wav, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0) * 32768.0
    return np.clip(scaled, -32768, 32767).astype(np.int16)
