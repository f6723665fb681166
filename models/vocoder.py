"""HiFi-GAN generator of a SoVITS v1/v2 checkpoint (upstream ``dec.*``; SPEC 5.2 step 6).

``z [B, inter, F]`` (the flow output, already masked) and the speaker embedding ``ge [B, gin, 1]``
-> waveform ``[B, 1, F * prod(upsample_rates)]`` in [-1, 1] at 32 kHz (640 samples per frame).

Weight norm is folded into plain convolution weights at load time, so inference runs plain convs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import (
    KeyMap,
    SoVITSCheckpoint,
    fold_weight_norm,
    load_sovits_checkpoint,
    unfold_weight_norm,
)

# Leaky-ReLU slope inside the generator; the one before conv_post uses PyTorch's default 0.01
# (upstream calls F.leaky_relu without a slope there), which matters for parity.
LRELU_SLOPE = 0.1
FINAL_LRELU_SLOPE = 0.01


@dataclass
class VocoderConfig:
    in_channels: int = 192  # SoVITS inter_channels
    gin_channels: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_rates: tuple[int, ...] = (10, 8, 2, 2, 2)
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8, 2, 2)

    @classmethod
    def from_model_config(cls, model: dict) -> "VocoderConfig":
        """Build from the ``model`` section of a SoVITS checkpoint config."""
        if str(model.get("resblock", "1")) != "1":
            raise ValueError(f"resblock type {model['resblock']!r} is not supported (only '1')")
        return cls(
            in_channels=int(model["inter_channels"]),
            gin_channels=int(model["gin_channels"]),
            resblock_kernel_sizes=tuple(model["resblock_kernel_sizes"]),
            resblock_dilation_sizes=tuple(tuple(d) for d in model["resblock_dilation_sizes"]),
            upsample_rates=tuple(model["upsample_rates"]),
            upsample_initial_channel=int(model["upsample_initial_channel"]),
            upsample_kernel_sizes=tuple(model["upsample_kernel_sizes"]),
        )

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsample_rates)


class ResBlock(nn.Module):
    """HiFi-GAN ResBlock1: per dilation, lrelu -> dilated conv -> lrelu -> conv, residual."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.dilated = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2)
            for d in dilations
        )
        self.plain = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for dilated, plain in zip(self.dilated, self.plain):
            h = dilated(F.leaky_relu(x, LRELU_SLOPE))
            x = x + plain(F.leaky_relu(h, LRELU_SLOPE))
        return x


class Vocoder(nn.Module):
    def __init__(self, config: VocoderConfig):
        super().__init__()
        self.config = config
        c = config
        self.input_conv = nn.Conv1d(c.in_channels, c.upsample_initial_channel, 7, padding=3)
        self.cond = nn.Conv1d(c.gin_channels, c.upsample_initial_channel, 1)
        self.upsamples = nn.ModuleList()
        self.resblocks = nn.ModuleList()  # flat: stage i owns resblocks[i*K : (i+1)*K]
        ch = c.upsample_initial_channel
        for rate, kernel in zip(c.upsample_rates, c.upsample_kernel_sizes):
            self.upsamples.append(nn.ConvTranspose1d(ch, ch // 2, kernel, rate, padding=(kernel - rate) // 2))
            ch //= 2
            for k, d in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes):
                self.resblocks.append(ResBlock(ch, k, d))
        self.output_conv = nn.Conv1d(ch, 1, 7, padding=3, bias=False)

    def forward(self, z: torch.Tensor, ge: torch.Tensor) -> torch.Tensor:
        """``z [B, inter, F]``, ``ge [B, gin, 1]`` -> ``wav [B, 1, F * hop]``.

        Inputs arrive as float32 CPU tensors from the stage before; they move to this model's
        device and dtype here (fp16/bf16 weights, CUDA)."""
        weight = self.input_conv.weight
        z, ge = z.to(weight), ge.to(weight)
        x = self.input_conv(z) + self.cond(ge)
        n_kernels = len(self.config.resblock_kernel_sizes)
        for i, up in enumerate(self.upsamples):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * n_kernels : (i + 1) * n_kernels]
            # the multi-receptive-field fusion is a mean over the kernel sizes
            acc = blocks[0](x)
            for block in blocks[1:]:
                acc = acc + block(x)
            x = acc / n_kernels
        x = self.output_conv(F.leaky_relu(x, FINAL_LRELU_SLOPE))
        return torch.tanh(x)

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_or_path: SoVITSCheckpoint | str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "Vocoder":
        ckpt = ckpt_or_path
        if not isinstance(ckpt, SoVITSCheckpoint):
            ckpt = load_sovits_checkpoint(ckpt)
        model = cls(VocoderConfig.from_model_config(ckpt.config["model"]))
        model.load_upstream_state_dict(ckpt.weights)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)

    def upstream_key_map(self) -> KeyMap:
        return KeyMap(
            [
                ("dec.conv_pre", "input_conv"),
                ("dec.cond", "cond"),
                ("dec.ups.{i}", "upsamples.{i}"),
                ("dec.resblocks.{i}.convs1.{j}", "resblocks.{i}.dilated.{j}"),
                ("dec.resblocks.{i}.convs2.{j}", "resblocks.{i}.plain.{j}"),
                ("dec.conv_post", "output_conv"),
            ]
        )

    def load_upstream_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        """Load the ``dec.*`` part of an upstream SoVITS state dict (other keys are ignored)."""
        keymap = self.upstream_key_map()
        dec = fold_weight_norm({k: v for k, v in weights.items() if k.startswith("dec.")})
        local = {}
        for key, value in dec.items():
            name = keymap.to_local(key)
            if name is None:
                raise ValueError(f"unexpected vocoder weight {key!r}")
            local[name] = value.float()
        self.load_state_dict(local, strict=True)

    def upstream_state_dict(self) -> dict[str, torch.Tensor]:
        """Our weights under upstream names (weight norm unfolded), e.g. to write a ``.pth``."""
        keymap = self.upstream_key_map()
        out = {keymap.to_upstream(k): v.detach().clone() for k, v in self.state_dict().items()}
        normed = [k for k in out if k.startswith(("dec.ups.", "dec.resblocks.")) and k.endswith(".weight")]
        return unfold_weight_norm(out, normed)
