"""GPT-SoVITS v2 text-to-semantic model ("the GPT") and a batched step-wise decoder.

The model maps ``[phones + BERT features ; prompt semantic tokens]`` to the semantic tokens of
the target text, one token at a time (SPEC section 4). Layout, all facts from upstream:

* text input   ``x = E_text[phones] + bert_proj(bert^T) + alpha_text * PE[0:L]``
* audio input  ``y = E_audio[tokens] + alpha_audio * PE[0:T]`` (positions restart at 0)
* ``n_layer`` post-norm blocks: ``h = LN1(x + Attn(x)); out = LN2(h + W2 relu(W1 h))``
* prefix-LM mask: text sees all text (and no audio), audio sees all text + earlier audio
* logits ``= h W_pred^T`` (no bias, no final norm)

Decoding runs in :class:`T2SEngine`: a pool of ``max_batch`` slots over one preallocated KV
cache. A request is prefilled into a free slot (:meth:`T2SEngine.add`); every
:meth:`T2SEngine.step` samples one token for every active slot at once, each row with its own
sampling parameters, random generator and length, then feeds the sampled tokens back through
the model in one batched forward. Requests may join or leave between any two steps
(continuous batching). Active rows always occupy slots ``0..B-1`` (a finished row is replaced
by the last one), so the batched forward reads plain views of the cache, never a gather.

Sampling reproduces upstream's order exactly (SPEC 4.5); the exponential noise of each request
comes from its own ``torch.Generator``, so a request gives the same tokens alone or batched.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from typing import Hashable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "T2SConfig",
    "Text2Semantic",
    "SamplingParams",
    "KVCache",
    "T2SEngine",
    "EngineFullError",
    "cache_positions_needed",
    "StepOutput",
    "T2SRequest",
    "GenerationResult",
    "logits_to_probs",
    "sample_tokens",
    "prefix_lm_mask",
    "prefill_logits",
    "generate",
    "generate_batch",
    "generate_stream",
    "upstream_sovits_codes",
    "MAX_NEW_TOKENS",
    "MIN_TOKENS_BEFORE_EOS",
]

MAX_NEW_TOKENS = 1500  # upstream's loop bound: `for idx in range(1500)` (60 s of 25 Hz tokens)
MIN_TOKENS_BEFORE_EOS = 11  # the EOS column is removed for steps 0..10
UPSTREAM_HZ = 50  # upstream's early_stop_num = 50 * max_sec (tokens are really 25 Hz)


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class T2SConfig:
    vocab_size: int = 1025  # 1024 semantic tokens + EOS
    phoneme_vocab_size: int = 732
    dim: int = 512
    n_head: int = 16
    n_layer: int = 24
    eos: int = 1024
    bert_dim: int = 1024  # hard-wired upstream, not in the checkpoint config
    max_sec: int = 54
    ffn_mult: int = 4  # FFN width is 4*dim; the config's `linear_units` is ignored upstream
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.eos != self.vocab_size - 1:
            raise ValueError(f"EOS must be vocab_size - 1 (got EOS {self.eos}, vocab {self.vocab_size})")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def max_new_tokens(self) -> int:
        """Upstream's bound on sampled tokens: the 1500 loop cap, or early_stop_num + 1."""
        return min(MAX_NEW_TOKENS, UPSTREAM_HZ * self.max_sec + 1)

    @classmethod
    def from_checkpoint_config(cls, config: dict) -> "T2SConfig":
        """Build from a checkpoint's `config` dict (the training YAML, SPEC 1.1)."""
        model = config["model"]
        dim, emb = int(model["hidden_dim"]), int(model["embedding_dim"])
        if dim != emb:
            raise ValueError(f"hidden_dim {dim} != embedding_dim {emb} is not supported")
        return cls(
            vocab_size=int(model["vocab_size"]),
            phoneme_vocab_size=int(model["phoneme_vocab_size"]),
            dim=dim,
            n_head=int(model["head"]),
            n_layer=int(model["n_layer"]),
            eos=int(model["EOS"]),
            max_sec=int(config.get("data", {}).get("max_sec", 54)),
        )


# --------------------------------------------------------------------------------------------
# Model


def sine_table(n_pos: int, dim: int) -> torch.Tensor:
    """Sinusoidal positions [n_pos, dim]: sin on even, cos on odd channels (float32 math)."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    table = torch.zeros(n_pos, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


def prefix_lm_mask(text_len: int, audio_len: int, device=None) -> torch.Tensor:
    """Bool [S, S], True = may attend: text is bidirectional over text, audio is causal."""
    n = text_len + audio_len
    q = torch.arange(n, device=device)[:, None]
    k = torch.arange(n, device=device)[None, :]
    return (k < text_len) | (k <= q)


class Block(nn.Module):
    """One post-norm transformer layer with a fused q/k/v projection."""

    def __init__(self, cfg: T2SConfig):
        super().__init__()
        self.n_head, self.head_dim, self.dim = cfg.n_head, cfg.head_dim, cfg.dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.attn_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.up = nn.Linear(cfg.dim, cfg.ffn_mult * cfg.dim)
        self.down = nn.Linear(cfg.ffn_mult * cfg.dim, cfg.dim)
        self.ffn_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)

    def forward(self, x, mask, cache: "KVCache | None" = None, layer: int = 0):
        B, S, _ = x.shape
        # [B, S, 3*dim] -> three [B, H, S, D] views (rows of in_proj are q, k, v in that order)
        q, k, v = self.qkv(x).view(B, S, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = self.attn_norm(x + self.proj(a.transpose(1, 2).reshape(B, S, self.dim)))
        return self.ffn_norm(x + self.down(F.relu(self.up(x))))


# Upstream state-dict names (after the `model.` prefix) -> ours.
_UPSTREAM_KEYS = [
    (r"bert_proj\.(weight|bias)", r"bert_proj.\1"),
    (r"ar_text_embedding\.word_embeddings\.weight", "text_embedding.weight"),
    (r"ar_audio_embedding\.word_embeddings\.weight", "audio_embedding.weight"),
    (r"ar_text_position\.alpha", "text_alpha"),
    (r"ar_audio_position\.alpha", "audio_alpha"),
    (r"h\.layers\.(\d+)\.self_attn\.in_proj_weight", r"layers.\1.qkv.weight"),
    (r"h\.layers\.(\d+)\.self_attn\.in_proj_bias", r"layers.\1.qkv.bias"),
    (r"h\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"layers.\1.proj.\2"),
    (r"h\.layers\.(\d+)\.linear1\.(weight|bias)", r"layers.\1.up.\2"),
    (r"h\.layers\.(\d+)\.linear2\.(weight|bias)", r"layers.\1.down.\2"),
    (r"h\.layers\.(\d+)\.norm1\.(weight|bias)", r"layers.\1.attn_norm.\2"),
    (r"h\.layers\.(\d+)\.norm2\.(weight|bias)", r"layers.\1.ffn_norm.\2"),
    (r"ar_predict_layer\.weight", "predict.weight"),
]
_UPSTREAM_KEYS = [(re.compile(a + "$"), b) for a, b in _UPSTREAM_KEYS]


def _rename_upstream_keys(module, state_dict, prefix, *args):
    """load_state_dict pre-hook: accept upstream names (`model.h.layers.0.self_attn...`)."""
    head = prefix + "model."
    for key in [k for k in state_dict if k.startswith(head)]:
        rest = key[len(head):]
        for pattern, repl in _UPSTREAM_KEYS:
            if pattern.match(rest):
                state_dict[prefix + pattern.sub(repl, rest)] = state_dict.pop(key)
                break  # unknown keys stay as they are, so strict loading reports them


class Text2Semantic(nn.Module):
    def __init__(self, config: T2SConfig):
        super().__init__()
        self.config = config
        self.bert_proj = nn.Linear(config.bert_dim, config.dim)
        self.text_embedding = nn.Embedding(config.phoneme_vocab_size, config.dim)
        self.audio_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.text_alpha = nn.Parameter(torch.ones(1))
        self.audio_alpha = nn.Parameter(torch.ones(1))
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.predict = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.register_buffer("pe", sine_table(4000, config.dim), persistent=False)
        self.register_load_state_dict_pre_hook(_rename_upstream_keys)

    # ---- loading -----------------------------------------------------------------------------
    @classmethod
    def from_config_and_weights(cls, config: dict, weights: dict, device="cpu",
                                dtype=torch.float32, name: str = "checkpoint") -> "Text2Semantic":
        model = cls(T2SConfig.from_checkpoint_config(config))
        try:
            model.load_state_dict(weights, strict=True)  # copies fp16 -> fp32 here
        except RuntimeError as exc:
            raise ValueError(f"{name}: weights do not fit the T2S v2 layout: {exc}") from exc
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path_or_ckpt, device="cpu", dtype=torch.float32) -> "Text2Semantic":
        """Load an upstream `*.ckpt` (path) or an already loaded `GPTCheckpoint`."""
        if isinstance(path_or_ckpt, (str, os.PathLike)):
            from models.checkpoints import load_gpt_checkpoint

            path_or_ckpt = load_gpt_checkpoint(path_or_ckpt)
        ckpt = path_or_ckpt
        return cls.from_config_and_weights(ckpt.config, ckpt.weights, device, dtype,
                                           name=str(getattr(ckpt, "path", "checkpoint")))

    # ---- pieces ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.predict.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.predict.weight.dtype

    def positions(self, n: int) -> torch.Tensor:
        """The first n rows of the sine table, grown on demand (upstream pre-builds 4000)."""
        if n > self.pe.shape[0]:
            self.pe = sine_table(max(n, 2 * self.pe.shape[0]), self.config.dim).to(self.pe)
        return self.pe[:n]

    def embed(self, phone_ids: torch.Tensor, bert: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        """[phones (L) ; audio tokens (T)] -> [1, L+T, dim]."""
        L = phone_ids.shape[0]
        if bert.shape != (self.config.bert_dim, L):
            raise ValueError(f"bert must be [{self.config.bert_dim}, {L}], got {list(bert.shape)}")
        x = self.text_embedding(phone_ids) + self.bert_proj(bert.to(self.dtype).T)
        x = x + self.text_alpha * self.positions(L)
        if audio is not None and audio.numel():
            y = self.audio_embedding(audio) + self.audio_alpha * self.positions(audio.shape[0])
            x = torch.cat([x, y])
        return x[None]

    # ---- forward passes ----------------------------------------------------------------------
    def forward(self, phone_ids, bert, audio=None, *, last_only: bool = False,
                cache: "KVCache | None" = None, slot: int = 0) -> torch.Tensor:
        """Full pass over one sequence, no cache reads: logits [L+T, V] (or [V] if last_only).

        With `cache`, the keys/values of every position are also written into `slot`."""
        x = self.embed(phone_ids, bert, audio)
        L = phone_ids.shape[0]
        mask = prefix_lm_mask(L, x.shape[1] - L, x.device)
        if cache is not None:
            cache.begin_prefill(slot, x.shape[1])
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, cache, i)
        return self.predict(x[0, -1] if last_only else x[0])

    @torch.inference_mode()
    def first_step_logits(self, phone_ids, bert, prompt=None) -> torch.Tensor:
        """Raw float32 logits [V] of decoding step 0, the prefill (no cache involved)."""
        dev = self.device
        audio = None if prompt is None else torch.as_tensor(prompt, dtype=torch.long, device=dev).reshape(-1)
        return self(torch.as_tensor(phone_ids, dtype=torch.long, device=dev).reshape(-1),
                    torch.as_tensor(bert, device=dev), audio, last_only=True).float()

    def decode(self, tokens: torch.Tensor, audio_pos: torch.Tensor, cache: "KVCache",
               mask: torch.Tensor | None) -> torch.Tensor:
        """One new token per row [B] at audio positions [B] -> logits [B, V], via the cache."""
        x = self.audio_embedding(tokens) + self.audio_alpha * self.pe[audio_pos]
        x = x[:, None]
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, cache, i)
        return self.predict(x[:, 0])


# --------------------------------------------------------------------------------------------
# Preallocated slot KV cache


class KVCache:
    """Keys and values of every layer for a pool of slots, written in place.

    ``k``, ``v``: one [n_slots, n_head, max_seq, head_dim] tensor per layer. Slot ``i`` holds one request's
    sequence from position 0. Positions past a row's length hold stale or zero keys; every
    attention over the cache masks them (a zero key still scores logit 0, not weight 0).
    The engine calls ``begin_prefill``/``begin_decode`` before a forward, and each layer calls
    ``update`` to store its new keys/values and get back what to attend over.
    """

    def __init__(self, cfg: T2SConfig, n_slots: int, max_seq: int, device="cpu", dtype=torch.float32):
        # one tensor per layer, not one [n_layer, ...] block: a compiled step then writes each
        # layer's tensor in place (a write into a view of one big input made Inductor copy all of it)
        shape = (n_slots, cfg.n_head, max_seq, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.n_slots, self.max_seq = n_slots, max_seq
        self._key_pos = torch.arange(max_seq, device=device)
        self._slot_ids = torch.arange(n_slots, device=device)
        self._slot = 0
        self._decode = False

    def begin_prefill(self, slot: int, length: int) -> None:
        if length > self.max_seq:
            raise ValueError(f"sequence of {length} positions exceeds the cache ({self.max_seq})")
        self._slot, self._decode = slot, False

    def begin_decode(self, positions: Sequence[int], always_mask: bool = False) -> torch.Tensor | None:
        """Rows 0..B-1 each write one key at their own position; returns the attention mask.

        `always_mask` (compiled decoding): every per-step value is then a tensor, the mask's width
        included, so a compiled step sees new values, not new constants, and never recompiles."""
        B, lo, hi = len(positions), min(positions), max(positions)
        self._decode, self._span = True, hi + 1
        self._pos_t = torch.tensor(positions, device=self._key_pos.device)
        self._row_t = self._slot_ids[:B]
        if lo == hi and not always_mask:  # all rows equally long (always so at batch 1): no mask
            self._mask = None
            return None
        # [B, 1, 1, span]: row i sees keys 0..positions[i] (its own new key included)
        self._mask = (self._key_pos[: self._span][None, :] <= self._pos_t[:, None])[:, None, None, :]
        return self._mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        kl, vl = self.k[layer], self.v[layer]
        if not self._decode:  # prefill: store, attend over the fresh keys with the prefix mask
            S = k.shape[2]
            kl[self._slot, :, :S] = k[0]
            vl[self._slot, :, :S] = v[0]
            return k, v
        kl[self._row_t, :, self._pos_t] = k[:, :, 0]
        vl[self._row_t, :, self._pos_t] = v[:, :, 0]
        B = self._pos_t.shape[0]
        span = self._span if self._mask is None else self._mask.shape[-1]
        return kl[:B, :, :span], vl[:B, :, :span]

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot `src` into slot `dst` (all layers)."""
        for kl, vl in zip(self.k, self.v):
            kl[dst, :, :length] = kl[src, :, :length]
            vl[dst, :, :length] = vl[src, :, :length]


# --------------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class SamplingParams:
    top_k: int = 15
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.35
    max_new_tokens: int = MAX_NEW_TOKENS  # further capped at 1500 (upstream's loop bound)
    seed: int | None = None  # None: a fresh random seed per request

    def __post_init__(self):
        if int(self.top_k) != self.top_k or self.top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k}")
        if not 0.0 < self.top_p:
            raise ValueError(f"top_p must be > 0, got {self.top_p}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    def with_seed(self, seed: int | None) -> "SamplingParams":
        return replace(self, seed=seed)


def logits_to_probs(logits, seen, *, repetition_penalty, top_p, temperature, top_k, suppress_eos,
                    eos: int, use_top_p: bool | None = None):
    """Upstream's per-step logits processing for B rows, each with its own parameters (SPEC 4.5).

    logits [B, V] raw (not modified); seen [B, V] bool, the ids in each row's history (prompt +
    generated); repetition_penalty, top_p, temperature [B] float; top_k [B] long;
    suppress_eos: list[bool], True while a row is inside its first 11 steps.
    Returns (probs [B, V], argmax of the penalised logits [B], which the stop rule reads).
    """
    B, V = logits.shape
    x = logits.float()
    if any(suppress_eos):  # upstream drops the EOS column; -inf is the same for every later stage
        rows = torch.tensor(suppress_eos, device=x.device)
        x = x.clone()
        x[:, eos] = x[:, eos].masked_fill(rows, -math.inf)
    # Repetition penalty on every id of the history, each once: l*rp if l < 0 else l/rp.
    rp = repetition_penalty[:, None]
    x = torch.where(seen, torch.where(x < 0, x * rp, x / rp), x)
    greedy = x.argmax(-1)

    if use_top_p is None:
        use_top_p = bool((top_p < 1.0).any())
    if use_top_p:  # before temperature; no shift-right: the token crossing top_p goes too
        sorted_x, order = torch.sort(x, descending=True)
        cum = torch.softmax(sorted_x, -1).cumsum(-1)
        thresh = torch.where(top_p < 1.0, top_p, math.inf)[:, None]  # top_p >= 1: keep all
        drop = cum > thresh
        drop[:, 0] = False
        x = x.masked_fill(drop.scatter(1, order, drop), -math.inf)

    x = x / temperature.clamp_min(1e-5)[:, None]
    # top-k, ties with the k-th value kept
    k = top_k.clamp(1, V)
    top = torch.topk(x, int(k.max())).values
    x = x.masked_fill(x < top.gather(1, (k - 1)[:, None]), -math.inf)
    return torch.softmax(x, -1), greedy


def sample_tokens(logits, seen, *, generators, eos: int, suppress_eos, **params):
    """Process the logits (see `logits_to_probs`) and sample one token per row.

    generators: one torch.Generator per row, the source of that row's noise.
    Returns (tokens [B] long, stop [B] bool): stop when the sample or the argmax of the
    penalised logits is EOS.
    """
    probs, greedy = logits_to_probs(logits, seen, suppress_eos=suppress_eos, eos=eos, **params)
    V = probs.shape[1]
    # Exponential race: argmax(p / Exp(1)) is an exact categorical sample. Each row draws from
    # its own generator, as many numbers as upstream draws (1024 while EOS is removed, else V),
    # so a seeded request reproduces upstream's `torch.manual_seed` stream.
    noise = torch.ones_like(probs)
    for i, gen in enumerate(generators):
        noise[i, : V - 1 if suppress_eos[i] else V].exponential_(generator=gen)
    tokens = (probs / noise).argmax(-1)
    return tokens, (tokens == eos) | (greedy == eos)


# --------------------------------------------------------------------------------------------
# Engine


def cache_positions_needed(cfg: T2SConfig, text_len: int, prompt_len: int, params: SamplingParams) -> int:
    """Cache positions one request may use: its prefill plus every sampled token fed back
    (the last sampled token never is)."""
    return text_len + prompt_len + min(params.max_new_tokens, cfg.max_new_tokens) - 1


class EngineFullError(RuntimeError):
    """Every slot of the engine is busy."""


@dataclass
class StepOutput:
    request_id: Hashable
    token: int | None  # None when the step ended the request with EOS (nothing is kept)
    finished: bool
    reason: str | None = None  # "eos" | "max_tokens" when finished
    logits: torch.Tensor | None = None  # raw logits [V] of this step, if asked for


@dataclass
class _Row:
    request_id: Hashable
    generator: torch.Generator
    text_len: int
    length: int  # positions written in the cache
    max_new: int
    record_logits: bool
    n_generated: int = 0


class T2SEngine:
    """Step-wise batched decoding over a pool of `max_batch` KV-cache slots.

    Invariant between calls: each active slot holds its sequence in the cache and the logits of
    its next token in `_logits`. `step()` samples every active row, then runs one batched
    forward for the rows that go on, which restores the invariant.

    A request needs `phones + prompt tokens + max_new_tokens - 1` cache positions (<= max_seq).
    The cache takes 2 * n_layer * dim * 4 bytes per slot and position in fp32: 96 KiB at the v2
    dims, so max_batch 4 x max_seq 2048 is 768 MiB. One thread drives an engine.
    """

    def __init__(self, model: Text2Semantic, max_batch: int = 4, max_seq: int = 2048,
                 compile: bool = False):
        self.model, self.config = model, model.config
        self.max_batch, self.max_seq = max_batch, max_seq
        # compile: the decode forward goes through torch.compile (Inductor; Triton kernels on
        # CUDA), with the batch size and the attention span as symbolic sizes, so one compiled
        # graph serves every step. The first steps pay the compilation (tens of seconds).
        self.compiled = compile
        self._decode = torch.compile(model.decode, dynamic=True) if compile else model.decode
        dev, V = model.device, model.config.vocab_size
        with torch.inference_mode():
            self.cache = KVCache(self.config, max_batch, max_seq, dev, model.dtype)
            self._logits = torch.zeros(max_batch, V, device=dev)
            self._seen = torch.zeros(max_batch, V, dtype=torch.bool, device=dev)
            self._last = torch.zeros(max_batch, dtype=torch.long, device=dev)
            self._rp = torch.ones(max_batch, device=dev)
            self._top_p = torch.ones(max_batch, device=dev)
            self._temp = torch.ones(max_batch, device=dev)
            self._top_k = torch.ones(max_batch, dtype=torch.long, device=dev)
        self._rows: list[_Row] = []
        self._slot: dict[Hashable, int] = {}

    def warm_up(self) -> None:
        """Decode two dummy requests, alone and side by side, then drop them: a compiled engine
        compiles its step here (batch 1 and batch > 1 are separate graphs), not on a user's
        request. Needs an idle engine."""
        if self._rows:
            raise RuntimeError("warm_up needs an idle engine")
        phones = torch.zeros(4, dtype=torch.long)
        bert = torch.zeros(self.config.bert_dim, 4)
        params = SamplingParams(max_new_tokens=4, seed=0)
        for rows in sorted({1, min(2, self.max_batch)}):
            for i in range(rows):
                self.add(("warm-up", i), phones, bert, None, params)
            for _ in range(2):
                self.step()
            for i in range(rows):
                self.cancel(("warm-up", i))

    # ---- bookkeeping -------------------------------------------------------------------------
    @property
    def num_active(self) -> int:
        return len(self._rows)

    @property
    def free_slots(self) -> int:
        return self.max_batch - len(self._rows)

    @property
    def request_ids(self) -> list[Hashable]:
        return [r.request_id for r in self._rows]

    def __contains__(self, request_id) -> bool:
        return request_id in self._slot

    # ---- requests ----------------------------------------------------------------------------
    def add(self, request_id: Hashable, phone_ids, bert, prompt=None,
            params: SamplingParams | None = None, *, record_logits: bool = False) -> None:
        """Prefill one request into a free slot. Its first token comes with the next step()."""
        params = params or SamplingParams()
        if request_id in self._slot:
            raise ValueError(f"request {request_id!r} is already active")
        if len(self._rows) >= self.max_batch:
            raise EngineFullError(f"no free slot: all {self.max_batch} slots are busy")
        dev = self.model.device
        phone_ids = torch.as_tensor(phone_ids, dtype=torch.long, device=dev).reshape(-1)
        bert = torch.as_tensor(bert, device=dev)
        prompt = torch.as_tensor([] if prompt is None else prompt, dtype=torch.long, device=dev).reshape(-1)
        L, T = phone_ids.numel(), prompt.numel()
        if L == 0:
            raise ValueError("phone_ids is empty")
        if not 0 <= int(phone_ids.min()) <= int(phone_ids.max()) < self.config.phoneme_vocab_size:
            raise ValueError(f"phone ids must lie in [0, {self.config.phoneme_vocab_size})")
        if T and not 0 <= int(prompt.min()) <= int(prompt.max()) < self.config.eos:
            raise ValueError(f"prompt tokens must lie in [0, {self.config.eos})")
        need = cache_positions_needed(self.config, L, T, params)
        if need > self.max_seq:
            raise ValueError(f"request {request_id!r} needs {need} cache positions ({L} phones + "
                             f"{T} prompt tokens + new tokens); engine max_seq is {self.max_seq}")

        max_new = min(params.max_new_tokens, self.config.max_new_tokens)
        self.model.positions(max(L, T + max_new))  # grow the sine table before decoding
        slot = len(self._rows)
        with torch.inference_mode():
            logits = self.model(phone_ids, bert, prompt, last_only=True, cache=self.cache, slot=slot)
            self._logits[slot] = logits
            self._seen[slot] = False
            self._seen[slot, prompt] = True
            self._rp[slot] = params.repetition_penalty
            self._top_p[slot] = params.top_p
            self._temp[slot] = params.temperature
            self._top_k[slot] = params.top_k
        gen = torch.Generator(device=dev)
        if params.seed is None:
            gen.seed()
        else:
            gen.manual_seed(params.seed)
        self._rows.append(_Row(request_id, gen, L, L + T, max_new, record_logits))
        self._slot[request_id] = slot

    def cancel(self, request_id: Hashable) -> bool:
        """Drop a request and free its slot; False if it is not active."""
        slot = self._slot.get(request_id)
        if slot is None:
            return False
        with torch.inference_mode():
            self._free(slot)
        return True

    def _free(self, slot: int) -> None:
        last = len(self._rows) - 1
        del self._slot[self._rows[slot].request_id]
        if slot != last:  # keep active rows contiguous: the last row takes the freed slot
            row = self._rows[last]
            self.cache.move(last, slot, row.length)
            for buf in (self._logits, self._seen, self._last, self._rp, self._top_p, self._temp, self._top_k):
                buf[slot] = buf[last]
            self._rows[slot] = row
            self._slot[row.request_id] = slot
        self._rows.pop()

    # ---- decoding ----------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        """Sample one token for every active request (batched); free the finished ones."""
        rows = self._rows
        B = len(rows)
        if B == 0:
            return []
        raw = self._logits[:B]
        suppress = [r.n_generated < MIN_TOKENS_BEFORE_EOS for r in rows]
        tokens, stop = sample_tokens(
            raw, self._seen[:B], repetition_penalty=self._rp[:B], top_p=self._top_p[:B],
            temperature=self._temp[:B], top_k=self._top_k[:B], suppress_eos=suppress,
            generators=[r.generator for r in rows], eos=self.config.eos)
        self._last[:B] = tokens
        self._seen[:B].scatter_(1, tokens[:, None], True)

        outputs, finished = [], []
        for i, (row, tok, eos) in enumerate(zip(rows, tokens.tolist(), stop.tolist())):
            row.n_generated += 1
            if eos:
                out = StepOutput(row.request_id, None, True, "eos")
            elif row.n_generated >= row.max_new:
                out = StepOutput(row.request_id, tok, True, "max_tokens")
            else:
                out = StepOutput(row.request_id, tok, False)
            if row.record_logits:
                out.logits = raw[i].clone()
            if out.finished:
                finished.append(i)
            outputs.append(out)
        for i in reversed(finished):  # highest first, so moved rows are always live ones
            self._free(i)
        if self._rows:
            self._feed_back()
        return outputs

    def _feed_back(self) -> None:
        """Run the last sampled token of every active row through the model (one batch)."""
        rows = self._rows
        B = len(rows)
        positions = [r.length for r in rows]
        mask = self.cache.begin_decode(positions, always_mask=self.compiled)
        audio_pos = torch.tensor([r.length - r.text_len for r in rows], device=self._last.device)
        self._logits[:B] = self._decode(self._last[:B], audio_pos, self.cache, mask)
        for r in rows:
            r.length += 1


# --------------------------------------------------------------------------------------------
# Convenience functions


@dataclass
class T2SRequest:
    phone_ids: torch.Tensor  # [L] prompt-text phones + target phones
    bert: torch.Tensor  # [1024, L]
    prompt: torch.Tensor | None = None  # [T] prompt semantic tokens; None/empty = ref-free
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class GenerationResult:
    tokens: torch.Tensor  # LongTensor [k], generated tokens, EOS excluded
    stop_reason: str  # "eos" | "max_tokens" | "cancelled"
    prompt_len: int = 0
    logits: torch.Tensor | None = None  # [steps, V] raw logits of every step, if asked

    @property
    def ref_free(self) -> bool:
        return self.prompt_len == 0


def prefill_logits(model: Text2Semantic, phone_ids, bert, prompt=None) -> torch.Tensor:
    """Raw logits [V] of decoding step 0 (before EOS removal and penalty)."""
    return model.first_step_logits(phone_ids, bert, prompt)


def _prompt_len(prompt) -> int:
    return 0 if prompt is None else len(prompt)


def _as_request(item) -> T2SRequest:
    if isinstance(item, T2SRequest):
        return item
    return T2SRequest(*item)


def generate_batch(model: Text2Semantic, items: Sequence, *, max_batch: int | None = None,
                   record_logits: bool = False) -> list[GenerationResult]:
    """Decode several requests with continuous batching (up to `max_batch` at once).

    items: T2SRequest or tuples (phone_ids, bert, prompt, params). Results keep input order."""
    reqs = [_as_request(it) for it in items]
    if not reqs:
        return []
    max_batch = min(max_batch or len(reqs), len(reqs))
    need = max(cache_positions_needed(model.config, len(r.phone_ids), _prompt_len(r.prompt), r.params)
               for r in reqs)
    engine = T2SEngine(model, max_batch=max_batch, max_seq=need)
    tokens: list[list[int]] = [[] for _ in reqs]
    logits: list[list[torch.Tensor]] = [[] for _ in reqs]
    results: list[GenerationResult | None] = [None] * len(reqs)
    pending = list(range(len(reqs)))[::-1]
    while pending or engine.num_active:
        while pending and engine.free_slots:
            i = pending.pop()
            r = reqs[i]
            engine.add(i, r.phone_ids, r.bert, r.prompt, r.params, record_logits=record_logits)
        for out in engine.step():
            i = out.request_id
            if out.token is not None:
                tokens[i].append(out.token)
            if out.logits is not None:
                logits[i].append(out.logits)
            if out.finished:
                results[i] = GenerationResult(
                    torch.tensor(tokens[i], dtype=torch.long), out.reason,
                    _prompt_len(reqs[i].prompt),
                    torch.stack(logits[i]) if record_logits else None)
    return results


def generate(model: Text2Semantic, phone_ids, bert, prompt=None, params: SamplingParams | None = None,
             *, record_logits: bool = False) -> GenerationResult:
    """Decode one request (upstream `infer_panel_naive` semantics)."""
    req = T2SRequest(phone_ids, bert, prompt, params or SamplingParams())
    return generate_batch(model, [req], record_logits=record_logits)[0]


def generate_stream(model: Text2Semantic, phone_ids, bert, prompt=None,
                    params: SamplingParams | None = None,
                    chunk_sizes: tuple[int, int] = (24, 48)) -> Iterator[torch.Tensor]:
    """Yield generated tokens in chunks: `first` tokens, then every `rest`, then the remainder.

    The generator's return value (StopIteration.value) is the GenerationResult. Closing the
    generator early cancels the request. Chunks are raw generated tokens: upstream's SoVITS
    handoff quirk (`upstream_sovits_codes`) is not applied."""
    first, rest = chunk_sizes
    if first < 1 or rest < 1:
        raise ValueError(f"chunk sizes must be >= 1, got {chunk_sizes}")
    params = params or SamplingParams()
    prompt_len = _prompt_len(prompt)
    engine = T2SEngine(model, max_batch=1,
                       max_seq=cache_positions_needed(model.config, len(phone_ids), prompt_len, params))
    engine.add(0, phone_ids, bert, prompt, params)
    tokens: list[int] = []
    sent, target = 0, first
    reason = "cancelled"
    try:
        while engine.num_active:
            out = engine.step()[0]
            if out.token is not None:
                tokens.append(out.token)
            if out.finished:
                reason = out.reason
            if len(tokens) - sent >= target or (out.finished and len(tokens) > sent):
                yield torch.tensor(tokens[sent:], dtype=torch.long)
                sent, target = len(tokens), rest
    finally:
        engine.cancel(0)
    return GenerationResult(torch.tensor(tokens, dtype=torch.long), reason, prompt_len)


def upstream_sovits_codes(result: GenerationResult, parallel: bool = False) -> torch.Tensor:
    """The tokens upstream hands to SoVITS: `y[-idx:]` with idx the loop index at the stop.

    Naive loop (`parallel=False`, upstream's `infer_panel_naive`):
    * EOS stop: every generated token (the EOS is not kept).
    * length-cap stop: idx = generated - 1, so the FIRST generated token is dropped.
    * ref-free (no prompt): upstream returns idx = 0 and `y[-0:]` is all of y: every token.
    Batched loop (`parallel=True`, `infer_panel_batch_infer`): it keeps `y[:-1]`, so on a
    length-cap stop the LAST generated token is dropped instead.
    An empty result becomes [0] ("bad zero prediction").
    """
    tokens = result.tokens
    if result.stop_reason == "max_tokens":
        if parallel:
            tokens = tokens[:-1]
        elif not result.ref_free:
            tokens = tokens[1:]
    if tokens.numel() == 0:
        tokens = torch.zeros(1, dtype=torch.long)
    return tokens
