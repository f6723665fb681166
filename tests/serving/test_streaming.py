"""Token-chunk streaming: audio that joins without clicks and stays close to the whole-sentence decode."""
from __future__ import annotations

import numpy as np
import pytest

from models import audio
from models.pipeline import SynthesisSettings, load_reference_wav
from models.streaming import StreamingConfig
from models.t2s import SamplingParams

TEXT = "Good morning, how are you today? I hope the weather is nice where you are."
CONFIG = StreamingConfig(first_chunk_tokens=8, chunk_tokens=16, lookahead_tokens=4,
                         vocoder_context_frames=32, crossfade_samples=1280)


@pytest.fixture(scope="module")
def streamed_and_whole(pipeline, demo_assets):
    prompt = pipeline.voice_prompt(load_reference_wav(demo_assets["reference_wav"]),
                                   demo_assets["reference_text"], demo_assets["reference_language"])
    # a long-ish cap keeps the handoff identical (EOS stops decode everything in both paths)
    settings = SynthesisSettings(sampling=SamplingParams(max_new_tokens=400), seed=3, fragment_interval=0.0)
    pieces = list(pipeline.synthesize_streaming(prompt, TEXT, "en", settings, CONFIG))
    whole = pipeline.synthesize(prompt, TEXT, "en", settings)
    traces = list(pipeline.trace(prompt, TEXT, "en", settings))
    return pieces, whole, traces


def test_streamed_audio_has_the_whole_decodes_length(streamed_and_whole):
    pieces, whole, traces = streamed_and_whole
    assert all(t["codes"].size == t["tokens"].size for t in traces), "EOS stops expected for this check"
    assert sum(p.size for p in pieces) == whole.size


def test_first_piece_arrives_after_the_first_small_chunk(streamed_and_whole):
    pieces, _, _ = streamed_and_whole
    first_audio = next(p for p in pieces if p.size)
    # the first chunk is 8 tokens, 4 of them held back as look-ahead: <= 8 tokens of audio
    assert first_audio.size <= 8 * audio.SAMPLES_PER_TOKEN
    assert len([p for p in pieces if p.size]) >= 4


def test_streamed_matches_whole_except_near_joins(streamed_and_whole):
    pieces, whole, _ = streamed_and_whole
    streamed = np.concatenate(pieces)
    joins = np.cumsum([p.size for p in pieces])[:-1]
    near_join = np.zeros(streamed.size, bool)
    window = CONFIG.crossfade_samples + CONFIG.lookahead_tokens * audio.SAMPLES_PER_TOKEN
    for j in joins:
        near_join[max(0, j - window):j + window] = True
    scale = np.abs(whole).max()
    far = np.abs(streamed - whole)[~near_join]
    assert far.max() <= 0.05 * scale, f"far from joins: max diff {far.max():.4f} vs peak {scale:.4f}"
    assert np.abs(streamed - whole).max() <= 0.5 * scale


def test_no_discontinuity_spikes_at_joins(streamed_and_whole):
    pieces, _, _ = streamed_and_whole
    streamed = np.concatenate(pieces)
    steps = np.abs(np.diff(streamed))
    typical = np.percentile(steps, 99.5)
    for j in np.cumsum([p.size for p in pieces])[:-1]:
        if 0 < j < streamed.size:
            assert abs(streamed[j] - streamed[j - 1]) <= max(typical, 1e-4), f"spike at sample {j}"
