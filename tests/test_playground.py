"""The web playground (`GET /`), driven in a real headless Chromium against a real server.

The server is uvicorn in a background thread on 127.0.0.1:<free port>, serving `create_app` over
`LocalStages` of the demo model, plus `mount_playground`. The browser is Debian's `chromium` with
its matching `chromedriver`, both given by path so Selenium Manager never downloads anything.
Browser tests skip when /usr/bin/chromium is absent; a screenshot goes to
test-artifacts/playground.png.
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi import FastAPI
from starlette.testclient import TestClient

from serve_app.playground import mount_playground

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
API_KEY = "playground-test-key"
WAIT_S = 90


# ---------------------------------------------------------------------------------------- routes
# (no browser, no model: mount_playground on a bare FastAPI app)

@pytest.fixture(scope="module")
def static_client():
    app = FastAPI()
    mount_playground(app)
    with TestClient(app) as client:
        yield client


def test_page_and_assets_are_served_with_their_content_types(static_client):
    expected = {"/": "text/html", "/static/playground.js": "text/javascript",
                "/static/playground.css": "text/css"}
    for path, kind in expected.items():
        response = static_client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == f"{kind}; charset=utf-8"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in static_client.get("/").headers["content-security-policy"]


def test_mounting_twice_adds_the_routes_once():
    app = FastAPI()
    mount_playground(app)
    mount_playground(app)
    assert [r.path for r in app.router.routes].count("/") == 1


@pytest.mark.parametrize("path", [
    "/static/../playground.py", "/static/..%2Fplayground.py", "/static/%2e%2e%2fapi.py",
    "/static/playground.py", "/static/.hidden.css", "/static/nope.js", "/static/static",
    "/static/sub/playground.js", "/static/playground.html%00.js",
])
def test_static_route_serves_nothing_outside_the_static_folder(static_client, path):
    response = static_client.get(path)
    assert response.status_code == 404
    assert b"mount_playground" not in response.content and b"create_app" not in response.content


def test_page_loads_nothing_from_other_origins(static_client):
    for path in ("/", "/static/playground.js", "/static/playground.css"):
        text = static_client.get(path).text
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), path
    html = static_client.get("/").text
    for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert ref.startswith("/") or ref.startswith("data:"), ref


# ---------------------------------------------------------------------------------------- server

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BackgroundServer:
    """uvicorn in a daemon thread (it skips signal handlers off the main thread)."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", ws="none"))
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def require_api_key(app, key: str):
    """Stand-in for a server that requires a key: /v1/* answers 401 without `Bearer <key>`."""
    body = json.dumps({"error": {"code": "invalid_api_key", "message": "missing or invalid API key",
                                 "type": "invalid_request_error", "param": None}}).encode()

    async def guarded(scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers = dict(scope["headers"])
            if headers.get(b"authorization") != f"Bearer {key}".encode():
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return guarded


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import torch

    from models.demo import build_demo_assets
    from models.pipeline import ModelPaths, Pipeline

    torch.set_num_threads(1)
    assets = build_demo_assets(tmp_path_factory.mktemp("playground-demo"))
    paths = ModelPaths(gpt=str(assets["gpt"]), sovits=str(assets["sovits"]),
                       hubert_dir=str(assets["hubert_dir"]), bert_dir=str(assets["bert_dir"]))
    return assets, Pipeline(paths)


def build_app(model, data_dir: Path):
    """create_app over LocalStages of the demo model (+ a 'demo' voice), with the playground mounted.
    Returns (app, stages); stages.started counts sentences whose T2S began, to see the server stop."""
    from deployments.voice_store import VoiceStore
    from models import audio
    from models.pipeline import load_reference_wav
    from serve_app.local import LocalStages, create_local_app
    from serve_app.settings import Limits, Settings

    class CountingStages(LocalStages):
        started = 0

        async def t2s(self, *args, **kwargs):
            self.started += 1
            return await super().t2s(*args, **kwargs)

        def t2s_stream(self, *args, **kwargs):  # an async generator, handed through untouched
            self.started += 1
            return super().t2s_stream(*args, **kwargs)

    assets, pipeline = model
    settings = Settings(data_dir=str(data_dir), limits=Limits(max_text_chars=300))
    store = VoiceStore(settings.data_dir)
    store.create(name="demo", voice_id="demo", transcript=assets["reference_text"],
                 language=assets["reference_language"], model_id="default",
                 samples=load_reference_wav(assets["reference_wav"]), sample_rate=audio.SAMPLE_RATE)
    stages = CountingStages(pipeline, store)
    app = create_local_app(pipeline, settings, stages=stages)
    mount_playground(app)
    return app, stages


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    app, stages = build_app(model, tmp_path_factory.mktemp("playground-data"))
    with BackgroundServer(app) as running:
        running.stages = stages
        yield running


@pytest.fixture(scope="module")
def locked_server(model, tmp_path_factory):
    app, _ = build_app(model, tmp_path_factory.mktemp("playground-locked"))
    with BackgroundServer(require_api_key(app, API_KEY)) as running:
        yield running


# ---------------------------------------------------------------------------------------- browser

@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(tmp_path_factory, downloads):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium and chromium-driver packages")
    if not CHROMEDRIVER.exists():
        pytest.skip(f"{CHROMEDRIVER} is absent: install Debian's chromium-driver package")
    webdriver = pytest.importorskip("selenium.webdriver")

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1000,1400",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))  # no Selenium Manager
    driver = webdriver.Chrome(options=options, service=service)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    yield driver
    driver.quit()


def open_page(driver, url: str):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.execute_script("return document.body.dataset.ready === 'true' || "
                                   "!document.getElementById('auth-card').hidden"))
    driver.get_log("browser")  # drop anything older than this page
    return driver


@pytest.fixture
def page(browser, server):
    return open_page(browser, server.url)


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def choose(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(by_id(driver, element_id)).select_by_value(value)


def set_text(driver, element_id: str, text: str) -> None:
    field = by_id(driver, element_id)
    field.clear()
    if text:
        field.send_keys(text)


def wait_for(driver, condition, message: str, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message)


def result_state(driver) -> str:
    return by_id(driver, "result").get_attribute("data-state") or ""


def console_errors(driver, expected_status: tuple[int, ...] = ()) -> list[dict]:
    """SEVERE browser-log entries, less the network lines of 4xx answers a test provoked on purpose
    (Chromium logs every non-2xx fetch as 'Failed to load resource')."""
    errors = []
    for entry in driver.get_log("browser"):
        if entry["level"] != "SEVERE":
            continue
        if entry.get("source") == "network" and any(f"status of {s}" in entry["message"] for s in expected_status):
            continue
        errors.append(entry)
    return errors


def speak(driver, text: str, voice: str = "demo", seed: str = "7", fmt: str = "pcm") -> None:
    set_text(driver, "text", text)
    choose(driver, "voice", voice)
    choose(driver, "language", "en")
    choose(driver, "format", fmt)
    set_text(driver, "seed", seed)
    by_id(driver, "speak").click()  # a real click: the user gesture Web Audio wants


def save_screenshot(driver, path: Path) -> None:
    """The whole page: grow the window to the document's height for the shot, then restore it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = driver.get_window_size()
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size["width"], max(size["height"], height + 120))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(size["width"], size["height"])


def api_pcm(url: str, body: dict) -> bytes:
    request = urllib.request.Request(url + "/v1/audio/speech", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WAIT_S) as response:
        return response.read()


def upload_clip(tmp_path: Path, seconds: float, name: str = "clip.wav") -> Path:
    sr = 32000
    t = np.arange(int(seconds * sr)) / sr
    tone = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.4 * np.sin(2 * np.pi * 4 * t))
    path = tmp_path / name
    sf.write(path, tone.astype(np.float32), sr)
    return path


# ---------------------------------------------------------------------------------------- tests

def test_page_fills_the_voice_picker_and_warns_about_the_demo_model(page):
    options = [o.get_attribute("value") for o in by_id(page, "voice").find_elements("tag name", "option")]
    assert "demo" in options
    assert by_id(page, "voice").get_attribute("value") == "demo"
    warning = by_id(page, "demo-warning")
    assert warning.is_displayed() and "random weights" in warning.text
    assert re.search(r"version [0-9a-f]{12}", by_id(page, "model-line").text)
    assert console_errors(page) == []


def test_speak_streams_plays_measures_and_downloads_a_wav(page, server, downloads):
    text = "Hello there, this is the playground speaking. It streams while it speaks."
    speak(page, text)
    wait_for(page, lambda d: by_id(d, "result").get_attribute("data-first-audio") == "true"
             or result_state(d) not in ("", "speaking"), "the page never reported first audio")
    wait_for(page, lambda d: result_state(d) in ("done", "error", "stopped"), "the page never finished")
    assert result_state(page) == "done", by_id(page, "speak-error").text
    assert by_id(page, "result").get_attribute("data-playback") == "running"  # Web Audio played it
    assert by_id(page, "speak-error").is_displayed() is False

    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", by_id(page, "stat-ttfa").text)
    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", by_id(page, "stat-total").text)
    assert re.match(r"\d+\.\d\d", by_id(page, "stat-rtf").text)
    version = json.load(urllib.request.urlopen(server.url + "/v1/models"))["data"][0]["version"]
    assert by_id(page, "stat-version").text == version
    assert by_id(page, "stat-seed").text == "7"
    # the waveform canvas has something drawn in the wave colour, not just the axis
    drawn = page.execute_script("""
        const c = document.getElementById('waveform'), g = c.getContext('2d');
        const px = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
        return n / (c.width * c.height);""")
    assert drawn > 0.02

    save_screenshot(page, ARTIFACTS / "playground.png")

    by_id(page, "download").click()
    target = downloads / "gsv-demo-7.wav"
    wait_for(page, lambda d: target.is_file() and target.stat().st_size > 44, "no WAV was downloaded", 20)
    samples, rate = sf.read(target, dtype="int16")
    assert rate == 32000
    # the bytes the page streamed are the bytes the API gives for the same request
    expected = api_pcm(server.url, {"input": text, "voice": "demo", "language": "en", "seed": 7,
                                    "response_format": "pcm", "speed": 1.0, "stream": True})
    assert samples.tobytes() == expected
    seconds = len(samples) / rate
    assert by_id(page, "stat-duration").text == f"{seconds:.2f} s"
    assert console_errors(page) == []


def test_file_format_is_decoded_played_and_downloaded_as_received(page, server, downloads):
    text = "A whole file this time."
    speak(page, text, seed="11", fmt="flac")
    wait_for(page, lambda d: result_state(d) in ("done", "error", "stopped"), "the page never finished")
    assert result_state(page) == "done" and not by_id(page, "speak-error").is_displayed(), \
        by_id(page, "speak-error").text
    by_id(page, "download").click()
    target = downloads / "gsv-demo-11.flac"
    wait_for(page, lambda d: target.is_file() and target.stat().st_size > 0, "no FLAC was downloaded", 20)
    samples, rate = sf.read(target, dtype="int16")
    expected = api_pcm(server.url, {"input": text, "voice": "demo", "language": "en", "seed": 11,
                                    "response_format": "pcm"})
    assert rate == 32000 and samples.tobytes() == expected
    assert by_id(page, "stat-duration").text == f"{len(samples) / rate:.2f} s"
    assert console_errors(page) == []


def test_stop_cancels_the_request_on_the_server(page, server):
    sentences = 6
    long_text = " ".join(f"Sentence {i} keeps the model busy." for i in range(1, sentences + 1))
    before = server.stages.started
    speak(page, long_text, seed="3")
    wait_for(page, lambda d: by_id(d, "result").get_attribute("data-first-audio") == "true"
             or result_state(d) != "speaking", "the page never reported first audio")
    by_id(page, "stop").click()
    wait_for(page, lambda d: result_state(d) in ("stopped", "done", "error"), "the page never settled", 30)
    assert result_state(page) == "stopped"
    assert by_id(page, "status").text.startswith("Stopped after")
    assert by_id(page, "speak").is_enabled() and not by_id(page, "stop").is_enabled()
    assert by_id(page, "download").is_enabled()  # what arrived before Stop can still be saved

    # the server notices the disconnect: it begins no sentence after the one in hand
    last, stable_since = server.stages.started, time.monotonic()
    while time.monotonic() - stable_since < 3:
        time.sleep(0.2)
        if server.stages.started != last:
            last, stable_since = server.stages.started, time.monotonic()
    assert last - before < sentences
    assert console_errors(page) == []


def test_uploaded_voice_appears_in_the_picker(page, tmp_path):
    clip = upload_clip(tmp_path, 4.0)
    by_id(page, "upload-file").send_keys(str(clip))
    set_text(page, "upload-transcript", "This is a synthetic reference clip.")
    choose(page, "upload-language", "en")
    set_text(page, "upload-name", "browser-voice")
    by_id(page, "upload-submit").click()
    wait_for(page, lambda d: "Added voice" in by_id(d, "upload-status").text
             or by_id(d, "upload-error").is_displayed(), "the upload never finished")
    assert not by_id(page, "upload-error").is_displayed(), by_id(page, "upload-error").text
    picker = by_id(page, "voice")
    labels = [o.text for o in picker.find_elements("tag name", "option")]
    assert any(label.startswith("browser-voice") for label in labels)
    # the new voice is selected, by its id
    chosen = picker.get_attribute("value")
    voices = json.load(urllib.request.urlopen(page.current_url.rstrip("/") + "/v1/voices"))["data"]
    assert {v["id"]: v["name"] for v in voices}[chosen] == "browser-voice"
    assert console_errors(page) == []


def test_bad_upload_shows_the_api_message(page, tmp_path):
    clip = upload_clip(tmp_path, 1.0, "short.wav")
    by_id(page, "upload-file").send_keys(str(clip))
    set_text(page, "upload-transcript", "Too short.")
    by_id(page, "upload-submit").click()
    wait_for(page, lambda d: by_id(d, "upload-error").is_displayed(), "no upload error shown")
    error = by_id(page, "upload-error").text
    assert "audio_too_short" in error and "400" in error
    assert console_errors(page, expected_status=(400,)) == []


@pytest.mark.parametrize("text, code, words", [
    ("", "empty_text", "must not be empty"),
    ("x" * 301, "text_too_long", "the limit is 300"),
])
def test_api_errors_are_shown_on_the_page(page, text, code, words):
    speak(page, text)
    wait_for(page, lambda d: result_state(d) in ("error", "done"), "the page never settled")
    assert result_state(page) == "error"
    box = by_id(page, "speak-error")
    assert box.is_displayed()
    assert code in box.text and words in box.text
    assert by_id(page, "status").text == "Failed."
    assert console_errors(page, expected_status=(400,)) == []


def test_unknown_voice_is_a_readable_error(page):
    page.execute_script("const s = document.getElementById('voice');"
                        "s.append(new Option('gone', 'no-such-voice')); s.value = 'no-such-voice';")
    by_id(page, "speak").click()
    wait_for(page, lambda d: result_state(d) in ("error", "done"), "the page never settled")
    assert "No voice 'no-such-voice'" in by_id(page, "speak-error").text
    assert console_errors(page, expected_status=(404,)) == []


def test_page_asks_for_an_api_key_and_keeps_it_in_session_storage(browser, locked_server):
    driver = open_page(browser, locked_server.url)
    driver.execute_script("sessionStorage.clear(); localStorage.clear();")
    driver.get(locked_server.url + "/")
    wait_for(driver, lambda d: by_id(d, "auth-card").is_displayed(), "the page never asked for a key")
    assert "missing or invalid api key" in by_id(driver, "auth-reason").text.lower()

    set_text(driver, "api-key", API_KEY)
    by_id(driver, "auth-save").click()
    wait_for(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "true",
             "voices never loaded with the key")
    assert by_id(driver, "voice").get_attribute("value") == "demo"
    assert not by_id(driver, "auth-card").is_displayed()
    assert driver.execute_script("return sessionStorage.getItem('gsv-serve.api-key')") == API_KEY
    assert driver.execute_script("return localStorage.length") == 0
    assert console_errors(driver, expected_status=(401,)) == []
    driver.execute_script("sessionStorage.clear();")
