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

No operation is excluded: the list is read from the app's own OpenAPI document. Some routes read
their parameters by hand (`GET /tts`, the SillyTavern `POST /` and the GSVI routes), so their
OpenAPI entries declare none and schemathesis can only send them bare (which must still not
fail); their parameters are fuzzed by `test_get_tts_answers_as_post_tts_does` (every positive
POST /tts body also sent as a GET query) and `test_dialect_routes_never_answer_5xx`. The admin PUT's path confinement also gets a fixed list of traversal
attempts (`test_admin_checkpoint_paths_stay_inside_models_dir`), since random paths rarely hit one.

Default run: `GSV_FUZZ_EXAMPLES` cases per operation and mode (default 30; operations with a small
input space stop earlier: ~550 cases, well under a minute after the demo model build). Longer, on demand:
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

EXAMPLES = int(os.environ.get("GSV_FUZZ_EXAMPLES", "30"))
# Wall-clock guard for the whole module (each case also has a per-request timeout below): past it
# the remaining cases are skipped rather than letting a slow machine run away.
BUDGET_S = float(os.environ.get("GSV_FUZZ_BUDGET_S", str(max(60.0, EXAMPLES * 6.0))))
# ... and a hard stop per test (setup included) for a request that never returns; "thread"
# works even when the hang is inside C code.
pytestmark = pytest.mark.timeout(max(300, int(BUDGET_S)), method="thread")
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
    order = {"GET": 0, "POST": 1, "PUT": 2, "DELETE": 3}  # deletes last: they remove what POSTs created
    ops = [(method.upper(), path) for path, item in spec["paths"].items() for method in item]
    return sorted(ops, key=lambda op: (order.get(op[0], 9), op[1]))


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
    return {"app": app, "store": store, "registry": registry, "models_dir": str(models_dir), "started": time.monotonic(), "count": {"cases": 0, "skipped": 0},
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
    """Three positive cases in four: swap in values that get past the first checks (mostly valid,
    sometimes near misses), keeping the generated text, sampling knobs and formats."""
    if data.draw(st.integers(0, 3), "steer") == 0:  # a quarter stays as generated
        return

    def pick(label: str, values: list) -> Any:
        return data.draw(st.sampled_from(values), label)

    body = case.body if isinstance(case.body, dict) else None
    if body is not None:
        if "voice" in body or case.operation.path == "/tts":
            body["voice"] = pick("voice", ["demo"] * 4 + ["nobody", "../demo", "DEMO"])
        for key in ("language", "text_lang", "prompt_lang"):
            if key in body:
                body[key] = pick(key, list(SUPPORTED_LANGUAGES) + ["EN", " zh ", "xx", ""])
        if "emotion" in body:
            body["emotion"] = pick("emotion", EMOTIONS + [None])
        if "file" in body:
            body["file"] = _tone_wav(pick("seconds", [4.0, 4.0, 4.0, 1.0, 12.0]))
        if "name" in body:
            body["name"] = pick("name", ["", "", "demo", "fuzz", body["name"]])
        if "model" in body and case.operation.path == "/v1/voices":
            body["model"] = pick("model", ["", "default", "nope"])
        if case.method == "PUT":
            body["gpt"], body["sovits"] = pick("gpt", TRAVERSALS), pick("sovits", TRAVERSALS)
    if case.method == "PUT":
        auth = pick("auth", [f"Bearer {ADMIN_KEY}"] * 3 + ["Bearer wrong", f"bearer {ADMIN_KEY}", None])
        if auth is not None:
            case.headers = (case.headers or {}) | {"Authorization": auth}
    params = case.path_parameters or {}
    if "voice_id" in params:
        # GET and emotion uploads may use the demo voice; DELETE only voices the fuzzing created
        ids = [r.id for r in store.list() if r.id != "demo" or case.method != "DELETE"]
        params["voice_id"] = pick("voice id", ids + [params["voice_id"]])
    if "model_id" in params:
        params["model_id"] = pick("model id", ["default", "default", params["model_id"]])


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
        code = response.headers.get("x-error-code", [""])  # schemathesis: header -> list of values
        code = code if isinstance(code, str) else code[0]
        key = f"{method} {path} {response.status_code} {code}".rstrip()
        fuzz_env["statuses"][key] = fuzz_env["statuses"].get(key, 0) + 1
        if (method, response.status_code, code) == ("PUT", 501, "not_supported"):
            # The in-process stages cannot load a model, so a swap that passed every check answers
            # 501 here by design (`create_local_app`); the Serve graph answers 200 or 503. Only
            # that one 5xx is let through the server-error check; the others still apply.
            case.validate_response(response, checks=[c for c in checks if c is not not_a_server_error])
        else:
            case.validate_response(response, checks=checks)

    try:
        run()
    except Unsatisfiable:
        # e.g. an operation whose only input is a free-form string path parameter: every request
        # fits its schema, so there is no invalid one to send. Said, not hidden.
        assert mode == GenerationMode.NEGATIVE, "positive cases must always be generable"
        pytest.skip(f"{method} {path}: the schema admits no invalid request to generate")


def _as_query(body: dict[str, Any]) -> dict[str, str] | None:
    """A POST /tts JSON body as GET query parameters, or None if a value has no query form."""
    query = {}
    for key, value in body.items():
        if value is None or value == []:
            continue  # absent in a query
        if isinstance(value, (list, dict)):
            return None
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: JSON can carry them, a URL cannot
            return None
        query[key] = text
    return query


def test_get_tts_answers_as_post_tts_does(api_schema, fuzz_env):
    """GET /tts declares no parameters in the OpenAPI document (it reads the query by hand), so
    the generic fuzzing only ever sends it bare. Here every positive POST /tts body, steered as
    above, is also sent as a GET query: both must give the same status and error code, never a 5xx."""
    from starlette.testclient import TestClient

    client = TestClient(fuzz_env["app"])
    strategy = api_schema["/tts"]["POST"].as_strategy(generation_mode=GenerationMode.POSITIVE)

    @given(case=strategy, data=st.data())
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case, data):
        if time.monotonic() - fuzz_env["started"] > BUDGET_S:
            fuzz_env["count"]["skipped"] += 1
            return
        steer(case, data, fuzz_env["store"])
        query = _as_query(case.body) if isinstance(case.body, dict) else None
        if query is None:
            return
        post = client.post("/tts", json=case.body, timeout=60)
        get = client.get("/tts", params=query, timeout=60)
        fuzz_env["count"]["cases"] += 2
        for method, r in (("POST", post), ("GET", get)):
            key = f"{method} /tts {r.status_code} {r.headers.get('x-error-code', '')}".rstrip()
            fuzz_env["statuses"][key] = fuzz_env["statuses"].get(key, 0) + 1
        assert get.status_code < 500 and post.status_code < 500, (get.text, post.text)
        assert (get.status_code, get.headers.get("x-error-code")) == (post.status_code, post.headers.get("x-error-code")), \
            (query, get.text[:300], post.text[:300])
        if get.status_code == 200:
            assert get.headers["content-type"] == post.headers["content-type"]

    run()


DIALECT_ROUTES = [("POST", "/"), ("POST", "/voice"), ("GET", "/voice"), ("GET", "/t2s"), ("POST", "/text2audio")]


def test_dialect_routes_never_answer_5xx(api_schema, fuzz_env):
    """The SillyTavern (`POST /`) and GSVI routes also read their parameters by hand, so their
    OpenAPI entries declare none. They get the steered /tts bodies (api_v2 names, which
    SillyTavern's adapter sends too) plus GSVI's own names: any answer but a 5xx, and every
    error is the JSON error shape."""
    from starlette.testclient import TestClient

    client = TestClient(fuzz_env["app"], raise_server_exceptions=False)
    served = set(OPERATIONS)
    routes = [r for r in DIALECT_ROUTES if r in served]
    strategy = api_schema["/tts"]["POST"].as_strategy(generation_mode=GenerationMode.POSITIVE)

    @given(case=strategy, data=st.data(), route=st.sampled_from(routes))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case, data, route):
        if time.monotonic() - fuzz_env["started"] > BUDGET_S:
            fuzz_env["count"]["skipped"] += 1
            return
        steer(case, data, fuzz_env["store"])
        body = dict(case.body) if isinstance(case.body, dict) else {}
        if data.draw(st.booleans(), "gsvi names"):
            body |= {"cha_name": body.get("voice"), "text_language": body.get("text_lang"),
                     "format": data.draw(st.sampled_from(["wav", "mp3", "ogg", "silk", "xx"]), "format")}
        method, path = route
        if method == "GET":
            query = _as_query(body)
            if query is None:
                return
            r = client.get(path, params=query, timeout=60)
        else:
            r = client.post(path, json=body, timeout=60)
        fuzz_env["count"]["cases"] += 1
        assert r.status_code < 500, (route, body, r.text[:300])
        if r.status_code >= 400:
            assert set(r.json()["error"]) >= {"code", "message", "type"}, r.text[:300]

    run()


def _documented(spec: dict, method: str, path: str) -> set[str]:
    return set(spec["paths"][path][method.lower()]["responses"])


@pytest.mark.parametrize("reason", ["duplicate voice name", "in-process model swap"])
def test_statuses_reached_on_purpose_are_documented(fuzz_env, reason):
    """Answers random cases reach only by luck, produced deterministically: each status must be
    listed for its operation in /openapi.json (clients generated from it rely on that)."""
    from starlette.testclient import TestClient

    client = TestClient(fuzz_env["app"], raise_server_exceptions=False)
    spec = client.get("/openapi.json").json()
    if reason == "duplicate voice name":  # the demo voice holds the name "demo": 409 voice_exists
        method, path = "POST", "/v1/voices"
        r = client.post(path, data={"transcript": "Hello there.", "language": "en", "name": "demo"},
                        files={"file": ("clip.wav", _tone_wav(4.0), "audio/wav")})
    else:  # valid files, admin key: only the in-process warm-up is missing (501 not_supported)
        method, path = "PUT", "/v1/models/{model_id}"
        r = client.put("/v1/models/default", json={"gpt": "gpt.ckpt", "sovits": "sovits.pth"},
                       headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code >= 400, r.text
    assert str(r.status_code) in _documented(spec, method, path), \
        f"{method} {path} answers {r.status_code} ({r.json()['error']['code']}) but documents {sorted(_documented(spec, method, path))}"


@pytest.mark.parametrize("gpt", TRAVERSALS)
def test_admin_checkpoint_paths_stay_inside_models_dir(fuzz_env, gpt):
    """PUT /v1/models/{id} with the admin key: a path that leaves the models folder (`..`,
    absolute, a symlink pointing out) is refused with `path_not_allowed`; one inside that is no
    file or no checkpoint gets its own 400; no refused or unfinished swap leaves the new model id
    listed (`GET /v1/models`) or routable."""
    from starlette.testclient import TestClient

    client = TestClient(fuzz_env["app"], raise_server_exceptions=False)
    model_id = f"swap-{TRAVERSALS.index(gpt)}"
    r = client.put(f"/v1/models/{model_id}", json={"gpt": gpt, "sovits": "sovits.pth"},
                   headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code < 500 or r.status_code == 501, r.text
    root = Path(fuzz_env["models_dir"]).resolve()
    code = r.json()["error"]["code"]
    if not gpt:
        expected = "invalid_value"  # min_length=1
    elif "\x00" in gpt:
        expected = "path_not_allowed"  # no file name holds a NUL
    elif not (root / gpt).resolve().is_relative_to(root):
        expected = "path_not_allowed"
    elif not (root / gpt).resolve().is_file():
        expected = "file_not_found"
    elif gpt == "junk.ckpt":
        expected = "invalid_checkpoint"
    elif gpt == "sovits.pth" and code in ("invalid_checkpoint", "incompatible_checkpoints"):
        expected = code  # a SoVITS file named as the GPT: refusing it up front is right too
    else:
        expected = "not_supported"  # valid files: only the in-process warm-up is missing (501)
    assert (r.status_code, code) == ((501 if expected == "not_supported" else 400), expected), r.text
    if expected != "not_supported":
        assert model_id not in fuzz_env["registry"].model_ids()
    # a swap that did not complete (here: no warm-up in-process) must not leave a new model id
    # listed and routable either
    listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert model_id not in listed, f"the unfinished swap left {model_id!r} serving"


def test_fuzzing_reached_past_validation(fuzz_env):
    """Runs last: the steering must have produced real audio, real voices and real emotion
    clips, else the cases above only ever saw 4xx and proved little."""
    statuses = fuzz_env["statuses"]
    if not statuses:
        pytest.skip("no fuzz case ran in this session (run the whole module)")
    print(f"\nfuzz cases: {fuzz_env['count']}\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(statuses.items())))
    for key in ("POST /v1/audio/speech 200", "POST /tts 200", "POST /v1/voices 201"):
        assert any(k.startswith(key) for k in statuses), f"no case reached {key}"
