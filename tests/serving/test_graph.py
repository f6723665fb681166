"""The real Ray Serve graph on 127.0.0.1, driven over HTTP (one session-scoped Ray for all tests)."""
from __future__ import annotations

import copy
import io
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

from tests.serving.conftest import wav_bytes

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]


def speak(url: str, **overrides) -> requests.Response:
    body = {"model": "tts-1", "input": "Good morning, how are you today?", "voice": "demo",
            "response_format": "pcm", "language": "en", "seed": 5} | overrides
    return requests.post(f"{url}/v1/audio/speech", json=body, timeout=120)


def test_ready_and_healthy(served):
    assert requests.get(served["url"] + "/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(served["url"] + "/readyz", timeout=10).status_code == 200


def test_graph_returns_the_pipeline_samples(served):
    """Same request and seed: the Serve graph gives exactly the in-process Pipeline's samples."""
    from models.pipeline import ModelPaths, Pipeline, SynthesisSettings, to_int16
    from models.t2s import SamplingParams
    from serve_app.model_files import resolve_model_paths
    from serve_app.settings import Settings

    response = speak(served["url"])
    assert response.status_code == 200, response.text
    got = np.frombuffer(response.content, dtype="<i2")

    settings = Settings.from_args(copy.deepcopy(served["config"]["applications"][0]["args"]))
    paths: ModelPaths = resolve_model_paths(settings)
    assert response.headers["x-model-version"] == paths.version()
    from deployments.voice_store import VoiceStore

    store = VoiceStore(settings.data_dir)
    voice = store.get("demo")
    samples, sr = store.reference_audio("demo")
    from models import audio

    import torch

    torch.set_num_threads(1)  # the replicas run with OMP_NUM_THREADS=1: same kernels, same bits
    pipeline = Pipeline(paths)
    prompt = pipeline.voice_prompt(audio.resample(samples, sr, audio.SAMPLE_RATE), voice.transcript, voice.language)
    want = to_int16(pipeline.synthesize(prompt, "Good morning, how are you today?", "en",
                                        SynthesisSettings(sampling=SamplingParams(), seed=5)))
    assert got.shape == want.shape
    diff = np.abs(got.astype(np.int32) - want)
    assert np.array_equal(got, want), f"{int((diff > 0).sum())} samples differ, max {int(diff.max())} LSB"



def test_openai_client_works_unchanged(served):
    from openai import OpenAI

    client = OpenAI(base_url=served["url"] + "/v1", api_key="unused")
    result = client.audio.speech.create(model="tts-1", voice="demo", input="Hello from the openai client.",
                                        response_format="wav", extra_body={"language": "en"})
    samples, sr = sf.read(io.BytesIO(result.content))
    assert sr == 32000 and len(samples) > 0


def test_streamed_wav_over_http(served):
    with requests.post(served["url"] + "/v1/audio/speech", stream=True, timeout=120, json={
            "input": "First sentence. Second sentence.", "voice": "demo", "response_format": "wav",
            "language": "en", "stream": True}) as response:
        assert response.status_code == 200
        body = b"".join(response.iter_content(4096))
    samples, sr = sf.read(io.BytesIO(body))
    assert sr == 32000 and len(samples) > 32000 * 0.6


def test_voice_upload_speak_delete(served):
    url = served["url"]
    created = requests.post(url + "/v1/voices", files={"file": ("r.wav", wav_bytes(4.0))},
                            data={"transcript": "Hello world, this is a test.", "language": "en"}, timeout=60)
    assert created.status_code == 201, created.text
    voice_id = created.json()["id"]
    assert speak(url, voice=voice_id).status_code == 200
    assert requests.delete(f"{url}/v1/voices/{voice_id}", timeout=30).status_code == 200
    response = speak(url, voice=voice_id)
    assert response.status_code == 404 and response.json()["error"]["code"] == "voice_not_found"


def test_bad_input_through_the_graph_is_a_clean_4xx(served):
    response = speak(served["url"], language="xx")
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_language"


def gpt_stats() -> dict:
    from ray import serve

    return serve.get_deployment_handle("GPT", app_name="gsv").stats.remote().result()


def test_disconnect_mid_stream_stops_the_gpt_decode(served):
    long_text = "This sentence is long enough to need many chunks of semantic tokens to decode. " * 4
    with requests.post(served["url"] + "/v1/audio/speech", stream=True, timeout=120, json={
            "input": long_text, "voice": "demo", "response_format": "pcm", "language": "en", "stream": True,
            "seed": 9}) as response:
        assert response.status_code == 200
        next(response.iter_content(1024))  # first audio arrived: the GPT is decoding
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and gpt_stats()["active"] > 0:
        time.sleep(0.1)
    assert gpt_stats() == {"active": 0, "waiting": 0}


def test_eight_concurrent_streams_over_http(served):
    import concurrent.futures

    def one(seed: int) -> bytes:
        with requests.post(served["url"] + "/v1/audio/speech", stream=True, timeout=300, json={
                "input": "Streaming together. Each on its own.", "voice": "demo", "response_format": "pcm",
                "language": "en", "stream": True, "seed": seed}) as response:
            assert response.status_code == 200
            return b"".join(response.iter_content(4096))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, range(8)))
    assert together[0] == one(0)  # continuous batching does not change a request's audio
    assert len(set(together)) == 8


def test_overload_answers_503_with_retry_after_at_once(served):
    """GPT slots full and its wait queue at `max_queued` (0 here): extra requests are refused fast."""
    import concurrent.futures

    from tests.serving.test_swap import deploy_and_wait

    def with_gpt_queue(max_queued: int) -> dict:
        config = copy.deepcopy(served["config"])
        for deployment in config["applications"][0]["deployments"]:
            if deployment["name"] == "GPT":
                deployment["user_config"] = {"max_queued": max_queued}
        return config

    deploy_and_wait(served, with_gpt_queue(0))
    try:
        long_text = "A long sentence that keeps the decoder busy for a good while, on purpose. " * 2
        with concurrent.futures.ThreadPoolExecutor(14) as pool:
            responses = list(pool.map(lambda s: speak(served["url"], input=long_text, seed=s), range(14)))
        refused = [r for r in responses if r.status_code == 503]
        assert refused, [r.status_code for r in responses]
        assert all(r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"] for r in refused)
        assert all(r.status_code in (200, 503) for r in responses)
    finally:
        deploy_and_wait(served, with_gpt_queue(256))


def test_health_checks_run_every_loaded_model(served):
    """Serve's periodic check_health runs a tiny decode on every loaded version of each model stage."""
    from ray import serve

    assert speak(served["url"]).status_code == 200
    for stage in ("SoVITS", "Vocoder"):
        report = serve.get_deployment_handle(stage, app_name="gsv").health.remote().result()
        assert report and set(report.values()) == {"ok"}, (stage, report)
