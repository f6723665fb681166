"""Server settings: the one place for limits and defaults.

Settings come from the Serve config's application `args` (see configs/*.yaml), so `serve run`,
`serve deploy` and `gsv-serve serve` all read the same structure.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

DTYPES = frozenset({"float32", "float16", "bfloat16"})  # names deployments.common.torch_dtype maps


@dataclass(frozen=True)
class Limits:
    max_text_chars: int = 2000
    max_upload_bytes: int = 20 * 1024 * 1024
    max_request_bytes: int = 25 * 1024 * 1024
    ref_min_seconds: float = 3.0
    ref_max_seconds: float = 10.0
    max_voices: int = 1000
    max_voices_per_tenant: int = 100
    max_transcript_chars: int = 500
    max_voice_name_chars: int = 100


@dataclass(frozen=True)
class ModelSpec:
    """Where one voice model's files are. Empty `gpt`/`sovits` means: the built-in demo model."""

    model_id: str = "default"
    gpt: str = ""
    sovits: str = ""
    hubert_dir: str = ""
    bert_dir: str = ""

    @property
    def is_demo(self) -> bool:
        return not (self.gpt and self.sovits)


@dataclass(frozen=True)
class Settings:
    data_dir: str = "./data"
    model: ModelSpec = field(default_factory=ModelSpec)
    limits: Limits = field(default_factory=Limits)
    device: str = "cpu"
    default_language: str = "auto"
    stream_chunk_tokens: tuple[int, int] = (12, 48)  # first chunk small for TTFA, later ones larger
    gpt_max_batch: int = 8  # KV-cache slots per GPT replica and model (rows decoding at once)
    gpt_max_seq: int = 2560  # cache positions per slot: phones + prompt tokens + new tokens
    gpt_compile: bool = False  # torch.compile the GPT decode step (compiles while a version loads)
    sovits_backend: str = "torch"  # torch | onnx | onnx-int8 (SoVITS + vocoder stages)
    # Weight precision of the model stages (float32 | float16 | bfloat16): float16 on a GPU (a
    # stage that falls back to CPU runs float32 instead); bfloat16 only pays on CPUs with native
    # bf16 matmul (avx512_bf16 / AMX), see PERFORMANCE.md. The ONNX backends run float32 whatever
    # this says, and the BERT frontend always runs float32.
    dtype: str = "float32"
    gpt_dtype: str = ""  # the GPT stage's own precision; empty = `dtype`
    models_dir: str = ""  # admin model swaps may only name checkpoints inside this folder
    admin_api_key: str = ""  # bearer token for model admin routes; empty = those routes are off
    request_timeout_s: float = 300.0  # a synthesis over this is cancelled in every stage (504)
    guard: dict = field(default_factory=dict)  # models.guard.GuardConfig overrides (thresholds, retries)
    require_auth: bool = False  # set by `gsv-serve serve` whenever it binds beyond loopback
    rate_limit_per_s: float = 0.0  # requests per second per API key (0 = off); bursts of rate_burst
    rate_burst: int = 20
    max_streams_per_key: int = 0  # concurrent streamed responses per API key (0 = unlimited)

    def __post_init__(self):
        for name in ("dtype", "gpt_dtype"):
            value = getattr(self, name)
            if value not in DTYPES and not (name == "gpt_dtype" and value == ""):
                raise ValueError(f"{name} must be one of {sorted(DTYPES)}, got {value!r}")

    @property
    def gpt_weights_dtype(self) -> str:
        return self.gpt_dtype or self.dtype

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> "Settings":
        """Build from a plain dict (Serve config `args`), ignoring unknown keys only where named."""
        args = dict(args or {})
        model = ModelSpec(**(args.pop("model", None) or {}))
        limits = Limits(**(args.pop("limits", None) or {}))
        if "stream_chunk_tokens" in args:
            args["stream_chunk_tokens"] = tuple(args["stream_chunk_tokens"])
        known = {f.name for f in fields(cls)}
        unknown = set(args) - known
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}; known: {sorted(known)}")
        data_dir = args.pop("data_dir", os.environ.get("GSV_DATA_DIR", cls.data_dir))
        if not args.get("admin_api_key"):
            args["admin_api_key"] = os.environ.get("GSV_ADMIN_KEY", "")
        models_dir = args.pop("models_dir", "") or str(Path(data_dir) / "models")
        return cls(data_dir=str(Path(data_dir).expanduser().resolve()), model=model, limits=limits,
                   models_dir=str(Path(models_dir).expanduser().resolve()), **args)

    def to_args(self) -> dict[str, Any]:
        out = asdict(self)
        out["stream_chunk_tokens"] = list(self.stream_chunk_tokens)
        return out
