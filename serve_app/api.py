"""HTTP API (FastAPI on Starlette). The only place that speaks HTTP and audio containers.

`create_app(stages, store, settings, registry, admin)` builds the ASGI app; the Ray Serve ingress
deployment (`serve_app.graph`) and the in-process server (`serve_app.local.create_local_app`) both
use it. Request orchestration lives in `serve_app.synthesis`, access control in `serve_app.auth`.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
import time
import uuid
from typing import Any, AsyncIterator

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments import metrics
from deployments.model_registry import ModelRef, ModelRegistry
from deployments.voice_store import (
    DEFAULT_EMOTION,
    EMOTION_RE,
    VoiceRecord,
    VoiceStore,
    VoiceStoreError,
)
from models.audio import SAMPLE_RATE
from models.guard import HEADER as GUARD_HEADER
from models.guard import GuardConfig
from models.pipeline import SynthesisSettings
from models.streaming import StreamingConfig
from models.t2s import SamplingParams
from models.text.frontend import SUPPORTED_LANGUAGES
from serve_app import audio_io
from serve_app.auth import (
    Authenticator,
    KeyStore,
    current_principal,
    lookup_voice,
    visible,
    voice_name_taken,
)
from serve_app.body_limit import BodyLimit
from serve_app.dialects import UPSTREAM_PATHS, mount_dialects, read_json_object
from serve_app.errors import ApiError, bad_request
from serve_app.model_admin import ModelAdmin
from serve_app.playground import mount_playground
from serve_app.schemas import (
    ErrorBody,
    ModelUpdate,
    SamplingFields,
    SpeechRequest,
    TTSRequest,
)
from serve_app.settings import Settings
from serve_app.synthesis import PreparedSynthesis, Stages, SynthesisJob, prepare

log = logging.getLogger("gsv.api")

# reachable without a key: health, the playground page (it asks for a key itself), the API docs
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
OPENAI_MODEL_ALIASES = ("gpt-sovits", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# upstream api_v2 media types -> our formats
TTS_MEDIA_TYPES = {"wav": "wav", "raw": "pcm", "pcm": "pcm", "ogg": "ogg", "aac": "aac", "mp3": "mp3",
                   "flac": "flac", "opus": "opus"}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "invalid request"},
    401: {"model": ErrorBody, "description": "an API key is required"},
    404: {"model": ErrorBody, "description": "unknown voice or model"},
    413: {"model": ErrorBody, "description": "request too large"},
    429: {"model": ErrorBody, "description": "rate limited (Retry-After)"},
}
FORBIDDEN = {403: {"model": ErrorBody, "description": "not allowed for this API key"}}
CONFLICT = {409: {"model": ErrorBody, "description": "name taken, or too many voices"}}
STORAGE = {507: {"model": ErrorBody, "description": "the data directory cannot be written"}}
AUDIO_RESPONSES: dict[int | str, dict[str, Any]] = ERROR_RESPONSES | {
    200: {"content": {f.media_type: {} for f in audio_io.FORMATS.values()} | {"text/event-stream": {}},
          "description": "audio in the requested format (or SSE events with base64 audio)"},
    503: {"model": ErrorBody, "description": "overloaded (Retry-After)"},
    504: {"model": ErrorBody, "description": "over the request timeout"},
}


def create_app(stages: Stages, store: VoiceStore, settings: Settings, registry: ModelRegistry,
               admin: ModelAdmin | None = None) -> FastAPI:
    app = FastAPI(title="gsv-serve", version="0.1.0",
                  description="GPT-SoVITS voices on Ray Serve: OpenAI-compatible speech, upstream /tts, voices.")
    limits = settings.limits
    authenticator = Authenticator(KeyStore(settings.data_dir), settings.require_auth, settings.admin_api_key,
                                  settings.rate_limit_per_s, settings.rate_burst, settings.max_streams_per_key)
    guard_config = GuardConfig.from_dict(settings.guard)

    # ---------------------------------------------------------------------------------- errors
    def upstream_dialect(request: Request) -> bool:
        return request.url.path in UPSTREAM_PATHS

    def error_response(request: Request, error: ApiError) -> JSONResponse:
        body = error.body()
        if upstream_dialect(request):  # api_v2 clients read a top-level "message"
            body["message"] = error.message
        return JSONResponse(body, status_code=error.status, headers=error.headers | {"X-Error-Code": error.code})

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "form")]
        param = ".".join(loc) or None
        kind = first.get("type", "")
        if kind == "extra_forbidden":
            code, message = "unknown_field", f"unknown field {param!r}"
        elif kind == "missing":
            code, message = "missing_field", f"missing required field {param!r}"
        elif kind in ("json_invalid", "model_attributes_type", "dict_type"):
            code, message = "invalid_json", "the request body is not a valid JSON object"
        else:
            code, message = "invalid_value", f"{param or 'request'}: {first.get('msg', 'invalid value')}"
        return error_response(request, ApiError(400, code, message, param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(request, ApiError(exc.status_code, code, str(exc.detail)))

    @app.middleware("http")
    async def _authenticate(request: Request, call_next):
        if request.url.path in OPEN_PATHS or request.url.path.startswith("/static/") or request.method == "OPTIONS":
            return await call_next(request)
        try:
            principal = authenticator.authenticate(request.headers.get("authorization"))
            authenticator.check_rate(principal)
        except ApiError as exc:
            return error_response(request, exc)
        token = current_principal.set(principal)
        try:
            return await call_next(request)
        finally:
            current_principal.reset(token)

    @app.middleware("http")
    async def _count_requests(request: Request, call_next):
        request_id = request.headers.get("x-request-id") or _serve_request_id() or uuid.uuid4().hex
        response = await call_next(request)
        response.headers.setdefault("X-Request-Id", request_id)
        route = request.scope.get("route")
        metrics.request_done(getattr(route, "path", "unmatched"), response.status_code,
                             response.headers.get("x-error-code", "ok"))
        return response

    app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)  # outermost: before any body is read

    # ---------------------------------------------------------------------------------- health
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorBody}})
    async def readyz() -> JSONResponse:
        if await stages.ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse(ApiError(503, "not_ready", "stages are still loading").body(), status_code=503)

    # ---------------------------------------------------------------------------------- models
    @app.get("/v1/models", tags=["models"])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": registry.describe()}

    @app.get("/v1/models/{model_id}", tags=["models"], responses=ERROR_RESPONSES)
    async def get_model(model_id: str) -> dict[str, Any]:
        for entry in registry.describe():
            if entry["id"] == model_id:
                return entry
        raise ApiError(404, "unknown_model", f"unknown model {model_id!r}; see GET /v1/models")

    @app.put("/v1/models/{model_id}", tags=["models"], responses=ERROR_RESPONSES | FORBIDDEN | {
        501: {"model": ErrorBody, "description": "not supported without Ray"},
        503: {"model": ErrorBody, "description": "the new version could not be loaded"}})
    async def put_model(model_id: str, body: ModelUpdate, request: Request) -> dict[str, Any]:
        """Admin: load a new version (checkpoints inside the models folder), warm it in every
        stage, then switch new requests to it. Requests in flight finish on the old version."""
        if not current_principal.get().admin:
            raise ApiError(403, "forbidden", "model swaps need an admin API key")
        if not MODEL_ID_RE.match(model_id):
            raise bad_request("invalid_model_id", "model ids are letters, digits, '-', '_' and '.'", "model_id")
        if admin is None:
            raise ApiError(501, "not_supported", "model swaps need the Ray Serve graph")
        ref = await admin.swap(model_id, body.gpt, body.sovits, body.tag)
        return {"id": ref.model_id, "object": "model", "version": ref.version, "tag": ref.tag, "active": True}

    # ---------------------------------------------------------------------------------- voices
    @app.post("/v1/voices", tags=["voices"], status_code=201, responses=ERROR_RESPONSES | CONFLICT | STORAGE)
    async def create_voice(
        file: UploadFile = File(..., description="reference clip, 3-10 s, wav/flac/ogg/mp3"),
        transcript: str = Form(..., description="what the clip says"),
        language: str = Form(..., description="language of the transcript"),
        name: str = Form("", description="a name unique among your voices and the public ones (defaults to the id)"),
        model: str = Form("", description="the model this voice speaks with (default: the server's model)"),
    ) -> dict[str, Any]:
        transcript = check_transcript(transcript)
        language = check_language(language, "language")
        name = name.strip()
        if len(name) > limits.max_voice_name_chars:
            raise bad_request("name_too_long", f"name over {limits.max_voice_name_chars} characters", "name")
        if name and voice_name_taken(store, name):  # among the caller's and public voices only
            raise ApiError(409, "voice_exists", f"a voice named {name!r} already exists", "name")
        if model and registry.active(model) is None:
            raise ApiError(404, "unknown_model", f"unknown model {model!r}; see GET /v1/models", "model")
        if len(store.list()) >= limits.max_voices:
            raise ApiError(409, "too_many_voices", f"the server holds its maximum of {limits.max_voices} voices")
        tenant = current_principal.get().tenant
        if sum(1 for r in store.list() if r.tenant == tenant) >= limits.max_voices_per_tenant:
            raise ApiError(409, "too_many_voices", f"this tenant holds its maximum of {limits.max_voices_per_tenant} voices")
        samples, sr = await read_reference(file)
        try:
            record = store.create(name=name, transcript=transcript, language=language,
                                  model_id=model or settings.model.model_id, samples=samples, sample_rate=sr,
                                  tenant=tenant)
        except VoiceStoreError as exc:
            raise ApiError(507, "storage_unavailable", str(exc)) from None
        return record.public() | {"name": record.name or record.id}

    @app.post("/v1/voices/{voice_id}/emotions", tags=["voices"], status_code=201,
              responses=ERROR_RESPONSES | FORBIDDEN | STORAGE)
    async def add_emotion(
        voice_id: str,
        file: UploadFile = File(..., description="reference clip for this emotion, 3-10 s"),
        emotion: str = Form(..., description="emotion name, e.g. happy, sad, angry"),
        transcript: str = Form(..., description="what the clip says"),
        language: str = Form(..., description="language of the transcript"),
    ) -> dict[str, Any]:
        record = find_voice(voice_id, owned=True)
        emotion = emotion.strip()
        if not EMOTION_RE.match(emotion) or emotion == DEFAULT_EMOTION:
            raise bad_request("invalid_emotion", "emotion names are 1-32 letters, digits, '-' or '_', not 'default'",
                              "emotion")
        transcript = check_transcript(transcript)
        language = check_language(language, "language")
        samples, sr = await read_reference(file)
        try:
            updated = store.add_emotion(record.id, emotion, transcript, language, samples, sr)
        except VoiceStoreError as exc:
            raise ApiError(507, "storage_unavailable", str(exc)) from None
        await stages.forget_voice(record.id)  # a replaced clip must not be served from the cache
        return updated.public()

    @app.get("/v1/voices", tags=["voices"])
    async def list_voices() -> dict[str, Any]:
        return {"object": "list", "data": [r.public() for r in visible(store.list())]}

    @app.get("/v1/voices/{voice_id}", tags=["voices"], responses=ERROR_RESPONSES)
    async def get_voice(voice_id: str) -> dict[str, Any]:
        return find_voice(voice_id).public()

    @app.delete("/v1/voices/{voice_id}", tags=["voices"], responses=ERROR_RESPONSES | FORBIDDEN)
    async def delete_voice(voice_id: str) -> dict[str, Any]:
        record = find_voice(voice_id, owned=True)
        try:
            store.delete(record.id)
        except VoiceStoreError as exc:
            raise ApiError(507, "storage_unavailable", str(exc)) from None
        await stages.forget_voice(record.id)
        return {"id": record.id, "object": "voice", "deleted": True}

    # ---------------------------------------------------------------------------------- speech
    @app.post("/v1/audio/speech", tags=["speech"], response_class=Response, responses=AUDIO_RESPONSES)
    async def speech(body: SpeechRequest) -> Response:
        voice = find_voice(body.voice, param="voice")
        model = resolve_model(body.model, voice)
        language = check_language(body.language or settings.default_language, "language")
        text = check_text(body.input, "input")
        requested = body.emotion or (body.instructions.strip() if body.instructions
                                     and body.instructions.strip() in voice.emotion_names() else None)
        emotion, prompt_text, prompt_language = voice.reference_for(requested or DEFAULT_EMOTION)
        job = make_job(voice, model, text, language, body, speed=body.speed, prompt_text=prompt_text,
                       prompt_language=prompt_language, emotion=emotion, requested_emotion=requested)
        prepared = await prepare_or_fail(job)
        stream = body.stream or body.stream_format == "sse"
        if body.stream_format == "sse":
            return sse_response(prepared, body.response_format)
        return await audio_response(prepared, body.response_format, stream, token_chunks=True)

    async def tts_common(body: TTSRequest) -> Response:
        voice_key = body.voice or voice_name_from_path(body.ref_audio_path)
        if not voice_key:
            raise bad_request("missing_voice", "give `voice` (a stored voice id or name)", "voice")
        voice = find_voice(voice_key, param="voice")
        language = check_language(body.text_lang, "text_lang")
        text = check_text(body.text, "text")
        emotion, prompt_text, prompt_language = voice.reference_for(body.emotion or DEFAULT_EMOTION)
        if body.prompt_text.strip():  # upstream clients send the transcript with every request
            prompt_text = body.prompt_text.strip()
            if body.prompt_lang:
                prompt_language = check_language(body.prompt_lang, "prompt_lang")
        mode = int(body.streaming_mode) if not isinstance(body.streaming_mode, bool) else int(body.streaming_mode)
        if mode not in (0, 1, 2, 3):
            raise bad_request("invalid_value", "streaming_mode must be 0, 1, 2, 3, true or false",
                              "streaming_mode")
        job = make_job(voice, resolve_model(None, voice), text, language, body, speed=body.speed_factor,
                       prompt_text=prompt_text, prompt_language=prompt_language, emotion=emotion,
                       requested_emotion=body.emotion)
        prepared = await prepare_or_fail(job)
        # api_v2: 1 = one piece per sentence, 2 and 3 = token-chunk streaming
        return await audio_response(prepared, TTS_MEDIA_TYPES[body.media_type], stream=mode != 0,
                                    token_chunks=mode >= 2)

    @app.post("/tts", tags=["upstream api_v2"], response_class=Response, responses=AUDIO_RESPONSES,
              openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": TTSRequest.model_json_schema()}}}})
    async def tts_post(request: Request) -> Response:
        params = await read_json_object(request)
        response = await dialects.gsvi_response(params)  # GSVI's JSON form (cha_name, text_language, ...)
        if response is not None:
            return response
        return await tts_common(validated_tts(params))

    @app.get("/tts", tags=["upstream api_v2"], response_class=Response, responses=AUDIO_RESPONSES)
    async def tts_get(request: Request) -> Response:
        params: dict[str, Any] = dict(request.query_params)
        response = await dialects.gsvi_response(params)  # GSVI's query form (cha_name, text_language, ...)
        if response is not None:
            return response
        for key in ("text_lang", "prompt_lang"):
            if key in params:
                params[key] = params[key].lower()
        return await tts_common(validated_tts(params))

    def validated_tts(params: dict[str, Any]) -> TTSRequest:
        try:
            return TTSRequest.model_validate(params)
        except Exception as exc:  # pydantic.ValidationError
            raise RequestValidationError(exc.errors(include_url=False)) from None  # type: ignore[attr-defined]

    # SillyTavern (GET /speakers, POST /) and GSVI (/character_list, ...) over the same /tts machinery
    dialects = mount_dialects(app, store, tts_common)

    # ---------------------------------------------------------------------------------- helpers
    def resolve_model(requested: str | None, voice: VoiceRecord) -> ModelRef:
        """The OpenAI `model` field names a registered model, or is an alias (tts-1, ...) for the
        voice's own model."""
        model_id = voice.model_id if requested in (None, "", *OPENAI_MODEL_ALIASES) else requested
        ref = registry.active(model_id)
        if ref is None:
            raise ApiError(404, "unknown_model", f"unknown model {model_id!r}; see GET /v1/models", "model")
        return ref

    def find_voice(key: str, param: str | None = None, owned: bool = False) -> VoiceRecord:
        """A voice the caller may use: another tenant's voice answers exactly like a missing one.
        A name resolves to the caller's own voice, then a public one (`auth.lookup_voice`).
        `owned`: the caller wants to change it, which public voices allow only to admins."""
        record = lookup_voice(store, key)
        principal = current_principal.get()
        if record is None or not principal.can_see(record.tenant):
            raise ApiError(404, "voice_not_found", f"no voice {key!r}; see GET /v1/voices", param)
        if owned and not (principal.admin or record.tenant == principal.tenant):
            raise ApiError(403, "forbidden", f"voice {key!r} is shared: only an admin may change it", param)
        return record

    def check_language(language: str, param: str) -> str:
        code = (language or "").strip().lower()
        if code not in SUPPORTED_LANGUAGES:
            raise bad_request("unsupported_language",
                              f"unsupported language {language!r}; use one of {', '.join(SUPPORTED_LANGUAGES)}",
                              param)
        return code

    def check_transcript(transcript: str) -> str:
        transcript = transcript.strip()
        if not transcript:
            raise bad_request("empty_transcript", "transcript must not be empty", "transcript")
        if len(transcript) > limits.max_transcript_chars:
            raise bad_request("transcript_too_long", f"transcript over {limits.max_transcript_chars} characters",
                              "transcript")
        return transcript

    async def read_reference(file: UploadFile) -> tuple[np.ndarray, int]:
        """An uploaded reference clip -> (samples, rate), or a 400 naming what is wrong with it."""
        data = await file.read(limits.max_upload_bytes + 1)
        try:
            samples, sr = audio_io.decode_audio(data, max_bytes=limits.max_upload_bytes,
                                                max_seconds=3 * limits.ref_max_seconds)
            audio_io.validate_reference(samples, sr, limits.ref_min_seconds, limits.ref_max_seconds)
        except audio_io.AudioInputError as exc:
            raise bad_request(exc.code, exc.message, "file") from None
        return samples, sr

    def check_text(text: str, param: str) -> str:
        if not text or not text.strip():
            raise bad_request("empty_text", "text must not be empty", param)
        if len(text) > limits.max_text_chars:
            raise bad_request("text_too_long", f"text is {len(text)} characters; the limit is {limits.max_text_chars}",
                              param)
        return text

    def make_job(voice: VoiceRecord, model: ModelRef, text: str, language: str, body: SamplingFields, speed: float,
                 prompt_text: str, prompt_language: str, emotion: str = DEFAULT_EMOTION,
                 requested_emotion: str | None = None) -> SynthesisJob:
        seed = body.seed if body.seed >= 0 else secrets.randbits(31)
        sampling = SamplingParams(top_k=body.top_k, top_p=body.top_p, temperature=body.temperature,
                                  repetition_penalty=body.repetition_penalty)
        synth = SynthesisSettings(sampling=sampling, text_split_method=body.text_split_method, speed=speed,
                                  fragment_interval=body.fragment_interval, seed=seed, guard=guard_config)
        return SynthesisJob(voice=voice, text=text, language=language, settings=synth, model=model,
                            prompt_text=prompt_text, prompt_language=prompt_language, emotion=emotion,
                            requested_emotion=requested_emotion or emotion)

    async def prepare_or_fail(job: SynthesisJob) -> PreparedSynthesis:
        deadline = asyncio.get_running_loop().time() + settings.request_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                prepared = await prepare(stages, job)
        except TimeoutError:
            raise deadline_exceeded() from None
        prepared.deadline = deadline
        if not prepared.sentences:
            raise bad_request("empty_text", "the text has nothing to speak (only punctuation or symbols)")
        return prepared

    def audio_headers(prepared: PreparedSynthesis) -> dict[str, str]:
        job = prepared.job
        fallback = {"X-Emotion-Fallback": job.requested_emotion} if job.requested_emotion != job.emotion else {}
        return fallback | {"X-Model-Id": job.model.model_id, "X-Model-Version": job.model.version,
                "X-Seed": str(job.settings.seed), "X-Emotion": job.emotion,
                "X-Voice-Id": prepared.job.voice.id, "X-Sample-Rate": str(SAMPLE_RATE)}

    streaming = StreamingConfig(*settings.stream_chunk_tokens)

    async def audio_response(prepared: PreparedSynthesis, fmt: str, stream: bool,
                             token_chunks: bool = True) -> Response:
        info = audio_io.FORMATS[fmt]
        if not stream:
            try:
                async with asyncio.timeout_at(prepared.deadline):  # cancels every stage call in flight
                    parts = [part async for part in prepared.fragments()]
            except TimeoutError:
                raise deadline_exceeded() from None
            samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            record_rtf(prepared, samples.size)
            headers = audio_headers(prepared) | {GUARD_HEADER: prepared.guard_log.header_value()}
            return Response(audio_io.encode_audio(samples, SAMPLE_RATE, fmt), media_type=info.media_type,
                            headers=headers)
        return StreamingResponse(counted_stream(stream_bytes(prepared, fmt, token_chunks)),
                                 media_type=info.media_type, headers=audio_headers(prepared))

    def counted_stream(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Hold one of the caller's concurrent-stream slots (429 when none is free) while `body` runs."""
        principal = current_principal.get()
        authenticator.open_stream(principal)

        async def run() -> AsyncIterator[bytes]:
            try:
                async for chunk in body:
                    yield chunk
            finally:
                authenticator.close_stream(principal)
        return run()

    async def stream_bytes(prepared: PreparedSynthesis, fmt: str, token_chunks: bool = True) -> AsyncIterator[bytes]:
        encoder = audio_io.open_stream(fmt, SAMPLE_RATE)
        head = encoder.header()
        if head:
            yield head
        parts = prepared.pieces(streaming) if token_chunks else prepared.fragments()
        produced, first = 0, True
        metrics.active_streams(+1)
        try:
            async with asyncio.timeout_at(prepared.deadline):
                async for part in parts:
                    if first and part.size:
                        metrics.ttfa(prepared.job.model.key, fmt, time.perf_counter() - prepared.started)
                        first = False
                    produced += part.size
                    chunk = encoder.feed(part)
                    if chunk:
                        yield chunk
        except TimeoutError:  # headers are out: end the stream early (the audio so far stays valid)
            log.warning("stream cut at the %.0f s deadline", settings.request_timeout_s)
        finally:
            metrics.active_streams(-1)
            await parts.aclose()  # the client went away: stop every stage's work for this request
        record_rtf(prepared, produced)
        tail = encoder.close()
        if tail:
            yield tail

    def record_rtf(prepared: PreparedSynthesis, samples: int) -> None:
        if samples:
            metrics.rtf(prepared.job.model.key, (time.perf_counter() - prepared.started) / (samples / SAMPLE_RATE))

    def sse_response(prepared: PreparedSynthesis, fmt: str) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            total = 0
            async for chunk in stream_bytes(prepared, fmt):
                total += len(chunk)
                payload = {"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode()}
                yield f"data: {json.dumps(payload)}\n\n".encode()
            done = {"type": "speech.audio.done", "usage": {"input_tokens": len(prepared.job.text),
                                                           "output_tokens": total, "total_tokens": total},
                    "generation_guard": prepared.guard_log.header_value()}
            yield f"data: {json.dumps(done)}\n\n".encode()
        return StreamingResponse(counted_stream(events()), media_type="text/event-stream",
                                 headers=audio_headers(prepared))

    mount_playground(app)
    return app


def deadline_exceeded() -> ApiError:
    return ApiError(504, "deadline_exceeded", "the synthesis took longer than the server's request timeout")


def _serve_request_id() -> str | None:
    """Ray Serve's id for this request (also in every stage's log lines), if we run in Serve."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or None
    except Exception:  # noqa: BLE001 - not inside Serve
        return None


def voice_name_from_path(path: str | None) -> str | None:
    """`./参考音频/alice.wav` -> `alice`. The path itself is never opened."""
    if not path:
        return None
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base else base
    return stem.strip() or None
