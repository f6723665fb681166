"""What every stage shares: batch settings from `user_config`, errors that cross process boundaries."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

log = logging.getLogger("gsv.deployments")

# oneDNN (PyTorch's CPU conv/matmul library) keeps a compiled primitive per input shape, up to
# 1024 of them. Audio lengths differ on every request, so a vocoder replica filled that cache and
# grew from 0.55 to 1.2 GiB (v2 dims); 16 entries keep it flat at no measured speed cost (every
# new length misses either way). Read on the first primitive, so setting it at import is early
# enough; an operator's own value wins. Measured in docs/PERFORMANCE.md (soak).
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")


@dataclass(frozen=True)
class StageError:
    """A request-level failure returned (not raised) by a stage, so it survives Ray's pickling
    unchanged and the ingress can answer with a 4xx carrying `code` and `message`."""

    code: str
    message: str
    status: int = 400


def text_error(exc: ValueError) -> StageError:
    """A frontend ValueError -> the API's stable error code (the one mapping, used by every stage)."""
    from models.text.frontend import UnsupportedLanguageError
    from models.text.split import EmptyTextError

    if isinstance(exc, EmptyTextError):
        return StageError("empty_text", str(exc) or "the text has nothing to speak")
    if isinstance(exc, UnsupportedLanguageError):
        return StageError("unsupported_language", str(exc))
    return StageError("invalid_text", str(exc))


def probe_latent(model: Any) -> None:
    """A tiny SoVITS decode: proves a loaded model still answers (replica health checks)."""
    from models.pipeline import latent

    gin = model.config.gin_channels
    z = latent(model, np.arange(4, dtype=np.int64), np.array([1, 2], dtype=np.int64),
               np.zeros((1, gin, 1), np.float32), 0.0, 1.0, 0)
    if not np.isfinite(z).all():
        raise RuntimeError("SoVITS probe produced non-finite values")


def probe_vocoder(model: Any, inter_channels: int, gin_channels: int) -> None:
    """A tiny vocoder run on 4 latent frames."""
    from models.pipeline import vocode

    wav = vocode(model, np.zeros((1, inter_channels, 4), np.float32), np.zeros((1, gin_channels, 1), np.float32))
    if not np.isfinite(wav).all():
        raise RuntimeError("vocoder probe produced non-finite values")


def apply_batch_config(method: Any, config: dict[str, Any]) -> None:
    """Set `max_batch_size` / `batch_wait_timeout_s` of a `@serve.batch` method from `user_config`."""
    if "max_batch_size" in config:
        method.set_max_batch_size(int(config["max_batch_size"]))
    if "batch_wait_timeout_s" in config:
        method.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))


def resolve_device(requested: str) -> str:
    """`cuda` where this replica has a GPU, else `cpu`: the same settings serve stages that the
    Serve config places on GPUs and stages it keeps on CPUs (num_gpus 0)."""
    if requested.startswith("cuda") and not torch.cuda.is_available():
        return "cpu"
    return requested


def torch_dtype(name: str, device: str = "cuda") -> torch.dtype:
    """The weights' dtype on `device`. float16 becomes float32 on a CPU: CPUs have no float16
    arithmetic worth the name, and a GPU profile's stage that fell back to CPU (resolve_device)
    must not crawl. bfloat16 stays: CPUs with avx512_bf16 or AMX run it fast."""
    if name == "float16" and device == "cpu":
        return torch.float32
    # the names serve_app.settings.DTYPES accepts (settings stay free of torch-side imports)
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def limit_threads(num_threads: int | None) -> None:
    """Each replica gets its own small thread pool: Ray sets OMP threads from num_cpus, we make it explicit."""
    if num_threads:
        torch.set_num_threads(int(num_threads))


# Model weights loaded per replica (Ray Serve multiplexing, LRU beyond this). Read at import, so
# set it per deployment with `ray_actor_options.runtime_env.env_vars.GSV_MODELS_PER_REPLICA`.
MODELS_PER_REPLICA = int(os.environ.get("GSV_MODELS_PER_REPLICA", "3"))
