"""Voice store: reference clips and transcripts on disk, written atomically.

Layout (embedded default; on a cluster point `data_dir` at shared storage):
    <data_dir>/voices/<voice_id>/meta.json       VoiceRecord as JSON
    <data_dir>/voices/<voice_id>/reference.wav   the decoded clip, float32 mono, native rate

A voice is created in a temporary folder that is renamed into place only when complete, so a
crash mid-write never leaves a half voice; deleting renames the folder away first, then removes it.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

VOICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class VoiceRecord:
    id: str
    name: str
    transcript: str
    language: str
    model_id: str
    sample_rate: int
    duration_s: float
    created_at: float

    def public(self) -> dict:
        return {"id": self.id, "object": "voice", "name": self.name, "transcript": self.transcript,
                "language": self.language, "model": self.model_id,
                "duration_s": round(self.duration_s, 3), "created_at": int(self.created_at)}


class VoiceStoreError(Exception):
    """The store could not write (read-only or full disk); existing voices keep working."""


class VoiceStore:
    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir) / "voices"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # -- reads ---------------------------------------------------------------------------
    def list(self) -> list[VoiceRecord]:
        records = []
        for meta in sorted(self.root.glob("*/meta.json")):
            record = self._read_meta(meta)
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: (r.created_at, r.id))

    def get(self, voice_id_or_name: str) -> VoiceRecord | None:
        if VOICE_ID_RE.match(voice_id_or_name):
            record = self._read_meta(self.root / voice_id_or_name / "meta.json")
            if record is not None:
                return record
        for record in self.list():
            if record.name == voice_id_or_name:
                return record
        return None

    def reference_audio(self, voice_id: str) -> tuple[np.ndarray, int]:
        if not VOICE_ID_RE.match(voice_id):
            raise KeyError(voice_id)
        path = self.root / voice_id / "reference.wav"
        if not path.exists():
            raise KeyError(voice_id)
        data, sr = sf.read(str(path), dtype="float32")
        return data, sr

    def name_taken(self, name: str) -> bool:
        return any(r.name == name for r in self.list())

    # -- writes --------------------------------------------------------------------------
    def create(self, name: str, transcript: str, language: str, model_id: str, samples: np.ndarray,
               sample_rate: int, voice_id: str | None = None) -> VoiceRecord:
        voice_id = voice_id or "voice_" + secrets.token_hex(6)
        if not VOICE_ID_RE.match(voice_id):
            raise ValueError(f"invalid voice id {voice_id!r}")
        record = VoiceRecord(id=voice_id, name=name, transcript=transcript, language=language,
                             model_id=model_id, sample_rate=int(sample_rate),
                             duration_s=len(samples) / float(sample_rate), created_at=time.time())
        with self._lock:
            final = self.root / voice_id
            if final.exists():
                raise FileExistsError(voice_id)
            staging = self.root / f".staging-{voice_id}-{secrets.token_hex(4)}"
            try:
                staging.mkdir()
                sf.write(str(staging / "reference.wav"), samples.astype(np.float32), int(sample_rate),
                         subtype="FLOAT")
                _fsync_file(staging / "reference.wav")
                _write_json_durably(staging / "meta.json", asdict(record))
                os.rename(staging, final)
                _fsync_dir(self.root)
            except OSError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise VoiceStoreError(f"could not store the voice: {exc.strerror or exc}") from exc
        return record

    def delete(self, voice_id: str) -> bool:
        if not VOICE_ID_RE.match(voice_id):
            return False
        with self._lock:
            folder = self.root / voice_id
            if not folder.exists():
                return False
            trash = self.root / f".deleted-{voice_id}-{secrets.token_hex(4)}"
            try:
                os.rename(folder, trash)
            except OSError as exc:
                raise VoiceStoreError(f"could not delete the voice: {exc.strerror or exc}") from exc
            shutil.rmtree(trash, ignore_errors=True)
            return True

    def cleanup_partial(self) -> None:
        """Remove leftovers of interrupted writes/deletes (called at start-up)."""
        for leftover in self.root.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.root.glob(".deleted-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    @staticmethod
    def _read_meta(path: Path) -> VoiceRecord | None:
        try:
            return VoiceRecord(**json.loads(path.read_text("utf-8")))
        except (OSError, ValueError, TypeError):
            return None


def _write_json_durably(path: Path, payload: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
