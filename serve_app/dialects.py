"""Client dialects: the routes and request shapes that existing GPT-SoVITS front-ends already send.

Every dialect request is translated into the API's own `TTSRequest` and handed to the API's own
`/tts` machinery (`tts` below: voice lookup, emotion pick, synthesis, encoding, headers), so the
dialects add no synthesis path of their own. What each client sends, and what it reads back:

SillyTavern, providers "GPT-SoVITS-V2 (Unofficial)" (`gpt-sovits-v2.js`) and "GPT-SoVITS-adapter"
(`gpt-sovits-adapter.js`); both `fetch()` from the browser, hence the CORS headers:
  GET  /speakers   -> `[{"name", "voice_id"}]`; the client matches `name` and sends `voice_id` back.
  POST /           api_v2 JSON. V2 sends `ref_audio_path: "./参考音频/<voice_id>.wav"` (only the base
                   name is used, as a voice key; the path is never opened) and `prompt_text: <voice_id>`
                   (not a transcript: ignored, the voice's stored transcript is used), `media_type: ogg`,
                   `streaming_mode: "true"`. The adapter sends `target_voice: <voice_id>`, `card_name`,
                   `use_st_adapter` and `media_type` one of auto/wav/mp3/ogg/silk/flac.
  A voice with emotions is listed once per emotion: `voice_id` "<voice>#<emotion>" selects that clip.

GSVI (GPT-SoVITS-Inference, the classic API that SillyTavern's `gsvi.js` and bot plugins call):
  GET  /character_list      -> `{"<character>": ["default", <emotions>...]}`
  GET  /voice/speakers      -> `{"VITS"|"GSVI"|"GPT-SOVITS": [{"id", "name", "lang"}]}`
  GET|POST /tts             shared with upstream api_v2: `Dialects.gsvi_response(params)` answers the
                            GSVI form (`cha_name`/`character`, `text_language`, ... and no `text_lang`)
                            and returns None for api_v2 requests, so the API's /tts handlers call it first.
  GET|POST /voice, /voice/vits, /text2audio, /t2s   GSVI's route aliases (always the GSVI form).
  Parameters and their aliases follow GSVI's params_config.json; unknown parameters are ignored, as
  GSVI does. `text_language` takes codes (auto, zh, all_zh, ...) or the upstream UI labels (多语种混合,
  中文, 中英混合, ...). `format`: wav (default), mp3, ogg (Vorbis), opus (Ogg Opus), flac, aac, pcm, silk.

SILK (QQ/WeChat voice messages) is made from the PCM the API returns, when the optional codec is
installed (`serve_app.silk`); otherwise a 400 names the extra.
"""
from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.voice_store import DEFAULT_EMOTION, VoiceRecord, VoiceStore
from models.audio import SAMPLE_RATE
from serve_app import audio_io, silk
from serve_app.auth import lookup_voice, visible
from serve_app.errors import ApiError, bad_request
from serve_app.schemas import ErrorBody, TTSRequest

TTSHandler = Callable[[TTSRequest], Awaitable[Response]]

EMOTION_SEPARATOR = "#"  # "<voice>#<emotion>" in a voice_id / cha_name picks that emotion's clip
# suffixes a client may put after a voice key (the adapter strips one, V2 appends .wav); removed before lookup
AUDIO_SUFFIXES = (".wav", ".mp3", ".ogg", ".flac", ".opus", ".aac", ".m4a", ".silk")
SPEAKER_TAG = re.compile(r"\[.*?\]")  # SillyTavern V2 removes "[...]" from voice_id to make prompt_text

GSVI_ROUTE_ALIASES = ("/voice", "/voice/vits", "/text2audio", "/t2s")
# paths whose errors carry api_v2's top-level "message" (the API's error handler adds it)
UPSTREAM_PATHS = ("/", "/tts", *GSVI_ROUTE_ALIASES)
# browser clients fetch() these cross-origin (SillyTavern runs on its own port)
CORS_PATHS = frozenset({"/", "/speakers", "/tts", "/character_list", "/voice/speakers", *GSVI_ROUTE_ALIASES})
VOICE_LIST_LANGUAGES = ["zh", "en", "ja", "ko", "yue"]

# OpenAPI: what the synthesis routes answer
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "invalid request"},
    404: {"model": ErrorBody, "description": "unknown voice"},
    413: {"model": ErrorBody, "description": "request too large"},
}
_AUDIO: dict[int | str, dict[str, Any]] = {200: {"description": "audio", "content": {
    media: {} for media in sorted({f.media_type for f in audio_io.FORMATS.values()} | {silk.MEDIA_TYPE})}}}
_SPEAKERS_SCHEMA = {"type": "array", "items": {"type": "object", "required": ["name", "voice_id"], "properties": {
    "name": {"type": "string"}, "voice_id": {"type": "string"}}}}
_CHARACTERS_SCHEMA = {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}
_VOICE_SPEAKERS_SCHEMA = {"type": "object", "additionalProperties": {"type": "array", "items": {
    "type": "object", "required": ["id", "name", "lang"], "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"}, "lang": {"type": "array", "items": {"type": "string"}}}}}}

# upstream GPT-SoVITS UI labels -> language codes (v2 table); GSVI clients send these
LANGUAGE_LABELS = {
    "中文": "all_zh", "英文": "en", "日文": "all_ja", "粤语": "all_yue", "韩文": "all_ko",
    "中英混合": "zh", "日英混合": "ja", "粤英混合": "yue", "韩英混合": "ko",
    "多语种混合": "auto", "多语种混合(粤语)": "auto_yue",
}
# upstream UI labels for the sentence-split methods
SPLIT_LABELS = {"不切": "cut0", "凑四句一切": "cut1", "凑50字一切": "cut2", "按中文句号。切": "cut3",
                "按英文句号.切": "cut4", "按标点符号切": "cut5"}
DEFAULT_EMOTION_NAMES = ("", DEFAULT_EMOTION, "默认")  # "默认" = "default" in GSVI's newer UI

# output formats a dialect may ask for -> TTSRequest.media_type ("silk" is made from raw PCM here)
DIALECT_FORMATS = {"wav": "wav", "mp3": "mp3", "ogg": "ogg", "opus": "opus", "flac": "flac", "aac": "aac",
                   "pcm": "raw", "raw": "raw", "silk": "silk"}


# ------------------------------------------------------------------------------------------ GSVI
# GSVI's parameters: canonical name -> accepted aliases, first present wins (GSVI params_config.json)
GSVI_ALIASES: dict[str, tuple[str, ...]] = {
    "text": ("text", "txt", "tex", "t"),
    "cha_name": ("cha_name", "character", "model_name", "cha", "spk", "speaker"),
    "speaker_id": ("speaker_id", "id"),
    "character_emotion": ("character_emotion", "emotion"),
    "text_language": ("text_language", "lang", "language", "lan"),
    "batch_size": ("batch_size", "batch"),
    "speed": ("speed", "speed_factor", "spd"),
    "top_k": ("top_k",),
    "top_p": ("top_p",),
    "temperature": ("temperature",),
    "seed": ("seed",),
    "stream": ("stream", "streaming"),
    "save_temp": ("save_temp", "save"),
    "cut_method": ("cut_method", "cut"),
    "format": ("format",),
}
# A request to the shared /tts is GSVI when it names one of these and not api_v2's required `text_lang`.
GSVI_MARKERS = frozenset(a for aliases in GSVI_ALIASES.values() for a in aliases) - set(TTSRequest.model_fields)
_TRUE = ("true", "1", "t", "y", "yes", "allow", "allowed")  # GSVI's spelling of a true flag


@dataclass(frozen=True)
class GsviRequest:
    """One GSVI synthesis request, parsed (GSVI's defaults where a parameter is absent)."""

    text: str
    cha_name: str | None = None
    speaker_id: int | None = None
    emotion: str | None = None
    text_language: str = "auto"
    speed: float = 1.0
    top_k: int = 3
    top_p: float = 0.8
    temperature: float = 0.8
    seed: int = -1
    stream: bool = False
    cut_method: str = "cut5"
    format: str = "wav"


def gsvi_from_params(params: Mapping[str, Any], *, require_marker: bool = True) -> GsviRequest | None:
    """GSVI query/JSON parameters -> `GsviRequest`, or None when they are not GSVI's (an api_v2 request
    to the shared /tts: it has `text_lang`, or names no GSVI-only parameter). With
    `require_marker=False` (GSVI-only routes) every request is GSVI. Bad values raise ApiError 400."""
    keys = set(params)
    if require_marker and ("text_lang" in keys or not keys & GSVI_MARKERS):
        return None

    def raw(name: str) -> tuple[str, Any] | None:
        for alias in GSVI_ALIASES[name]:
            if alias in params and params[alias] is not None:
                return alias, params[alias]
        return None

    def string(name: str) -> str | None:
        found = raw(name)
        return None if found is None else urllib.parse.unquote(str(found[1])).strip()  # GSVI unquotes

    def number(name: str, kind: type):
        found = raw(name)
        if found is None:
            return None
        alias, value = found
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise bad_request("invalid_value", f"{alias} must be a number, got {value!r}", alias) from None

    fields: dict[str, Any] = {"text": string("text") or ""}
    if not fields["text"]:
        raise bad_request("empty_text", "text must not be empty", "text")
    fields["cha_name"] = string("cha_name") or None
    fields["speaker_id"] = number("speaker_id", int)
    emotion = string("character_emotion")
    fields["emotion"] = None if emotion in (None, *DEFAULT_EMOTION_NAMES) else emotion
    language = string("text_language")
    if language:
        fields["text_language"] = LANGUAGE_LABELS.get(language, language.lower())
    for name, kind in (("speed", float), ("top_k", int), ("top_p", float), ("temperature", float), ("seed", int)):
        value = number(name, kind)
        if value is not None:
            fields[name] = value
    stream = raw("stream")
    if stream is not None:
        fields["stream"] = str(stream[1]).strip().lower() in _TRUE
    cut = string("cut_method")
    if cut:
        fields["cut_method"] = _split_method(cut)
    fmt = string("format")
    if fmt:
        fields["format"] = _dialect_format(fmt, "format")
    return GsviRequest(**fields)


def _split_method(value: str) -> str:
    if value in SPLIT_LABELS:
        return SPLIT_LABELS[value]
    if re.fullmatch(r"cut[0-5]", value):
        return value
    if value.startswith("auto_cut"):  # GSVI's own "punctuation, then about N words" cutting
        return "cut5"
    raise bad_request("invalid_value", f"unknown cut_method {value!r}; use cut0..cut5 or auto_cut", "cut_method")


def _dialect_format(value: str, param: str) -> str:
    fmt = value.strip().lower()
    if fmt not in DIALECT_FORMATS:
        raise bad_request("unsupported_format",
                          f"unsupported {param} {value!r}; use one of {', '.join(DIALECT_FORMATS)}", param)
    return fmt


# ----------------------------------------------------------------------------------- voice keys
def voice_key_from_client(value: str) -> str:
    """What a client sends for a voice -> the key to look up: the base name of a path, with audio
    suffixes removed (V2 sends `./参考音频/<id>.wav`, the adapter's ids may end in `.wav`)."""
    key = str(value).replace("\\", "/").rsplit("/", 1)[-1].strip()
    stripped = True
    while stripped:
        stripped = False
        for suffix in AUDIO_SUFFIXES:
            if key.lower().endswith(suffix) and len(key) > len(suffix):
                key, stripped = key[: -len(suffix)].strip(), True
    return key


def public_key(record: VoiceRecord) -> str:
    """The key a voice is listed under: its name, or its id when the name would not survive a
    client's path handling (a '/', a '#', an audio suffix, surrounding spaces)."""
    name = record.name
    if (not name or name != name.strip() or any(c in name for c in "/\\" + EMOTION_SEPARATOR)
            or voice_key_from_client(name) != name):
        return record.id
    return name


# --------------------------------------------------------------------------------------- routes
class Dialects:
    """The dialect routes over one voice store and the API's `/tts` handler."""

    def __init__(self, store: VoiceStore, tts: TTSHandler):
        self.store = store
        self.tts = tts

    # -- voice lookup ------------------------------------------------------------------------
    def resolve(self, key: str, param: str) -> tuple[VoiceRecord, str | None]:
        """A listed key -> (voice, emotion named in the key or None). 404 when nothing matches."""
        record = lookup_voice(self.store, key) if key else None
        if record is not None:
            return record, None
        if EMOTION_SEPARATOR in key:
            base, emotion = key.rsplit(EMOTION_SEPARATOR, 1)
            record = lookup_voice(self.store, base) if base else None
            if record is not None and emotion:
                return record, emotion
        raise ApiError(404, "voice_not_found", f"no voice {key!r}; see GET /speakers", param)

    def speakers(self) -> list[dict[str, str]]:
        """SillyTavern's voice list: one entry per voice, plus one per extra emotion."""
        out = []
        for record in visible(self.store.list()):
            key = public_key(record)
            label = record.name or record.id
            out.append({"name": label, "voice_id": key})
            for emotion in sorted(record.emotions):
                out.append({"name": f"{label} ({emotion})", "voice_id": f"{key}{EMOTION_SEPARATOR}{emotion}"})
        return out

    def character_list(self) -> dict[str, list[str]]:
        return {public_key(r): r.emotion_names() for r in visible(self.store.list())}

    # -- SillyTavern POST / ------------------------------------------------------------------
    def sillytavern_request(self, raw: Mapping[str, Any]) -> tuple[TTSRequest, bool]:
        """The JSON body of SillyTavern's V2 / adapter providers (or any api_v2 client) ->
        (TTSRequest for the API's /tts, whether the answer must be converted to SILK)."""
        fields = dict(raw)
        fields.pop("use_st_adapter", None)
        fields.pop("card_name", None)  # the chat's character cards; the voice is chosen by target_voice
        target = fields.pop("target_voice", None)
        source = fields.get("voice") or target or fields.get("ref_audio_path")
        param = "voice" if fields.get("voice") else "target_voice" if target else "ref_audio_path"
        if not source or not isinstance(source, str):
            raise bad_request("missing_voice", "give `ref_audio_path` (its base name is a voice from GET /speakers), "
                              "`target_voice` or `voice`", "voice")
        key = voice_key_from_client(source)
        record, key_emotion = self.resolve(key, param)
        prompt = fields.get("prompt_text")
        if isinstance(prompt, str) and prompt.strip() == SPEAKER_TAG.sub("", key).strip():
            # V2 sends its voice_id as prompt_text: not a transcript, so the stored one is used
            fields["prompt_text"] = ""
            fields.pop("prompt_lang", None)
        fields.pop("ref_audio_path", None)
        fields["voice"] = record.id
        if key_emotion and not fields.get("emotion"):
            fields["emotion"] = key_emotion
        media = fields.get("media_type", "wav")
        media = "wav" if str(media).strip().lower() == "auto" else media  # adapter: "server decides"
        fmt = _dialect_format(str(media), "media_type")
        to_silk = fmt == "silk"
        fields["media_type"] = "raw" if to_silk else DIALECT_FORMATS[fmt]
        if to_silk:
            fields["streaming_mode"] = 0  # a voice message is one finished file
        return _validate(fields), to_silk

    # -- GSVI --------------------------------------------------------------------------------
    def gsvi_request(self, req: GsviRequest) -> tuple[TTSRequest, bool]:
        if req.cha_name:
            record, key_emotion = self.resolve(voice_key_from_client(req.cha_name), "cha_name")
        elif req.speaker_id is not None:
            voices = visible(self.store.list())
            if not 0 <= req.speaker_id < len(voices):
                raise ApiError(404, "voice_not_found", f"no speaker id {req.speaker_id}; see GET /voice/speakers",
                               "speaker_id")
            record, key_emotion = voices[req.speaker_id], None
        else:  # GSVI speaks with its loaded character; ours is the first voice listed
            voices = visible(self.store.list())
            if not voices:
                raise ApiError(404, "voice_not_found", "no voices yet; create one with POST /v1/voices", "cha_name")
            record, key_emotion = voices[0], None
        top_k, top_p = req.top_k, req.top_p
        if top_k <= 0:  # GSVI's slider starts at 0; keeping no token is meaningless: read it as "no limit"
            top_k = 1024
        if top_p <= 0:  # nucleus of nothing keeps only the most likely token: that is top_k = 1
            top_k, top_p = 1, 1.0
        to_silk = req.format == "silk"
        fields = {
            "text": req.text, "text_lang": req.text_language, "voice": record.id,
            "emotion": req.emotion or key_emotion, "speed_factor": req.speed, "top_k": top_k, "top_p": top_p,
            "temperature": req.temperature, "seed": req.seed, "text_split_method": req.cut_method,
            "media_type": "raw" if to_silk else DIALECT_FORMATS[req.format],
            # GSVI streams sentence by sentence: api_v2's streaming_mode 1
            "streaming_mode": 1 if req.stream and not to_silk else 0,
        }
        return _validate({k: v for k, v in fields.items() if v is not None}), to_silk

    async def gsvi_response(self, params: Mapping[str, Any], *, require_marker: bool = True) -> Response | None:
        """For the API's /tts handlers: answer a GSVI request, or None when `params` are api_v2's."""
        req = gsvi_from_params(params, require_marker=require_marker)
        if req is None:
            return None
        body, to_silk = self.gsvi_request(req)
        if to_silk:
            _require_silk("format")
        response = await self.tts(body)
        if to_silk:
            return _silk_response(response)
        if not req.stream:  # GSVI answers a file download named audio.<format>
            response.headers["content-disposition"] = f'attachment; filename="audio.{req.format}"'
        return response

    # -- mounting ----------------------------------------------------------------------------
    def mount(self, app: FastAPI) -> None:
        @app.get("/speakers", tags=["SillyTavern"], summary="Voices for SillyTavern's GPT-SoVITS providers",
                 responses={200: {"content": {"application/json": {"schema": _SPEAKERS_SCHEMA}}}})
        async def speakers() -> JSONResponse:
            return JSONResponse(self.speakers())

        @app.post("/", tags=["SillyTavern"], summary="SillyTavern GPT-SoVITS-V2 / adapter synthesis",
                  response_class=Response, responses=_AUDIO | _ERRORS,
                  description="api_v2 JSON fields (text, text_lang, media_type, streaming_mode, ...); the "
                              "voice is the base name of `ref_audio_path`, or `target_voice`, or `voice`.")
        async def root_post(request: Request) -> Response:
            body, to_silk = self.sillytavern_request(await read_json_object(request))
            if to_silk:
                _require_silk("media_type")
            response = await self.tts(body)
            return _silk_response(response) if to_silk else response

        @app.get("/character_list", tags=["GSVI"], summary="GSVI: characters and their emotions",
                 responses={200: {"content": {"application/json": {"schema": _CHARACTERS_SCHEMA}}}})
        async def character_list() -> JSONResponse:
            return JSONResponse(self.character_list())

        @app.get("/voice/speakers", tags=["GSVI"], summary="GSVI / vits-simple-api speaker list",
                 responses={200: {"content": {"application/json": {"schema": _VOICE_SPEAKERS_SCHEMA}}}})
        async def voice_speakers() -> JSONResponse:
            names = list(self.character_list())
            entries = [{"id": i, "name": name, "lang": VOICE_LIST_LANGUAGES} for i, name in enumerate(names)]
            return JSONResponse({"VITS": entries, "GSVI": entries, "GPT-SOVITS": entries})

        async def gsvi_route(request: Request) -> Response:
            params = dict(request.query_params) if request.method == "GET" else await read_json_object(request)
            response = await self.gsvi_response(params, require_marker=False)
            assert response is not None
            return response

        for path in GSVI_ROUTE_ALIASES:
            for method in ("GET", "POST"):
                app.add_api_route(path, gsvi_route, methods=[method], tags=["GSVI"], response_class=Response,
                                  responses=_AUDIO | _ERRORS, name=f"gsvi{path.replace('/', '_')}_{method.lower()}",
                                  summary="GSVI synthesis (route alias of GSVI's /tts)",
                                  description="GSVI parameters (text, cha_name/character, character_emotion, "
                                              "text_language, format, stream, ...) in the query (GET) or JSON "
                                              "(POST).")

        app.add_middleware(DialectCORS, paths=CORS_PATHS)


def mount_dialects(app: FastAPI, store: VoiceStore, tts: TTSHandler) -> Dialects:
    """Add the SillyTavern and GSVI routes to `app`. `tts` is the API's own /tts handler
    (TTSRequest -> Response). The returned object's `gsvi_response` serves GSVI on the shared /tts."""
    dialects = Dialects(store, tts)
    dialects.mount(app)
    return dialects


# -------------------------------------------------------------------------------------- helpers
def _validate(fields: Mapping[str, Any]) -> TTSRequest:
    try:
        return TTSRequest.model_validate(dict(fields))
    except ValidationError as exc:  # the API's handler turns these into 400 unknown_field / invalid_value
        raise RequestValidationError(exc.errors(include_url=False)) from None


async def read_json_object(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise bad_request("invalid_json", "the request body is not a valid JSON object")
    return data


def _require_silk(param: str) -> None:
    if not silk.available():
        raise bad_request("format_unavailable", silk.SILK_UNAVAILABLE_MESSAGE, param)


def _silk_response(pcm_response: Response) -> Response:
    """The API's whole-file raw PCM answer (s16le mono at SAMPLE_RATE) -> the same answer as SILK."""
    samples = np.frombuffer(pcm_response.body, dtype="<i2")
    headers = {k: v for k, v in pcm_response.headers.items() if k.lower().startswith("x-")}
    return Response(silk.encode_silk(samples, SAMPLE_RATE), media_type=silk.MEDIA_TYPE, headers=headers)


class DialectCORS:
    """CORS (any origin, no credentials) for the dialect paths only: SillyTavern calls them with
    `fetch()` from its own origin, as every GSVI/api_v2 server it was written for allows. The rest
    of the API (and the playground at GET /) keeps the same-origin default."""

    def __init__(self, app: ASGIApp, paths: frozenset[str]):
        self.app = app
        self.paths = paths
        self.cors = CORSMiddleware(app, allow_origins=["*"], allow_methods=["GET", "POST", "OPTIONS"],
                                   allow_headers=["*"], expose_headers=["X-Seed", "X-Emotion", "X-Emotion-Fallback",
                                                                        "X-Model-Version", "X-Voice-Id"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths and not (
                scope["path"] == "/" and scope["method"] in ("GET", "HEAD")):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)

