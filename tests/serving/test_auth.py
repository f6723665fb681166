"""API keys, tenants and per-key limits on the HTTP API (in-process server)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from starlette.testclient import TestClient

from deployments.voice_store import VoiceStore
from serve_app.auth import KeyStore
from serve_app.local import create_local_app
from tests.serving.conftest import register_demo_voice, wav_bytes


@pytest.fixture
def secured(settings, pipeline, demo_assets):
    """A server that requires keys, with tenants `alice` and `bob` and one admin key."""
    settings = replace(settings, require_auth=True, rate_limit_per_s=0.0)
    keys = KeyStore(settings.data_dir)
    alice, _ = keys.create("alice")
    bob, _ = keys.create("bob")
    admin, _ = keys.create("ops", admin=True)
    register_demo_voice(VoiceStore(settings.data_dir), demo_assets)
    with TestClient(create_local_app(pipeline, settings)) as client:
        yield client, {"alice": alice, "bob": bob, "admin": admin}, settings


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def upload(client, key: str, name: str):
    return client.post("/v1/voices", headers=auth(key), files={"file": ("v.wav", wav_bytes(4.0))},
                       data={"transcript": "Hello there.", "language": "en", "name": name})


def speak(client, key: str, voice: str):
    return client.post("/v1/audio/speech", headers=auth(key), json={
        "input": "Hello.", "voice": voice, "language": "en", "response_format": "pcm", "seed": 1})


def test_keys_are_stored_hashed(secured):
    _, keys, settings = secured
    stored = open(f"{settings.data_dir}/api_keys.json").read()
    assert all(key not in stored for key in keys.values())


def test_requests_without_a_valid_key_are_refused(secured):
    client, _, _ = secured
    assert client.get("/v1/voices").status_code == 401
    response = client.get("/v1/voices", headers=auth("gsv_wrong"))
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_health_and_the_playground_need_no_key(secured):
    client, _, _ = secured
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 200


def test_other_tenants_voice_is_a_404_like_a_missing_one(secured):
    client, keys, _ = secured
    voice_id = upload(client, keys["alice"], "alices").json()["id"]
    assert speak(client, keys["alice"], voice_id).status_code == 200
    theirs = client.get(f"/v1/voices/{voice_id}", headers=auth(keys["bob"]))
    missing = client.get("/v1/voices/voice_doesnotexist", headers=auth(keys["bob"]))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"] == "voice_not_found"
    assert speak(client, keys["bob"], voice_id).status_code == 404
    assert client.delete(f"/v1/voices/{voice_id}", headers=auth(keys["bob"])).status_code == 404
    assert voice_id not in [v["id"] for v in client.get("/v1/voices", headers=auth(keys["bob"])).json()["data"]]
    assert client.get(f"/v1/voices/{voice_id}", headers=auth(keys["alice"])).status_code == 200


def test_two_tenants_may_each_own_a_voice_with_the_same_name(secured):
    client, keys, _ = secured
    hers = upload(client, keys["alice"], "narrator")
    his = upload(client, keys["bob"], "narrator")  # alice's name is no conflict for bob: no 409
    assert hers.status_code == his.status_code == 201
    assert hers.json()["id"] != his.json()["id"]


def test_a_name_resolves_to_the_callers_own_voice(secured):
    client, keys, _ = secured
    ids = {who: upload(client, keys[who], "narrator").json()["id"] for who in ("alice", "bob")}
    for who, voice_id in ids.items():
        assert client.get("/v1/voices/narrator", headers=auth(keys[who])).json()["id"] == voice_id
        spoken = speak(client, keys[who], "narrator")
        assert spoken.status_code == 200 and spoken.headers["x-voice-id"] == voice_id


def test_dialect_routes_resolve_a_name_to_the_callers_own_voice(secured):
    client, keys, _ = secured
    ids = {who: upload(client, keys[who], "narrator").json()["id"] for who in ("alice", "bob")}
    for who, voice_id in ids.items():  # GSVI: /tts?cha_name=
        spoken = client.get("/tts", headers=auth(keys[who]), params={
            "cha_name": "narrator", "text": "Hello.", "text_language": "en", "seed": "1"})
        assert spoken.status_code == 200 and spoken.headers["x-voice-id"] == voice_id


def test_a_name_held_only_by_another_tenant_is_a_404(secured):
    client, keys, _ = secured
    upload(client, keys["alice"], "alice-only")
    theirs = client.get("/v1/voices/alice-only", headers=auth(keys["bob"]))
    missing = client.get("/v1/voices/nobody-has-this", headers=auth(keys["bob"]))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"] == "voice_not_found"


def test_a_tenant_cannot_take_a_public_voices_name(secured):
    client, keys, _ = secured
    taken = upload(client, keys["bob"], "demo")  # the demo voice is public: every tenant sees it
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "voice_exists"


def test_a_tenant_cannot_take_its_own_voices_name_twice(secured):
    client, keys, _ = secured
    assert upload(client, keys["bob"], "twice").status_code == 201
    again = upload(client, keys["bob"], "twice")
    assert again.status_code == 409 and again.json()["error"]["code"] == "voice_exists"


def test_own_voice_wins_over_a_public_voice_of_the_same_name(secured):
    client, keys, settings = secured
    hers = upload(client, keys["alice"], "narrator").json()["id"]
    # a public voice with that name (as an older server, with global names checked later, could leave)
    public = VoiceStore(settings.data_dir).create(name="narrator", transcript="Hello there.", language="en",
                                                  model_id="default", samples=np.full(64000, 0.1, np.float32),
                                                  sample_rate=16000).id
    assert client.get("/v1/voices/narrator", headers=auth(keys["alice"])).json()["id"] == hers
    assert client.get("/v1/voices/narrator", headers=auth(keys["bob"])).json()["id"] == public


def test_another_tenants_voice_id_used_as_a_name_finds_the_callers_voice(secured):
    """An id bob cannot see must not shadow bob's own voice of that name (that would reveal it)."""
    client, keys, _ = secured
    alices = upload(client, keys["alice"], "hers").json()["id"]
    bobs = upload(client, keys["bob"], alices).json()["id"]
    assert client.get(f"/v1/voices/{alices}", headers=auth(keys["bob"])).json()["id"] == bobs
    assert client.get(f"/v1/voices/{alices}", headers=auth(keys["alice"])).json()["id"] == alices


def test_admin_reaches_other_tenants_voices_by_id_but_not_by_name(secured):
    """Names are per tenant (two tenants may both own "narrator"), so a name resolves only among
    the admin key's own tenant's voices and the public ones; ids reach every voice."""
    client, keys, _ = secured
    voice_id = upload(client, keys["alice"], "narrator").json()["id"]
    assert client.get(f"/v1/voices/{voice_id}", headers=auth(keys["admin"])).status_code == 200
    assert client.get("/v1/voices/narrator", headers=auth(keys["admin"])).status_code == 404
    assert upload(client, keys["admin"], "narrator").status_code == 201  # the admin's tenant: no conflict


def test_admin_sees_every_tenant(secured):
    client, keys, _ = secured
    voice_id = upload(client, keys["alice"], "seen").json()["id"]
    assert client.get(f"/v1/voices/{voice_id}", headers=auth(keys["admin"])).status_code == 200


def test_model_swap_needs_the_admin_scope(secured):
    client, keys, _ = secured
    body = {"gpt": "a.ckpt", "sovits": "b.pth"}
    assert client.put("/v1/models/default", json=body, headers=auth(keys["alice"])).status_code == 403


def test_voices_per_tenant_limit(secured, pipeline):
    client, keys, settings = secured
    limited = replace(settings, limits=replace(settings.limits, max_voices_per_tenant=1))
    with TestClient(create_local_app(pipeline, limited)) as c:
        assert upload(c, keys["bob"], "one").status_code == 201
        second = upload(c, keys["bob"], "two")
        assert second.status_code == 409 and second.json()["error"]["code"] == "too_many_voices"
        assert upload(c, keys["alice"], "hers").status_code == 201  # another tenant's quota


def test_rate_limit_answers_429_with_retry_after(settings, pipeline, demo_assets):
    limited = replace(settings, require_auth=True, rate_limit_per_s=0.5, rate_burst=2)
    key, _ = KeyStore(limited.data_dir).create("carol")
    with TestClient(create_local_app(pipeline, limited)) as client:
        statuses = [client.get("/v1/voices", headers=auth(key)) for _ in range(4)]
    assert [r.status_code for r in statuses][:2] == [200, 200]
    refused = statuses[-1]
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limited"


def test_concurrent_streams_per_key_are_capped(settings, pipeline, demo_assets):
    capped = replace(settings, require_auth=True, max_streams_per_key=1)
    key, _ = KeyStore(capped.data_dir).create("dave")
    register_demo_voice(VoiceStore(capped.data_dir), demo_assets)
    body = {"input": "Streaming now. And more.", "voice": "demo", "language": "en", "response_format": "pcm",
            "stream": True}
    with TestClient(create_local_app(pipeline, capped)) as client:
        with client.stream("POST", "/v1/audio/speech", json=body, headers=auth(key)) as first:
            assert first.status_code == 200
            second = client.post("/v1/audio/speech", json=body, headers=auth(key))
            assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_streams"
            b"".join(first.iter_bytes())
        again = client.post("/v1/audio/speech", json=body, headers=auth(key))
        assert again.status_code == 200


def test_loopback_without_keys_needs_no_auth(client):
    assert client.get("/v1/voices").status_code == 200


def test_tenants_cannot_change_shared_voices(secured):
    client, keys, _ = secured
    response = client.delete("/v1/voices/demo", headers=auth(keys["bob"]))
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    assert client.get("/v1/voices/demo", headers=auth(keys["bob"])).status_code == 200


def test_dialect_voice_lists_respect_tenants(secured):
    client, keys, _ = secured
    upload(client, keys["alice"], "alice-secret")
    speakers = client.get("/speakers", headers=auth(keys["bob"])).json()
    assert "alice-secret" not in str(speakers)
    assert "alice-secret" in str(client.get("/speakers", headers=auth(keys["alice"])).json())


def test_chunked_body_over_the_limit_is_refused(settings, pipeline):
    small = replace(settings, limits=replace(settings.limits, max_request_bytes=1000))
    with TestClient(create_local_app(pipeline, small)) as client:
        response = client.post("/v1/audio/speech", content=iter([b"x" * 4096] * 64),
                               headers={"content-type": "application/json"})
    assert response.status_code == 413
