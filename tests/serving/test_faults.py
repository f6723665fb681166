"""Fault injection on the real Serve graph: kill one replica of each stage under load.

For each deployment (Frontend, SpeakerCache, GPT, SoVITS, Vocoder, Ingress) a few clients on
127.0.0.1 send a mix of requests (whole and streamed speech, voice look-ups) while one replica
is killed with `ray.kill(actor, no_restart=True)`, as a crashed worker or a lost node would end.
Serve must start a replacement; then:
* every request that was in flight ends within the client timeout (no hang), either fine or
  with a 5xx at most, never a traceback in the body; a streamed response that had already
  started (200 sent) may instead end early, which the client sees as a broken stream;
* requests sent after the replacement is up succeed;
* nothing persisted is lost: GET /v1/voices and GET /v1/models answer as before, and a voice
  created before the first kill is still listed and still speaks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import requests

from tests.http_server import ClientThreads
from tests.serving.conftest import wav_bytes

pytestmark = pytest.mark.ray

APP = "gsv"
STAGES = ["Frontend", "SpeakerCache", "GPT", "SoVITS", "Vocoder", "Ingress"]
REQUEST_TIMEOUT_S = 60  # a request still running after this is a hang
REPLACE_TIMEOUT_S = 90  # Serve must have a healthy replacement by then
SPEECH = {"model": "tts-1", "input": "Good morning, how are you today?", "language": "en",
          "response_format": "pcm", "seed": 3}


# ----------------------------------------------------------------------------------- helpers
def replica_names(deployment: str) -> set[str]:
    """Names of the live replica actors of one deployment (namespace "serve"). Read from the GCS
    (`list_named_actors`): the state API needs the dashboard, which the test cluster runs without."""
    import ray

    prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}


def kill_one_replica(deployment: str) -> str:
    import ray

    names = sorted(replica_names(deployment))
    assert names, f"no live replica of {deployment}"
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    return names[0]


def wait_for_replacement(deployment: str, killed: str) -> float:
    """Seconds until the deployment is HEALTHY again with a live replica other than `killed`."""
    from ray import serve

    started = time.monotonic()
    while time.monotonic() - started < REPLACE_TIMEOUT_S:
        status = serve.status().applications[APP]
        healthy = status.deployments[deployment].status == "HEALTHY" and status.status == "RUNNING"
        if healthy and replica_names(deployment) - {killed}:
            return time.monotonic() - started
        time.sleep(0.5)
    pytest.fail(f"{deployment}: no healthy replacement within {REPLACE_TIMEOUT_S} s")


@dataclass
class Outcome:
    kind: str  # speech | stream | voice
    status: int  # HTTP status; 0 = no complete response (connection error or broken stream)
    seconds: float
    error: str = ""
    body: str = ""


class Load(ClientThreads):
    """`clients` threads cycling through whole speech, streamed speech and a voice look-up."""

    join_timeout_s = REQUEST_TIMEOUT_S + 10

    def __init__(self, url: str, voice: str, clients: int = 3):
        super().__init__(clients)
        self.url, self.voice = url, voice
        self.outcomes: list[Outcome] = []

    def _one(self, kind: str) -> Outcome:
        started = time.monotonic()
        try:
            if kind == "voice":
                r = requests.get(f"{self.url}/v1/voices/{self.voice}", timeout=REQUEST_TIMEOUT_S)
                body = r.content
            else:
                r = requests.post(f"{self.url}/v1/audio/speech", json=SPEECH | {"voice": self.voice,
                                  "stream": kind == "stream"}, stream=kind == "stream", timeout=REQUEST_TIMEOUT_S)
                body = b"".join(r.iter_content(8192)) if kind == "stream" else r.content
            text = body[:400].decode("utf-8", "replace") if r.status_code != 200 else ""
            return Outcome(kind, r.status_code, time.monotonic() - started, body=text)
        except requests.RequestException as exc:
            return Outcome(kind, 0, time.monotonic() - started, error=f"{type(exc).__name__}: {exc}"[:300])

    def _run(self, index: int) -> None:
        kinds = ("speech", "stream", "voice")
        i = index
        while not self.stop.is_set():
            self.outcomes.append(self._one(kinds[i % len(kinds)]))
            i += 1

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        assert not self.alive(), "a client thread hung"


def snapshot(url: str) -> tuple[list, list]:
    voices = requests.get(url + "/v1/voices", timeout=30).json()["data"]
    models = requests.get(url + "/v1/models", timeout=30).json()["data"]
    return sorted(v["id"] for v in voices), [(m["id"], m["version"], m["versions"]) for m in models]


def speak_until_ok(url: str, voice: str, seconds: float = 30.0) -> requests.Response:
    """After a replacement, handles may need a moment to learn of the new replica."""
    deadline = time.monotonic() + seconds
    while True:
        r = requests.post(url + "/v1/audio/speech", json=SPEECH | {"voice": voice}, timeout=REQUEST_TIMEOUT_S)
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        time.sleep(1)


# ------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def survivor(served) -> dict:
    """A voice created before any kill, and the persisted state every kill must leave alone."""
    url = served["url"]
    r = requests.post(url + "/v1/voices", files={"file": ("me.wav", wav_bytes(4.0), "audio/wav")},
                      data={"transcript": "Hello, this is my voice.", "language": "en", "name": "survivor"},
                      timeout=120)
    assert r.status_code == 201, r.text
    voice = r.json()["id"]
    assert speak_until_ok(url, voice).status_code == 200
    return {"voice": voice, "state": snapshot(url)}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("stage", STAGES)
def test_killed_replica_is_replaced_and_requests_fail_cleanly(served, survivor, stage):
    url, voice = served["url"], survivor["voice"]
    with Load(url, voice) as load:
        time.sleep(3)  # requests in flight on every stage
        killed = kill_one_replica(stage)
        replaced_after = wait_for_replacement(stage, killed)
        time.sleep(2)
    outcomes = load.outcomes
    summary = {}
    for o in outcomes:
        summary[(o.kind, o.status)] = summary.get((o.kind, o.status), 0) + 1
    print(f"\n{stage}: replaced after {replaced_after:.1f} s; outcomes {summary}")

    assert outcomes, "the load sent nothing"
    hung = [o for o in outcomes if o.seconds >= REQUEST_TIMEOUT_S or "Timeout" in o.error]
    assert not hung, f"requests hung: {hung[:3]}"
    client_errors = [o for o in outcomes if 400 <= o.status < 500]
    assert not client_errors, f"a dead replica must not look like the client's fault: {client_errors[:3]}"
    tracebacks = [o for o in outcomes if "Traceback" in o.body or 'File "' in o.body]
    assert not tracebacks, f"a 5xx leaked a traceback: {tracebacks[0].body}"
    broken = [o for o in outcomes if o.status == 0 and o.kind != "stream"]
    assert not broken, f"whole responses must end with an HTTP status, not a dropped connection: {broken[:3]}"

    # after the replacement: requests succeed and nothing persisted moved
    r = speak_until_ok(url, voice)
    assert r.status_code == 200, r.text
    stream = requests.post(url + "/v1/audio/speech", json=SPEECH | {"voice": voice, "stream": True}, timeout=60)
    assert stream.status_code == 200 and len(stream.content) > 0
    assert snapshot(url) == survivor["state"]


def test_voice_created_before_the_kills_still_speaks(served, survivor):
    url = served["url"]
    assert survivor["voice"] in snapshot(url)[0]
    r = speak_until_ok(url, survivor["voice"])
    assert r.status_code == 200 and len(r.content) > 0
