"""GPT aggregate throughput by scheduling policy, at the real v2 dimensions (random weights).

    .venv/bin/python bench/bench_gpt.py [--threads 1] [--requests 16] [--concurrency 1,4,8,16]
                                        [--dtype float32|bfloat16] [--compile] [--load 3]

The same mixed workload (requests of different lengths, 16..80 new tokens) decoded three ways:
* batch 1: one request at a time;
* static batching (what `@serve.batch` gives): waves of `c` requests that start together, and a
  wave holds its slots until its longest request ends;
* continuous batching (the GPT deployment): up to `c` requests decode at once and a waiting request
  joins at the next step after one leaves.
Prints aggregate tokens/s and each policy's ratio against batch 1, all measured in this run.

Then the same requests *arriving* over time (a seeded Poisson process at --load times the rate
batch 1 can serve, as measured above) instead of all at once: this is where the policies differ.
Static waves make a newcomer wait for the whole running wave; continuous batching admits it at
the next step. Reports tokens/s over the run and each request's latency (arrival -> last token).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import deque
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_models import PROMPT_LEN, TEXT_LEN, build_t2s, make_request  # noqa: E402
from models.t2s import SamplingParams, T2SEngine  # noqa: E402


def workload(n: int) -> list[int]:
    """New-token counts of n requests: a spread of sentence lengths (0.6 to 3.2 s of audio)."""
    return [16 + (i * 37) % 65 for i in range(n)]


COMPILE = False  # --compile: every engine runs torch.compile'd decode steps


def new_engine(model, concurrency: int, lengths: list[int]) -> T2SEngine:
    return T2SEngine(model, max_batch=concurrency, max_seq=TEXT_LEN + PROMPT_LEN + max(lengths), compile=COMPILE)


def run(model, lengths: list[int], concurrency: int, continuous: bool) -> float:
    """Seconds to decode every request with at most `concurrency` rows at once."""
    engine = new_engine(model, concurrency, lengths)
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


def poisson_arrivals(n: int, rate_per_s: float, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate_per_s)
    return out


def run_arrivals(model, lengths: list[int], arrivals: list[float], concurrency: int,
                 continuous: bool) -> tuple[float, list[float]]:
    """(seconds from the first arrival to the last token, latency of each request in seconds)."""
    engine = new_engine(model, concurrency, lengths)
    future = deque(range(len(lengths)))
    waiting: deque[int] = deque()
    finished_at: dict[int, float] = {}
    start = time.perf_counter()
    while future or waiting or engine.num_active:
        now = time.perf_counter() - start
        while future and arrivals[future[0]] <= now:
            waiting.append(future.popleft())
        may_admit = continuous or engine.num_active == 0
        while may_admit and waiting and engine.free_slots:
            i = waiting.popleft()
            phones, bert, prompt = make_request(i)
            engine.add(i, phones, bert, prompt, SamplingParams(max_new_tokens=lengths[i], seed=i))
        if not engine.num_active:
            time.sleep(max(0.0, arrivals[future[0]] - now))  # idle until the next arrival
            continue
        for out in engine.step():
            if out.finished:
                finished_at[out.request_id] = time.perf_counter() - start
    latencies = [finished_at[i] - arrivals[i] for i in range(len(lengths))]
    return max(finished_at.values()), latencies


def precision_deviation(dtype: torch.dtype, requests: int = 4, steps: int = 32) -> dict:
    """How far `dtype` weights stray from float32 on the same weights: both models score the
    float32 model's own tokens (teacher forcing), `steps` positions of each of `requests`."""
    from models.t2s import generate

    reference, low = build_t2s(), build_t2s().to(dtype)
    agree, overlap, worst = [], [], 0.0
    for i in range(requests):
        phones, bert, prompt = make_request(i)
        tokens = generate(reference, phones, bert, prompt, SamplingParams(max_new_tokens=steps, seed=i)).tokens
        audio = torch.cat([prompt, tokens[:-1]])
        first = len(phones) + len(prompt) - 1  # the position that predicts the first new token
        want = reference(phones, bert, audio)[first:].float()
        got = low(phones, bert.to(dtype), audio)[first:].float()
        agree.append((want.argmax(-1) == got.argmax(-1)).float().mean().item())
        top_want, top_got = want.topk(15).indices.tolist(), got.topk(15).indices.tolist()
        overlap.append(sum(len(set(a) & set(b)) for a, b in zip(top_want, top_got)) / (15 * len(top_want)))
        worst = max(worst, ((want - got).abs().max() / want.abs().max()).item())
    return {"greedy_agreement": statistics.mean(agree), "top15_overlap": statistics.mean(overlap),
            "max_logit_error_rel": worst}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="GPT weights and KV cache (bfloat16 pays on CPUs with avx512_bf16/AMX)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    parser.add_argument("--load", type=float, default=3.0,
                        help="arrival rate as a multiple of what batch 1 serves (0 = skip arrivals)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global COMPILE
    COMPILE = args.compile
    model = build_t2s().to(getattr(torch, args.dtype))
    lengths = workload(args.requests)
    tokens = sum(lengths)
    with torch.inference_mode():
        for c in (1, 2):  # warm-up (and, with --compile, compilation: batch 1 and batch > 1)
            new_engine(model, c, lengths).warm_up()
        batch1_s = run(model, lengths, 1, True)
        base = tokens / batch1_s
        concurrencies = [int(x) for x in args.concurrency.split(",") if int(x) > 1]
        rows = [{"concurrency": 1, "policy": "batch 1", "tokens_per_s": base, "ratio": 1.0}]
        for c in concurrencies:
            for policy, continuous in (("static", False), ("continuous", True)):
                rate = tokens / run(model, lengths, c, continuous)
                rows.append({"concurrency": c, "policy": policy, "tokens_per_s": rate, "ratio": rate / base})
        arrival_rows = []
        if args.load > 0:
            rate_per_s = args.load * len(lengths) / batch1_s
            arrivals = poisson_arrivals(len(lengths), rate_per_s)
            policies = [(1, "batch 1", True)] + [(max(concurrencies), p, c)
                                                 for p, c in (("static", False), ("continuous", True))]
            for c, policy, continuous in policies:
                elapsed, latencies = run_arrivals(model, lengths, arrivals, c, continuous)
                arrival_rows.append({"concurrency": c, "policy": policy, "tokens_per_s": tokens / elapsed,
                                     "latency_mean_s": statistics.mean(latencies),
                                     "latency_max_s": max(latencies)})
    print(f"{args.requests} requests, {tokens} tokens, torch threads {args.threads}, {args.dtype}"
          f"{', compiled' if args.compile else ''}")
    print(f"{'concurrency':>11} {'policy':>11} {'tokens/s':>9} {'x batch 1':>9}")
    for r in rows:
        print(f"{r['concurrency']:>11} {r['policy']:>11} {r['tokens_per_s']:>9.1f} {r['ratio']:>9.2f}")
    if arrival_rows:
        print(f"arrivals: Poisson at {args.load:g}x the batch-1 rate ({rate_per_s:.2f} requests/s)")
        print(f"{'concurrency':>11} {'policy':>11} {'tokens/s':>9} {'mean latency s':>14} {'max latency s':>13}")
        for r in arrival_rows:
            print(f"{r['concurrency']:>11} {r['policy']:>11} {r['tokens_per_s']:>9.1f} "
                  f"{r['latency_mean_s']:>14.2f} {r['latency_max_s']:>13.2f}")
    deviation = None
    if args.dtype != "float32":
        with torch.inference_mode():
            deviation = precision_deviation(getattr(torch, args.dtype))
        print(f"{args.dtype} vs float32 (4 requests x 32 teacher-forced steps): greedy token agrees "
              f"{deviation['greedy_agreement']:.1%}, top-15 overlap {deviation['top15_overlap']:.1%}, "
              f"max logit error {deviation['max_logit_error_rel']:.2%} of the max logit")
    print(json.dumps({"bench": "gpt_scheduling", "deviation": deviation, "threads": args.threads, "dtype": args.dtype,
                      "compile": args.compile, "rows": rows,
                      "arrivals": {"load": args.load, "rows": arrival_rows}}))


if __name__ == "__main__":
    main()
