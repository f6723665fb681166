"""Client dialects: each test replays the exact request a real client sends and reads the answer
the way that client does.

Clients (their source read for the facts below):
* SillyTavern "GPT-SoVITS-V2 (Unofficial)" (public/scripts/extensions/tts/gpt-sovits-v2.js):
  `GET /speakers`, matches `name`, then `POST /` JSON with `ref_audio_path: "./参考音频/<voice_id>.wav"`,
  `prompt_text: <voice_id>`, `media_type: "ogg"`, `streaming_mode: "true"`; plays `response.blob()`
  after checking its type starts with `audio/`.
* SillyTavern "GPT-SoVITS-adapter" (gpt-sovits-adapter.js): same list; `POST /` with `target_voice`,
  `card_name`, `use_st_adapter: true`, `media_type` auto/wav/mp3/ogg/silk/flac.
* SillyTavern "GSVI" (gsvi.js): `GET /character_list` -> `Object.keys`; the audio element's `src` is
  `/tts?text=&cha_name=&text_language=多语种混合&batch_size=&speed=&top_k=&top_p=&temperature=&stream=`.
* GSVI bots: `POST /tts` with GSVI's JSON (`character`, `emotion`, `text_language`, `format`, ...),
  vits-simple-api style `/voice/vits?id=&text=&lang=&format=`, `GET /voice/speakers`.
* The openai SDK and curl, against a real uvicorn server (last section).

Most tests use the in-process TestClient; the last section serves the same app with uvicorn on
127.0.0.1 and talks plain HTTP to it.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import urllib.parse
import urllib.request

import numpy as np
import pytest
import soundfile as sf
import torch

from deployments.voice_store import VoiceRecord, VoiceStore
from models.text.frontend import SUPPORTED_LANGUAGES
from serve_app import audio_io, dialects, silk
from serve_app.errors import ApiError
from serve_app.settings import Limits, Settings
from tests.http_server import serve_in_thread
from tests.serving.conftest import (  # noqa: F401
    demo_assets,
    demo_paths,
    pipeline,
    register_demo_voice,
    wav_bytes,
)

ZH_TEXT = "你好，欢迎回来。"
# the SILK codec is an optional extra (`pip install 'gsv-serve[silk]'`); its absence has its own test
needs_silk = pytest.mark.skipif(not silk.available(), reason="the silk extra (silk-python) is not installed")
ORIGIN = "http://127.0.0.1:8000"  # SillyTavern's own origin: its fetch() calls are cross-origin


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, demo_assets):  # noqa: F811
    """One data dir holding the demo voice (with a `happy` clip) and a voice named `Dr. Who`."""
    data_dir = tmp_path_factory.mktemp("dialect-data")
    store = VoiceStore(data_dir)
    register_demo_voice(store, demo_assets)
    clip, sr = sf.read(io.BytesIO(wav_bytes(4.0, freq=330.0)), dtype="float32")
    store.add_emotion("demo", "happy", "I am so happy today.", "en", clip, sr)
    store.create(name="Dr. Who", transcript="Hello there.", language="en", model_id="default",
                 samples=clip, sample_rate=sr)
    return data_dir


@pytest.fixture(scope="module")
def store(data_dir) -> VoiceStore:
    return VoiceStore(data_dir)


@pytest.fixture(scope="module")
def app_factory(data_dir, pipeline):  # noqa: F811
    from serve_app.local import create_local_app

    torch.set_num_threads(1)
    settings = Settings(data_dir=str(data_dir), limits=Limits(max_text_chars=300))
    return lambda: create_local_app(pipeline, settings)


@pytest.fixture(scope="module")
def client(app_factory):
    from starlette.testclient import TestClient

    with TestClient(app_factory()) as c:
        yield c


def decode(response) -> tuple[np.ndarray, int]:
    samples, sr = audio_io.decode_audio(response.content, max_bytes=50_000_000)
    assert samples.size > 0 and np.isfinite(samples).all()
    return samples, sr


def error_code(response) -> str:
    return response.json()["error"]["code"]


# ------------------------------------------------------------------ SillyTavern: GPT-SoVITS-V2
def st_v2_body(voice_id: str, text: str = ZH_TEXT) -> dict:
    """gpt-sovits-v2.js fetchTtsGeneration with the provider's default settings."""
    return {"text": text, "prompt_text": dialects.SPEAKER_TAG.sub("", voice_id),
            "ref_audio_path": "./参考音频/" + voice_id + ".wav", "text_lang": "zh", "prompt_lang": "zh",
            "text_split_method": "cut5", "batch_size": 1, "media_type": "ogg", "streaming_mode": "true"}


def test_speakers_answers_the_list_sillytavern_matches_by_name(client):
    response = client.get("/speakers", headers={"Origin": ORIGIN})
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == "*"
    voices = response.json()
    assert all(set(v) == {"name", "voice_id"} for v in voices)
    match = [v for v in voices if v["name"] == "demo"][0]  # getVoice: voices.filter(v => v.name == name)[0]
    assert match["voice_id"] == "demo"
    assert {"name": "demo (happy)", "voice_id": "demo#happy"} in voices
    assert {"name": "Dr. Who", "voice_id": "Dr. Who"} in voices


def test_st_v2_post_root_streams_ogg_vorbis_the_browser_plays(client):
    response = client.post("/", content=json.dumps(st_v2_body("demo")),
                           headers={"Content-Type": "application/json", "Origin": ORIGIN})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("audio/")  # addAudioJob's check on blob.type
    assert response.headers["access-control-allow-origin"] == "*"
    assert b"\x01vorbis" in response.content[:200]
    _, sr = decode(response)
    assert sr == 32000 and response.headers["x-voice-id"] == "demo"


def test_st_v2_voice_id_with_emotion_speaks_that_clip(client):
    response = client.post("/", json=st_v2_body("demo#happy"))
    assert response.status_code == 200, response.text
    assert response.headers["x-emotion"] == "happy" and "x-emotion-fallback" not in response.headers


def test_st_v2_prompt_text_that_is_the_voice_id_is_not_used_as_transcript(store):
    body, to_silk = dialects.Dialects(store, tts=None).sillytavern_request(st_v2_body("demo#happy"))
    assert body.voice == "demo" and body.emotion == "happy" and not to_silk
    assert body.prompt_text == "" and body.prompt_lang is None  # the stored transcript and language are used
    assert body.ref_audio_path is None and body.media_type == "ogg" and body.streaming_mode is True


def test_api_v2_prompt_text_that_is_a_real_transcript_is_kept(store):
    raw = st_v2_body("demo") | {"prompt_text": "A real transcript.", "prompt_lang": "en"}
    body, _ = dialects.Dialects(store, tts=None).sillytavern_request(raw)
    assert body.prompt_text == "A real transcript." and body.prompt_lang == "en"


def test_st_v2_unknown_voice_is_404_with_api_v2_message(client):
    response = client.post("/", json=st_v2_body("nobody"))
    assert response.status_code == 404
    assert error_code(response) == "voice_not_found" and "nobody" in response.json()["message"]


# ------------------------------------------------------------------ SillyTavern: adapter
def adapter_body(voice_id: str, media_type: str = "auto", text: str = ZH_TEXT) -> dict:
    """gpt-sovits-adapter.js fetchTtsGeneration (card_name = the chat's character names)."""
    return {"text": text, "card_name": ["Seraphina"], "use_st_adapter": True, "target_voice": voice_id,
            "text_lang": "zh", "text_split_method": "cut5", "batch_size": 1, "media_type": media_type,
            "streaming_mode": "true"}


def test_adapter_post_root_with_auto_media_type_answers_wav(client):
    response = client.post("/", json=adapter_body("Dr. Who.wav"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    _, sr = decode(response)
    assert sr == 32000 and response.headers["x-voice-id"] != "demo"


@needs_silk
def test_adapter_silk_answers_a_tencent_silk_voice_message(client):
    response = client.post("/", json=adapter_body("demo", media_type="silk"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == silk.MEDIA_TYPE
    assert response.content.startswith(silk.HEADER)
    pcm = silk.decode_silk(response.content, 24000)
    assert pcm.size > 24000 * 0.2 and np.abs(pcm).max() > 0


def test_silk_without_the_codec_is_a_400_naming_the_extra(client, monkeypatch):
    monkeypatch.setattr(silk, "_codec", lambda: None)
    response = client.post("/", json=adapter_body("demo", media_type="silk"))
    assert response.status_code == 400 and error_code(response) == "format_unavailable"
    assert "gsv-serve[silk]" in response.json()["message"]


def test_cors_preflight_for_post_root_allows_sillytavern(client):
    response = client.options("/", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                            "Access-Control-Request-Headers": "content-type"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]


def test_cors_stays_off_for_the_rest_of_the_api(client):
    for path in ("/v1/voices", "/"):
        response = client.get(path, headers={"Origin": ORIGIN})
        assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


# ------------------------------------------------------------------ GSVI
def test_character_list_maps_characters_to_their_emotions(client):
    characters = client.get("/character_list").json()
    assert characters["demo"] == ["default", "happy"] and characters["Dr. Who"] == ["default"]


def test_sillytavern_gsvi_audio_src_url_answers_wav(client):
    query = urllib.parse.urlencode({"text": ZH_TEXT, "cha_name": "demo", "text_language": "多语种混合",
                                    "batch_size": "10", "speed": "1", "top_k": "6", "top_p": "0.85",
                                    "temperature": "0.75", "stream": "false"})
    response = client.get("/tts?" + query)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers["content-disposition"] == 'attachment; filename="audio.wav"'
    _, sr = decode(response)
    assert sr == 32000


def test_gsvi_post_json_with_emotion_and_mp3(client):
    body = {"character": "demo", "emotion": "happy", "text": ZH_TEXT, "text_language": "中文", "batch_size": 1,
            "speed": 1.0, "top_k": 6, "top_p": 0.8, "temperature": 0.8, "stream": "False", "format": "mp3",
            "save_temp": "False"}
    response = client.post("/tts", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/mpeg" and response.headers["x-emotion"] == "happy"
    decode(response)


def test_gsvi_unknown_emotion_falls_back_to_default_and_says_so(client):
    response = client.get("/tts", params={"cha_name": "demo", "character_emotion": "furious", "text": ZH_TEXT,
                                          "seed": "3"})
    assert response.status_code == 200, response.text
    assert response.headers["x-emotion"] == "default" and response.headers["x-emotion-fallback"] == "furious"


def test_gsvi_stream_true_streams_a_wav(client):
    response = client.get("/tts", params={"character": "demo", "text": ZH_TEXT, "stream": "true", "seed": "3"})
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    assert "content-disposition" not in response.headers
    _, sr = decode(response)
    assert sr == 32000


def test_gsvi_ogg_opus_format(client):
    response = client.get("/tts", params={"cha_name": "demo", "text": ZH_TEXT, "format": "opus", "seed": "3"})
    assert response.status_code == 200, response.text
    assert b"OpusHead" in response.content[:200]
    _, sr = decode(response)
    assert sr == 48000


@needs_silk
def test_gsvi_silk_has_the_length_of_the_same_request_as_wav(client):
    params = {"cha_name": "demo", "text": ZH_TEXT, "seed": "11", "top_k": "5"}
    wav = client.get("/tts", params=params | {"format": "wav"})
    voice = client.get("/tts", params=params | {"format": "silk"})
    assert wav.status_code == voice.status_code == 200, voice.text
    wav_seconds = sf.info(io.BytesIO(wav.content)).duration
    silk_seconds = silk.decode_silk(voice.content, 24000).size / 24000
    assert abs(silk_seconds - wav_seconds) < 0.05  # 20 ms SILK frames


def test_gsvi_unknown_format_is_a_400_listing_the_formats(client):
    response = client.get("/tts", params={"cha_name": "demo", "text": "hi", "format": "wma"})
    assert response.status_code == 400 and error_code(response) == "unsupported_format"
    assert "silk" in response.json()["message"]


def test_voice_speakers_lists_ids_for_vits_style_clients(client):
    data = client.get("/voice/speakers").json()
    assert set(data) == {"VITS", "GSVI", "GPT-SOVITS"}
    assert [s["name"] for s in data["GSVI"]] == ["demo", "Dr. Who"] and data["GSVI"][0]["id"] == 0


def test_vits_style_route_alias_speaks_by_speaker_id(client):
    response = client.get("/voice/vits", params={"id": "0", "text": ZH_TEXT, "lang": "zh", "format": "wav",
                                                 "length": "1"})
    assert response.status_code == 200, response.text
    assert response.headers["x-voice-id"] == "demo"
    decode(response)


def test_api_v2_requests_to_tts_are_left_to_api_v2(client):
    assert dialects.gsvi_from_params({"text": "hi", "text_lang": "en", "voice": "demo"}) is None
    assert dialects.gsvi_from_params({"text": "hi", "text_lang": "en", "cha_name": "demo"}) is None
    response = client.get("/tts", params={"text": "hi", "text_lang": "zh", "voice": "demo", "format": "wav"})
    assert response.status_code == 400 and error_code(response) == "unknown_field"  # api_v2 rules apply


# ------------------------------------------------------------------ parsing (no synthesis)
def test_gsvi_language_labels_map_to_languages_the_frontend_speaks():
    assert set(dialects.LANGUAGE_LABELS.values()) <= set(SUPPORTED_LANGUAGES)
    assert dialects.gsvi_from_params({"text": "hi", "cha_name": "a", "text_language": "中英混合"}).text_language == "zh"
    assert dialects.gsvi_from_params({"text": "hi", "lang": "JA"}).text_language == "ja"


def test_gsvi_aliases_flags_and_url_encoded_values_parse_as_gsvi_does():
    req = dialects.gsvi_from_params({"txt": "hello%20world", "spk": "demo", "emotion": "默认", "spd": "1.2",
                                     "streaming": "yes", "cut": "按标点符号切", "format": "OGG"})
    assert (req.text, req.cha_name, req.emotion, req.speed) == ("hello world", "demo", None, 1.2)
    assert req.stream is True and req.cut_method == "cut5" and req.format == "ogg"
    assert (req.top_k, req.top_p, req.temperature) == (3, 0.8, 0.8)  # GSVI's defaults


def test_gsvi_slider_extremes_map_to_valid_sampling(store):
    view = dialects.Dialects(store, tts=None)
    body, _ = view.gsvi_request(dialects.gsvi_from_params({"text": "hi", "cha_name": "demo", "top_k": "0"}))
    assert body.top_k == 1024  # 0 = no top-k limit
    body, _ = view.gsvi_request(dialects.gsvi_from_params({"text": "hi", "cha_name": "demo", "top_p": "0"}))
    assert (body.top_k, body.top_p) == (1, 1.0)  # an empty nucleus keeps only the most likely token


def test_gsvi_bad_number_is_a_400_naming_the_parameter():
    with pytest.raises(ApiError) as info:
        dialects.gsvi_from_params({"text": "hi", "cha_name": "demo", "top_k": "many"})
    assert info.value.status == 400 and info.value.param == "top_k"


def test_client_voice_references_reduce_to_the_listed_key():
    assert dialects.voice_key_from_client("./参考音频/Dr. Who.wav") == "Dr. Who"
    assert dialects.voice_key_from_client("C:\\refs\\alice.wav.mp3") == "alice"
    assert dialects.voice_key_from_client("demo#happy") == "demo#happy"


def test_voices_whose_names_would_not_survive_a_path_are_listed_by_id():
    def record(name: str) -> VoiceRecord:
        return VoiceRecord(id="voice_1", name=name, transcript="t", language="en", model_id="default",
                           sample_rate=32000, duration_s=4.0, created_at=0.0)
    assert dialects.public_key(record("alice")) == "alice"
    for awkward in ("a/b", "x#y", "song.wav", " padded", ""):
        assert dialects.public_key(record(awkward)) == "voice_1"


# ------------------------------------------------------------------ over real HTTP (uvicorn)
@pytest.fixture(scope="module")
def server(app_factory):
    """The same app served by uvicorn on 127.0.0.1:<free port>, in a daemon thread."""

    with serve_in_thread(app_factory()) as url:
        yield url


def http(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()


def test_uvicorn_sillytavern_v2_flow(server):
    status, headers, raw = http(server + "/speakers", headers={"Origin": ORIGIN})
    voice = [v for v in json.loads(raw) if v["name"] == "demo (happy)"][0]
    status, headers, audio = http(server + "/", st_v2_body(voice["voice_id"]),
                                  {"Content-Type": "application/json", "Origin": ORIGIN})
    assert status == 200 and headers["content-type"].startswith("audio/ogg")
    assert headers["access-control-allow-origin"] == "*" and headers["x-emotion"] == "happy"
    samples, sr = sf.read(io.BytesIO(audio))
    assert sr == 32000 and samples.size > 0


def test_uvicorn_gsvi_audio_element_flow(server):
    status, _, raw = http(server + "/character_list")
    name = list(json.loads(raw))[0]
    query = urllib.parse.urlencode({"text": ZH_TEXT, "cha_name": name, "text_language": "多语种混合",
                                    "batch_size": "10", "speed": "1", "top_k": "6", "top_p": "0.85",
                                    "temperature": "0.75", "stream": "true"})
    status, headers, audio = http(server + "/tts?" + query)
    assert status == 200 and headers["content-type"] == "audio/wav"
    samples, sr = sf.read(io.BytesIO(audio))
    assert sr == 32000 and samples.size > 0


def test_uvicorn_openai_sdk_with_emotion_in_instructions(server):
    from openai import OpenAI

    client = OpenAI(base_url=server + "/v1", api_key="unused")
    result = client.audio.speech.with_raw_response.create(
        model="tts-1", voice="demo", input="Hello from the openai client.", response_format="wav",
        instructions="happy", extra_body={"language": "en", "seed": 7})
    assert result.headers["x-emotion"] == "happy"
    samples, sr = sf.read(io.BytesIO(result.content))
    assert sr == 32000 and samples.size > 0


@needs_silk
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_uvicorn_curl_silk_for_a_qq_bot(server, tmp_path):
    out = tmp_path / "hi.silk"
    proc = subprocess.run(["curl", "-sS", "-f", "-o", str(out), "-G", server + "/tts",
                           "--data-urlencode", "character=demo", "--data-urlencode", "emotion=happy",
                           "--data-urlencode", f"text={ZH_TEXT}", "--data-urlencode", "format=silk",
                           "-D", str(tmp_path / "headers")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes().startswith(silk.HEADER)
    assert "x-emotion: happy" in (tmp_path / "headers").read_text().lower()
