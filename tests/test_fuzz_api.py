"""Schema-driven fuzzing of the HTTP API with schemathesis.

Every operation of the served `/openapi.json` gets generated requests, positive (fits the schema)
and negative (does not), against the in-process app over the demo Pipeline (ASGI, no network,
no Ray). Each response must:
* never be a 5xx (`not_a_server_error`),
* use a status code and content type the schema documents for that operation,
* match the documented body schema (`response_schema_conformance`),
* and a negative request must be refused with a 4xx (`negative_data_rejection`).

Random data alone almost never names a stored voice, a supported language, a decodable clip or the
admin key, so the positive cases are *steered* part of the time (drawn by Hypothesis, so
shrinking still works): `voice` becomes the demo voice, languages become supported codes, the
upload becomes a real 4 s WAV, the admin header carries the key and checkpoint paths come from a
list of traversal attempts and real files. That reaches synthesis, voice creation and the model
swap's path confinement instead of stopping at 404.

No operation is excluded. `GET /tts` reads its query by hand (`Request.query_params`), so its
OpenAPI entry declares no parameters and schemathesis can only send it bare; its parameters are
fuzzed by `test_get_tts_accepts_what_post_tts_accepts`, which sends every positive POST /tts body
as a GET query.

Default run: `GSV_FUZZ_EXAMPLES` cases per operation and mode (default 10 -> ~260 cases, about a
minute with the demo model build). Longer, on demand:
    GSV_FUZZ_EXAMPLES=200 .venv/bin/python -m pytest tests/test_fuzz_api.py -q
"""
from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings, strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from models.text.frontend import SUPPORTED_LANGUAGES  # noqa: E402

EXAMPLES = int(os.environ.get("GSV_FUZZ_EXAMPLES", "10"))
# Wall-clock guard for the whole module (each case also has a per-request timeout below): past it
# the remaining cases are skipped rather than letting a slow machine run away.
BUDGET_S = float(os.environ.get("GSV_FUZZ_BUDGET_S", str(max(60.0, EXAMPLES * 6.0))))
ADMIN_KEY = "fuzz-admin-key"
MAX_TEXT_CHARS = 40  # small, so steered synthesis stays cheap and the length limit gets hit too



def _served_operations() -> list[tuple[str, str]]:
    """Every operation in the app's OpenAPI document, read at collection time from an app built
    without models (route declarations need none), so an operation added later is fuzzed too."""
    import tempfile

    from deployments.model_registry import ModelRegistry
    from deployments.voice_store import VoiceStore
    from serve_app.api import create_app
    from serve_app.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(None, VoiceStore(tmp), Settings(data_dir=tmp), ModelRegistry(tmp))
        spec = app.openapi()
    return sorted((method.upper(), path) for path, item in spec["paths"].items() for method in item)


OPERATIONS = _served_operations()
POSITIVE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
                   response_schema_conformance]
NEGATIVE_CHECKS = POSITIVE_CHECKS + [negative_data_rejection]


# ------------------------------------------------------------------------------------- app
def _tone_wav(seconds: float = 4.0, sr: int = 16000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format="WAV")
    return buf.getvalue()


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory) -> dict[str, Any]:
    """The in-process app over the demo Pipeline, built as `create_local_app` does, plus a
    `ModelAdmin` so that PUT /v1/models/{id} runs its real checks (auth, id, path confinement,
    checkpoint validation) before the in-process stages refuse the warm-up (501)."""
    import torch

    from deployments.model_registry import ModelRegistry
    from deployments.voice_store import VoiceStore
    from models import audio
    from models.demo import build_demo_assets
    from models.pipeline import ModelPaths, Pipeline, load_reference_wav
    from serve_app.api import create_app
    from serve_app.local import LocalStages
    from serve_app.model_admin import ModelAdmin
    from serve_app.settings import Limits, Settings

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fuzz")
    assets = build_demo_assets(root / "demo-model")
    paths = ModelPaths(gpt=str(assets["gpt"]), sovits=str(assets["sovits"]),
                       hubert_dir=str(assets["hubert_dir"]), bert_dir=str(assets["bert_dir"]))
    pipeline = Pipeline(paths)
    models_dir = root / "models"
    models_dir.mkdir()
    (models_dir / "gpt.ckpt").write_bytes(Path(paths.gpt).read_bytes())
    (models_dir / "sovits.pth").write_bytes(Path(paths.sovits).read_bytes())
    (models_dir / "junk.ckpt").write_bytes(b"not a checkpoint")
    (models_dir / "escape.ckpt").symlink_to(Path(paths.gpt))  # resolves outside models_dir
    settings_ = Settings(data_dir=str(root / "data"), models_dir=str(models_dir), admin_api_key=ADMIN_KEY,
                         limits=Limits(max_text_chars=MAX_TEXT_CHARS, max_voices=50))

    store = VoiceStore(settings_.data_dir)
    store.create(name="demo", voice_id="demo", transcript=assets["reference_text"],
                 language=assets["reference_language"], model_id="default",
                 samples=load_reference_wav(assets["reference_wav"]), sample_rate=audio.SAMPLE_RATE)
    store.cleanup_partial()
    registry = ModelRegistry(settings_.data_dir)
    registry.register(settings_.model.model_id, pipeline.paths, version=pipeline.model_version, demo=True,
                      tag="demo")
    stages = LocalStages(pipeline, store)
    app = create_app(stages, store, settings_, registry, ModelAdmin(registry, stages, settings_))

    # Warm the lazily loaded G2P back ends once (first en/zh/ja use costs seconds), so cases
    # measure the API, not the imports.
    from starlette.testclient import TestClient

    with TestClient(app) as client:
        for text, lang in (("Hello there.", "en"), ("你好。", "zh"), ("こんにちは。", "ja"), ("안녕.", "ko")):
            r = client.post("/v1/audio/speech", json={"input": text, "voice": "demo", "language": lang,
                                                       "response_format": "pcm", "seed": 1})
            assert r.status_code == 200, r.text
    return {"app": app, "store": store, "started": time.monotonic(), "count": {"cases": 0, "skipped": 0},
            "statuses": {}}


@pytest.fixture(scope="module")
def api_schema(fuzz_env):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_env["app"])


# --------------------------------------------------------------------------------- steering
TRAVERSALS = ["gpt.ckpt", "sovits.pth", "junk.ckpt", "escape.ckpt", "../models/gpt.ckpt", "../data/models.json",
              "/etc/passwd", "/proc/self/environ", "..", ".", "", "gpt.ckpt\x00.txt", "C:\\Windows\\win.ini",
              "~/.ssh/id_rsa", "file:///etc/passwd", "sub/../../../etc/hosts"]


EMOTIONS = ["happy", "sad", "default", "Happy", " happy ", "x" * 33, "../x", ""]


def steer(case, data: st.DataObject, store) -> None:
    """Part of the time, swap in values that get past the first checks (see the module doc)."""
    body = case.body if isinstance(case.body, dict) else None
    path = case.operation.path
    if body is not None:
        if "voice" in body and data.draw(st.booleans(), "steer voice"):
            body["voice"] = "demo"
        for key in ("language", "text_lang", "prompt_lang"):
            if key in body and data.draw(st.booleans(), f"steer {key}"):
                body[key] = data.draw(st.sampled_from(SUPPORTED_LANGUAGES), key)
        if "emotion" in body and data.draw(st.booleans(), "steer emotion"):
            body["emotion"] = data.draw(st.sampled_from(EMOTIONS), "emotion")
        if "file" in body and data.draw(st.booleans(), "steer upload"):
            body["file"] = _tone_wav(data.draw(st.sampled_from([1.0, 4.0, 12.0]), "seconds"))
        if "name" in body and data.draw(st.booleans(), "steer name"):
            body["name"] = data.draw(st.sampled_from(["", "demo", "fuzz"]), "name")
        if path.startswith("/v1/models/") and case.method == "PUT":
            for key in ("gpt", "sovits"):
                if data.draw(st.booleans(), f"steer {key}"):
                    body[key] = data.draw(st.sampled_from(TRAVERSALS), key)
    if case.method == "PUT" and data.draw(st.booleans(), "admin key"):
        case.headers = (case.headers or {}) | {"Authorization": f"Bearer {ADMIN_KEY}"}
    if case.path_parameters and "voice_id" in case.path_parameters and data.draw(st.booleans(), "steer id"):
        # GET may look at the demo voice; DELETE only at voices the fuzzing created
        ids = [r.id for r in store.list() if r.id != "demo" or case.method == "GET"]
        if ids:
            case.path_parameters["voice_id"] = data.draw(st.sampled_from(ids), "voice id")
    if case.path_parameters and "model_id" in case.path_parameters and data.draw(st.booleans(), "steer model"):
        case.path_parameters["model_id"] = "default"


# ------------------------------------------------------------------------------------ tests
def test_every_served_operation_is_fuzzed(api_schema):
    served = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert served == set(OPERATIONS)
    assert len(OPERATIONS) >= 12


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_conforms(api_schema, fuzz_env, method, path, mode):
    operation = api_schema[path][method]
    checks = POSITIVE_CHECKS if mode == GenerationMode.POSITIVE else NEGATIVE_CHECKS

    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    def run(case, data):
        if time.monotonic() - fuzz_env["started"] > BUDGET_S:
            fuzz_env["count"]["skipped"] += 1
            return
        if mode == GenerationMode.POSITIVE:
            steer(case, data, fuzz_env["store"])
        response = case.call(timeout=60)
        fuzz_env["count"]["cases"] += 1
        key = f"{method} {path} {response.status_code}"
        fuzz_env["statuses"][key] = fuzz_env["statuses"].get(key, 0) + 1
        case.validate_response(response, checks=checks)

    try:
        run()
    except Unsatisfiable:
        # e.g. an operation whose only input is a free-form string path parameter: every request
        # fits its schema, so there is no invalid one to send. Said, not hidden.
        assert mode == GenerationMode.NEGATIVE, "positive cases must always be generable"
        pytest.skip(f"{method} {path}: the schema admits no invalid request to generate")
