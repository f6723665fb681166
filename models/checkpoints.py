"""Safe loading of upstream GPT-SoVITS checkpoint files.

Two formats (see SPEC 1.1-1.3):

* GPT / T2S ``*.ckpt``: a ``torch.save`` zip holding ``OrderedDict(weight, config, info)`` with
  fp16 tensors and a plain-dict config.
* SoVITS ``*.pth``: the same zip, but ``config`` is a pickled ``utils.HParams`` object and the
  first two bytes may be an ASCII version tag instead of ``PK`` (v2Pro, v3/v4 LoRA files).

Nothing here unpickles arbitrary objects. Every file goes through torch's ``weights_only``
unpickler, which only rebuilds tensors, storages and plain containers. The one extra global we
admit is ``<anything>.HParams``, and it is mapped onto :class:`_HParamsShim`, an empty class that
only ever receives a ``__dict__`` of plain values. Any other global is refused with a
:class:`CheckpointError` that names the file and the global.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "UnsupportedVersionError",
    "GPTCheckpoint",
    "SoVITSCheckpoint",
    "load_gpt_checkpoint",
    "load_sovits_checkpoint",
    "file_sha256",
    "SOVITS_HEADER_VERSIONS",
]


class CheckpointError(ValueError):
    """A checkpoint file could not be loaded; the message names the file."""


class UnsupportedVersionError(CheckpointError):
    """The file is a valid upstream checkpoint of a model version gsv-serve does not run."""


@dataclass
class GPTCheckpoint:
    config: dict
    weights: dict[str, torch.Tensor]
    info: str
    path: str


@dataclass
class SoVITSCheckpoint:
    version: str  # "v1" | "v2"
    config: dict  # nested plain dicts: {"train": {...}, "data": {...}, "model": {...}, ...}
    weights: dict[str, torch.Tensor]
    info: str
    path: str
    header: bytes = field(default=b"PK")


# First two bytes of a SoVITS file -> model version (SPEC 1.3). Plain v1/v2 files start "PK".
SOVITS_HEADER_VERSIONS: dict[bytes, str] = {
    b"00": "v1",
    b"01": "v2",
    b"02": "v3",
    b"03": "v3",  # LoRA
    b"04": "v4",  # LoRA
    b"05": "v2Pro",
    b"06": "v2ProPlus",
}

# MD5 of the first 8192 bytes of known pretrained SoVITS files (SPEC 1.3 step 1). Only used to
# refuse big unsupported files before reading them; v1/v2 are decided from the weights.
_PRETRAINED_MD5_VERSIONS = {
    "43797be674a37c1c83ee81081941ed0f": "v3",
    "4f26b9476d0c5033e04162c486074374": "v4",
    "c7e9fce2223f3db685cdfa1e6368728a": "v2Pro",
    "66b313e39455b57ab1b0bc0b239c9d0a": "v2ProPlus",
}

_SUPPORTED_SOVITS = ("v1", "v2")

# State-dict prefixes that only exist in later model versions.
_V3_PREFIXES = ("cfm.", "bridge.", "wns1.")
_PRO_PREFIXES = ("sv_emb.", "ge_to512.", "prelu.")

_V1_SYMBOLS = 322


class _HParamsShim:
    """Stand-in for upstream's ``utils.HParams``: receives only a ``__dict__`` of plain values."""


# torch's safe-global registry is process-wide; serialize our temporary additions to it.
_LOAD_LOCK = threading.Lock()
_HPARAMS_GLOBAL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\.HParams$")
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (used to key caches by content)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """Turn HParams shims (and containers of them) into plain dicts/lists."""
    if isinstance(value, _HParamsShim):
        return {k: _plain(v) for k, v in vars(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _open_source(path: Path, allowed_headers: dict[bytes, str]) -> tuple[Any, bytes]:
    """Return (something torch.load can read, the file's first two bytes)."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    with open(path, "rb") as f:
        head = f.read(2)
        if head == b"PK":
            return str(path), head
        if head in allowed_headers:
            # Upstream's tagged files are ordinary torch zips whose "PK" was overwritten.
            return io.BytesIO(b"PK" + f.read()), head
    raise CheckpointError(
        f"{path}: not a torch checkpoint (a zip starting with 'PK' expected, got {head!r})"
    )


def _safe_torch_load(path: Path, source: Any) -> Any:
    """torch.load(weights_only=True), admitting ``*.HParams`` as a plain shim class."""
    if not zipfile.is_zipfile(source):
        raise CheckpointError(f"{path}: not a zip archive (truncated or not a torch.save file)")
    if not isinstance(source, str):
        source.seek(0)

    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except Exception as exc:  # malformed pickle: let the loader below report it precisely
        unsafe = []
        scan_error: Exception | None = exc
    else:
        scan_error = None
    finally:
        if not isinstance(source, str):
            source.seek(0)

    hparams = [g for g in unsafe if _HPARAMS_GLOBAL.match(g)]
    refused = [g for g in unsafe if g not in hparams]
    if refused:
        raise CheckpointError(
            f"{path}: refused to unpickle global {refused[0]!r} "
            f"(only tensors, plain containers and HParams are allowed)"
        )

    shims = [(_HParamsShim, name) for name in hparams]
    try:
        with _LOAD_LOCK, torch.serialization.safe_globals(shims):
            return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = str(exc)
        found = _REFUSED_GLOBAL.search(msg)
        if found:
            raise CheckpointError(f"{path}: refused to unpickle global {found.group(1)!r}") from exc
        # torch's weights-only message is long; keep the line that says what was refused.
        lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
        detail = lines[0] if lines else str(scan_error or type(exc).__name__)
        for i, ln in enumerate(lines[:-1]):
            if ln.startswith("Please file an issue") and "WeightsUnpickler error" in ln:
                detail = f"unsupported pickle content: {lines[i + 1]}"
        raise CheckpointError(f"{path}: cannot read checkpoint ({detail})") from exc


def _top_level(path: Path, obj: Any) -> tuple[dict, Any, str]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict at top level, got {type(obj).__name__}")
    for key in ("weight", "config"):
        if key not in obj:
            raise CheckpointError(f"{path}: missing top-level key {key!r}")
    weights = obj["weight"]
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise CheckpointError(f"{path}: 'weight' is not a dict of named tensors")
    info = obj.get("info", "")
    return dict(weights), obj["config"], info if isinstance(info, str) else str(info)


def load_gpt_checkpoint(path: str | os.PathLike) -> GPTCheckpoint:
    """Load a T2S ``.ckpt``. Weights are returned as stored (usually fp16)."""
    path = Path(path)
    source, _ = _open_source(path, allowed_headers={})
    weights, config, info = _top_level(path, _safe_torch_load(path, source))
    config = _plain(config)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path}: config has no 'model' section; not a GPT checkpoint")
    return GPTCheckpoint(config=config, weights=weights, info=info, path=str(path))


def _unsupported(path: Path, version: str) -> UnsupportedVersionError:
    return UnsupportedVersionError(
        f"{path} is a {version} SoVITS checkpoint; gsv-serve supports v1/v2 only for now"
    )


def _version_from_weights(weights: dict[str, torch.Tensor]) -> str | None:
    """Later-version markers in the weights, else None."""
    if any(k.startswith(_V3_PREFIXES) for k in weights):
        return "v3/v4"
    if any(k.startswith(_PRO_PREFIXES) for k in weights):
        return "v2Pro"
    return None


def load_sovits_checkpoint(path: str | os.PathLike) -> SoVITSCheckpoint:
    """Load a SoVITS ``.pth``; refuses v2Pro/v3/v4 with :class:`UnsupportedVersionError`."""
    path = Path(path)
    source, head = _open_source(path, allowed_headers=SOVITS_HEADER_VERSIONS)
    tagged = SOVITS_HEADER_VERSIONS.get(head)
    if tagged is not None and tagged not in _SUPPORTED_SOVITS:
        raise _unsupported(path, tagged)
    if head == b"PK":
        with open(path, "rb") as f:
            known = _PRETRAINED_MD5_VERSIONS.get(hashlib.md5(f.read(8192)).hexdigest())
        if known is not None:
            raise _unsupported(path, known)

    obj = _safe_torch_load(path, source)
    weights, config, info = _top_level(path, obj)
    if "lora_rank" in obj:
        raise _unsupported(path, "v3/v4 LoRA")
    later = _version_from_weights(weights)
    if later is not None:
        raise _unsupported(path, later)

    config = _plain(config)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path}: config has no 'model' section; not a SoVITS checkpoint")

    emb = weights.get("enc_p.text_embedding.weight")
    if emb is None:
        raise CheckpointError(f"{path}: no 'enc_p.text_embedding.weight'; not a SoVITS v1/v2 model")
    version = "v1" if emb.shape[0] == _V1_SYMBOLS else "v2"
    return SoVITSCheckpoint(
        version=version, config=config, weights=weights, info=info, path=str(path), header=head
    )


# --------------------------------------------------------------------------------------------
# Helpers for mapping upstream state dicts onto our own module layouts.
# --------------------------------------------------------------------------------------------


def fold_weight_norm(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace legacy weight-norm pairs ``X.weight_g`` / ``X.weight_v`` by ``X.weight``.

    ``weight = v * (g / ||v||)`` with the norm over every dim except dim 0 (``torch.nn.utils.
    weight_norm``'s default). The folded weight is returned in float32: rounding it back to the
    stored fp16 would move the flow output by ~1e-4 relative (measured against the goldens).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            base = key[: -len(".weight_v")]
            g = weights.get(base + ".weight_g")
            if g is None:
                raise KeyError(f"{key} has no matching {base}.weight_g")
            v = value.float()
            norm = v.pow(2).sum(dim=tuple(range(1, v.dim())), keepdim=True).sqrt()
            out[base + ".weight"] = v * (g.float() / norm)
            continue
        out[key] = value
    return out


def unfold_weight_norm(weights: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`fold_weight_norm` for the given ``X.weight`` keys (used to write
    upstream-format files): ``weight_v = weight``, ``weight_g = ||weight||`` over dims 1..n."""
    out = dict(weights)
    for key in keys:
        w = out.pop(key)
        base = key[: -len(".weight")]
        out[base + ".weight_g"] = w.float().pow(2).sum(dim=tuple(range(1, w.dim())), keepdim=True).sqrt().to(w.dtype)
        out[base + ".weight_v"] = w
    return out


class KeyMap:
    """An explicit, two-way map between upstream and local parameter names.

    Rules are ``(upstream_prefix, local_prefix)`` templates where ``{i}`` stands for a layer index,
    e.g. ``("enc_p.encoder_ssl.attn_layers.{i}.conv_q", "encoder.ssl_layers.{i}.attn.q")``.
    A key maps through the rule whose prefix matches (the rest of the key, e.g. ``.weight``, is
    carried over). Several ``{...}`` fields may be used. Keys no rule matches map to ``None``.
    """

    def __init__(self, rules: list[tuple[str, str]]):
        self._forward = [self._compile(src, dst) for src, dst in rules]
        self._backward = [self._compile(dst, src) for src, dst in rules]

    @staticmethod
    def _compile(src: str, dst: str):
        pattern = re.escape(src)
        for name in re.findall(r"\{(\w+)\}", src):
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>[^.]+)", 1)
        return re.compile(f"^{pattern}(?P<_rest>(\\..+)?)$"), dst

    @staticmethod
    def _apply(rules, key: str) -> str | None:
        for regex, template in rules:
            m = regex.match(key)
            if m:
                fields = {k: v for k, v in m.groupdict().items() if k != "_rest"}
                return template.format(**fields) + m.group("_rest")
        return None

    def to_local(self, key: str) -> str | None:
        return self._apply(self._forward, key)

    def to_upstream(self, key: str) -> str | None:
        return self._apply(self._backward, key)
