"""chinese-hubert-base feature extractor for reference clips (SPEC 3.1 step 4).

Upstream feeds the raw 16 kHz waveform (with its 9600 appended zeros) straight into
``HubertModel``; the ``Wav2Vec2FeatureExtractor`` normalisation is *not* applied, so neither is it
here. Output is the last hidden state, channels first: ``[1, 768, T50]``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from transformers import HubertModel


class HubertFeatures:
    def __init__(self, model: HubertModel, device="cpu", dtype=torch.float32):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device = torch.device(device)
        self.dtype = dtype

    @classmethod
    def from_dir(cls, path: str | os.PathLike, device="cpu", dtype=torch.float32) -> "HubertFeatures":
        # transformers 4.x widens fp16 safetensors to fp32 when no dtype is requested (what the
        # goldens used); we cast explicitly afterwards so the result does not depend on that.
        model = HubertModel.from_pretrained(str(path), local_files_only=True)
        return cls(model, device=device, dtype=dtype)

    @torch.inference_mode()
    def __call__(self, wav16k) -> torch.Tensor:
        """``wav16k``: float ``[M]`` (or ``[1, M]``) -> ``[1, 768, T50]``, ``T50 = (M - 400) // 320 + 1``."""
        if isinstance(wav16k, np.ndarray):
            wav16k = torch.from_numpy(wav16k)
        x = wav16k.to(device=self.device, dtype=self.dtype)
        if x.dim() == 1:
            x = x[None]
        hidden = self.model(x).last_hidden_state  # [1, T50, 768]
        return hidden.transpose(1, 2)
