"""Request bodies. Unknown fields are refused (400 `unknown_field`), types are checked by pydantic.

Two dialects map onto one `SynthesisSettings`:
* OpenAI `POST /v1/audio/speech` (`model`, `input`, `voice`, `response_format`, `speed`, plus
  gsv extras such as `language`, `seed`, `top_k`),
* upstream api_v2 `GET|POST /tts` (`text`, `text_lang`, `prompt_text`, `top_k`, `media_type`, ...).
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

SplitMethod = Literal["cut0", "cut1", "cut2", "cut3", "cut4", "cut5"]


class SamplingFields(BaseModel):
    """Sampling knobs shared by both dialects (upstream names and defaults)."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(15, ge=1, le=1024)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    temperature: float = Field(1.0, gt=0.0, le=5.0)
    repetition_penalty: float = Field(1.35, ge=1.0, le=5.0)
    seed: int = Field(-1, ge=-1, le=2**63 - 1, description="-1 picks a random seed (returned in X-Seed)")
    text_split_method: SplitMethod = "cut5"
    fragment_interval: float = Field(0.3, ge=0.0, le=5.0)


class SpeechRequest(SamplingFields):
    """OpenAI-compatible speech request."""

    model: str = Field("gpt-sovits", max_length=200,
                       description="a model id from GET /v1/models, or an OpenAI name (tts-1, tts-1-hd, gpt-4o-mini-tts)")
    input: str = Field(..., description="text to speak")
    voice: str = Field(..., max_length=200, description="voice id or name from GET /v1/voices")
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm", "ogg"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: Optional[str] = Field(None, max_length=4000, description="accepted for compatibility")
    language: Optional[str] = Field(None, max_length=16, description="text language; default: the server's (auto)")
    stream: bool = Field(False, description="stream audio as it is synthesised (implied by stream_format=sse)")
    emotion: Optional[str] = Field(None, max_length=32, description="which of the voice's clips; also taken from "
                                   "`instructions` when that is exactly an emotion name; unknown -> default")


class TTSRequest(SamplingFields):
    """Upstream api_v2 `/tts` parameters. The reference is a stored voice, never a server path."""

    text: str
    text_lang: str = Field(..., max_length=16)
    voice: Optional[str] = Field(None, max_length=200, description="voice id or name (gsv-serve)")
    emotion: Optional[str] = Field(None, max_length=32, description="which of the voice's clips (unknown -> default)")
    ref_audio_path: Optional[str] = Field(
        None, max_length=1000,
        description="only the file's base name is used, as a voice name; the path is never opened")
    aux_ref_audio_paths: Optional[list[str]] = Field(None, max_length=0, description="not supported (must be empty)")
    prompt_text: str = Field("", max_length=1000)
    prompt_lang: Optional[str] = Field(None, max_length=16)
    batch_size: int = Field(1, ge=1, le=200)
    batch_threshold: float = Field(0.75, ge=0.0, le=1.0)
    split_bucket: bool = True
    speed_factor: float = Field(1.0, ge=0.25, le=4.0)
    media_type: Literal["wav", "raw", "ogg", "aac", "mp3", "flac", "opus", "pcm"] = "wav"
    streaming_mode: Union[bool, int] = False
    parallel_infer: bool = True
    sample_steps: int = Field(32, ge=1, le=128)
    super_sampling: bool = False
    overlap_length: int = Field(2, ge=0, le=64)
    min_chunk_length: int = Field(16, ge=1, le=512)


class ModelUpdate(BaseModel):
    """A new version of a model: checkpoint paths inside the server's models folder."""

    model_config = ConfigDict(extra="forbid")

    gpt: str = Field(..., min_length=1, max_length=1000, description="GPT .ckpt, relative to the models folder")
    sovits: str = Field(..., min_length=1, max_length=1000, description="SoVITS .pth, relative to the models folder")
    tag: str = Field("", max_length=100, description="a human label for this version")


class ErrorDetail(BaseModel):
    code: str
    message: str
    type: str
    param: Optional[str] = None


class ErrorBody(BaseModel):
    error: ErrorDetail
