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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf

VOICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
EMOTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
DEFAULT_EMOTION = "default"


@dataclass(frozen=True)
class VoiceRecord:
    """A voice: one reference clip per emotion (`default` always), each with its transcript."""

    id: str
    name: str
    transcript: str  # of the default clip
    language: str
    model_id: str
    sample_rate: int
    duration_s: float
    created_at: float
    emotions: dict = field(default_factory=dict)  # other emotions: name -> {"transcript", "language", "duration_s"}
    tenant: str = ""  # the owner; "" = public (visible to every tenant, e.g. the demo voice)

    def emotion_names(self) -> list[str]:
        return [DEFAULT_EMOTION] + sorted(self.emotions)

    def reference_for(self, emotion: str) -> tuple[str, str, str]:
        """(emotion actually used, transcript, language); unknown emotions fall back to default."""
        if emotion in self.emotions:
            entry = self.emotions[emotion]
            return emotion, entry["transcript"], entry["language"]
        return DEFAULT_EMOTION, self.transcript, self.language

    def public(self) -> dict:
        return {"id": self.id, "object": "voice", "name": self.name, "transcript": self.transcript,
                "language": self.language, "model": self.model_id, "emotions": self.emotion_names(),
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

    def get(self, voice_id_or_name: str, tenant: str = "",
            can_see: Callable[[str], bool] | None = None) -> VoiceRecord | None:
        """The voice with this id, else the one with this name in `tenant`'s namespace.

        Ids are random and globally unique; an id matches only a voice whose owner `can_see`
        accepts (default: any owner), so another tenant's id falls through to the name lookup and
        then answers None, exactly like a missing voice. Names are unique per tenant, not globally:
        a name resolves to `tenant`'s own voice first, then to a public one (owner ""). No other
        tenant's voice is ever found by name, whatever `can_see` says (an admin reaches other
        tenants' voices by id: names are ambiguous across tenants)."""
        if VOICE_ID_RE.match(voice_id_or_name):
            record = self._read_meta(self.root / voice_id_or_name / "meta.json")
            if record is not None and (can_see is None or can_see(record.tenant)):
                return record
        public = None
        for record in self.list():
            if record.name != voice_id_or_name:
                continue
            if record.tenant == tenant:
                return record
            if record.tenant == "" and public is None:
                public = record
        return public

    def reference_audio(self, voice_id: str, emotion: str = DEFAULT_EMOTION) -> tuple[np.ndarray, int]:
        if not VOICE_ID_RE.match(voice_id) or not EMOTION_RE.match(emotion):
            raise KeyError(voice_id)
        path = self.root / voice_id / _audio_name(emotion)
        if not path.exists():
            raise KeyError(voice_id)
        data, sr = sf.read(str(path), dtype="float32")
        return data, sr

    def reference_signature(self, voice_id: str, emotion: str = DEFAULT_EMOTION) -> tuple[int, int, int] | None:
        """(mtime ns, size, inode) of the clip `reference_audio` reads, or None when it is gone.
        Clips are only ever replaced by renaming a new file over them, so any change to a clip
        changes its inode (and its mtime): caches compare this to know their copy is current."""
        if not VOICE_ID_RE.match(voice_id) or not EMOTION_RE.match(emotion):
            return None
        try:
            st = os.stat(self.root / voice_id / _audio_name(emotion))
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def name_taken(self, name: str, tenant: str = "", can_see: Callable[[str], bool] | None = None) -> bool:
        """Whether a new voice of `tenant` may not take `name`: some voice sharing its namespace
        already has it. A tenant's namespace is its own voices plus the public ones; a public voice
        (tenant "") joins every tenant's namespace, so it conflicts with any voice. Voices whose
        owner `can_see` refuses never count: a 409 must not reveal another tenant's names."""
        for record in self.list():
            if record.name != name or (can_see is not None and not can_see(record.tenant)):
                continue
            if tenant == "" or record.tenant in ("", tenant):
                return True
        return False

    # -- writes --------------------------------------------------------------------------
    def create(self, name: str, transcript: str, language: str, model_id: str, samples: np.ndarray,
               sample_rate: int, voice_id: str | None = None, tenant: str = "") -> VoiceRecord:
        voice_id = voice_id or "voice_" + secrets.token_hex(6)
        if not VOICE_ID_RE.match(voice_id):
            raise ValueError(f"invalid voice id {voice_id!r}")
        record = VoiceRecord(id=voice_id, name=name, transcript=transcript, language=language,
                             model_id=model_id, sample_rate=int(sample_rate),
                             duration_s=len(samples) / float(sample_rate), created_at=time.time(), tenant=tenant)
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

    def add_emotion(self, voice_id: str, emotion: str, transcript: str, language: str, samples: np.ndarray,
                    sample_rate: int) -> VoiceRecord:
        """Add (or replace) one emotion's reference clip. The clip is written first, then the
        metadata is replaced atomically: a crash leaves the voice as it was or fully updated."""
        if not EMOTION_RE.match(emotion) or emotion == DEFAULT_EMOTION:
            raise ValueError(f"invalid emotion name {emotion!r}")
        with self._lock:
            folder = self.root / voice_id
            record = self._read_meta(folder / "meta.json")
            if record is None:
                raise KeyError(voice_id)
            entry = {"transcript": transcript, "language": language,
                     "duration_s": len(samples) / float(sample_rate)}
            updated = replace(record, emotions=record.emotions | {emotion: entry})
            # a new file renamed over the old one (never rewritten in place): readers see the old
            # clip or the new one, and the new one has a new inode and mtime, which is how every
            # SpeakerCache replica notices the replacement (`reference_signature`). Temporary names
            # are unique: the lock is per process, and several ingress replicas share the folder.
            suffix = secrets.token_hex(4)
            tmp_audio = folder / f".{_audio_name(emotion)}.{suffix}.tmp"
            tmp_meta = folder / f".meta.json.{suffix}.tmp"
            try:
                sf.write(str(tmp_audio), samples.astype(np.float32), int(sample_rate), subtype="FLOAT",
                         format="WAV")
                _fsync_file(tmp_audio)
                os.replace(tmp_audio, folder / _audio_name(emotion))
                _write_json_durably(tmp_meta, asdict(updated))
                os.replace(tmp_meta, folder / "meta.json")
                _fsync_dir(folder)
            except OSError as exc:
                for leftover in (tmp_audio, tmp_meta):
                    leftover.unlink(missing_ok=True)
                raise VoiceStoreError(f"could not store the emotion: {exc.strerror or exc}") from exc
            return updated

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


def _audio_name(emotion: str) -> str:
    return "reference.wav" if emotion == DEFAULT_EMOTION else f"reference-{emotion}.wav"


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
