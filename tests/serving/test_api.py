"""The HTTP API over the in-process stages: routes, voices, and every 4xx path (no Ray)."""
from __future__ import annotations

import io

import pytest
import soundfile as sf

from tests.serving.conftest import wav_bytes


def speak(client, **overrides):
    body = {"model": "tts-1", "input": "Hello there, nice to meet you.", "voice": "demo",
            "response_format": "wav", "language": "en", "seed": 7} | overrides
    return client.post("/v1/audio/speech", json=body)


def error_code(response) -> str:
    return response.json()["error"]["code"]


def test_health_and_ready(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_openapi_document_lists_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/v1/audio/speech", "/v1/voices", "/v1/voices/{voice_id}", "/tts", "/v1/models", "/healthz"):
        assert route in paths


def test_models_lists_the_default_model_with_its_version(client):
    data = client.get("/v1/models").json()["data"]
    assert data[0]["id"] == "default" and len(data[0]["version"]) == 12


def test_speech_returns_32khz_wav_with_model_version(client):
    response = speak(client)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers["x-model-version"] == client.get("/v1/models").json()["data"][0]["version"]
    samples, sr = sf.read(io.BytesIO(response.content))
    assert sr == 32000 and len(samples) > 32000 * 0.3


def test_same_seed_same_audio(client):
    first, second = speak(client, seed=11).content, speak(client, seed=11).content
    assert first == second


def test_speech_pcm_is_raw_int16(client):
    response = speak(client, response_format="pcm")
    assert response.status_code == 200
    assert len(response.content) % 2 == 0 and not response.content.startswith(b"RIFF")


def test_speech_streamed_wav_is_readable(client):
    response = speak(client, stream=True)
    assert response.status_code == 200
    samples, sr = sf.read(io.BytesIO(response.content))
    assert sr == 32000 and len(samples) > 0


def test_tts_get_with_upstream_parameter_names(client):
    response = client.get("/tts", params={"text": "Good morning.", "text_lang": "EN", "voice": "demo",
                                          "prompt_lang": "en", "media_type": "wav", "seed": 3, "top_k": 5})
    assert response.status_code == 200, response.text
    assert sf.read(io.BytesIO(response.content))[1] == 32000


def test_tts_post_takes_ref_audio_path_base_name_as_voice(client):
    response = client.post("/tts", json={"text": "Good morning.", "text_lang": "en",
                                         "ref_audio_path": "/etc/secrets/demo.wav", "prompt_lang": "en"})
    assert response.status_code == 200, response.text


def test_tts_error_has_upstream_message_field(client):
    response = client.post("/tts", json={"text": "", "text_lang": "en", "voice": "demo"})
    assert response.status_code == 400 and response.json()["message"]


# ------------------------------------------------------------------------------------ voices
def test_voice_lifecycle(client):
    created = client.post("/v1/voices", files={"file": ("me.wav", wav_bytes(4.0), "audio/wav")},
                          data={"transcript": "Hello world, this is me.", "language": "en", "name": "alice"})
    assert created.status_code == 201, created.text
    voice_id = created.json()["id"]
    assert voice_id in [v["id"] for v in client.get("/v1/voices").json()["data"]]
    assert client.get(f"/v1/voices/{voice_id}").json()["name"] == "alice"
    assert speak(client, voice="alice").status_code == 200
    assert client.delete(f"/v1/voices/{voice_id}").json()["deleted"] is True
    assert client.get(f"/v1/voices/{voice_id}").status_code == 404
    assert error_code(speak(client, voice=voice_id)) == "voice_not_found"


def test_voice_name_must_be_unique(client):
    form = {"transcript": "Hello.", "language": "en", "name": "bob"}
    assert client.post("/v1/voices", files={"file": ("a.wav", wav_bytes(4.0))}, data=form).status_code == 201
    second = client.post("/v1/voices", files={"file": ("a.wav", wav_bytes(4.0))}, data=form)
    assert second.status_code == 409 and error_code(second) == "voice_exists"


@pytest.mark.parametrize("payload,code", [
    (b"this is not audio at all", "audio_invalid"),
    (b"", "audio_invalid"),
    (wav_bytes(1.0), "audio_too_short"),
    (wav_bytes(12.0), "audio_too_long"),
    (wav_bytes(4.0, amplitude=0.0), "audio_silent"),
])
def test_bad_reference_audio_is_refused(client, payload, code):
    response = client.post("/v1/voices", files={"file": ("x.wav", payload)},
                           data={"transcript": "Hello.", "language": "en"})
    assert response.status_code == 400 and error_code(response) == code


def test_truncated_wav_is_refused(client):
    response = client.post("/v1/voices", files={"file": ("x.wav", wav_bytes(4.0)[:300])},
                           data={"transcript": "Hello.", "language": "en"})
    assert response.status_code == 400 and error_code(response).startswith("audio_")


def test_upload_with_unknown_language_is_refused(client):
    response = client.post("/v1/voices", files={"file": ("x.wav", wav_bytes(4.0))},
                           data={"transcript": "Hello.", "language": "xx"})
    assert response.status_code == 400 and error_code(response) == "unsupported_language"


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("overrides,status,code", [
    ({"input": ""}, 400, "empty_text"),
    ({"input": "   \n "}, 400, "empty_text"),
    ({"input": "a" * 301}, 400, "text_too_long"),
    ({"language": "klingon"}, 400, "unsupported_language"),
    ({"voice": "nobody"}, 404, "voice_not_found"),
    ({"model": "no-such-model"}, 404, "unknown_model"),
    ({"response_format": "midi"}, 400, "invalid_value"),
    ({"speed": "fast"}, 400, "invalid_value"),
    ({"speed": 100}, 400, "invalid_value"),
    ({"top_k": 0}, 400, "invalid_value"),
    ({"surprise": 1}, 400, "unknown_field"),
])
def test_bad_speech_requests_get_a_4xx_json_error(client, overrides, status, code):
    response = speak(client, **overrides)
    assert response.status_code == status, response.text
    assert error_code(response) == code and response.json()["error"]["message"]


def test_missing_required_field(client):
    response = client.post("/v1/audio/speech", json={"voice": "demo"})
    assert response.status_code == 400 and error_code(response) == "missing_field"


def test_body_that_is_not_json(client):
    response = client.post("/v1/audio/speech", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and error_code(response) == "invalid_json"


def test_unknown_route_is_a_json_404(client):
    response = client.get("/no/such/route")
    assert response.status_code == 404 and error_code(response) == "not_found"


def test_oversized_body_is_refused_before_reading(client):
    response = client.post("/v1/audio/speech", content=b"x" * 10, headers={"content-length": str(10**9)})
    assert response.status_code == 413 and error_code(response) == "request_too_large"


def test_punctuation_only_text(client):
    response = speak(client, input="...!!!")
    assert response.status_code == 400 and error_code(response) == "empty_text"


# ------------------------------------------------------------------------------------ emotions
def add_emotion(client, emotion: str, voice: str = "demo"):
    return client.post(f"/v1/voices/{voice}/emotions", files={"file": ("h.wav", wav_bytes(4.0, freq=330.0))},
                       data={"emotion": emotion, "transcript": "I am so happy today.", "language": "en"})


def test_voice_lists_its_emotions(client):
    assert add_emotion(client, "happy").status_code == 201
    assert client.get("/v1/voices/demo").json()["emotions"] == ["default", "happy"]


def test_emotion_picks_its_own_reference_clip(client):
    add_emotion(client, "happy")
    default = speak(client, seed=4)
    happy = speak(client, seed=4, emotion="happy")
    assert happy.headers["x-emotion"] == "happy" and "x-emotion-fallback" not in happy.headers
    assert happy.content != default.content


def test_openai_instructions_that_name_an_emotion_select_it(client):
    add_emotion(client, "sad")
    assert speak(client, instructions="sad").headers["x-emotion"] == "sad"
    assert speak(client, instructions="Speak slowly and clearly.").headers["x-emotion"] == "default"


def test_unknown_emotion_falls_back_to_default_and_says_so(client):
    response = speak(client, seed=4, emotion="furious")
    assert response.status_code == 200
    assert response.headers["x-emotion"] == "default" and response.headers["x-emotion-fallback"] == "furious"
    assert response.content == speak(client, seed=4).content


def test_invalid_emotion_name_is_refused(client):
    response = add_emotion(client, "../etc")
    assert response.status_code == 400 and error_code(response) == "invalid_emotion"


def test_every_response_carries_a_request_id(client):
    assert len(client.get("/healthz").headers["x-request-id"]) >= 16
    assert client.get("/healthz", headers={"X-Request-Id": "abc-123"}).headers["x-request-id"] == "abc-123"


def test_request_over_its_deadline_is_answered_504(settings, pipeline, demo_assets):
    from dataclasses import replace

    from starlette.testclient import TestClient

    from deployments.voice_store import VoiceStore
    from serve_app.local import create_local_app
    from tests.serving.conftest import register_demo_voice

    hurried = replace(settings, request_timeout_s=0.001)
    register_demo_voice(VoiceStore(hurried.data_dir), demo_assets)
    with TestClient(create_local_app(pipeline, hurried)) as client:
        response = speak(client)
    assert response.status_code == 504 and error_code(response) == "deadline_exceeded"
