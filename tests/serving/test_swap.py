"""Many models per replica and zero-downtime version swaps, on the real Serve graph under load.

Every client sends the same request (same text and seed), so each response must be byte-equal to
that request's audio on the old version or on the new one: anything else would be a request that
mixed versions across stages (or a failure)."""
from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

import pytest
import requests
import torch

from tests.http_server import ClientThreads
from tests.serving.conftest import ADMIN_KEY

pytestmark = pytest.mark.ray
BODY = {"model": "tts-1", "input": "Swapping while speaking.", "voice": "demo", "response_format": "pcm",
        "language": "en", "seed": 17}


def speak(url: str, **overrides) -> requests.Response:
    return requests.post(url + "/v1/audio/speech", json=BODY | overrides, timeout=120)


def make_variant(demo_dir: Path, dest: Path, gain: float) -> tuple[str, str]:
    """A new 'version' of the demo model: same architecture, different weights (so different audio)."""
    dest.mkdir(parents=True, exist_ok=True)
    gpt = torch.load(demo_dir / "demo-e1.ckpt", map_location="cpu", weights_only=True)
    gpt["weight"]["model.ar_audio_position.alpha"] = gpt["weight"]["model.ar_audio_position.alpha"] * 0 + gain
    torch.save(gpt, dest / "gpt.ckpt")
    sovits = torch.load(demo_dir / "demo_e1_s1.pth", map_location="cpu", weights_only=True)
    sovits["weight"]["dec.conv_post.weight"] = sovits["weight"]["dec.conv_post.weight"] * gain
    torch.save(sovits, dest / "sovits.pth")
    return str((dest / "gpt.ckpt").relative_to(dest.parent)), str((dest / "sovits.pth").relative_to(dest.parent))


class Load(ClientThreads):
    """`clients` threads sending BODY in a loop until stopped; records (status, version, audio)."""

    def __init__(self, url: str, clients: int = 6):
        super().__init__(clients)
        self.url, self.results = url, []

    def _run(self, index: int) -> None:
        while not self.stop.is_set():
            try:
                r = speak(self.url)
                self.results.append((r.status_code, r.headers.get("x-model-version"), r.content))
            except requests.RequestException as exc:
                self.results.append((0, None, repr(exc).encode()))


def put_model(url: str, gpt: str, sovits: str, key: str = ADMIN_KEY) -> requests.Response:
    return requests.put(url + "/v1/models/default", json={"gpt": gpt, "sovits": sovits, "tag": "test"},
                        headers={"Authorization": f"Bearer {key}"}, timeout=300)


def check_clean_switch(results: list, old: tuple[str, bytes], new: tuple[str, bytes]) -> None:
    failures = [(s, v, c[:200]) for s, v, c in results if s != 200]
    assert not failures, f"{len(failures)} failed requests, e.g. {failures[:3]}"
    for status, version, content in results:
        assert (version, content) in (old, new), f"a response mixed versions or changed audio (version {version})"
    assert results[-1][1] == new[0], "traffic did not switch to the new version"


@pytest.fixture(scope="module")
def variants(served):
    demo_dir = Path(served["data_dir"]) / "demo-model"
    models_dir = Path(served["data_dir"]) / "models"
    return {name: make_variant(demo_dir, models_dir / name, gain) for name, gain in (("b", 0.5), ("c", 0.25))}


def current(url: str) -> tuple[str, bytes]:
    r = speak(url)
    assert r.status_code == 200, r.text
    return r.headers["x-model-version"], r.content


def test_admin_swap_requires_the_admin_key(served, variants):
    assert put_model(served["url"], *variants["b"], key="wrong").status_code == 403


@pytest.mark.parametrize("gpt,sovits,code", [
    ("../../../etc/passwd", "x.pth", "path_not_allowed"),
    ("/etc/hostname", "x.pth", "path_not_allowed"),
    ("missing.ckpt", "missing.pth", "file_not_found"),
])
def test_swap_refuses_paths_outside_the_models_folder(served, gpt, sovits, code):
    r = put_model(served["url"], gpt, sovits)
    assert r.status_code == 400 and r.json()["error"]["code"] == code


def test_failed_swap_keeps_the_old_version(served, variants):
    before = current(served["url"])
    broken = Path(served["data_dir"]) / "models" / "broken.pth"
    broken.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    r = put_model(served["url"], variants["b"][0], "broken.pth")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_checkpoint"
    assert current(served["url"]) == before


def test_admin_swap_under_load_has_no_failures_and_no_mixing(served, variants):
    url = served["url"]
    old = current(url)
    with Load(url) as load:
        time.sleep(4)
        r = put_model(url, *variants["b"])
        assert r.status_code == 200, r.text
        time.sleep(6)
    new = current(url)
    assert new[0] == r.json()["version"] != old[0] and new[1] != old[1]
    check_clean_switch(load.results, old, new)
    listed = requests.get(url + "/v1/models", timeout=10).json()["data"]
    assert {old[0], new[0]} <= set(listed[0]["versions"])


def test_serve_deploy_with_changed_user_config_swaps_without_restart(served, variants):
    from ray.serve.schema import ServeDeploySchema

    url, data_dir = served["url"], Path(served["data_dir"])
    old = current(url)
    config = copy.deepcopy(served["config"])
    gpt, sovits = (str(data_dir / "models" / p) for p in variants["c"])
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Ingress":
            deployment["user_config"] = {"models": {"default": {"gpt": gpt, "sovits": sovits, "tag": "declared"}}}
    with Load(url) as load:
        time.sleep(3)
        served["client"].deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and current(url)[0] == old[0]:
            time.sleep(0.5)
        time.sleep(3)
    new = current(url)
    assert new[0] != old[0]
    check_clean_switch(load.results, old, new)


def test_two_models_serve_side_by_side_without_leaking(served, variants):
    """A second model id served at the same time: concurrent mixed traffic, each gets its own audio."""
    url = served["url"]
    r = requests.put(url + "/v1/models/other", json={"gpt": variants["b"][0], "sovits": variants["b"][1]},
                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=300)
    assert r.status_code == 200, r.text
    alone = {m: speak(url, model=m).content for m in ("default", "other")}
    assert alone["default"] != alone["other"]
    results: list = []

    def client(model: str) -> None:
        for _ in range(3):
            resp = speak(url, model=model)
            results.append((model, resp.status_code, resp.content))

    threads = [threading.Thread(target=client, args=(m,)) for m in ("default", "other") * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(results) == 18
    for model, status, content in results:
        assert status == 200 and content == alone[model], f"a {model} request got another model's audio"


MODEL_STAGES = ("SpeakerCache", "GPT", "SoVITS", "Vocoder")


def deploy_and_wait(served, config: dict, timeout: float = 240) -> None:
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    served["client"].deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)
    time.sleep(2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app = serve.status().applications.get("gsv")
        if app is not None and app.status == "RUNNING" and all(
                d.status == "HEALTHY" for d in app.deployments.values()):
            return
        time.sleep(1)
    pytest.fail("the application did not settle")


def with_replicas(config: dict, replicas: int, roll: str) -> dict:
    """Fixed replica counts for the model stages, plus an env var whose change rolls every replica
    (the same effect as deploying new code)."""
    config = copy.deepcopy(config)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] in MODEL_STAGES + ("Frontend",):
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = replicas
        options = deployment.setdefault("ray_actor_options", {})
        options["runtime_env"] = {"env_vars": {"GSV_ROLL": roll}}
    return config


@pytest.mark.parametrize("replicas", [1, 2])
def test_rolling_replicas_under_load(served, replicas):
    """A config/code change makes Serve replace every replica; requests keep succeeding.
    (1 replica per stage: Serve starts the new replica before stopping the old one.)"""
    url = served["url"]
    deploy_and_wait(served, with_replicas(served["config"], replicas, roll=f"{replicas}-a"))
    before = current(url)
    with Load(url, clients=4) as load:
        time.sleep(3)
        deploy_and_wait(served, with_replicas(served["config"], replicas, roll=f"{replicas}-b"))
        time.sleep(3)
    failures = [(s, c[:200]) for s, v, c in load.results if s != 200]
    assert not failures, f"{len(failures)} of {len(load.results)} requests failed during the roll: {failures[:3]}"
    assert all((v, c) == before for _, v, c in load.results), "a roll must not change a request's audio"
