"""End-to-end latency of the Serve graph vs the in-process Pipeline, and throughput by concurrency.

    python bench/bench_serve.py [--repeats 5] [--requests-per-client 3]

Same request (text, voice, seed) both ways, so the difference is the graph's overhead: the HTTP
proxy, the ingress, five deployment hops per sentence and the object store. Throughput sends
`concurrency x requests-per-client` requests at concurrency 1, 4 and 16 and reports requests/s and
audio-seconds per wall-second, each as a ratio against concurrency 1 measured in the same run.
Uses the demo model (tiny random weights), so model compute is small and the overhead shows.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import time

import numpy as np
import requests
import torch

from _graph import start_graph, stop_graph

TEXT = "Good morning, how are you today?"


def speak(url: str, seed: int) -> tuple[float, float]:
    started = time.perf_counter()
    r = requests.post(url + "/v1/audio/speech", timeout=600, json={
        "input": TEXT, "voice": "demo", "language": "en", "response_format": "pcm", "seed": seed})
    r.raise_for_status()
    return time.perf_counter() - started, len(r.content) / 2 / 32000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--concurrency", default="1,4,16")
    args = parser.parse_args()
    torch.set_num_threads(1)  # replicas run one thread each: compare like with like

    url, config = start_graph()
    try:
        from deployments.voice_store import VoiceStore
        from models import audio
        from models.pipeline import Pipeline, SynthesisSettings
        from models.t2s import SamplingParams
        from serve_app.model_files import resolve_model_paths
        from serve_app.settings import Settings

        settings = Settings.from_args(config["applications"][0]["args"])
        pipeline = Pipeline(resolve_model_paths(settings))
        store = VoiceStore(settings.data_dir)
        voice = store.get("demo")
        samples, sr = store.reference_audio("demo")
        prompt = pipeline.voice_prompt(audio.resample(samples, sr, audio.SAMPLE_RATE), voice.transcript, voice.language)
        synth = SynthesisSettings(sampling=SamplingParams(), seed=1)

        speak(url, 1)  # warm: voice prompt cached, models loaded
        pipeline.synthesize(prompt, TEXT, "en", synth)
        local = [_timed(lambda: pipeline.synthesize(prompt, TEXT, "en", synth)) for _ in range(args.repeats)]
        graph = [speak(url, 1)[0] for _ in range(args.repeats)]
        local_ms, graph_ms = statistics.median(local) * 1e3, statistics.median(graph) * 1e3
        print(f"latency, one request ({TEXT!r}): in-process Pipeline {local_ms:.0f} ms, Serve graph "
              f"{graph_ms:.0f} ms -> overhead {graph_ms - local_ms:.0f} ms per request, ratio {graph_ms / local_ms:.2f}x")

        rows = []
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            n = concurrency * args.requests_per_client
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                results = list(pool.map(lambda i: speak(url, 100 + i), range(n)))
            wall = time.perf_counter() - started
            rows.append({"concurrency": concurrency, "requests": n, "req_per_s": n / wall,
                         "audio_s_per_s": sum(a for _, a in results) / wall,
                         "p50_ms": float(np.percentile([t for t, _ in results], 50) * 1e3)})
        base = rows[0]
        print(f"{'concurrency':>11} {'req/s':>7} {'audio s/s':>9} {'p50 ms':>8} {'x conc. 1':>9}")
        for row in rows:
            row["ratio_vs_c1"] = row["audio_s_per_s"] / base["audio_s_per_s"]
            print(f"{row['concurrency']:>11} {row['req_per_s']:>7.2f} {row['audio_s_per_s']:>9.2f} "
                  f"{row['p50_ms']:>8.0f} {row['ratio_vs_c1']:>9.2f}")
        print(json.dumps({"bench": "serve", "pipeline_ms": local_ms, "graph_ms": graph_ms,
                          "overhead_ms": graph_ms - local_ms, "throughput": rows}))
    finally:
        stop_graph()


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
