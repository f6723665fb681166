"""A tiny random-weight demo voice in upstream GPT-SoVITS on-disk formats.

    python -m models.demo DEST

writes, from a fixed seed and without network:

* ``demo-e1.ckpt``            T2S / GPT checkpoint (``OrderedDict(weight, config, info)``, fp16)
* ``demo_e1_s1.pth``          SoVITS v2 checkpoint (plain-dict config, fp16, weight-norm pairs)
* ``chinese-hubert-base/``    a 1-layer HuBERT (hidden 768, as SoVITS requires)
* ``chinese-roberta-wwm-ext-large/``  a 2-layer BERT (hidden 1024, as the T2S requires) with a
                                generated character vocabulary (every CJK ideograph U+4E00..U+9FA5)
* ``reference.wav``           4 s synthetic "voice" (harmonic tone, vibrato, noise bursts), 32 kHz
* ``manifest.json``           what is here, and the reference transcript

The weights are random: the voice **produces noise**. It exists so that the server, the tests and
``make serve`` run end to end offline; every checkpoint says so in its ``info`` string.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from .audio import SAMPLE_RATE

INFO = "gsv-serve demo: random weights, produces noise"
GENERATOR_VERSION = 1  # bump when the files change, so stale demo folders are rebuilt
SEED = 20240601

GPT_FILE = "demo-e1.ckpt"
SOVITS_FILE = "demo_e1_s1.pth"
HUBERT_DIR = "chinese-hubert-base"
BERT_DIR = "chinese-roberta-wwm-ext-large"
REFERENCE_WAV = "reference.wav"
MANIFEST = "manifest.json"
REFERENCE_TEXT = "这是一段用于演示的合成参考音频。"
REFERENCE_LANGUAGE = "zh"
REFERENCE_SECONDS = 4.0

EOS_BIAS, EOS_GAIN = 2.0, 0.45  # see gpt_weights()
OUTPUT_GAIN = 1.0  # scales the generator's last conv: output level of the noise

GPT_MODEL_CONFIG = {
    "vocab_size": 1025,
    "phoneme_vocab_size": 732,
    "embedding_dim": 64,
    "hidden_dim": 64,
    "head": 2,
    "linear_units": 256,
    "n_layer": 2,
    "dropout": 0,
    "EOS": 1024,
    "random_bert": 0,
}

SOVITS_MODEL_CONFIG = {
    "inter_channels": 16,
    "hidden_channels": 192,  # fixed by MRTE upstream
    "filter_channels": 64,
    "n_heads": 2,
    "n_layers": 2,
    "kernel_size": 3,
    "p_dropout": 0.1,
    "resblock": "1",
    "resblock_kernel_sizes": [3, 7],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "upsample_rates": [10, 8, 2, 2, 2],
    "upsample_initial_channel": 32,
    "upsample_kernel_sizes": [16, 16, 8, 2, 2],
    "n_layers_q": 3,
    "use_spectral_norm": False,
    "gin_channels": 512,  # fixed by MRTE upstream
    "semantic_frame_rate": "25hz",
    "freeze_quantizer": True,
    "version": "v2",
}

SOVITS_DATA_CONFIG = {
    "max_wav_value": 32768.0,
    "sampling_rate": 32000,
    "filter_length": 2048,
    "hop_length": 640,
    "win_length": 2048,
    "n_mel_channels": 128,
    "mel_fmin": 0.0,
    "mel_fmax": None,
    "add_blank": True,
    "n_speakers": 300,
    "cleaned_text": True,
}


# ---------------------------------------------------------------------------------------------
# T2S (GPT) checkpoint
# ---------------------------------------------------------------------------------------------


def _uniform(gen: torch.Generator, shape, bound: float) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def gpt_weights(gen: torch.Generator, cfg: dict = GPT_MODEL_CONFIG) -> "OrderedDict[str, torch.Tensor]":
    """Random T2S weights with upstream key names (SPEC 1.1), PyTorch-default-like scales."""
    d, n_layer = cfg["hidden_dim"], cfg["n_layer"]
    ffn = 4 * d  # upstream hard-wires the FFN width to 4 * hidden_dim
    w: OrderedDict[str, torch.Tensor] = OrderedDict()

    def linear(name, n_out, n_in, bias=True):
        bound = 1 / math.sqrt(n_in)
        w[f"{name}.weight"] = _uniform(gen, (n_out, n_in), bound)
        if bias:
            w[f"{name}.bias"] = _uniform(gen, (n_out,), bound)

    linear("model.bert_proj", d, 1024)
    w["model.ar_text_embedding.word_embeddings.weight"] = torch.randn(cfg["phoneme_vocab_size"], d, generator=gen)
    w["model.ar_text_position.alpha"] = torch.ones(1)
    w["model.ar_audio_embedding.word_embeddings.weight"] = torch.randn(cfg["vocab_size"], d, generator=gen)
    w["model.ar_audio_position.alpha"] = torch.ones(1)
    for i in range(n_layer):
        p = f"model.h.layers.{i}"
        w[f"{p}.self_attn.in_proj_weight"] = _uniform(gen, (3 * d, d), math.sqrt(6 / (4 * d)))  # xavier
        w[f"{p}.self_attn.in_proj_bias"] = torch.zeros(3 * d)
        linear(f"{p}.self_attn.out_proj", d, d)
        linear(f"{p}.linear1", ffn, d)
        linear(f"{p}.linear2", d, ffn)
        for norm in ("norm1", "norm2"):
            w[f"{p}.{norm}.weight"] = torch.ones(d)
            w[f"{p}.{norm}.bias"] = torch.zeros(d)
    linear("model.ar_predict_layer", cfg["vocab_size"], d, bias=False)
    # With purely random weights EOS is a 1-in-1025 token and generations run to the 1500-token
    # cap (a minute of noise). Give the last layer's output a constant component along a random
    # direction u and point the EOS row at it: EOS then competes with the top tokens, and as the
    # repetition penalty keeps lowering the others, sentences end after ~30-100 tokens
    # (measured on the demo voice with top_k 15).
    u = torch.randn(d, generator=gen)
    u /= u.norm()
    w[f"model.h.layers.{n_layer - 1}.norm2.bias"] = EOS_BIAS * u
    w["model.ar_predict_layer.weight"][cfg["EOS"]] = EOS_GAIN * u
    return w


def gpt_config(cfg: dict = GPT_MODEL_CONFIG) -> dict:
    """The training-YAML-shaped config upstream stores in a GPT checkpoint (SPEC 1.1)."""
    return {
        "train": {
            "seed": SEED,
            "epochs": 1,
            "batch_size": 8,
            "save_every_n_epoch": 1,
            "precision": "16-mixed",
            "gradient_clip": 1.0,
            "if_save_latest": True,
            "if_save_every_weights": True,
            "if_dpo": False,
            "exp_name": "gsv-serve-demo",
            "half_weights_save_dir": "",
        },
        "optimizer": {"lr": 0.01, "lr_init": 1e-05, "lr_end": 0.0001, "warmup_steps": 2000, "decay_steps": 40000},
        "data": {"max_eval_sample": 8, "max_sec": 54, "num_workers": 4, "pad_val": 1024},
        "model": dict(cfg),
        "inference": {"top_k": 15},
        "pretrained_s1": "",
        "output_dir": "",
    }


def write_gpt_checkpoint(path: Path, gen: torch.Generator) -> None:
    weights = OrderedDict((k, v.half()) for k, v in gpt_weights(gen).items())
    torch.save(OrderedDict(weight=weights, config=gpt_config(), info=INFO), path)


# ---------------------------------------------------------------------------------------------
# SoVITS checkpoint
# ---------------------------------------------------------------------------------------------


def sovits_config() -> dict:
    return {
        "train": {"seed": SEED, "epochs": 1, "batch_size": 8, "segment_size": 20480, "fp16_run": True},
        "data": dict(SOVITS_DATA_CONFIG, exp_dir="logs/gsv-serve-demo"),
        "model": dict(SOVITS_MODEL_CONFIG),
        "s2_ckpt_dir": "logs/gsv-serve-demo",
        "content_module": "cnhubert",
        "name": "gsv-serve-demo",
        "version": "v2",
    }


def sovits_weights(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random SoVITS v2 weights under upstream names (weight norm as ``weight_g``/``weight_v``)."""
    from .sovits import SoVITS, SoVITSConfig
    from .vocoder import Vocoder, VocoderConfig

    config = sovits_config()
    sovits = SoVITS(SoVITSConfig.from_checkpoint_config(config, "v2"))
    vocoder = Vocoder(VocoderConfig.from_model_config(config["model"]))
    # Module constructors draw from the global RNG; the caller forks and seeds it.
    with torch.no_grad():
        sovits.codebook.normal_(generator=gen)
        for module in sovits.modules():
            if hasattr(module, "rel_k"):
                std = module.head_dim**-0.5
                module.rel_k.normal_(std=std, generator=gen)
                module.rel_v.normal_(std=std, generator=gen)
        # Keep the flow gentle and the generator's output audible but well inside [-1, 1].
        for coupling in sovits.flow.couplings:
            coupling.post.weight.mul_(0.1)
        vocoder.output_conv.weight.mul_(OUTPUT_GAIN)
    return {**sovits.upstream_state_dict(), **vocoder.upstream_state_dict()}


def write_sovits_checkpoint(path: Path, gen: torch.Generator) -> None:
    weights = {k: v.half() for k, v in sovits_weights(gen).items()}
    torch.save(OrderedDict(weight=weights, config=sovits_config(), info=INFO), path)


# ---------------------------------------------------------------------------------------------
# HuBERT and BERT folders (transformers formats)
# ---------------------------------------------------------------------------------------------


def write_hubert(dest: Path) -> None:
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    config = HubertConfig(
        hidden_size=768,  # SoVITS ssl_proj input width
        num_hidden_layers=1,
        num_attention_heads=12,
        intermediate_size=128,
        conv_dim=(32,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_bias=False,
        feat_extract_norm="group",
        feat_proj_layer_norm=True,
        do_stable_layer_norm=False,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=16,
        layer_norm_eps=1e-5,
    )
    model = HubertModel(config).eval()
    model.half().save_pretrained(dest, safe_serialization=True)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    ).save_pretrained(dest)


def bert_vocabulary() -> list[str]:
    """A character-level Chinese BERT vocabulary (same special tokens and ids as bert-base-chinese
    puts first): specials, ASCII, word-piece continuations, CJK punctuation, U+4E00..U+9FA5."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ascii_chars = [chr(c) for c in range(0x21, 0x7F) if not chr(c).isupper()]
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    cjk_punct = list("，。！？、；：“”‘’（）《》〈〉【】「」『』…—～·")
    ideographs = [chr(c) for c in range(0x4E00, 0x9FA6)]
    vocab, seen = [], set()
    for token in specials + ascii_chars + pieces + cjk_punct + ideographs:
        if token not in seen:
            seen.add(token)
            vocab.append(token)
    return vocab


def write_bert(dest: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    dest.mkdir(parents=True, exist_ok=True)
    vocab = bert_vocabulary()
    vocab_file = dest / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, tokenize_chinese_chars=True)
    tokenizer.save_pretrained(dest)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=1024,  # the T2S bert_proj input width is hard-wired to 1024
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    model = BertForMaskedLM(config).eval()
    model.half().save_pretrained(dest, safe_serialization=True)


# ---------------------------------------------------------------------------------------------
# Reference clip
# ---------------------------------------------------------------------------------------------


def synthetic_reference(seconds: float = REFERENCE_SECONDS, sr: int = SAMPLE_RATE, seed: int = SEED) -> np.ndarray:
    """A speech-like test signal: a vibrato harmonic tone in syllable-rate bursts plus short
    noise bursts ("fricatives"). Float32 in [-0.5, 0.5]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 150.0 * (1 + 0.03 * np.sin(2 * np.pi * 5.0 * t)) * (1 + 0.1 * np.sin(2 * np.pi * 0.3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = np.zeros_like(t)
    for k in range(1, 25):
        # a soft formant bump around 700 Hz on top of a 1/k spectral tilt
        formant = 1.0 + 2.0 * np.exp(-(((k * 150.0) - 700.0) / 300.0) ** 2)
        voiced += formant / k * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    syllables = np.clip(np.sin(2 * np.pi * 3.5 * t), 0, None) ** 0.5
    signal = voiced * syllables
    for start in rng.uniform(0.2, seconds - 0.3, size=5):
        i0, n = int(start * sr), int(0.06 * sr)
        burst = rng.standard_normal(n) * np.hanning(n) * 0.8
        signal[i0 : i0 + n] += np.diff(burst, prepend=0.0) * 3  # tilt towards high frequencies
    signal *= 0.5 / np.abs(signal).max()
    return signal.astype(np.float32)


def write_reference(path: Path) -> None:
    import soundfile as sf

    pcm = np.round(synthetic_reference() * 32767).astype(np.int16)
    sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16")


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def _asset_paths(dest: Path) -> dict:
    return {
        "gpt": dest / GPT_FILE,
        "sovits": dest / SOVITS_FILE,
        "hubert_dir": dest / HUBERT_DIR,
        "bert_dir": dest / BERT_DIR,
        "reference_wav": dest / REFERENCE_WAV,
        "manifest": dest / MANIFEST,
    }


def _result(dest: Path) -> dict:
    return {**_asset_paths(dest), "reference_text": REFERENCE_TEXT, "reference_language": REFERENCE_LANGUAGE}


def _is_complete(dest: Path) -> bool:
    paths = _asset_paths(dest)
    try:
        manifest = json.loads(paths["manifest"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("generator_version") == GENERATOR_VERSION and all(p.exists() for p in paths.values())


def _build_into(dest: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        gen = torch.Generator().manual_seed(SEED)
        write_gpt_checkpoint(dest / GPT_FILE, gen)
        write_sovits_checkpoint(dest / SOVITS_FILE, gen)
        write_hubert(dest / HUBERT_DIR)
        write_bert(dest / BERT_DIR)
    write_reference(dest / REFERENCE_WAV)
    manifest = {
        "info": INFO,
        "generator_version": GENERATOR_VERSION,
        "seed": SEED,
        "files": {"t2s": GPT_FILE, "s2": SOVITS_FILE, "hubert": HUBERT_DIR, "bert": BERT_DIR},
        "reference": {"path": REFERENCE_WAV, "text": REFERENCE_TEXT, "language": REFERENCE_LANGUAGE},
        "gpt_model_config": GPT_MODEL_CONFIG,
        "sovits_model_config": SOVITS_MODEL_CONFIG,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")


def build_demo_assets(dest_dir: str | os.PathLike, force: bool = False) -> dict:
    """Write the demo voice into ``dest_dir`` (reused if already complete) and return its parts:
    ``gpt``, ``sovits``, ``hubert_dir``, ``bert_dir``, ``reference_wav``, ``manifest`` (paths) and
    ``reference_text``, ``reference_language`` (strings).

    Files are built in a temporary sibling folder and moved in, so a concurrent or interrupted
    build never leaves a half-written model behind.
    """
    dest = Path(dest_dir)
    if not force and _is_complete(dest):
        return _result(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.build-", dir=dest.parent))
    try:
        _build_into(tmp)
        dest.mkdir(exist_ok=True)
        names = [GPT_FILE, SOVITS_FILE, HUBERT_DIR, BERT_DIR, REFERENCE_WAV, MANIFEST]  # manifest last
        for name in names:
            target = dest / name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(tmp / name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _result(dest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the random-weight gsv-serve demo voice (produces noise).")
    parser.add_argument("dest", help="destination folder")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder is complete")
    args = parser.parse_args(argv)
    for key, value in build_demo_assets(args.dest, force=args.force).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
