"""Model-level benchmarks at the real GPT-SoVITS v2 dimensions (random weights, no files).

    .venv/bin/python bench/bench_models.py [--threads N] [--tokens 64] [--naive-tokens 16]

T2S: ms/token with the preallocated slot KV cache vs a naive decode that recomputes the whole
sequence every step, and batched engine throughput at several batch sizes. Figures depend on
the host: compare only ratios measured in the same run. Both clocks are printed: on a shared,
busy host use the CPU-time columns with `--threads 1`.
SoVITS + vocoder: real-time factor (`run_sovits_bench`; backends compared in bench/bench_sovits.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.t2s import SamplingParams, T2SConfig, T2SEngine, Text2Semantic  # noqa: E402

TEXT_LEN = 60  # phones: prompt text + one target sentence
PROMPT_LEN = 150  # semantic tokens of a 6 s reference clip (25 Hz)
EOS = T2SConfig().eos


def build_t2s(seed: int = 0) -> Text2Semantic:
    """v2 dims (512 wide, 16 heads, 24 layers), random weights; EOS can never win, so every
    run decodes exactly the number of tokens asked for."""
    torch.manual_seed(seed)
    model = Text2Semantic(T2SConfig()).eval().requires_grad_(False)
    with torch.no_grad():
        model.predict.weight[EOS] = 0.0  # logit 0: below the top 15 of 1024 random logits
    return model


def make_request(seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 732, (TEXT_LEN,), generator=g), torch.randn(1024, TEXT_LEN, generator=g),
            torch.randint(0, 1024, (PROMPT_LEN,), generator=g))


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). On a shared host the CPU clock is the
    steadier one; with one torch thread it is the compute time itself."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def cached_decode(model, n_tokens: int, batch: int = 1, repeats: int = 1):
    """((wall, cpu) prefill seconds, (wall, cpu) decode seconds) for `batch` requests of
    n_tokens each, all added before the first step; the best of `repeats` runs."""
    params = SamplingParams(max_new_tokens=n_tokens)
    engine = T2SEngine(model, max_batch=batch, max_seq=TEXT_LEN + PROMPT_LEN + n_tokens)
    requests = [make_request(i) for i in range(batch)]

    def prefill():
        for i, req in enumerate(requests):
            engine.add(i, *req, params.with_seed(i))

    def decode():
        while engine.num_active:
            engine.step()

    runs = [(timed(prefill), timed(decode)) for _ in range(repeats)]
    best = lambda part, clock: min(r[part][clock] for r in runs)  # noqa: E731
    return (best(0, 0), best(0, 1)), (best(1, 0), best(1, 1))


def naive_decode(model, n_tokens: int) -> tuple[float, float]:
    """(wall, cpu) seconds for n_tokens greedy tokens, recomputing everything every step."""
    phones, bert, prompt = make_request(0)

    def run():
        audio = prompt
        with torch.inference_mode():
            for _ in range(n_tokens):
                logits = model(phones, bert, audio, last_only=True)
                audio = torch.cat([audio, logits[:-1].argmax()[None]])

    return timed(run)


def run_t2s_bench(tokens: int, naive_tokens: int, batch_sizes=(1, 4, 16), repeats: int = 3) -> dict:
    model = build_t2s()
    cached_decode(model, 4)  # warm-up (allocator, kernels)
    results = {}

    # 1. KV cache vs recompute, same number of tokens from the same start.
    _, cached = cached_decode(model, naive_tokens, repeats=repeats)
    naive = naive_decode(model, naive_tokens)
    print(f"\nT2S decode at v2 dims, batch 1, {TEXT_LEN} phones + {PROMPT_LEN} prompt tokens, "
          f"{naive_tokens} new tokens")
    print(f"  {'path':<24}{'ms/token wall':>15}{'ms/token cpu':>14}")
    for name, (wall, cpu) in (("naive (recompute all)", naive), ("slot KV cache", cached)):
        print(f"  {name:<24}{1000 * wall / naive_tokens:>15.1f}{1000 * cpu / naive_tokens:>14.1f}")
        results[name] = {"ms_per_token_wall": 1000 * wall / naive_tokens,
                         "ms_per_token_cpu": 1000 * cpu / naive_tokens}
    print(f"  speed-up: x{naive[0] / cached[0]:.1f} wall, x{naive[1] / cached[1]:.1f} cpu")

    # 2. Batched engine throughput.
    print(f"\nT2S engine throughput, {tokens} new tokens per request (best of {repeats})")
    print(f"  {'batch':>5}{'prefill s':>11}{'ms/step wall':>14}{'ms/step cpu':>13}"
          f"{'tok/s wall':>12}{'tok/s cpu':>11}{'x b1 wall':>11}{'x b1 cpu':>10}")
    base = None
    for b in batch_sizes:
        prefill, (wall, cpu) = cached_decode(model, tokens, batch=b, repeats=repeats)
        tps = (b * tokens / wall, b * tokens / cpu)
        base = base or tps
        results[f"batch{b}"] = {"tokens_per_s_wall": tps[0], "tokens_per_s_cpu": tps[1],
                                "ms_per_step_wall": 1000 * wall / tokens,
                                "ms_per_step_cpu": 1000 * cpu / tokens}
        print(f"  {b:>5}{prefill[0]:>11.2f}{1000 * wall / tokens:>14.1f}{1000 * cpu / tokens:>13.1f}"
              f"{tps[0]:>12.1f}{tps[1]:>11.1f}{tps[0] / base[0]:>11.2f}{tps[1] / base[1]:>10.2f}")
    return results


def run_sovits_bench(tokens: int = 100, phones: int = 40, repeats: int = 3) -> dict:
    """SoVITS + vocoder (PyTorch) real-time factor at v2 dims, random weights: wall seconds per
    audio second for `tokens` semantic tokens (bench/bench_sovits.py compares the ONNX backends)."""
    from bench.bench_sovits import build_models
    from models.pipeline import latent, vocode

    sovits, vocoder = build_models()
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 1024, (tokens,), generator=g).numpy()
    phone_ids = torch.randint(0, 732, (phones,), generator=g).numpy()
    ge = torch.randn(1, sovits.config.gin_channels, 1, generator=g).numpy()
    audio_s = tokens * 2 * 640 / 32000

    def once() -> None:
        vocode(vocoder, latent(sovits, codes, phone_ids, ge, 0.5, 1.0, 0), ge)

    once()  # warm-up
    wall = min(timed(once)[0] for _ in range(repeats))
    print(f"\nSoVITS + vocoder (PyTorch), {tokens} tokens = {audio_s:.1f} s of audio: {wall:.3f} s, RTF {wall / audio_s:.3f}")
    return {"tokens": tokens, "seconds": wall, "rtf": wall / audio_s}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per request, engine runs")
    ap.add_argument("--naive-tokens", type=int, default=16, help="new tokens for the cache-vs-naive run")
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--repeats", type=int, default=3, help="engine runs are timed best-of-N")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    run_t2s_bench(args.tokens, args.naive_tokens, tuple(int(b) for b in args.batch_sizes.split(",")),
                  args.repeats)
    run_sovits_bench()


if __name__ == "__main__":
    main()
