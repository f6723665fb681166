"""Model registry: named voice models and their versions, in one JSON file beside the voices.

    <data_dir>/models.json   {"models": {model_id: {"active": version, "versions": {version: {...}}}}}

A *version* is content-addressed (a hash of the GPT and SoVITS checkpoint bytes), so the same
files always give the same version and a request that names `model_id@version` can only ever get
those weights. Every stage call carries that key; a swap only changes which version *new* requests
resolve to, so requests in flight finish on the version they started with.

Written atomically (temp file + fsync + rename); readers re-read the file when its mtime changes,
so several ingress replicas and the stages see a swap without any other coordination.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from models.pipeline import ModelPaths


@dataclass(frozen=True)
class ModelRef:
    """What travels with a request: one exact model version and where its files are."""

    model_id: str
    version: str
    paths: ModelPaths
    tag: str = ""

    @property
    def key(self) -> str:
        return f"{self.model_id}@{self.version}"


class RegistryError(ValueError):
    pass


def split_key(key: str) -> tuple[str, str]:
    model_id, _, version = key.partition("@")
    if not model_id or not version:
        raise RegistryError(f"not a model key: {key!r} (expected model_id@version)")
    return model_id, version


class ModelRegistry:
    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / "models.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._data: dict = {"models": {}}

    # -- reads -----------------------------------------------------------------------------
    def _refresh(self) -> dict:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return self._data
        if mtime != self._mtime:
            try:
                self._data = json.loads(self.path.read_text("utf-8"))
                self._mtime = mtime
            except (OSError, ValueError):
                pass  # a torn read cannot happen (rename is atomic); keep the last good copy anyway
        return self._data

    def model_ids(self) -> list[str]:
        return sorted(k for k, v in self._refresh()["models"].items() if v.get("active") is not None)

    def active(self, model_id: str) -> ModelRef | None:
        entry = self._refresh()["models"].get(model_id)
        if entry is None or entry.get("active") is None:
            return None
        return self._ref(model_id, entry["active"], entry["versions"][entry["active"]])

    def resolve(self, key: str) -> ModelRef:
        """Any version that was ever registered, active or not (requests in flight use old ones)."""
        model_id, version = split_key(key)
        entry = self._refresh()["models"].get(model_id)
        if entry is None or version not in entry["versions"]:
            raise RegistryError(f"unknown model version {key!r}")
        return self._ref(model_id, version, entry["versions"][version])

    def describe(self) -> list[dict]:
        out = []
        for model_id, entry in sorted(self._refresh()["models"].items()):
            if entry.get("active") is None:
                continue  # only pending versions: nothing serves this id yet
            active = entry["versions"][entry["active"]]
            out.append({"id": model_id, "object": "model", "owned_by": "gsv-serve", "version": entry["active"],
                        "tag": active.get("tag", ""), "upstream_version": active.get("upstream_version", "v2"),
                        "created": int(active.get("created_at", 0)), "demo": bool(active.get("demo", False)),
                        "versions": sorted(entry["versions"])})
        return out

    # -- writes ----------------------------------------------------------------------------
    def register(self, model_id: str, paths: ModelPaths, *, version: str | None = None, tag: str = "",
                 upstream_version: str = "v2", demo: bool = False, activate: bool = True,
                 declared: str = "") -> ModelRef:
        """Add a version (idempotent). `activate` makes new requests resolve to it.

        `declared` names a declarative source (the Serve config's `args` or `user_config`): such a
        registration activates the version only when that source's declaration changed, so a
        restart with the same config keeps a version swapped in since (through the API or the
        other source)."""
        version = version or paths.version()
        with self._lock:
            data = json.loads(json.dumps(self._refresh()))  # a private copy to edit
            # a model id seen for the first time stays unroutable until a version is activated
            entry = data["models"].setdefault(model_id, {"active": None, "versions": {}})
            record = entry["versions"].get(version)
            if record is None:
                record = asdict(paths) | {"tag": tag, "upstream_version": upstream_version, "demo": demo,
                                          "created_at": time.time()}
                entry["versions"][version] = record
            if declared:
                sources = entry.setdefault("declared", {})
                activate = sources.get(declared) != version
                sources[declared] = version
            if activate:
                entry["active"] = version
            self._write(data)
        return self._ref(model_id, version, record)

    def activate(self, model_id: str, version: str) -> ModelRef:
        with self._lock:
            data = json.loads(json.dumps(self._refresh()))
            entry = data["models"].get(model_id)
            if entry is None or version not in entry["versions"]:
                raise RegistryError(f"unknown model version {model_id}@{version}")
            entry["active"] = version
            self._write(data)
            return self._ref(model_id, version, entry["versions"][version])

    def _write(self, data: dict) -> None:
        tmp = self.path.with_suffix(f".tmp-{os.getpid()}-{threading.get_ident()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._data, self._mtime = data, self.path.stat().st_mtime_ns

    @staticmethod
    def _ref(model_id: str, version: str, record: dict) -> ModelRef:
        paths = ModelPaths(gpt=record["gpt"], sovits=record["sovits"], hubert_dir=record["hubert_dir"],
                           bert_dir=record["bert_dir"])
        return ModelRef(model_id, version, paths, record.get("tag", ""))
