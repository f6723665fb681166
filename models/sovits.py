"""SoVITS v1/v2 acoustic model, inference only (SPEC 3.1 step 5, 3.3, 5).

Pipeline of one decode (all shapes batch-first, channels before time):

    codes [T] (25 Hz)  --codebook, x2 nearest-->  [768, 2T] (50 Hz)
        --ContentEncoder(phones, ge)-->  m, logs [inter, F]      (F = 2T at speed 1)
        z_p = m + noise * exp(logs) * noise_scale
        --Flow (reverse)-->  z [inter, F]   --Vocoder (models/vocoder.py)-->  wav [640 F]

plus the two reference-side paths: ``extract_prompt_tokens`` (HuBERT features -> 25 Hz codes)
and ``reference_embedding`` (linear spectrogram -> speaker embedding ``ge``).

The module layout is our own; :meth:`SoVITS.upstream_key_map` is the explicit map from
upstream's state-dict names. Weight norm is folded at load time; fp16 weights are widened.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

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

SSL_DIM = 768  # HuBERT-base width
CODEBOOK_SIZE = 1024
MRTE_CHANNELS = 512  # hard-wired upstream, forces gin_channels == 512 for v1/v2
MRTE_HEADS = 4
REF_HIDDEN = 128
REF_HEADS = 2
REF_KERNEL = 5
REF_BINS_V2 = 704  # v2 reference encoder looks at the first 704 of 1025 bins (0..~11 kHz)
REL_WINDOW = 4  # relative-position attention window of the text/SSL encoders
FLOW_COUPLINGS = 4
FLOW_WN_LAYERS = 4
FLOW_KERNEL = 5
MASK_FILL = -1e4  # what upstream writes into masked attention logits


@dataclass
class SoVITSConfig:
    version: str = "v2"  # "v1" | "v2"
    n_symbols: int = 732  # phone vocabulary (322 for v1)
    spec_channels: int = 1025
    inter_channels: int = 192
    hidden_channels: int = 192
    filter_channels: int = 768
    n_heads: int = 2
    n_layers: int = 6  # encoder_text depth; encoder_ssl and encoder2 use n_layers // 2
    kernel_size: int = 3
    gin_channels: int = 512
    semantic_frame_rate: str = "25hz"
    # generator (also in VocoderConfig)
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)
    upsample_rates: list[int] = field(default_factory=lambda: [10, 8, 2, 2, 2])
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [16, 16, 8, 2, 2])
    # data section
    sampling_rate: int = 32000
    hop_length: int = 640
    filter_length: int = 2048
    win_length: int = 2048

    @property
    def ref_bins(self) -> int:
        return self.spec_channels if self.version == "v1" else REF_BINS_V2

    @classmethod
    def from_checkpoint_config(cls, config: dict, version: str = "v2") -> "SoVITSConfig":
        """From a checkpoint's plain-dict config (``model`` + ``data`` sections)."""
        model, data = config["model"], config.get("data", {})
        # Upstream forces 25 Hz regardless of what the file says (SPEC 1.2).
        filter_length = int(data.get("filter_length", 2048))
        if model.get("gin_channels", 512) != MRTE_CHANNELS:
            raise ValueError(f"gin_channels {model.get('gin_channels')} != 512: not a v1/v2 model")
        return cls(
            version=version,
            n_symbols=322 if version == "v1" else 732,
            spec_channels=filter_length // 2 + 1,
            inter_channels=int(model["inter_channels"]),
            hidden_channels=int(model["hidden_channels"]),
            filter_channels=int(model["filter_channels"]),
            n_heads=int(model["n_heads"]),
            n_layers=int(model["n_layers"]),
            kernel_size=int(model["kernel_size"]),
            gin_channels=int(model["gin_channels"]),
            resblock_kernel_sizes=list(model["resblock_kernel_sizes"]),
            resblock_dilation_sizes=[list(d) for d in model["resblock_dilation_sizes"]],
            upsample_rates=list(model["upsample_rates"]),
            upsample_initial_channel=int(model["upsample_initial_channel"]),
            upsample_kernel_sizes=list(model["upsample_kernel_sizes"]),
            sampling_rate=int(data.get("sampling_rate", 32000)),
            hop_length=int(data.get("hop_length", 640)),
            filter_length=filter_length,
            win_length=int(data.get("win_length", 2048)),
        )


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def _channel_layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm over the channel dim of a ``[B, C, T]`` tensor."""
    return norm(x.transpose(1, -1)).transpose(1, -1)


def _mish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tanh(F.softplus(x))


class RelPosSelfAttention(nn.Module):
    """Multi-head self-attention with learned relative positions (window ``w``, shared by heads).

    Relative offsets ``j - i`` in ``[-w, w]`` add ``q_i . E_k[j - i]`` to the logits and
    ``p_ij * E_v[j - i]`` to the output; farther pairs get no positional term. Implemented with
    the ``2w + 1`` diagonals of the score matrix, so memory stays ``O(T^2 + T w)``.
    """

    def __init__(self, channels: int, n_heads: int, window: int = REL_WINDOW):
        super().__init__()
        assert channels % n_heads == 0
        self.n_heads, self.head_dim, self.window = n_heads, channels // n_heads, window
        self.q = nn.Conv1d(channels, channels, 1)
        self.k = nn.Conv1d(channels, channels, 1)
        self.v = nn.Conv1d(channels, channels, 1)
        self.o = nn.Conv1d(channels, channels, 1)
        self.rel_k = nn.Parameter(torch.zeros(1, 2 * window + 1, self.head_dim))
        self.rel_v = nn.Parameter(torch.zeros(1, 2 * window + 1, self.head_dim))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T] -> [B, H, T, D]
        b, _, t = x.shape
        return x.view(b, self.n_heads, self.head_dim, t).transpose(2, 3)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, c, t = x.shape
        q = self._heads(self.q(x)) / math.sqrt(self.head_dim)
        k, v = self._heads(self.k(x)), self._heads(self.v(x))
        scores = q @ k.transpose(-2, -1)  # [B, H, T, T]
        rel_logits = q @ self.rel_k[0].transpose(0, 1)  # [B, H, T, 2w+1]
        offsets = range(-min(self.window, t - 1), min(self.window, t - 1) + 1)
        for o in offsets:
            rows = slice(max(0, -o), t - max(0, o))
            scores.diagonal(o, -2, -1).add_(rel_logits[..., rows, o + self.window])
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask == 0, MASK_FILL)
        p = scores.softmax(dim=-1)
        out = p @ v
        rel_weights = p.new_zeros(b, self.n_heads, t, 2 * self.window + 1)
        for o in offsets:
            rows = slice(max(0, -o), t - max(0, o))
            rel_weights[..., rows, o + self.window] = p.diagonal(o, -2, -1)
        out = out + rel_weights @ self.rel_v[0]
        return self.o(out.transpose(2, 3).reshape(b, c, t))


class ConvFFN(nn.Module):
    """Conv1d(k, 'same') -> ReLU -> Conv1d(k, 'same'), inputs masked before each conv."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int):
        super().__init__()
        self.pad = ((kernel_size - 1) // 2, kernel_size // 2)
        self.conv1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv2 = nn.Conv1d(filter_channels, channels, kernel_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(F.pad(x * mask, self.pad)))
        return self.conv2(F.pad(x * mask, self.pad)) * mask


class EncoderLayer(nn.Module):
    """Post-norm transformer layer: ``LN(x + attn(x))``, ``LN(x + ffn(x))``."""

    def __init__(self, channels: int, filter_channels: int, n_heads: int, kernel_size: int):
        super().__init__()
        self.attn = RelPosSelfAttention(channels, n_heads)
        self.norm1 = nn.LayerNorm(channels, eps=1e-5)
        self.ffn = ConvFFN(channels, filter_channels, kernel_size)
        self.norm2 = nn.LayerNorm(channels, eps=1e-5)

    def forward(self, x, mask, attn_mask):
        x = _channel_layer_norm(x + self.attn(x, attn_mask), self.norm1)
        return _channel_layer_norm(x + self.ffn(x, mask), self.norm2)


class Encoder(nn.Module):
    def __init__(self, channels, filter_channels, n_heads, n_layers, kernel_size):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(channels, filter_channels, n_heads, kernel_size) for _ in range(n_layers)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x [B, C, T]``, ``mask [B, 1, T]`` (1 = valid)."""
        attn_mask = mask.unsqueeze(2) * mask.unsqueeze(-1)  # [B, 1, T, T]
        x = x * mask
        for layer in self.layers:
            x = layer(x, mask, attn_mask)
        return x * mask


class CrossAttention(nn.Module):
    """Plain multi-head attention (no positions): queries from ``x``, keys/values from ``c``."""

    def __init__(self, channels: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, channels // n_heads
        self.q = nn.Conv1d(channels, channels, 1)
        self.k = nn.Conv1d(channels, channels, 1)
        self.v = nn.Conv1d(channels, channels, 1)
        self.o = nn.Conv1d(channels, channels, 1)

    def forward(self, x, c, attn_mask):
        b, ch, tq = x.shape
        tk = c.shape[-1]
        q = self.q(x).view(b, self.n_heads, self.head_dim, tq).transpose(2, 3)
        k = self.k(c).view(b, self.n_heads, self.head_dim, tk).transpose(2, 3)
        v = self.v(c).view(b, self.n_heads, self.head_dim, tk).transpose(2, 3)
        scores = (q / math.sqrt(self.head_dim)) @ k.transpose(-2, -1)
        scores = scores.masked_fill(attn_mask == 0, MASK_FILL)
        out = scores.softmax(dim=-1) @ v
        return self.o(out.transpose(2, 3).reshape(b, ch, tq))


class MRTE(nn.Module):
    """Multi-reference timbre encoder: the content attends to the phones, then ``ge`` is added.

    This is where the target phonemes enter the acoustic model.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.content_in = nn.Conv1d(channels, MRTE_CHANNELS, 1)
        self.text_in = nn.Conv1d(channels, MRTE_CHANNELS, 1)
        self.attn = CrossAttention(MRTE_CHANNELS, MRTE_HEADS)
        self.out = nn.Conv1d(MRTE_CHANNELS, channels, 1)

    def forward(self, y, y_mask, text, text_mask, ge):
        attn_mask = text_mask.unsqueeze(2) * y_mask.unsqueeze(-1)  # [B, 1, Ty, Tt]
        hs = self.content_in(y * y_mask)
        ht = self.text_in(text * text_mask)
        x = self.attn(hs * y_mask, ht * text_mask, attn_mask) + hs + ge
        return self.out(x * y_mask)


class ContentEncoder(nn.Module):
    """Upstream ``TextEncoder`` (``enc_p``): 50 Hz SSL content + phones + ge -> prior m, logs."""

    def __init__(self, c: SoVITSConfig):
        super().__init__()
        self.inter_channels = c.inter_channels
        h, f = c.hidden_channels, c.filter_channels
        self.ssl_in = nn.Conv1d(SSL_DIM, h, 1)
        self.ssl_layers = Encoder(h, f, c.n_heads, c.n_layers // 2, c.kernel_size)
        self.phone_embedding = nn.Embedding(c.n_symbols, h)
        self.text_layers = Encoder(h, f, c.n_heads, c.n_layers, c.kernel_size)
        self.mrte = MRTE(h)
        self.post_layers = Encoder(h, f, c.n_heads, c.n_layers // 2, c.kernel_size)
        self.stats = nn.Conv1d(h, 2 * c.inter_channels, 1)

    def forward(self, content, y_mask, phones, text_mask, ge, speed: float = 1.0):
        y = self.ssl_in(content * y_mask) * y_mask
        y = self.ssl_layers(y * y_mask, y_mask)
        text = self.phone_embedding(phones).transpose(1, 2)
        text = self.text_layers(text * text_mask, text_mask)
        y = self.mrte(y, y_mask, text, text_mask, ge)
        y = self.post_layers(y * y_mask, y_mask)
        if speed != 1:
            # speed > 1 = shorter: resample the hidden sequence, keep the mask nearest.
            y = F.interpolate(y, size=int(y.shape[-1] / speed) + 1, mode="linear")
            y_mask = F.interpolate(y_mask, size=y.shape[-1], mode="nearest")
        stats = self.stats(y) * y_mask
        m, logs = stats.split(self.inter_channels, dim=1)
        return m, logs, y_mask


class ReferenceEncoder(nn.Module):
    """Upstream ``MelStyleEncoder`` over the linear spectrogram -> ``ge [B, gin, 1]``."""

    def __init__(self, in_bins: int, out_channels: int):
        super().__init__()
        self.in_bins = in_bins
        self.spectral1 = nn.Linear(in_bins, REF_HIDDEN)
        self.spectral2 = nn.Linear(REF_HIDDEN, REF_HIDDEN)
        self.glu1 = nn.Conv1d(REF_HIDDEN, 2 * REF_HIDDEN, REF_KERNEL, padding=REF_KERNEL // 2)
        self.glu2 = nn.Conv1d(REF_HIDDEN, 2 * REF_HIDDEN, REF_KERNEL, padding=REF_KERNEL // 2)
        self.attn_q = nn.Linear(REF_HIDDEN, REF_HIDDEN)
        self.attn_k = nn.Linear(REF_HIDDEN, REF_HIDDEN)
        self.attn_v = nn.Linear(REF_HIDDEN, REF_HIDDEN)
        self.attn_out = nn.Linear(REF_HIDDEN, REF_HIDDEN)
        self.out = nn.Linear(REF_HIDDEN, out_channels)

    def _attention(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        d = REF_HIDDEN // REF_HEADS
        q = self.attn_q(x).view(b, t, REF_HEADS, d).transpose(1, 2)
        k = self.attn_k(x).view(b, t, REF_HEADS, d).transpose(1, 2)
        v = self.attn_v(x).view(b, t, REF_HEADS, d).transpose(1, 2)
        # Upstream's temperature is sqrt(d_model) = sqrt(128), not sqrt(head_dim).
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(REF_HIDDEN)
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, REF_HIDDEN)
        return self.attn_out(out) + x

    def forward(self, spec: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``spec [B, bins >= in_bins, T]``, ``mask [B, 1, T]`` -> ``[B, gin, 1]``."""
        if mask is None:
            mask = spec.new_ones(spec.shape[0], 1, spec.shape[-1])
        valid = mask[:, 0] > 0  # [B, T]
        x = (spec[:, : self.in_bins] * mask).transpose(1, 2)  # [B, T, bins]
        x = _mish(self.spectral2(_mish(self.spectral1(x))))
        x = x.transpose(1, 2)
        for glu in (self.glu1, self.glu2):
            a, g = glu(x).chunk(2, dim=1)
            x = x + a * torch.sigmoid(g)
        x = x.transpose(1, 2).masked_fill(~valid[..., None], 0.0)
        x = self.out(self._attention(x, valid))
        # masked temporal mean (divide first, then sum, as upstream does)
        x = x.masked_fill(~valid[..., None], 0.0)
        lengths = valid.sum(dim=1).to(x.dtype)[:, None, None]
        return (x / lengths).sum(dim=1).unsqueeze(-1)


class WaveNet(nn.Module):
    """Non-causal gated WaveNet used inside each flow coupling, conditioned on ``ge``."""

    def __init__(self, hidden: int, kernel_size: int, n_layers: int, gin_channels: int):
        super().__init__()
        self.hidden, self.n_layers = hidden, n_layers
        self.cond = nn.Conv1d(gin_channels, 2 * hidden * n_layers, 1)
        self.in_convs = nn.ModuleList(
            nn.Conv1d(hidden, 2 * hidden, kernel_size, padding=(kernel_size - 1) // 2) for _ in range(n_layers)
        )
        # the last layer only feeds the skip output
        self.res_skip_convs = nn.ModuleList(
            nn.Conv1d(hidden, 2 * hidden if i < n_layers - 1 else hidden, 1) for i in range(n_layers)
        )

    def forward(self, x, mask, g):
        out = torch.zeros_like(x)
        g = self.cond(g)
        h = self.hidden
        for i in range(self.n_layers):
            a = self.in_convs[i](x) + g[:, 2 * h * i : 2 * h * (i + 1)]
            acts = torch.tanh(a[:, :h]) * torch.sigmoid(a[:, h:])
            rs = self.res_skip_convs[i](acts)
            if i < self.n_layers - 1:
                x = (x + rs[:, :h]) * mask
                out = out + rs[:, h:]
            else:
                out = out + rs
        return out * mask


class Coupling(nn.Module):
    """Mean-only affine coupling: the second half of the channels is shifted by f(first half)."""

    def __init__(self, channels: int, hidden: int, gin_channels: int):
        super().__init__()
        self.half = channels // 2
        self.pre = nn.Conv1d(self.half, hidden, 1)
        self.wn = WaveNet(hidden, FLOW_KERNEL, FLOW_WN_LAYERS, gin_channels)
        self.post = nn.Conv1d(hidden, self.half, 1)

    def reverse(self, x, mask, g):
        x0, x1 = x.split(self.half, dim=1)
        h = self.wn(self.pre(x0) * mask, mask, g)
        shift = self.post(h) * mask
        return torch.cat([x0, (x1 - shift) * mask], dim=1)


class Flow(nn.Module):
    """Upstream ``ResidualCouplingBlock``: [coupling, channel flip] x 4, run here in reverse only."""

    def __init__(self, channels: int, hidden: int, gin_channels: int):
        super().__init__()
        self.couplings = nn.ModuleList(Coupling(channels, hidden, gin_channels) for _ in range(FLOW_COUPLINGS))

    def reverse(self, z, mask, g):
        for coupling in reversed(self.couplings):
            z = coupling.reverse(torch.flip(z, [1]), mask, g)
        return z


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class SoVITS(nn.Module):
    def __init__(self, config: SoVITSConfig):
        super().__init__()
        self.config = config
        c = config
        if c.semantic_frame_rate != "25hz":
            raise ValueError("only 25 Hz semantic tokens are supported")
        self.ssl_proj = nn.Conv1d(SSL_DIM, SSL_DIM, 2, stride=2)  # 50 Hz HuBERT -> 25 Hz
        self.register_buffer("codebook", torch.zeros(CODEBOOK_SIZE, SSL_DIM))
        self.ref_encoder = ReferenceEncoder(c.ref_bins, c.gin_channels)
        self.encoder = ContentEncoder(c)
        self.flow = Flow(c.inter_channels, c.hidden_channels, c.gin_channels)

    @property
    def device(self) -> torch.device:
        return self.codebook.device

    @property
    def dtype(self) -> torch.dtype:
        return self.codebook.dtype

    # -- reference side -------------------------------------------------------------------------

    @torch.inference_mode()
    def project_ssl(self, ssl: torch.Tensor) -> torch.Tensor:
        """HuBERT features ``[1, 768, T50]`` -> 25 Hz features ``[1, 768, T25]``."""
        return self.ssl_proj(ssl.to(device=self.device, dtype=self.dtype))

    ssl_projection = project_ssl  # alias used by tests/parity/adapter.py

    @torch.inference_mode()
    def quantize(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest codebook entry (squared L2) for each frame of ``[1, 768, T]`` -> ``[T]``."""
        x = features[0].transpose(0, 1)  # [T, 768]
        e = self.codebook
        # same expression as upstream so near-ties round the same way
        neg_dist = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ e.t() + e.pow(2).sum(1)[None])
        return neg_dist.argmax(dim=-1)

    def extract_prompt_tokens(self, ssl: torch.Tensor) -> torch.Tensor:
        """HuBERT features ``[1, 768, T50]`` -> prompt semantic tokens ``LongTensor[T50 // 2]``."""
        return self.quantize(self.project_ssl(ssl))

    @torch.inference_mode()
    def reference_embedding(self, specs: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Reference spectrogram(s) ``[1025, T]`` -> ``ge [1, gin, 1]`` (mean over references)."""
        if isinstance(specs, torch.Tensor):
            specs = [specs]
        if not specs:
            raise ValueError("at least one reference spectrogram is needed")
        ges = []
        for spec in specs:
            spec = spec.to(device=self.device, dtype=self.dtype)
            if spec.dim() == 2:
                spec = spec[None]
            ges.append(self.ref_encoder(spec))
        return torch.stack(ges, 0).mean(0)

    # -- decode -------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode_latent(
        self,
        codes: torch.Tensor,
        phone_ids: torch.Tensor,
        ge: torch.Tensor,
        noise_scale: float = 0.5,
        speed: float = 1.0,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_intermediates: bool = False,
    ):
        """Semantic codes ``[T]`` + target phones ``[P]`` + ``ge`` -> latent ``z [1, inter, F]``.

        ``F = 2T`` at speed 1, else ``int(2T / speed) + 1``. ``z`` is already multiplied by the
        mask, ready for :class:`~models.vocoder.Vocoder`. ``noise`` (``[1, inter, F]``) replaces
        the Gaussian draw; otherwise it comes from ``generator`` (or the global RNG). With
        ``return_intermediates=True`` returns a dict with ``z, z_flow`` (the flow output before
        masking, what upstream's goldens call ``z``), ``z_p, m_p, logs_p, y_mask``.
        """
        codes = torch.as_tensor(codes, device=self.device).long().reshape(1, -1)
        phones = torch.as_tensor(phone_ids, device=self.device).long().reshape(1, -1)
        if codes.numel() == 0 or phones.numel() == 0:
            raise ValueError("codes and phone_ids must be non-empty")
        if int(codes.min()) < 0 or int(codes.max()) >= CODEBOOK_SIZE:
            raise ValueError(f"semantic codes must be in [0, {CODEBOOK_SIZE})")
        if int(phones.min()) < 0 or int(phones.max()) >= self.config.n_symbols:
            raise ValueError(f"phone ids must be in [0, {self.config.n_symbols})")
        ge = ge.to(device=self.device, dtype=self.dtype)

        content = self.codebook[codes[0]].t()[None]  # [1, 768, T]
        content = content.repeat_interleave(2, dim=-1)  # 25 Hz -> 50 Hz (nearest)
        y_mask = content.new_ones(1, 1, content.shape[-1])
        text_mask = content.new_ones(1, 1, phones.shape[-1])
        m_p, logs_p, y_mask = self.encoder(content, y_mask, phones, text_mask, ge, speed)

        if noise is not None:
            noise = noise.to(device=self.device, dtype=self.dtype).reshape(m_p.shape)
            z_p = m_p + noise * torch.exp(logs_p) * noise_scale
        elif noise_scale != 0:
            # draw on the generator's own device (a CPU generator may drive a GPU model)
            where = generator.device if generator is not None else m_p.device
            eps = torch.randn(m_p.shape, generator=generator, device=where).to(m_p)
            z_p = m_p + eps * torch.exp(logs_p) * noise_scale
        else:
            z_p = m_p
        z_flow = self.flow.reverse(z_p, y_mask, ge)
        z = z_flow * y_mask
        if return_intermediates:
            return {"z": z, "z_flow": z_flow, "z_p": z_p, "m_p": m_p, "logs_p": logs_p, "y_mask": y_mask}
        return z

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_or_path: SoVITSCheckpoint | str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "SoVITS":
        ckpt = ckpt_or_path
        if not isinstance(ckpt, SoVITSCheckpoint):
            ckpt = load_sovits_checkpoint(ckpt)
        model = cls(SoVITSConfig.from_checkpoint_config(ckpt.config, ckpt.version))
        model.load_upstream_state_dict(ckpt.weights)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)

    @staticmethod
    def upstream_key_map() -> KeyMap:
        rules = [
            ("ssl_proj", "ssl_proj"),
            ("quantizer.vq.layers.0._codebook.embed", "codebook"),
            ("ref_enc.spectral.0.fc", "ref_encoder.spectral1"),
            ("ref_enc.spectral.3.fc", "ref_encoder.spectral2"),
            ("ref_enc.temporal.0.conv1.conv", "ref_encoder.glu1"),
            ("ref_enc.temporal.1.conv1.conv", "ref_encoder.glu2"),
            ("ref_enc.slf_attn.w_qs", "ref_encoder.attn_q"),
            ("ref_enc.slf_attn.w_ks", "ref_encoder.attn_k"),
            ("ref_enc.slf_attn.w_vs", "ref_encoder.attn_v"),
            ("ref_enc.slf_attn.fc", "ref_encoder.attn_out"),
            ("ref_enc.fc.fc", "ref_encoder.out"),
            ("enc_p.ssl_proj", "encoder.ssl_in"),
            ("enc_p.text_embedding", "encoder.phone_embedding"),
            ("enc_p.mrte.c_pre", "encoder.mrte.content_in"),
            ("enc_p.mrte.text_pre", "encoder.mrte.text_in"),
            ("enc_p.mrte.c_post", "encoder.mrte.out"),
            ("enc_p.mrte.cross_attention.conv_{p}", "encoder.mrte.attn.{p}"),
            ("enc_p.proj", "encoder.stats"),
        ]
        for up, ours in [("encoder_ssl", "ssl_layers"), ("encoder_text", "text_layers"), ("encoder2", "post_layers")]:
            src, dst = f"enc_p.{up}", f"encoder.{ours}.layers.{{i}}"
            rules += [
                (f"{src}.attn_layers.{{i}}.conv_q", f"{dst}.attn.q"),
                (f"{src}.attn_layers.{{i}}.conv_k", f"{dst}.attn.k"),
                (f"{src}.attn_layers.{{i}}.conv_v", f"{dst}.attn.v"),
                (f"{src}.attn_layers.{{i}}.conv_o", f"{dst}.attn.o"),
                (f"{src}.attn_layers.{{i}}.emb_rel_k", f"{dst}.attn.rel_k"),
                (f"{src}.attn_layers.{{i}}.emb_rel_v", f"{dst}.attn.rel_v"),
                (f"{src}.norm_layers_1.{{i}}.gamma", f"{dst}.norm1.weight"),
                (f"{src}.norm_layers_1.{{i}}.beta", f"{dst}.norm1.bias"),
                (f"{src}.norm_layers_2.{{i}}.gamma", f"{dst}.norm2.weight"),
                (f"{src}.norm_layers_2.{{i}}.beta", f"{dst}.norm2.bias"),
                (f"{src}.ffn_layers.{{i}}.conv_1", f"{dst}.ffn.conv1"),
                (f"{src}.ffn_layers.{{i}}.conv_2", f"{dst}.ffn.conv2"),
            ]
        # upstream interleaves a parameter-free Flip after each coupling: flows.0, 2, 4, 6
        for j in range(FLOW_COUPLINGS):
            src, dst = f"flow.flows.{2 * j}", f"flow.couplings.{j}"
            rules += [
                (f"{src}.pre", f"{dst}.pre"),
                (f"{src}.post", f"{dst}.post"),
                (f"{src}.enc.cond_layer", f"{dst}.wn.cond"),
                (f"{src}.enc.in_layers.{{i}}", f"{dst}.wn.in_convs.{{i}}"),
                (f"{src}.enc.res_skip_layers.{{i}}", f"{dst}.wn.res_skip_convs.{{i}}"),
            ]
        return KeyMap(rules)

    # Upstream keys that exist but carry nothing inference needs here.
    _IGNORED_PREFIXES = ("dec.", "enc_q.")  # dec.* -> models/vocoder.py; enc_q: training only
    _IGNORED_KEYS = tuple(
        f"quantizer.vq.layers.0._codebook.{n}" for n in ("inited", "cluster_size", "embed_avg")
    )

    def load_upstream_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        """Load an upstream SoVITS state dict (strict on everything this module owns)."""
        keymap = self.upstream_key_map()
        kept = {
            k: v
            for k, v in weights.items()
            if not k.startswith(self._IGNORED_PREFIXES) and k not in self._IGNORED_KEYS
        }
        local = {}
        for key, value in fold_weight_norm(kept).items():
            name = keymap.to_local(key)
            if name is None:
                raise ValueError(f"unexpected SoVITS weight {key!r}")
            local[name] = value.float()
        missing, unexpected = self.load_state_dict(local, strict=False)
        if missing or unexpected:
            raise ValueError(f"SoVITS weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def upstream_state_dict(self) -> dict[str, torch.Tensor]:
        """Our weights under upstream names, weight norm unfolded, plus the codebook buffers
        upstream expects (``inited`` = 1 so upstream never re-runs k-means)."""
        keymap = self.upstream_key_map()
        out = {keymap.to_upstream(k): v.detach().clone() for k, v in self.state_dict().items()}
        normed = [
            k
            for k in out
            if k.startswith("flow.flows.") and ".enc." in k and k.endswith(".weight")
        ]
        out = unfold_weight_norm(out, normed)
        prefix = "quantizer.vq.layers.0._codebook."
        embed = out[prefix + "embed"]
        out[prefix + "inited"] = torch.ones(1, dtype=embed.dtype)
        out[prefix + "cluster_size"] = torch.ones(CODEBOOK_SIZE, dtype=embed.dtype)
        out[prefix + "embed_avg"] = embed.clone()
        return out
