"""Time to first audio and chunk pacing through HTTP, streamed vs not.

    python bench/bench_streaming.py [--repeats 3]

For a 1-sentence and a 5-sentence text, at concurrency 1 and 8, measures over the Serve graph:
* TTFA: request sent -> first non-silent audio byte (streamed PCM), and the non-streamed latency
  (request -> whole response); their ratio;
* the gaps between chunks, and underruns: a chunk that arrives later than the audio already
  delivered would have finished playing (the listener would hear a gap);
* total time, streamed and not.
Uses the demo model; every figure is a ratio or a time measured in the same run.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import time

import numpy as np
import requests

from _graph import start_graph, stop_graph

TEXTS = {
    "1 sentence": "The quick brown fox jumps over the lazy dog near the river bank.",
    "5 sentences": ("The quick brown fox jumps over the lazy dog. It was a sunny day. Birds were singing in "
                    "the trees. Children played in the park. Everyone enjoyed the afternoon."),
}
SR = 32000


def streamed(url: str, text: str, seed: int) -> dict:
    body = {"input": text, "voice": "demo", "language": "en", "response_format": "pcm", "stream": True, "seed": seed}
    started = time.perf_counter()
    arrivals, delivered, ttfa, underruns, pending = [], 0.0, None, 0, b""
    with requests.post(url + "/v1/audio/speech", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for chunk in r.iter_content(chunk_size=None):
            now = time.perf_counter() - started
            pending += chunk
            usable = len(pending) // 2 * 2
            samples = np.frombuffer(pending[:usable], "<i2")
            pending = pending[usable:]
            if ttfa is None and samples.size and np.abs(samples).max() > 32:
                ttfa, play_start = now, now
            if ttfa is not None:
                if now > play_start + delivered + 1e-3 and delivered > 0:
                    underruns += 1
                    play_start = now - delivered  # playback resumes when the chunk arrives
                delivered += samples.size / SR
            arrivals.append(now)
    gaps = np.diff(arrivals) if len(arrivals) > 1 else np.zeros(1)
    return {"ttfa": ttfa or 0.0, "total": time.perf_counter() - started, "audio_s": delivered,
            "max_gap": float(gaps.max()), "underruns": underruns}


def whole(url: str, text: str, seed: int) -> float:
    started = time.perf_counter()
    r = requests.post(url + "/v1/audio/speech", timeout=600, json={
        "input": text, "voice": "demo", "language": "en", "response_format": "pcm", "seed": seed})
    r.raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    url, _ = start_graph()
    rows = []
    try:
        streamed(url, TEXTS["1 sentence"], 0)  # warm
        for name, text in TEXTS.items():
            for concurrency in (1, 8):
                runs, wholes = [], []
                for repeat in range(args.repeats):
                    seeds = range(repeat * 100, repeat * 100 + concurrency)
                    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                        runs += list(pool.map(lambda s: streamed(url, text, s), seeds))
                        wholes += list(pool.map(lambda s: whole(url, text, s), seeds))
                ttfa = statistics.median(r["ttfa"] for r in runs)
                latency = statistics.median(wholes)
                rows.append({"text": name, "concurrency": concurrency, "ttfa_s": ttfa,
                             "streamed_total_s": statistics.median(r["total"] for r in runs),
                             "whole_latency_s": latency, "ttfa_over_whole": ttfa / latency,
                             "max_gap_s": max(r["max_gap"] for r in runs),
                             "underruns": sum(r["underruns"] for r in runs), "requests": len(runs),
                             "audio_s": statistics.median(r["audio_s"] for r in runs)})
    finally:
        stop_graph()
    print(f"{'text':<12} {'conc':>4} {'TTFA s':>7} {'whole s':>8} {'TTFA/whole':>10} {'stream total':>12} "
          f"{'max gap':>8} {'underruns':>9}")
    for r in rows:
        print(f"{r['text']:<12} {r['concurrency']:>4} {r['ttfa_s']:>7.3f} {r['whole_latency_s']:>8.3f} "
              f"{r['ttfa_over_whole']:>10.2f} {r['streamed_total_s']:>12.3f} {r['max_gap_s']:>8.3f} "
              f"{r['underruns']:>5}/{r['requests']}")
    print(json.dumps({"bench": "streaming", "rows": rows}))


if __name__ == "__main__":
    main()
