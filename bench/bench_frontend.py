"""Text frontend benchmark: phonemisation throughput and BERT batching at real dimensions.

    python bench/bench_frontend.py [--threads 2] [--device cpu] [--seconds 5] [--json out.json]

Measures, in one run (compare only ratios measured together; absolute figures depend on the host):
* zh / en phonemisation, sentences per second (``TextFrontend.phonemize``, no BERT);
* BERT features at chinese-roberta-wwm-ext-large dimensions (24 layers, hidden 1024, 16 heads,
  random weights from a ``BertConfig``; tokenizer files from the tiny reference folder or a
  generated vocabulary):
    - upstream style: full masked-LM forward with ``output_hidden_states``, one run at a time;
    - ours, batch 1: encoder truncated after the layer that is used, one run at a time;
    - ours, batch 16: the same 16 runs in one padded forward pass.
Nothing is downloaded. About one minute on 2 idle CPU cores; a loaded host makes every figure
slower and noisier (the configurations are interleaved and the best of ``--rounds`` is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO / ".." / "shared"
TINY_BERT = SHARED / "reference" / "gpt_sovits_v2" / "checkpoints" / "tiny_seed1234" / "chinese-roberta-wwm-ext-large"
if (SHARED / "vendor" / "nltk_data").is_dir():
    os.environ.setdefault("NLTK_DATA", str((SHARED / "vendor" / "nltk_data").resolve()))

import torch  # noqa: E402

ZH_SENTENCES = [
    "你好，欢迎使用语音合成系统。",
    "今天是2024年3月5日，气温25.5度。",
    "我们明天早上八点在公司门口集合，不要迟到。",
    "这家餐厅的菜味道不错，价格也很实惠，一共花了128元。",
    "他一边听音乐一边看书，看了一会儿就睡着了。",
    "据统计，今年上半年全国的GDP同比增长了百分之五点三。",
    "小明的奶奶住在一个安静的小院儿里，每天早上都去公园散步。",
    "请拨打客服电话400-123-4567，或者发送邮件咨询。",
    "展览馆里的纸老虎做得栩栩如生，孩子们都很喜欢。",
    "一场突如其来的大雨打乱了我们所有的计划。",
    "这个问题其实并不难，只要你仔细想一想就明白了。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
]
EN_SENTENCES = [
    "Hello world, this is a test of the text frontend.",
    "I read the book yesterday, and Dr. Smith paid $3.50 for 2 apples.",
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back at five thirty tomorrow afternoon.",
    "Streaming speech synthesis needs a fast and robust text pipeline.",
    "On March 5th, 2024, the temperature reached 25.5 degrees.",
    "She sells seashells by the seashore every summer.",
    "Batching requests across users improves throughput on accelerators.",
]


def _rate(fn, items, seconds: float) -> tuple[float, int]:
    """Sentences per second over at least `seconds` (whole passes over `items`)."""
    for item in items[:2]:
        fn(item)  # warm-up: dictionaries, caches, lazy imports
    n, start = 0, time.perf_counter()
    while True:
        for item in items:
            fn(item)
        n += len(items)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed, n


def _tokenizer_dir(tmp: Path) -> Path:
    if (TINY_BERT / "vocab.txt").is_file():
        return TINY_BERT
    # generated vocabulary: special tokens + the characters of the benchmark sentences
    chars = sorted({c for s in ZH_SENTENCES for c in s})
    (tmp / "vocab.txt").write_text("\n".join(["[PAD]"] + [f"[unused{i}]" for i in range(99)]
                                             + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars) + "\n",
                                   encoding="utf-8")
    return tmp


def bench_bert(device: str, n_runs: int = 16, rounds: int = 2) -> dict:
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    from models.text import zh
    from models.text.bert import BertFeatures

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = BertTokenizerFast.from_pretrained(str(_tokenizer_dir(Path(tmp))), local_files_only=True)
    config = BertConfig(vocab_size=max(len(tokenizer), 21128), hidden_size=1024, num_hidden_layers=24,
                        num_attention_heads=16, intermediate_size=4096, max_position_embeddings=512)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = BertForMaskedLM(config).eval().to(device)
    build_s = time.perf_counter() - t0

    runs = []
    for s in (ZH_SENTENCES * 2)[:n_runs]:
        norm = zh.normalize(s)
        runs.append((norm, zh.g2p(norm)[1]))
    n_chars = sum(len(t) for t, _ in runs)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    @torch.inference_mode()
    def upstream_style(text, word2ph):
        # what upstream does per run: full MLM forward, all hidden states, take [-3]
        enc = {k: v.to(device) for k, v in tokenizer(text, return_tensors="pt").items()}
        hidden = model(**enc, output_hidden_states=True).hidden_states[-3][0, 1:-1]
        torch.repeat_interleave(hidden, torch.tensor(word2ph, device=hidden.device), dim=0).T
        sync()

    feats = BertFeatures(model.base_model, tokenizer, device=device, max_batch=n_runs)
    full_layers = model.base_model.encoder.layer
    truncated = full_layers[: len(full_layers) - 2]

    def ours_b1(text, word2ph):
        feats(text, word2ph)
        sync()

    def ours_b16():
        feats.batch(runs)
        sync()

    def clock(fn, *args):
        t = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t

    # The host may be shared: the configurations are interleaved and each one keeps its best time
    # (per run for the one-at-a-time loops), so short stalls from other processes drop out.
    # The encoder is truncated for "ours" and restored for "upstream style": same weights.
    with torch.inference_mode():  # warm-up: one short forward per configuration
        warm = {k: v.to(device) for k, v in tokenizer(runs[0][0], return_tensors="pt").items()}
        model(**warm, output_hidden_states=True)
        feats.batch(runs[:2])
    best_up = [float("inf")] * len(runs)
    best_b1 = [float("inf")] * len(runs)
    best_b16 = float("inf")
    for _ in range(rounds):
        for i, (text, word2ph) in enumerate(runs):
            model.base_model.encoder.layer = full_layers
            best_up[i] = min(best_up[i], clock(upstream_style, text, word2ph))
            model.base_model.encoder.layer = truncated
            best_b1[i] = min(best_b1[i], clock(ours_b1, text, word2ph))
        best_b16 = min(best_b16, clock(ours_b16))
    t_upstream, t_b1, t_b16 = sum(best_up), sum(best_b1), best_b16
    model.base_model.encoder.layer = truncated
    # same numbers either way
    one = [feats(t, w) for t, w in runs]
    many = feats.batch(runs)
    max_diff = max((a - b).abs().max().item() for a, b in zip(one, many))
    return {
        "bert_dims": "24 layers, hidden 1024, 16 heads (random weights)",
        "runs": n_runs, "chars": n_chars, "model_build_s": round(build_s, 2),
        "upstream_style_batch1_s": round(t_upstream, 3),
        "ours_batch1_s": round(t_b1, 3),
        "ours_batch16_s": round(t_b16, 3),
        "ratio_upstream_over_ours_batch1": round(t_upstream / t_b1, 2),
        "ratio_batch1_over_batch16": round(t_b1 / t_b16, 2),
        "ratio_upstream_over_ours_batch16": round(t_upstream / t_b16, 2),
        "batch16_vs_batch1_max_abs_diff": max_diff,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=3.0, help="per phonemisation measurement")
    ap.add_argument("--rounds", type=int, default=3, help="timed BERT rounds (best of)")
    ap.add_argument("--skip-bert", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from models.text.frontend import TextFrontend

    fe = TextFrontend(None)
    results: dict = {"threads": args.threads, "device": args.device}
    zh_rate, zh_n = _rate(lambda s: fe.phonemize(s, "all_zh"), ZH_SENTENCES, args.seconds)
    results["zh_sentences_per_s"] = round(zh_rate, 1)
    print(f"zh phonemize (all_zh): {zh_rate:8.1f} sentences/s  ({zh_n} sentences)")
    try:
        en_rate, en_n = _rate(lambda s: fe.phonemize(s, "en"), EN_SENTENCES, args.seconds)
        results["en_sentences_per_s"] = round(en_rate, 1)
        print(f"en phonemize (en):     {en_rate:8.1f} sentences/s  ({en_n} sentences)")
    except ImportError as e:  # English G2P module or its data missing
        print(f"en phonemize: skipped ({e})")
    if not args.skip_bert:
        b = bench_bert(args.device, rounds=args.rounds)
        results.update(b)
        print(f"BERT {b['bert_dims']}, {b['runs']} runs / {b['chars']} chars:")
        print(f"  upstream style (full MLM, batch 1): {b['upstream_style_batch1_s']:.3f} s")
        print(f"  ours, truncated, batch 1:           {b['ours_batch1_s']:.3f} s "
              f"(x{b['ratio_upstream_over_ours_batch1']} vs upstream style)")
        print(f"  ours, truncated, batch 16:          {b['ours_batch16_s']:.3f} s "
              f"(x{b['ratio_batch1_over_batch16']} vs batch 1, x{b['ratio_upstream_over_ours_batch16']} vs upstream style)")
        print(f"  batch 16 vs batch 1 max |diff|: {b['batch16_vs_batch1_max_abs_diff']:.2e}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
