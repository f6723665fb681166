"""GPT aggregate throughput by scheduling policy, at the real v2 dimensions (random weights).

    .venv/bin/python bench/bench_gpt.py [--threads 1] [--requests 16] [--concurrency 1,4,8,16]

The same mixed workload (requests of different lengths, 16..80 new tokens) decoded three ways:
* batch 1: one request at a time;
* static batching (what `@serve.batch` gives): waves of `c` requests that start together, and a
  wave holds its slots until its longest request ends;
* continuous batching (the GPT deployment): up to `c` requests decode at once and a waiting request
  joins at the next step after one leaves.
Prints aggregate tokens/s and each policy's ratio against batch 1, all measured in this run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_models import PROMPT_LEN, TEXT_LEN, build_t2s, make_request  # noqa: E402
from models.t2s import SamplingParams, T2SEngine  # noqa: E402


def workload(n: int) -> list[int]:
    """New-token counts of n requests: a spread of sentence lengths (0.6 to 3.2 s of audio)."""
    return [16 + (i * 37) % 65 for i in range(n)]


def run(model, lengths: list[int], concurrency: int, continuous: bool) -> float:
    """Seconds to decode every request with at most `concurrency` rows at once."""
    engine = T2SEngine(model, max_batch=concurrency, max_seq=TEXT_LEN + PROMPT_LEN + max(lengths))
    pending = list(enumerate(lengths))[::-1]
    started = time.perf_counter()
    while pending or engine.num_active:
        may_admit = continuous or engine.num_active == 0  # static: a new wave only when all left
        while may_admit and pending and engine.free_slots:
            i, n = pending.pop()
            phones, bert, prompt = make_request(i)
            engine.add(i, phones, bert, prompt, SamplingParams(max_new_tokens=n, seed=i))
        engine.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", default="1,4,8,16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_t2s()
    lengths = workload(args.requests)
    tokens = sum(lengths)
    with torch.inference_mode():
        run(model, lengths[:2], 2, True)  # warm-up
        base = tokens / run(model, lengths, 1, True)
        rows = [{"concurrency": 1, "policy": "batch 1", "tokens_per_s": base, "ratio": 1.0}]
        for c in [int(x) for x in args.concurrency.split(",") if int(x) > 1]:
            for policy, continuous in (("static", False), ("continuous", True)):
                rate = tokens / run(model, lengths, c, continuous)
                rows.append({"concurrency": c, "policy": policy, "tokens_per_s": rate, "ratio": rate / base})
    print(f"{args.requests} requests, {tokens} tokens, torch threads {args.threads}")
    print(f"{'concurrency':>11} {'policy':>11} {'tokens/s':>9} {'x batch 1':>9}")
    for r in rows:
        print(f"{r['concurrency']:>11} {r['policy']:>11} {r['tokens_per_s']:>9.1f} {r['ratio']:>9.2f}")
    print(json.dumps({"bench": "gpt_scheduling", "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
