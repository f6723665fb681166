"""Locust load for gsv-serve: the request mix a TTS service sees, plus audio-level metrics.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000      (or: python loadtest/run.py)

Mix per user (weights below): short and long texts in Chinese and English, whole responses as
wav / pcm / mp3, streamed responses (`"stream": true`) as pcm / wav, upstream's `GET /tts`, and
now and then a voice upload (then deleted again). Voices: `demo` plus a few the test uploads at
start (4 s synthetic clips made here with numpy + soundfile) and deletes at the end.

Custom metrics, fired as Locust request events so they sit next to the HTTP rows in the CSV/HTML:

* `TTFA <kind>`: time to first audio, ms from sending a streamed request to the first byte of
  audio samples (after the WAV header, which the server sends before synthesis starts).
* `RTF <kind>`: real-time factor = wall time / audio duration, recorded x1000 in the ms columns
  (250 means RTF 0.25, i.e. 4 s of audio per wall second). Audio length comes from the pcm byte
  count, the WAV header, or decoding the mp3.

Streamed requests are timed to their last byte (a plain `requests` session, events fired here),
so every HTTP row reads as full response time. At the end, `<csv prefix>_summary.json` gets the
HTTP-only aggregate (Locust's own "Aggregated" row also counts the custom metrics).
"""
from __future__ import annotations

import io
import json
import logging
import random
import struct
import time
import uuid
from pathlib import Path

import numpy as np
import requests
import soundfile as sf
from locust import HttpUser, between, events, task
from locust.runners import MasterRunner
from locust.stats import StatsEntry

log = logging.getLogger("gsv.loadtest")

METRIC_TYPES = ("TTFA", "RTF")  # request_type of the custom metrics (not HTTP requests)
SPEECH = "/v1/audio/speech"
TIMEOUT_S = 300
DEFAULT_SAMPLE_RATE = 32000  # the server says so in X-Sample-Rate; this is only a fallback
UPLOADED_VOICES = 3

SHORT_TEXTS = [
    ("zh", "你好，欢迎使用语音合成服务。"),
    ("zh", "今天天气很好，我们去公园散步吧。"),
    ("en", "Hello there, how are you today?"),
    ("en", "The quick brown fox jumps over the lazy dog."),
]
LONG_TEXTS = [
    ("zh", "人工智能正在改变我们的生活方式。从语音助手到自动驾驶，新的技术不断出现。"
           "我们需要认真思考这些变化带来的机会和挑战，并且为未来做好准备。"
           "只有不断学习，才能跟上时代的步伐。"),
    ("en", "Speech synthesis has come a long way in the last few years. Modern systems can clone a "
           "voice from a few seconds of audio. That makes them useful for audiobooks, games and "
           "accessibility tools, and it also asks for care in how they are deployed."),
]

# voice ids usable by every user: the built-in demo voice plus the ones uploaded at test start
voices: list[str] = ["demo"]
uploaded: list[str] = []


# ---------------------------------------------------------------------------------- audio facts
def synthetic_voice_wav(seed: int, seconds: float = 4.0, sr: int = 32000) -> bytes:
    """A voice-like test clip: a harmonic tone with vibrato, syllable-rate envelope, a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110.0 + 40.0 * rng.random() + 8.0 * np.sin(2 * np.pi * 5.0 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * (3.0 + rng.random()) * t) ** 2
    wav = 0.25 * tone * envelope / 2.3 + 0.005 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, wav.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def wav_layout(data: bytes) -> tuple[int, int, int, int] | None:
    """(sample_rate, channels, bytes per sample, offset of the samples) from a RIFF header, or None
    until the `data` chunk header has arrived."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if chunk == b"fmt " and pos + 24 <= len(data):
            channels, rate = struct.unpack("<HI", data[pos + 10:pos + 16])
            bits = struct.unpack("<H", data[pos + 22:pos + 24])[0]
            fmt = (rate, channels, bits // 8)
        if chunk == b"data":
            return (*fmt, pos + 8) if fmt else None
        pos += 8 + size + (size & 1)
    return None


def audio_seconds(body: bytes, fmt: str, sample_rate: int) -> float:
    """Duration of a response body (whole or streamed), 0.0 when it holds no audio."""
    if fmt == "pcm":  # s16le mono
        return len(body) / 2 / sample_rate
    if fmt == "wav":
        layout = wav_layout(body)
        if layout is None:
            return 0.0
        rate, channels, width, offset = layout
        return (len(body) - offset) / (rate * channels * width)  # streamed headers say 0xFFFFFFFF
    try:
        return float(sf.info(io.BytesIO(body)).duration)
    except Exception:  # noqa: BLE001 - libsndfile without that codec: decode with FFmpeg instead
        import av

        with av.open(io.BytesIO(body)) as container:
            return sum(frame.samples / frame.sample_rate for frame in container.decode(audio=0))


def audio_header_length(fmt: str, received: bytes) -> int | None:
    """Bytes before the first audio sample, or None if the header is not complete yet."""
    if fmt == "wav":
        layout = wav_layout(received)
        return None if layout is None else layout[3]
    return 0  # pcm has no header


def fire(environment, request_type: str, name: str, value: float, length: int = 0, exception=None) -> None:
    environment.events.request.fire(request_type=request_type, name=name, response_time=value,
                                    response_length=length, exception=exception, context={})


# ---------------------------------------------------------------------------------- voices
@events.test_start.add_listener
def upload_voices(environment, **_kwargs) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # workers upload their own
    base = environment.host.rstrip("/")
    run_id = uuid.uuid4().hex[:8]
    for i in range(UPLOADED_VOICES):
        files = {"file": (f"ref{i}.wav", synthetic_voice_wav(seed=i), "audio/wav")}
        form = {"transcript": "这是一段用于测试的参考音频。", "language": "zh", "name": f"loadtest-{run_id}-{i}"}
        try:
            r = requests.post(f"{base}/v1/voices", files=files, data=form, timeout=60)
            r.raise_for_status()
        except requests.RequestException as exc:
            log.warning("voice upload %d failed (%s); the run uses the voices it has", i, exc)
            continue
        uploaded.append(r.json()["id"])
    voices.extend(uploaded)
    log.info("voices in the mix: %s", voices)


@events.test_stop.add_listener
def clean_up_and_summarise(environment, **_kwargs) -> None:
    base = environment.host.rstrip("/")
    for voice_id in uploaded:
        try:
            requests.delete(f"{base}/v1/voices/{voice_id}", timeout=30)
        except requests.RequestException:
            pass
    if isinstance(environment.runner, MasterRunner) or environment.stats is None:
        return
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if prefix:
        Path(f"{prefix}_summary.json").write_text(json.dumps(summarise(environment.stats), indent=2))


def _figures(entry: StatsEntry, scale: float = 1.0) -> dict:
    pct = {f"p{int(q * 100)}": (entry.get_response_time_percentile(q) / scale if entry.num_requests else None)
           for q in (0.5, 0.95, 0.99)}
    return {"count": entry.num_requests, **pct}


def summarise(stats) -> dict:
    """HTTP requests merged into one entry (exact percentiles), and each custom metric on its own."""
    http = StatsEntry(stats, "HTTP", "")
    out: dict = {"http": {}, "TTFA": {}, "RTF": {}}
    for (name, method), entry in stats.entries.items():
        if method in METRIC_TYPES:
            out[method][name] = _figures(entry, scale=1000.0 if method == "RTF" else 1.0)
        else:
            http.extend(entry)
    out["http"] = {**_figures(http), "failures": http.num_failures, "rps": round(http.total_rps, 3),
                   "avg_ms": round(http.avg_response_time, 1)}
    return out


# ---------------------------------------------------------------------------------- the user
class TTSUser(HttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.stream_session = requests.Session()  # streamed requests, timed here to the last byte

    def on_stop(self) -> None:
        self.stream_session.close()

    def body(self, text: tuple[str, str], fmt: str, stream: bool = False) -> dict:
        language, words = text
        return {"model": "tts-1", "voice": random.choice(voices), "input": words, "language": language,
                "response_format": fmt, "stream": stream}

    def whole(self, kind: str, text: tuple[str, str], fmt: str) -> None:
        started = time.perf_counter()
        with self.client.post(SPEECH, json=self.body(text, fmt), name=f"{SPEECH} [{kind}]",
                              timeout=TIMEOUT_S, catch_response=True) as r:
            wall = time.perf_counter() - started
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
                return
            rate = int(r.headers.get("X-Sample-Rate", DEFAULT_SAMPLE_RATE))
            try:
                seconds = audio_seconds(r.content, fmt, rate)
            except Exception as exc:  # noqa: BLE001 - an undecodable body is a failed request
                r.failure(f"undecodable {fmt}: {exc}")
                return
            if seconds <= 0:
                r.failure("no audio in the response")
                return
        fire(self.environment, "RTF", kind, 1000.0 * wall / seconds)

    def streamed(self, kind: str, text: tuple[str, str], fmt: str) -> None:
        name = f"{SPEECH} [{kind}]"
        started = time.perf_counter()
        received, first_audio, error = bytearray(), None, None
        try:
            with self.stream_session.post(self.host.rstrip("/") + SPEECH, json=self.body(text, fmt, stream=True),
                                          stream=True, timeout=TIMEOUT_S) as r:
                if r.status_code != 200:
                    error = RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                else:
                    rate = int(r.headers.get("X-Sample-Rate", DEFAULT_SAMPLE_RATE))
                    for chunk in r.iter_content(chunk_size=None):
                        received += chunk
                        if first_audio is None:
                            header = audio_header_length(fmt, bytes(received))
                            if header is not None and len(received) > header:
                                first_audio = time.perf_counter()
        except requests.RequestException as exc:
            error = exc
        wall = time.perf_counter() - started
        if error is None and first_audio is None:
            error = RuntimeError("the stream ended without audio")
        fire(self.environment, "POST", name, 1000.0 * wall, len(received), error)
        if error is None:
            fire(self.environment, "TTFA", kind, 1000.0 * (first_audio - started))
            fire(self.environment, "RTF", kind, 1000.0 * wall / audio_seconds(bytes(received), fmt, rate))

    # -- the mix ---------------------------------------------------------------------------
    @task(8)
    def short_wav(self) -> None:
        self.whole("wav short", random.choice(SHORT_TEXTS), "wav")

    @task(3)
    def long_pcm(self) -> None:
        self.whole("pcm long", random.choice(LONG_TEXTS), "pcm")

    @task(2)
    def short_mp3(self) -> None:
        self.whole("mp3 short", random.choice(SHORT_TEXTS), "mp3")

    @task(6)
    def stream_pcm(self) -> None:
        texts = random.choice((SHORT_TEXTS, LONG_TEXTS))
        self.streamed("stream pcm", random.choice(texts), "pcm")

    @task(3)
    def stream_wav(self) -> None:
        self.streamed("stream wav", random.choice(SHORT_TEXTS), "wav")

    @task(2)
    def upstream_tts(self) -> None:
        language, words = random.choice(SHORT_TEXTS)
        params = {"text": words, "text_lang": language, "voice": random.choice(voices), "media_type": "wav"}
        with self.client.get("/tts", params=params, name="/tts [wav]", timeout=TIMEOUT_S, catch_response=True) as r:
            if r.status_code != 200 or not r.content:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")

    @task(1)
    def upload_voice(self) -> None:
        files = {"file": ("clip.wav", synthetic_voice_wav(seed=random.randrange(1 << 30)), "audio/wav")}
        form = {"transcript": "这是一段用于测试的参考音频。", "language": "zh"}
        with self.client.post("/v1/voices", files=files, data=form, name="/v1/voices [upload]",
                              timeout=60, catch_response=True) as r:
            if r.status_code != 201:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
                return
            voice_id = r.json()["id"]
        self.client.delete(f"/v1/voices/{voice_id}", name="/v1/voices/{id} [delete]", timeout=60)
