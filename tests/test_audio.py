"""Audio constants and reference preprocessing (models/audio.py) against upstream goldens."""

import numpy as np
import pytest
import soundfile as sf
import torch

from models import audio


def _read32k(path):
    pcm, sr = sf.read(path, dtype="int16")
    assert sr == audio.SAMPLE_RATE
    return pcm.astype(np.float32) / 32768.0


def _rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def test_constants_are_consistent():
    assert audio.SAMPLES_PER_TOKEN == 2 * audio.HOP_LENGTH == 1280
    assert audio.SPEC_BINS == 1025
    assert audio.PROMPT_PAD_SAMPLES == int(0.3 * audio.SAMPLE_RATE)


@pytest.mark.parametrize("wav,key", [("ref.wav", "ref_spec"), ("ref2.wav", "ref2_spec")])
def test_spectrogram_matches_upstream(golden_dir, wav, key):
    golden = np.load(golden_dir / "ref_spec.npz")[key][0]
    spec = audio.spectrogram(torch.from_numpy(_read32k(golden_dir / wav)))
    assert spec.shape == golden.shape
    assert _rel_err(spec.numpy(), golden) <= 1e-4


def test_spectrogram_frame_count_and_batch():
    wav = torch.randn(2, 640 * 7 + 100)
    spec = audio.spectrogram(wav)
    assert spec.shape == (2, 1025, (wav.shape[-1] + 1408 - 2048) // 640 + 1)
    torch.testing.assert_close(spec[1], audio.spectrogram(wav[1]))


def test_hubert_input_matches_upstream(golden_dir):
    golden = np.load(golden_dir / "prompt_semantic.npz")["hubert_input_wav16k"][0]
    out = audio.hubert_input(_read32k(golden_dir / "ref.wav"))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == golden.shape
    assert _rel_err(out, golden) <= 1e-4
    assert not out[-audio.PROMPT_PAD_SAMPLES:].any()


def test_hubert_input_keeps_tensor_type():
    out = audio.hubert_input(torch.zeros(32000))
    assert isinstance(out, torch.Tensor) and out.shape == (16000 + audio.PROMPT_PAD_SAMPLES,)


def test_resample_length_like_librosa():
    wav = np.random.default_rng(0).standard_normal(44101).astype(np.float32)
    out = audio.resample(wav, 44100, 32000)
    assert out.shape == (int(np.ceil(44101 * 32000 / 44100)),) and out.dtype == np.float32
    np.testing.assert_array_equal(audio.resample(wav, 16000, 16000), wav)


def test_resample_keeps_a_tone():
    t = np.arange(48000) / 48000
    wav = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = audio.resample(wav, 48000, 16000)
    ref = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    assert np.abs(out[200:-200] - ref[200:-200]).max() < 1e-3


@pytest.mark.parametrize("peak,expected", [(0.5, 0.5), (1.5, 1.0), (4.0, 2.0)])
def test_normalize_reference_peak(peak, expected):
    wav = np.array([0.0, -peak, peak / 2], dtype=np.float32)
    assert np.abs(audio.normalize_reference_peak(wav)).max() == pytest.approx(expected)
