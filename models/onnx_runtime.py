"""ONNX Runtime backend for the SoVITS decode path (latent + vocoder).

Two graphs are exported from the *loaded* PyTorch modules (so they hold exactly the weights the
PyTorch backend runs, weight norm already folded):

* ``latent``:  codes ``[T]`` int64, phone_ids ``[P]`` int64, ge ``[1, gin, 1]``,
  noise ``[1, inter, F]``, noise_scale ``[]`` float32  ->  z ``[1, inter, F]``  (F = 2T).
  The graph is built for **speed 1** only: ``speed != 1`` resamples the hidden sequence to a
  length computed in Python, so those calls fall back to the PyTorch model (loaded lazily).
* ``vocoder``: z ``[1, inter, F]``, ge ``[1, gin, 1]``  ->  wav ``[1, 1, 640 F]``.

T, P and F are dynamic axes. Graphs are cached under ``<cache_dir>/<sha256 of the .pth>/`` and
reused when present, so a replica pays the export (seconds) once per checkpoint. ``--int8`` adds
dynamically quantized copies (weights int8, activations quantized on the fly) for CPU.

The legacy TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) is used: it still
exists in torch 2.13, needs only the ``onnx`` package, and handles our shape arithmetic. The one
construct it cannot trace faithfully is the relative-position attention, which walks the score
matrix's diagonals with a Python loop whose bounds depend on the length; during export that
forward is swapped (per instance, restored afterwards) for an equivalent banded one-hot matmul
formulation that only uses tensor ops, so the length stays symbolic.

Command line::

    python -m models.onnx_runtime export --sovits X.pth [--out DIR] [--int8]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import tempfile
import threading
import types
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from .checkpoints import file_sha256, load_sovits_checkpoint
from .sovits import CODEBOOK_SIZE, SSL_DIM, RelPosSelfAttention, SoVITS, SoVITSConfig
from .vocoder import Vocoder

log = logging.getLogger(__name__)

# Bump when the exported graphs change (new formulation, opset...): old cache entries are ignored.
EXPORT_VERSION = 1
OPSET = 17
LATENT_FILE = "latent.onnx"
VOCODER_FILE = "vocoder.onnx"
INT8_SUFFIX = ".int8.onnx"
META_FILE = "meta.json"
DEFAULT_CACHE_ENV = "GSV_ONNX_CACHE"

Backend = Literal["torch", "onnx", "onnx-int8"]


def default_cache_dir() -> Path:
    """``$GSV_ONNX_CACHE`` or ``~/.cache/gsv-serve/onnx``."""
    env = os.environ.get(DEFAULT_CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "gsv-serve" / "onnx"


# ---------------------------------------------------------------------------------------------
# Export-friendly pieces
# ---------------------------------------------------------------------------------------------


def _rel_band(t: torch.Tensor | int, window: int, like: torch.Tensor) -> torch.Tensor:
    """One-hot ``[T, T, 2w+1]``: entry ``(i, j, k)`` is 1 iff ``j - i == k - w``.

    Row ``i`` of the band maps the ``2w+1`` relative slots onto absolute key positions, so the
    diagonal walk becomes two batched matmuls. Exact in fp32: each output sums one product."""
    pos = torch.arange(t, device=like.device)
    offsets = torch.arange(-window, window + 1, device=like.device)
    rel = pos[None, :] - pos[:, None]  # [T, T]: j - i
    return (rel[:, :, None] == offsets).to(like.dtype)


def _rel_attention_export(self: RelPosSelfAttention, x: torch.Tensor, attn_mask: torch.Tensor | None):
    """Same maths as :meth:`RelPosSelfAttention.forward`, written without length-dependent Python."""
    b, c, t = x.shape
    h, k = self.n_heads, 2 * self.window + 1
    q = self._heads(self.q(x)) / math.sqrt(self.head_dim)  # [B, H, T, D]
    key, value = self._heads(self.k(x)), self._heads(self.v(x))
    band = _rel_band(t, self.window, x)  # [T(i), T(j), K]

    scores = q @ key.transpose(-2, -1)  # [B, H, T, T]
    rel_logits = q @ self.rel_k[0].transpose(0, 1)  # [B, H, T, K]
    # per query row i: [BH, K] @ [K, T] puts each relative logit on its absolute key column
    rel_abs = rel_logits.permute(2, 0, 1, 3).reshape(t, b * h, k) @ band.transpose(1, 2)
    scores = scores + rel_abs.reshape(t, b, h, t).permute(1, 2, 0, 3)
    if attn_mask is not None:
        scores = scores.masked_fill(attn_mask == 0, -1e4)
    p = scores.softmax(dim=-1)
    out = p @ value
    # the inverse: gather each row's band of probabilities into the K relative slots
    rel_w = p.permute(2, 0, 1, 3).reshape(t, b * h, t) @ band  # [T, BH, K]
    out = out + rel_w.reshape(t, b, h, k).permute(1, 2, 0, 3) @ self.rel_v[0]
    return self.o(out.transpose(2, 3).reshape(b, c, t))


@contextmanager
def _export_friendly(module: nn.Module):
    """Swap every RelPosSelfAttention's forward for the export formulation, per instance."""
    patched = [m for m in module.modules() if isinstance(m, RelPosSelfAttention)]
    for m in patched:
        m.forward = types.MethodType(_rel_attention_export, m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward  # back to the class method


class LatentGraph(nn.Module):
    """The speed-1 body of :meth:`SoVITS.decode_latent` as a traceable module.

    Input validation (id ranges, empty inputs) is done by the runner in NumPy, not in the graph."""

    def __init__(self, sovits: SoVITS):
        super().__init__()
        self.sovits = sovits

    def forward(self, codes, phone_ids, ge, noise, noise_scale):
        s = self.sovits
        content = s.codebook[codes].t()[None]  # [1, 768, T]
        # 25 Hz -> 50 Hz nearest, as a reshape (repeat_interleave exports poorly with dynamic T)
        content = content[..., None].expand(-1, -1, -1, 2).reshape(1, SSL_DIM, -1)
        y_mask = torch.ones_like(content[:, :1])
        text_mask = torch.ones_like(phone_ids[None, None], dtype=content.dtype)
        m_p, logs_p, y_mask = s.encoder(content, y_mask, phone_ids[None], text_mask, ge, 1.0)
        z_p = m_p + noise * torch.exp(logs_p) * noise_scale
        return s.flow.reverse(z_p, y_mask, ge) * y_mask


def _publish(tmp: str, path: Path) -> None:
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared by replicas of other users
    os.replace(tmp, path)


def _atomic_export(module: nn.Module, args: tuple, path: Path, **kwargs) -> None:
    """Export to a temporary file next to ``path`` and rename: readers never see half a graph."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning, TracerWarnings
            torch.onnx.export(module, args, tmp, dynamo=False, opset_version=OPSET,
                              do_constant_folding=True, **kwargs)
        _publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cpu_fp32(module: nn.Module) -> nn.Module:
    """The module itself when already fp32 on CPU, else a converted copy (the caller's live model
    is never moved or cast)."""
    p = next(module.parameters())
    if p.dtype == torch.float32 and p.device.type == "cpu":
        return module.eval()
    return copy.deepcopy(module).to(device="cpu", dtype=torch.float32).eval()


def export_latent(sovits: SoVITS, path: str | os.PathLike) -> Path:
    """Export the speed-1 latent path of a loaded (fp32, CPU) SoVITS to ``path``."""
    path = Path(path)
    sovits = _cpu_fp32(sovits)
    c = sovits.config
    t, p = 12, 7  # example lengths; every length is a dynamic axis
    args = (
        torch.zeros(t, dtype=torch.long),
        torch.zeros(p, dtype=torch.long),
        torch.zeros(1, c.gin_channels, 1),
        torch.zeros(1, c.inter_channels, 2 * t),
        torch.tensor(0.5),
    )
    with _export_friendly(sovits), torch.no_grad():
        _atomic_export(
            LatentGraph(sovits), args, path,
            input_names=["codes", "phone_ids", "ge", "noise", "noise_scale"],
            output_names=["z"],
            dynamic_axes={"codes": {0: "T"}, "phone_ids": {0: "P"}, "noise": {2: "F"}, "z": {2: "F"}},
        )
    return path


def export_vocoder(vocoder: Vocoder, path: str | os.PathLike) -> Path:
    path = Path(path)
    vocoder = _cpu_fp32(vocoder)
    c = vocoder.config
    args = (torch.zeros(1, c.in_channels, 24), torch.zeros(1, c.gin_channels, 1))
    with torch.no_grad():
        _atomic_export(
            vocoder, args, path,
            input_names=["z", "ge"], output_names=["wav"],
            dynamic_axes={"z": {2: "F"}, "wav": {2: "N"}},
        )
    return path


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Dynamic INT8 quantization: weights stored as uint8 (per tensor), activations quantized to
    uint8 on the fly; Conv becomes ConvInteger, weight MatMuls MatMulInteger.

    uint8 weights, per tensor, because that is the ConvInteger case ORT's CPU kernels run fast
    (u8 x u8 GEMM): int8 or per-channel weights measured 4-7x *slower* than fp32 here. Gather
    (codebook and phone lookups) and ConvTranspose (no dynamic kernel) stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        quantize_dynamic(src, tmp, weight_type=QuantType.QUInt8, per_channel=False,
                         op_types_to_quantize=["MatMul", "Conv"])
        _publish(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst


def _int8_name(name: str) -> str:
    return name.removesuffix(".onnx") + INT8_SUFFIX


def export_checkpoint(sovits_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                      int8: bool = False) -> dict[str, Path]:
    """Export (or reuse) the graphs of one SoVITS ``.pth``; returns ``{"latent", "vocoder"}``
    paths (the INT8 copies when ``int8``). Keyed by the file's sha256 and :data:`EXPORT_VERSION`."""
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = file_sha256(sovits_path)
    folder = cache_root / digest / f"v{EXPORT_VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    latent, vocoder = folder / LATENT_FILE, folder / VOCODER_FILE

    if not (latent.exists() and vocoder.exists()):
        log.info("exporting ONNX graphs of %s into %s", sovits_path, folder)
        if not latent.exists():
            export_latent(SoVITS.from_checkpoint(sovits_path), latent)
        if not vocoder.exists():
            export_vocoder(Vocoder.from_checkpoint(sovits_path), vocoder)
        meta = {"source": str(sovits_path), "sha256": digest, "export_version": EXPORT_VERSION,
                "opset": OPSET, "torch": torch.__version__}
        (folder / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    if not int8:
        return {"latent": latent, "vocoder": vocoder}
    out = {}
    for key, fp32 in (("latent", latent), ("vocoder", vocoder)):
        q = folder / _int8_name(fp32.name)
        if not q.exists():
            quantize_int8(fp32, q)
        out[key] = q
    return out


# ---------------------------------------------------------------------------------------------
# Runners
# ---------------------------------------------------------------------------------------------


def choose_providers(device: str | None = None) -> list[str]:
    """CUDA when asked for (``"cuda"``/``"cuda:N"``) or, with ``device=None``, when available;
    CPU always comes last as the fallback for ops CUDA lacks."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    want_cuda = device is None or str(device).startswith("cuda")
    if want_cuda and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device is not None and str(device).startswith("cuda"):
        log.warning("device %s requested but onnxruntime has no CUDAExecutionProvider; using CPU", device)
    return ["CPUExecutionProvider"]


def _session(path: Path, device: str | None, num_threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # follow the torch thread budget the deployment set (limit_threads), not ORT's all-cores default
    opts.intra_op_num_threads = int(num_threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = choose_providers(device)
    if providers[0] == "CUDAExecutionProvider" and ":" in str(device or ""):
        providers[0] = ("CUDAExecutionProvider", {"device_id": int(str(device).split(":")[1])})
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def _np(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x), dtype=dtype)


class OrtSoVITS:
    """Drop-in for the decode side of :class:`SoVITS` (what ``models.pipeline.latent`` calls).

    ``speed != 1`` and the reference-side methods run on the PyTorch model, loaded on first use."""

    def __init__(self, latent_path: str | os.PathLike, sovits_path: str | os.PathLike | None = None, *,
                 config: SoVITSConfig | None = None, fallback: SoVITS | None = None,
                 device: str | None = "cpu", num_threads: int | None = None):
        """``sovits_path`` gives the config and the lazily loaded PyTorch fallback; or pass
        ``config`` (and optionally an already loaded ``fallback`` model) directly."""
        if config is None:
            if fallback is not None:
                config = fallback.config
            elif sovits_path is not None:
                ckpt = load_sovits_checkpoint(sovits_path)
                config = SoVITSConfig.from_checkpoint_config(ckpt.config, ckpt.version)
            else:
                raise ValueError("OrtSoVITS needs sovits_path, config or fallback")
        self.config = config
        self.sovits_path = None if sovits_path is None else str(sovits_path)
        self.device_name = device
        self.session = _session(Path(latent_path), device, num_threads)
        self._torch: SoVITS | None = fallback
        self._torch_lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # outputs come back as CPU tensors

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def torch_model(self) -> SoVITS:
        with self._torch_lock:
            if self._torch is None:
                if self.sovits_path is None:
                    raise RuntimeError("speed != 1 needs the PyTorch model: give OrtSoVITS a sovits_path or fallback")
                dev = self.device_name if self.device_name and str(self.device_name).startswith("cuda") \
                    and torch.cuda.is_available() else "cpu"
                self._torch = SoVITS.from_checkpoint(self.sovits_path, device=dev)
            return self._torch

    def decode_latent(self, codes, phone_ids, ge, noise_scale: float = 0.5, speed: float = 1.0,
                      noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Same contract as :meth:`SoVITS.decode_latent` (without ``return_intermediates``)."""
        if speed != 1:
            return self.torch_model().decode_latent(codes, phone_ids, ge, noise_scale=noise_scale, speed=speed,
                                                    noise=noise, generator=generator)
        codes_np = _np(codes, np.int64).reshape(-1)
        phones_np = _np(phone_ids, np.int64).reshape(-1)
        if codes_np.size == 0 or phones_np.size == 0:
            raise ValueError("codes and phone_ids must be non-empty")
        if codes_np.min() < 0 or codes_np.max() >= CODEBOOK_SIZE:
            raise ValueError(f"semantic codes must be in [0, {CODEBOOK_SIZE})")
        if phones_np.min() < 0 or phones_np.max() >= self.config.n_symbols:
            raise ValueError(f"phone ids must be in [0, {self.config.n_symbols})")
        shape = (1, self.config.inter_channels, 2 * codes_np.size)
        if noise is not None:
            noise_np = _np(noise, np.float32).reshape(shape)
        elif noise_scale != 0:
            where = generator.device if generator is not None else "cpu"
            noise_np = torch.randn(shape, generator=generator, device=where).cpu().numpy()
        else:
            noise_np = np.zeros(shape, dtype=np.float32)
        (z,) = self.session.run(None, {
            "codes": codes_np,
            "phone_ids": phones_np,
            "ge": _np(ge, np.float32).reshape(1, self.config.gin_channels, 1),
            "noise": noise_np,
            "noise_scale": np.asarray(noise_scale, dtype=np.float32),
        })
        return torch.from_numpy(z)

    # reference side: delegated to PyTorch (runs once per speaker, cached upstream of here)
    def reference_embedding(self, specs):
        return self.torch_model().reference_embedding(specs)

    def extract_prompt_tokens(self, ssl):
        return self.torch_model().extract_prompt_tokens(ssl)


class OrtVocoder:
    """Drop-in for :class:`Vocoder`: ``vocoder(z, ge)`` / ``vocoder.forward(z, ge)`` -> wav tensor."""

    def __init__(self, vocoder_path: str | os.PathLike, device: str | None = "cpu",
                 num_threads: int | None = None):
        self.session = _session(Path(vocoder_path), device, num_threads)
        ge_shape = self.session.get_inputs()[1].shape
        self.gin_channels = int(ge_shape[1])

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def forward(self, z, ge) -> torch.Tensor:
        z_np = _np(z, np.float32)
        if z_np.ndim == 2:
            z_np = z_np[None]
        (wav,) = self.session.run(None, {"z": z_np, "ge": _np(ge, np.float32).reshape(1, self.gin_channels, 1)})
        return torch.from_numpy(wav)

    __call__ = forward


def load_sovits_backend(sovits_path: str | os.PathLike, backend: Backend = "torch", device: str = "cpu",
                        cache_dir: str | os.PathLike | None = None, num_threads: int | None = None,
                        dtype: torch.dtype = torch.float32, part: str | None = None):
    """``(latent_module, vocoder_module)`` for a deployment's configured backend.

    ``torch``: the PyTorch :class:`SoVITS` / :class:`Vocoder`. ``onnx`` / ``onnx-int8``: ORT
    runners over cached graphs (exported on first use). Both pairs answer
    ``decode_latent(codes, phone_ids, ge, noise_scale, speed, noise)`` and ``vocoder(z, ge)``.
    ``part`` = ``"latent"`` or ``"vocoder"`` loads only that half (the other is None), so each
    Serve stage holds only the weights it runs."""
    if backend not in ("torch", "onnx", "onnx-int8"):
        raise ValueError(f"unknown SoVITS backend {backend!r} (torch | onnx | onnx-int8)")
    want_latent, want_vocoder = part in (None, "latent"), part in (None, "vocoder")
    if backend == "torch":
        return (SoVITS.from_checkpoint(sovits_path, device=device, dtype=dtype) if want_latent else None,
                Vocoder.from_checkpoint(sovits_path, device=device, dtype=dtype) if want_vocoder else None)
    paths = export_checkpoint(sovits_path, cache_dir, int8=backend == "onnx-int8")
    return (OrtSoVITS(paths["latent"], sovits_path, device=device, num_threads=num_threads) if want_latent else None,
            OrtVocoder(paths["vocoder"], device=device, num_threads=num_threads) if want_vocoder else None)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.onnx_runtime",
                                     description="ONNX export of the SoVITS decode path")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="export (or reuse) the latent + vocoder graphs of a SoVITS .pth")
    exp.add_argument("--sovits", required=True, help="SoVITS v1/v2 checkpoint (.pth)")
    exp.add_argument("--out", default=None, help=f"cache dir (default ${DEFAULT_CACHE_ENV} or ~/.cache/gsv-serve/onnx)")
    exp.add_argument("--int8", action="store_true", help="also write dynamically quantized INT8 graphs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)  # our progress lines, not the quantizer's per-tensor chatter
    paths = export_checkpoint(args.sovits, args.out, int8=False)
    if args.int8:
        paths = {**paths, **{f"{k}_int8": v for k, v in export_checkpoint(args.sovits, args.out, int8=True).items()}}
    for key, value in paths.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
