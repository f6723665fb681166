"""Streamed responses over HTTP: every format through a real decoder, concurrency, cancellation."""
from __future__ import annotations

import concurrent.futures
import time
import io
import json
import base64

import av
import numpy as np
import pytest
import soundfile as sf

BODY = {"model": "tts-1", "voice": "demo", "input": "Good morning. How are you today?", "language": "en",
        "seed": 21, "stream": True}


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768, 32000
    if fmt in ("wav", "ogg"):
        samples, sr = sf.read(io.BytesIO(data), dtype="float32")
        return samples, sr
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
        sr = container.streams.audio[0].rate
    return np.concatenate(frames).astype(np.float32), sr


def stream(client, **overrides) -> tuple[bytes, dict]:
    with client.stream("POST", "/v1/audio/speech", json=BODY | overrides) as response:
        assert response.status_code == 200, response.read()
        return b"".join(response.iter_bytes()), dict(response.headers)


@pytest.fixture(scope="module")
def reference_pcm(client_module):
    data, _ = stream(client_module, response_format="pcm")
    return decode(data, "pcm")[0]


@pytest.fixture(scope="module")
def client_module(tmp_path_factory, pipeline, demo_assets):
    from starlette.testclient import TestClient

    from deployments.voice_store import VoiceStore
    from serve_app.local import create_local_app
    from serve_app.settings import Settings
    from tests.serving.conftest import register_demo_voice

    settings = Settings(data_dir=str(tmp_path_factory.mktemp("stream-data")))
    store = VoiceStore(settings.data_dir)
    register_demo_voice(store, demo_assets)
    with TestClient(create_local_app(pipeline, settings)) as c:
        yield c


@pytest.mark.parametrize("fmt,rate,tolerance_s", [
    ("pcm", 32000, 0.0), ("wav", 32000, 0.0), ("flac", 32000, 0.0), ("ogg", 32000, 0.05),
    ("mp3", 32000, 0.12), ("opus", 48000, 0.1), ("aac", 32000, 0.12),
])
def test_every_streamed_format_decodes_with_the_right_rate_and_duration(client_module, reference_pcm, fmt, rate,
                                                                        tolerance_s):
    data, headers = stream(client_module, response_format=fmt)
    samples, sr = decode(data, fmt)
    assert sr == rate
    expected = reference_pcm.size / 32000
    assert abs(samples.size / sr - expected) <= tolerance_s + 1e-9, (samples.size / sr, expected)
    assert headers["x-model-version"]


def test_streamed_pcm_equals_the_pipelines_streaming_reference(client_module, reference_pcm, pipeline, demo_assets):
    from models.pipeline import SynthesisSettings, load_reference_wav, to_int16
    from models.streaming import StreamingConfig
    from models.t2s import SamplingParams
    from serve_app.settings import Settings

    prompt = pipeline.voice_prompt(load_reference_wav(demo_assets["reference_wav"]),
                                   demo_assets["reference_text"], demo_assets["reference_language"])
    pieces = pipeline.synthesize_streaming(prompt, BODY["input"], "en",
                                           SynthesisSettings(sampling=SamplingParams(), seed=21),
                                           StreamingConfig(*Settings().stream_chunk_tokens))
    want = to_int16(np.concatenate(list(pieces)))
    assert np.array_equal(to_int16(reference_pcm), want)


def test_sse_stream_carries_base64_audio_then_done(client_module, reference_pcm):
    data, headers = stream(client_module, response_format="pcm", stream_format="sse")
    assert headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in data.decode().splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert np.array_equal(np.frombuffer(audio, "<i2"), (reference_pcm * 32768).astype(np.int16))


def test_tts_streaming_mode_1_streams_sentence_pieces(client_module):
    with client_module.stream("GET", "/tts", params={"text": "First one. Second one.", "text_lang": "en",
                                                     "voice": "demo", "streaming_mode": 1}) as response:
        assert response.status_code == 200
        samples, sr = sf.read(io.BytesIO(b"".join(response.iter_bytes())))
    assert sr == 32000 and samples.size > 0


def test_eight_concurrent_streams_each_get_their_own_audio(client_module):
    seeds = list(range(100, 108))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda s: stream(client_module, response_format="pcm", seed=s)[0], seeds))
    for seed, data in zip(seeds[:3], results[:3]):
        alone, _ = stream(client_module, response_format="pcm", seed=seed)
        assert data == alone, f"seed {seed}: concurrent stream differs from the same request alone"
    assert len({r for r in results}) == len(results)


def test_client_that_leaves_mid_stream_stops_the_decode(client_module, monkeypatch):
    """Closing the response closes the T2S generator: the decode loop stops within one chunk."""
    import models.t2s as t2s

    steps = {"n": 0, "closed": False}
    real = t2s.generate_stream

    def counting(*args, **kwargs):
        gen = real(*args, **kwargs)
        try:
            for chunk in gen:
                steps["n"] += 1
                yield chunk
        finally:
            steps["closed"] = True
            gen.close()

    monkeypatch.setattr("serve_app.local.generate_stream", counting)
    long_text = "This sentence is long enough to take many chunks of tokens to decode completely. " * 3
    with client_module.stream("POST", "/v1/audio/speech", json=BODY | {"input": long_text, "response_format": "pcm"}) as r:
        iterator = r.iter_bytes()
        next(iterator)
    deadline = time.monotonic() + 10
    while not steps["closed"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert steps["closed"], "the T2S generator was not closed when the client left"
    # within one chunk: far fewer chunks than the whole text needs (~3 sentences x several chunks)
    assert steps["n"] <= 3, steps
