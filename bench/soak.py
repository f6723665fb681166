"""Soak test: thousands of mixed requests against the Serve graph while each replica's memory is
sampled; reports how much each replica grew after warm-up (target: < 5 %).

    python bench/soak.py [--requests 1000] [--concurrency 4] [--sample-every 3] [--max-growth 5]

Starts configs/cpu.yaml on a local Ray at 127.0.0.1 (`_graph.start_graph`, demo model unless
--gpt/--sovits/... are given) and sends a fixed mix, cycling (so every kind recurs all along):

    speech       POST /v1/audio/speech, whole pcm/wav/mp3/ogg/flac, varied text and seed
    stream       the same, streamed
    sse          stream_format=sse
    tts          GET /tts (upstream dialect)
    abandon      a streamed request the client drops after the first chunk (cancellation path)
    bad          a request the server must refuse (unknown voice/language, text too long)
    reads        GET /v1/voices, /v1/models, /healthz
    voice        create a voice from a 4 s clip, speak with it once, delete it (speaker-cache churn)

Memory: every few seconds the memory of each Ray Serve replica process (found by its process
title `ray::ServeReplica:<app>:<deployment>` among this process's descendants, so other Ray
clusters on the machine are ignored) is sampled with psutil, two ways:

    private (USS)  pages only this process holds: what a leak in the replica grows
    RSS            private pages plus every shared page it has touched, which includes Ray's
                   object store: a replica that returns large arrays (the vocoder's audio) writes
                   them into the store's shared mapping and its RSS climbs as the store's
                   allocator moves through that mapping, up to the store's fixed size

Growth per replica = median of the last three samples over the median of the first three after
warm-up (the first --warmup fraction of the requests), judged on private memory (--memory rss to
judge RSS). Prints a table and one JSON line; exits 1 if a replica grew more than --max-growth %.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import io
import itertools
import json
import re
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import psutil
import requests
import soundfile as sf

from _graph import start_graph, stop_graph

TITLE_RE = re.compile(r"ray::ServeReplica:(?P<app>[^:\s]+):(?P<deployment>[A-Za-z0-9_-]+)")
TEXTS = ["Good morning, how are you today?", "The quick brown fox jumps over the lazy dog.",
         "今天天气很好，我们出去走走吧。", "Numbers like 3.14 and 2024 are read out loud.",
         "Short one.", "これはテストです。", "Hello! 你好！Mixed languages, one request."]
FORMATS = ["pcm", "wav", "mp3", "ogg", "flac"]
KINDS = ["speech", "reads", "stream", "speech", "bad", "tts", "speech", "sse", "reads", "abandon",
         "speech", "stream", "voice"]
TIMEOUT_S = 300


# ------------------------------------------------------------------------------------ requests
def clip_wav(seconds: float = 4.0, sr: int = 16000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    tone = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.4 * np.sin(2 * np.pi * 4 * t))
    buf = io.BytesIO()
    sf.write(buf, tone.astype(np.float32), sr, format="WAV")
    return buf.getvalue()


CLIP = clip_wav()


def send(session: requests.Session, url: str, kind: str, i: int) -> str:
    """One request of `kind`; returns an outcome label ("200", "400", "error:...")."""
    text = TEXTS[i % len(TEXTS)]
    body = {"model": "tts-1", "voice": "demo", "input": text, "language": "auto", "seed": i,
            "response_format": FORMATS[i % len(FORMATS)]}
    if kind == "speech":
        r = session.post(url + "/v1/audio/speech", json=body, timeout=TIMEOUT_S)
    elif kind == "stream":
        r = session.post(url + "/v1/audio/speech", json=body | {"stream": True}, stream=True, timeout=TIMEOUT_S)
        for _ in r.iter_content(16384):
            pass
    elif kind == "sse":
        r = session.post(url + "/v1/audio/speech", json=body | {"stream_format": "sse"}, stream=True,
                         timeout=TIMEOUT_S)
        for _ in r.iter_lines():
            pass
    elif kind == "abandon":
        r = session.post(url + "/v1/audio/speech", json=body | {"stream": True, "input": text * 3},
                         stream=True, timeout=TIMEOUT_S)
        next(r.iter_content(1024), None)
        r.close()  # the server must stop this request's work in every stage
    elif kind == "tts":
        r = session.get(url + "/tts", params={"text": text, "text_lang": "auto", "voice": "demo",
                                              "media_type": "wav", "seed": i}, timeout=TIMEOUT_S)
    elif kind == "bad":
        bad = [body | {"voice": "nobody"}, body | {"language": "xx"}, body | {"input": "x" * 100_000}]
        r = session.post(url + "/v1/audio/speech", json=bad[i % len(bad)], timeout=TIMEOUT_S)
        return "4xx-ok" if 400 <= r.status_code < 500 else f"bad->{r.status_code}"
    elif kind == "reads":
        path = ("/v1/voices", "/v1/models", "/healthz")[i % 3]
        r = session.get(url + path, timeout=TIMEOUT_S)
    elif kind == "voice":
        r = session.post(url + "/v1/voices", files={"file": ("clip.wav", CLIP, "audio/wav")},
                         data={"transcript": "A short test clip.", "language": "en"}, timeout=TIMEOUT_S)
        if r.status_code != 201:
            return f"voice-create->{r.status_code}"
        voice = r.json()["id"]
        s = session.post(url + "/v1/audio/speech", json=body | {"voice": voice}, timeout=TIMEOUT_S)
        d = session.delete(f"{url}/v1/voices/{voice}", timeout=TIMEOUT_S)
        return "200" if (s.status_code, d.status_code) == (200, 200) else f"voice->{s.status_code}/{d.status_code}"
    else:
        raise ValueError(kind)
    return str(r.status_code)


# -------------------------------------------------------------------------------------- memory
@dataclass
class ReplicaSeries:
    deployment: str
    pid: int
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (time, rss, uss bytes)


def replica_processes() -> dict[int, str]:
    """pid -> deployment, for Serve replicas started by this process's Ray."""
    out = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline()) or proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        match = TITLE_RE.search(title)
        if match:
            out[proc.pid] = match["deployment"]
    return out


class Sampler(threading.Thread):
    def __init__(self, every_s: float):
        super().__init__(daemon=True)
        self.every_s = every_s
        self.series: dict[int, ReplicaSeries] = {}
        self.stop = threading.Event()

    def sample(self) -> None:
        now = time.monotonic()
        for pid, deployment in replica_processes().items():
            try:
                mem = psutil.Process(pid).memory_full_info()  # reads smaps: uss is exact
            except psutil.Error:
                continue
            self.series.setdefault(pid, ReplicaSeries(deployment, pid)).samples.append((now, mem.rss, mem.uss))

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.every_s)


def growth(series: ReplicaSeries, warm_at: float, judged: str) -> dict | None:
    if sum(1 for t, *_ in series.samples if t >= warm_at) < 6:
        return None  # replica started late or died early: too few samples to judge
    row = {"deployment": series.deployment, "pid": series.pid}
    for column, name in ((1, "rss"), (2, "uss")):
        after = [sample[column] for sample in series.samples if sample[0] >= warm_at]
        start, end = statistics.median(after[:3]), statistics.median(after[-3:])
        # the shape tells a leak (keeps climbing) from an allocator settling (climbs, then flat)
        quarters = [round(statistics.median(after[max(0, i * len(after) // 4 - 1):i * len(after) // 4 + 2]) / 2**20)
                    for i in (1, 2, 3, 4)]
        row |= {"samples": len(after), f"{name}_quarters_mb": quarters, f"{name}_start_mb": round(start / 2**20, 1),
                f"{name}_end_mb": round(end / 2**20, 1), f"{name}_growth_pct": round(100 * (end - start) / start, 2)}
    row["growth_pct"] = row[f"{judged}_growth_pct"]
    return row


# ---------------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="total requests (default: ~5 min on 2 CPUs)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sample-every", type=float, default=3.0, help="seconds between memory samples")
    parser.add_argument("--memory", choices=["uss", "rss"], default="uss",
                        help="which measure the target judges (default: private memory)")
    parser.add_argument("--warmup", type=float, default=0.2, help="fraction of requests before the baseline")
    parser.add_argument("--max-growth", type=float, default=5.0, help="allowed growth per replica, percent")
    parser.add_argument("--num-cpus", type=float, default=8)
    for name in ("gpt", "sovits", "hubert-dir", "bert-dir"):
        parser.add_argument(f"--{name}", default="", help="real checkpoints instead of the demo model")
    args = parser.parse_args()

    model = {k.replace("-", "_"): getattr(args, k.replace("-", "_")) for k in ("gpt", "sovits", "hubert-dir", "bert-dir")}
    url, _ = start_graph(model={k: v for k, v in model.items() if v} or None, num_cpus=args.num_cpus)
    sampler = Sampler(args.sample_every)
    outcomes: Counter = Counter()
    by_kind: dict[str, Counter] = defaultdict(Counter)
    warm_at: list[float] = []
    done = itertools.count(1)
    warm_n = max(1, int(args.requests * args.warmup))
    lock = threading.Lock()
    local = threading.local()

    def one(i: int) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        kind = KINDS[i % len(KINDS)]
        try:
            label = send(session, url, kind, i)
        except requests.RequestException as exc:
            label = f"error:{type(exc).__name__}"
        with lock:
            outcomes[label] += 1
            by_kind[kind][label] += 1
            n = next(done)
            if n == warm_n:
                warm_at.append(time.monotonic())
            if n % 100 == 0:
                print(f"  {n}/{args.requests} requests, {time.monotonic() - started:.0f} s", flush=True)

    try:
        sampler.start()
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(one, range(args.requests)))
        wall = time.monotonic() - started
        sampler.sample()
        sampler.stop.set()
        sampler.join()

        rows = [g for s in sampler.series.values()
                if (g := growth(s, warm_at[0] if warm_at else started, args.memory))]
        rows.sort(key=lambda r: (r["deployment"], r["pid"]))
        print(f"\n{args.requests} requests in {wall:.0f} s ({args.requests / wall:.1f} req/s), "
              f"concurrency {args.concurrency}; outcomes: {dict(outcomes)}")
        print(f"target: {args.memory.upper()} growth < {args.max_growth:g} % after warm-up")
        print(f"{'replica':<13} {'samples':>7} {'USS start MB':>12} {'end MB':>7} {'growth %':>8} "
              f"{'USS quarters MB':>20} {'RSS start MB':>12} {'end MB':>7} {'growth %':>8}")
        for r in rows:
            flag = "" if r["growth_pct"] < args.max_growth else "  <-- over target"
            print(f"{r['deployment']:<13} {r['samples']:>7} {r['uss_start_mb']:>12.1f} {r['uss_end_mb']:>7.1f} "
                  f"{r['uss_growth_pct']:>8.2f} {'/'.join(str(q) for q in r['uss_quarters_mb']):>20} "
                  f"{r['rss_start_mb']:>12.1f} {r['rss_end_mb']:>7.1f} {r['rss_growth_pct']:>8.2f}{flag}")
        failed = {k: v for k, v in outcomes.items() if k not in ("200", "4xx-ok")}
        worst = max((r["growth_pct"] for r in rows), default=0.0)
        print(json.dumps({"bench": "soak", "requests": args.requests, "concurrency": args.concurrency,
                          "wall_s": round(wall, 1), "req_per_s": round(args.requests / wall, 2),
                          "outcomes": dict(outcomes), "by_kind": {k: dict(v) for k, v in by_kind.items()},
                          "failed": failed, "judged": args.memory, "max_growth_pct": worst,
                          "target_pct": args.max_growth,
                          "replicas": rows}))
        return 0 if worst < args.max_growth and not failed else 1
    finally:
        sampler.stop.set()
        stop_graph()


if __name__ == "__main__":
    sys.exit(main())
