"""Synthesize a WAV from upstream checkpoints, in this process (no Ray, no server).

    python -m models.synthesize --gpt X.ckpt --sovits Y.pth --hubert-dir DIR --bert-dir DIR \\
        --ref ref.wav --ref-text "what the clip says" --ref-lang zh \\
        --text "text to speak" --lang zh --out out.wav [--device cuda] [--half] [--seed 0] [--stream]

`--demo` uses the built-in demo model (random weights: noise) and its reference clip instead.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

from models import audio
from models.pipeline import ModelPaths, Pipeline, SynthesisSettings, load_reference_wav
from models.t2s import SamplingParams


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m models.synthesize", description=__doc__.splitlines()[0])
    ap.add_argument("--gpt"), ap.add_argument("--sovits"), ap.add_argument("--hubert-dir"), ap.add_argument("--bert-dir")
    ap.add_argument("--demo", action="store_true", help="the built-in random-weight demo model")
    ap.add_argument("--ref", help="reference clip (3-10 s)")
    ap.add_argument("--ref-text", help="what the reference clip says")
    ap.add_argument("--ref-lang", default="zh")
    ap.add_argument("--text", required=True)
    ap.add_argument("--lang", default="auto")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--half", action="store_true", help="fp16 weights (CUDA)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top-k", type=int, default=15)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repetition-penalty", type=float, default=1.35)
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--split", default="cut5", help="sentence splitting method cut0..cut5")
    ap.add_argument("--stream", action="store_true", help="token-chunk streaming path (same scheme as the server)")
    args = ap.parse_args(argv)

    if args.demo:
        from models.demo import build_demo_assets

        assets = build_demo_assets(tempfile.gettempdir() + "/gsv-serve-demo-model")
        paths = ModelPaths(str(assets["gpt"]), str(assets["sovits"]), str(assets["hubert_dir"]), str(assets["bert_dir"]))
        ref, ref_text, ref_lang = assets["reference_wav"], assets["reference_text"], assets["reference_language"]
    else:
        missing = [n for n in ("gpt", "sovits", "hubert_dir", "bert_dir", "ref", "ref_text") if not getattr(args, n)]
        if missing:
            ap.error("missing " + ", ".join("--" + n.replace("_", "-") for n in missing) + " (or use --demo)")
        paths = ModelPaths(args.gpt, args.sovits, args.hubert_dir, args.bert_dir)
        ref, ref_text, ref_lang = args.ref, args.ref_text, args.ref_lang

    dtype = torch.float16 if args.half else torch.float32
    started = time.perf_counter()
    pipeline = Pipeline(paths, device=args.device, dtype=dtype)
    loaded = time.perf_counter()
    prompt = pipeline.voice_prompt(load_reference_wav(ref), ref_text, ref_lang)
    settings = SynthesisSettings(
        sampling=SamplingParams(top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                                repetition_penalty=args.repetition_penalty),
        text_split_method=args.split, speed=args.speed, seed=args.seed)
    if args.stream:
        wav = np.concatenate(list(pipeline.synthesize_streaming(prompt, args.text, args.lang, settings)))
    else:
        wav = pipeline.synthesize(prompt, args.text, args.lang, settings)
    done = time.perf_counter()
    sf.write(args.out, audio.to_int16(wav), audio.SAMPLE_RATE, subtype="PCM_16")
    seconds = len(wav) / audio.SAMPLE_RATE
    print(f"wrote {args.out}: {seconds:.2f} s at {audio.SAMPLE_RATE} Hz; load {loaded - started:.1f} s, "
          f"synthesis {done - loaded:.2f} s (RTF {(done - loaded) / max(seconds, 1e-9):.2f}), model {pipeline.model_version}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
