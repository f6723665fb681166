"""SILK v3 voice-message output for QQ and WeChat bots, through an optional codec package.

QQ and WeChat play voice messages only as Tencent-flavoured SILK v3 (a file that starts with
`\\x02#!SILK_V3`, then length-prefixed 20 ms frames). The codec comes from the `silk-python` package
(import name `pysilk`, prebuilt wheels, maintained), installed by the `silk` extra:

    pip install 'gsv-serve[silk]'

Without it `available()` is False and the HTTP layer answers a 400 that names the extra
(`SILK_UNAVAILABLE_MESSAGE`); nothing else in the server depends on it.

SILK takes 16-bit PCM at the API rates 8/12/16/24/32/44.1/48 kHz and codes internally at up to
24 kHz; the decoder picks its own output rate, so the model's 32 kHz goes in unchanged (no resample
on our side). Whole files only: bots upload a finished voice message, they never stream it.
"""
from __future__ import annotations

import io

import numpy as np

from models.audio import to_int16

MEDIA_TYPE = "audio/silk"
EXTENSION = ".silk"
EXTRA = "silk"
PACKAGE = "silk-python"
# 24 kbps at the 24 kHz internal rate: what QQ/WeChat clients record themselves at; speech stays clear
BIT_RATE = 24_000
MAX_INTERNAL_RATE = 24_000
HEADER = b"\x02#!SILK_V3"  # the Tencent variant of the SILK v3 file magic
API_RATES = (8000, 12000, 16000, 24000, 32000, 44100, 48000)
SILK_UNAVAILABLE_MESSAGE = (f"silk output needs the optional codec: pip install 'gsv-serve[{EXTRA}]' "
                            f"(the {PACKAGE} package)")


def _codec():
    try:
        import pysilk
    except ImportError:
        return None
    return pysilk


def available() -> bool:
    """True when the SILK codec package is installed."""
    return _codec() is not None


class SilkUnavailableError(RuntimeError):
    def __init__(self) -> None:
        super().__init__(SILK_UNAVAILABLE_MESSAGE)


def encode_silk(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono samples (float32 in [-1, 1], or int16 as produced by the other formats) -> one SILK file."""
    codec = _codec()
    if codec is None:
        raise SilkUnavailableError()
    if sample_rate not in API_RATES:
        raise ValueError(f"SILK takes {API_RATES} Hz, not {sample_rate}")
    x = np.asarray(samples)
    pcm = x.astype("<i2", copy=False) if x.dtype == np.int16 else to_int16(x.astype(np.float32, copy=False))
    out = io.BytesIO()
    codec.encode(io.BytesIO(pcm.tobytes()), out, sample_rate, BIT_RATE,
                 max_internal_sample_rate=MAX_INTERNAL_RATE, tencent=True)
    return out.getvalue()


def decode_silk(data: bytes, sample_rate: int = 24_000) -> np.ndarray:
    """One SILK file -> int16 mono at `sample_rate` (what a QQ client would play)."""
    codec = _codec()
    if codec is None:
        raise SilkUnavailableError()
    out = io.BytesIO()
    codec.decode(io.BytesIO(bytes(data)), out, sample_rate)
    return np.frombuffer(out.getvalue(), dtype="<i2")
