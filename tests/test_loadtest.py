"""loadtest/run.py: refuses non-loopback hosts, and a short smoke run against a real local server.

The smoke run serves the real API (`serve_app.api.create_app`) over the in-process demo pipeline
(`serve_app.local.LocalStages`, no Ray) with uvicorn on 127.0.0.1 and a free port, then runs the
load test for 10 s as a subprocess, exactly as a user would. It checks reports and the printed
summary, never throughput.
"""
from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.http_server import serve_in_thread

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "loadtest" / "run.py"


def load_run_module():
    spec = importlib.util.spec_from_file_location("gsv_loadtest_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("host", ["http://10.1.2.3:8000", "http://example.com", "https://0.0.0.0:8000"])
def test_refuses_hosts_that_are_not_loopback(host, capsys):
    assert load_run_module().main(["--host", host, "--duration", "1"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_could_not_start_when_nothing_listens(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = load_run_module().main(["--host", f"http://127.0.0.1:{port}", "--duration", "1", "--out", str(tmp_path)])
    assert code == 3
    assert not any(tmp_path.iterdir()), "no reports for a run that never started"


# ---------------------------------------------------------------------------------- smoke run
@pytest.fixture(scope="module")
def local_server(tmp_path_factory):
    """The real HTTP API over the demo pipeline, served by uvicorn in a thread on a free port."""
    try:
        import torch

        from deployments.voice_store import VoiceStore
        from models import audio
        from models.demo import build_demo_assets
        from models.pipeline import ModelPaths, Pipeline, load_reference_wav
        from serve_app.local import create_local_app
        from serve_app.settings import Settings
    except ImportError as exc:
        pytest.skip(f"the smoke run needs the demo pipeline, not importable yet: {exc}")

    torch.set_num_threads(1)
    assets = build_demo_assets(tmp_path_factory.mktemp("demo-model"))
    paths = ModelPaths(gpt=str(assets["gpt"]), sovits=str(assets["sovits"]),
                       hubert_dir=str(assets["hubert_dir"]), bert_dir=str(assets["bert_dir"]))
    settings = Settings(data_dir=str(tmp_path_factory.mktemp("data")))
    store = VoiceStore(settings.data_dir)
    store.create(name="demo", voice_id="demo", transcript=assets["reference_text"],
                 language=assets["reference_language"], model_id=settings.model.model_id,
                 samples=load_reference_wav(assets["reference_wav"]), sample_rate=audio.SAMPLE_RATE)
    app = create_local_app(Pipeline(paths), settings)

    with serve_in_thread(app) as url:
        yield url


def test_smoke_run_writes_reports_and_prints_percentiles(local_server, tmp_path):
    out = tmp_path / "reports"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--host", local_server, "--users", "3", "--spawn-rate", "3",
         "--duration", "10", "--stop-timeout", "15", "--out", str(out)],
        capture_output=True, text=True, timeout=180)
    detail = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    failures = out / "gsv_failures.csv"
    if failures.exists():
        detail += "\nfailures:\n" + failures.read_text()
    assert proc.returncode == 0, detail
    for name in ("gsv_stats.csv", "gsv.html", "gsv_summary.json"):
        assert (out / name).stat().st_size > 0, f"{name} missing or empty\n{detail}"
    latency = next(line for line in proc.stdout.splitlines() if line.startswith("latency ms"))
    for pct in ("p50", "p95", "p99"):
        assert f"{pct} " in latency and f"{pct} n/a" not in latency, detail
    assert "TTFA" in proc.stdout and "RTF" in proc.stdout and "requests/s" in proc.stdout
    stats = (out / "gsv_stats.csv").read_text()
    assert "/v1/audio/speech" in stats, "no speech request completed in 10 s\n" + detail
