"""Cost of the generation guard (models/guard.py) per sentence, against the T2S time it guards.

    .venv/bin/python bench/bench_guard.py [--threads 1] [--t2s-tokens 24] [--batch 1,8] [--device cpu]

* Guard: `check_tokens` (whole sentence, numpy) and `StreamingGuard` (token by token, fed in
  48-token chunks, `finish` included) on speech-like token sequences of 50..1500 tokens, and on
  sequences where every token is distinct (the most run-length units). Median of the fastest
  half of many runs.
* T2S: the decode engine at the real v2 dims (random weights, as bench/bench_models.py), ms per
  generated token (per row at batch > 1) after a prefill of 60 phones + 150 prompt tokens; the
  T2S time of a sentence is estimated as tokens x ms/token (prefill not counted, which only
  flatters the guard's share).
Target: the guard's cost under 1 % of the T2S time of the same sentence. Figures depend on the
host: compare only ratios from the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.guard import SentenceContext, StreamingGuard, check_tokens  # noqa: E402
from models.t2s import SamplingParams, T2SConfig, T2SEngine, Text2Semantic  # noqa: E402

TEXT_LEN, PROMPT_LEN = 60, 150
SILENCE = frozenset({0, 7, 9})
LENGTHS = (50, 100, 200, 400, 800, 1500)


def speech_tokens(rng, n_tokens: int, tpp: float = 3.0) -> np.ndarray:
    """Speech-like tokens: phones of ~tpp tokens (one or two tokens each), edge silence."""
    out = [0] * 8
    while len(out) < n_tokens - 10:
        d = max(1, int(round(rng.gamma(4.0, tpp * 0.2))))
        a, b = rng.integers(10, 1024, size=2)
        split = int(rng.integers(0, d + 1))
        out += [int(a)] * split + [int(b)] * (d - split)
    out += [0, 7] * 10
    return np.array(out[:n_tokens])


def seconds(fn, repeats: int) -> float:
    """Median of the fastest half of `repeats` runs: the host is shared and noisy."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(sorted(times)[: max(1, repeats // 2)])


def guard_costs(repeats: int) -> dict[str, dict[int, float]]:
    rng = np.random.default_rng(0)
    costs: dict[str, dict[int, float]] = {"check_tokens": {}, "streaming": {}, "check_worst": {}}
    for n in LENGTHS:
        tokens = speech_tokens(rng, n)
        context = SentenceContext(max(1, n // 3), 3.0, 0, SILENCE)
        verdict = context.check(tokens)
        assert verdict.ok, verdict.describe()
        costs["check_tokens"][n] = seconds(lambda: context.check(tokens), repeats)

        def stream():
            guard = StreamingGuard(context)
            for i in range(0, n, 48):
                guard.push(tokens[i:i + 48])
            guard.finish()

        costs["streaming"][n] = seconds(stream, max(5, repeats // 4))
        worst = np.arange(n) % 1000 + 10  # every token a unit of its own
        costs["check_worst"][n] = seconds(lambda: context.check(worst), repeats)
    return costs


def build_t2s(device: str) -> Text2Semantic:
    torch.manual_seed(0)
    model = Text2Semantic(T2SConfig()).eval().requires_grad_(False)
    with torch.no_grad():
        model.predict.weight[T2SConfig().eos] = 0.0  # EOS never wins: every run decodes all tokens
    return model.to(device)


def t2s_ms_per_token(model: Text2Semantic, tokens: int, batch: int) -> float:
    """Wall ms per generated token per row, decode steps only, best of 2."""
    dev = model.device
    engine = T2SEngine(model, max_batch=batch, max_seq=TEXT_LEN + PROMPT_LEN + tokens + 1)
    best = float("inf")
    for rep in range(2):
        for i in range(batch):
            g = torch.Generator().manual_seed(i)
            engine.add((rep, i), torch.randint(0, 732, (TEXT_LEN,), generator=g).to(dev),
                       torch.randn(1024, TEXT_LEN, generator=g).to(dev),
                       torch.randint(0, 1024, (PROMPT_LEN,), generator=g).to(dev),
                       SamplingParams(seed=i, max_new_tokens=tokens))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        while engine.num_active:
            engine.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 1000 * best / tokens / batch


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--t2s-tokens", type=int, default=24, help="tokens decoded to time T2S")
    ap.add_argument("--batch", default="1,8", help="engine batch sizes to time")
    ap.add_argument("--repeats", type=int, default=200, help="guard timings: runs per figure")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, T2S on {args.device}")

    costs = guard_costs(args.repeats)
    print("\nGuard cost per sentence (microseconds)")
    print(f"  {'tokens':>6}{'check_tokens':>14}{'worst case':>12}{'streaming':>12}{'stream/token':>14}")
    for n in LENGTHS:
        c, w, s = costs["check_tokens"][n], costs["check_worst"][n], costs["streaming"][n]
        print(f"  {n:>6}{1e6 * c:>14.0f}{1e6 * w:>12.0f}{1e6 * s:>12.0f}{1e6 * s / n:>14.2f}")

    model = build_t2s(args.device)
    t2s_ms_per_token(model, 4, 1)  # warm-up
    results = {"guard": costs, "t2s_ms_per_token": {}}
    for batch in (int(b) for b in args.batch.split(",")):
        ms = t2s_ms_per_token(model, args.t2s_tokens, batch)
        results["t2s_ms_per_token"][batch] = ms
        print(f"\nT2S at v2 dims, batch {batch}: {ms:.2f} ms per token per row "
              f"(a {LENGTHS[1]}-token sentence: {ms * LENGTHS[1] / 1000:.2f} s)")
        print(f"  {'tokens':>6}{'T2S s':>9}{'check %':>10}{'worst %':>10}{'stream %':>10}")
        for n in LENGTHS:
            t2s = ms * n / 1000
            shares = [100 * costs[k][n] / t2s for k in ("check_tokens", "check_worst", "streaming")]
            print(f"  {n:>6}{t2s:>9.2f}" + "".join(f"{x:>10.3f}" for x in shares))
    worst_share = max(100 * max(costs[k][n] for k in costs) / (ms * n / 1000)
                      for n in LENGTHS for ms in results["t2s_ms_per_token"].values())
    print(f"\nlargest guard share of T2S time in this run: {worst_share:.3f} % (target < 1 %)")
    results["worst_share_percent"] = worst_share
    return results


if __name__ == "__main__":
    main()
