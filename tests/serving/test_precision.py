"""Reduced-precision weights (the GPU profile's float16, bfloat16 on CPUs with native bf16 matmul):
every stage takes the float32 tensors the stage before hands it and gives audio back."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.pipeline import Pipeline, SynthesisSettings, load_reference_wav
from models.t2s import SamplingParams


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_pipeline_speaks_with_reduced_precision_weights(demo_paths, demo_assets, dtype):
    pipeline = Pipeline(demo_paths, dtype=dtype)
    prompt = pipeline.voice_prompt(load_reference_wav(demo_assets["reference_wav"]),
                                   demo_assets["reference_text"], demo_assets["reference_language"])
    settings = SynthesisSettings(sampling=SamplingParams(seed=3, max_new_tokens=40))
    wav = pipeline.synthesize(prompt, "Hello there, this is a test.", "en", settings)
    assert wav.dtype == np.float32 and wav.size > 0
    assert np.isfinite(wav).all() and np.abs(wav).max() > 0
