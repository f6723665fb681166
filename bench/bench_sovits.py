"""SoVITS + vocoder real-time factor at the real v2 dims: PyTorch fp32 vs ONNX Runtime fp32 vs
ORT dynamic INT8 (random weights built here, no files needed).

    .venv/bin/python bench/bench_sovits.py [--threads 2] [--tokens 100] [--phones 40] [--repeats 5]

RTF = wall seconds / audio seconds for one sentence (latent + vocoder; speed 1). Each backend's
figure is also given as a ratio against PyTorch measured in the same run: absolute figures depend
on the host (and on what else runs on it); only same-run ratios compare. Repeats are interleaved
across backends so drift in host load hits all of them alike; the median is reported. Process
CPU seconds (all threads) are reported beside wall time: on a shared, oversubscribed host they
are the steadier figure (spinning thread pools inflate both, though).
Also reports how far INT8 audio is from fp32 audio (max abs difference, SNR in dB).
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import audio  # noqa: E402
from models.demo import synthetic_reference  # noqa: E402
from models.onnx_runtime import (  # noqa: E402
    OrtSoVITS,
    OrtVocoder,
    export_latent,
    export_vocoder,
    quantize_int8,
)
from models.sovits import RelPosSelfAttention, SoVITS, SoVITSConfig  # noqa: E402
from models.vocoder import Vocoder, VocoderConfig  # noqa: E402


def build_models(seed: int = 0) -> tuple[SoVITS, Vocoder]:
    """Real v2 dims (SoVITSConfig / VocoderConfig defaults), random weights made audible: a
    Gaussian codebook and relative embeddings (zeros by default), a gentle flow."""
    torch.manual_seed(seed)
    config = SoVITSConfig()  # inter 192, hidden 192, filter 768, 2 heads, 6 layers, gin 512
    assert (config.inter_channels, config.filter_channels, config.n_layers) == (192, 768, 6)
    sovits = SoVITS(config)
    vocoder = Vocoder(VocoderConfig(
        in_channels=config.inter_channels, gin_channels=config.gin_channels,
        resblock_kernel_sizes=tuple(config.resblock_kernel_sizes),
        resblock_dilation_sizes=tuple(tuple(d) for d in config.resblock_dilation_sizes),
        upsample_rates=tuple(config.upsample_rates),
        upsample_initial_channel=config.upsample_initial_channel,
        upsample_kernel_sizes=tuple(config.upsample_kernel_sizes),
    ))
    with torch.no_grad():
        sovits.codebook.normal_()
        for m in sovits.modules():
            if isinstance(m, RelPosSelfAttention):
                m.rel_k.normal_(std=m.head_dim**-0.5)
                m.rel_v.normal_(std=m.head_dim**-0.5)
        for coupling in sovits.flow.couplings:
            coupling.post.weight.mul_(0.1)
    return sovits.eval().requires_grad_(False), vocoder.eval().requires_grad_(False)


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((reference - test) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(reference**2)) / noise)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_sovits_"))
    try:
        bench(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench(tmp: Path) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=100, help="25 Hz semantic tokens (100 = 4 s)")
    ap.add_argument("--phones", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    sovits, vocoder = build_models()
    t = time.perf_counter()
    export_latent(sovits, tmp / "latent.onnx")
    export_vocoder(vocoder, tmp / "vocoder.onnx")
    export_s = time.perf_counter() - t
    t = time.perf_counter()
    quantize_int8(tmp / "latent.onnx", tmp / "latent.int8.onnx")
    quantize_int8(tmp / "vocoder.onnx", tmp / "vocoder.int8.onnx")
    quant_s = time.perf_counter() - t

    def ort_pair(latent_file: str, vocoder_file: str):
        return (OrtSoVITS(tmp / latent_file, fallback=sovits, device="cpu", num_threads=args.threads),
                OrtVocoder(tmp / vocoder_file, device="cpu", num_threads=args.threads))

    backends = {
        "torch_fp32": (sovits, vocoder),
        "ort_fp32": ort_pair("latent.onnx", "vocoder.onnx"),
        "ort_int8": ort_pair("latent.int8.onnx", "vocoder.int8.onnx"),
    }

    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 1024, (args.tokens,), generator=g)
    phones = torch.randint(0, sovits.config.n_symbols, (args.phones,), generator=g)
    noise = torch.randn(1, sovits.config.inter_channels, 2 * args.tokens, generator=g)
    spec = audio.spectrogram(torch.from_numpy(synthetic_reference()))
    ge = sovits.reference_embedding(spec)
    audio_s = 2 * args.tokens * audio.HOP_LENGTH / audio.SAMPLE_RATE

    def run(name):
        lat, voc = backends[name]
        with torch.inference_mode():
            t, cpu = time.perf_counter(), time.process_time()
            z = lat.decode_latent(codes, phones, ge, noise_scale=0.5, noise=noise)
            t_lat = time.perf_counter() - t
            wav = voc(z, ge)
            total, cpu = time.perf_counter() - t, time.process_time() - cpu
        return total, t_lat, cpu, z.numpy().copy(), wav.numpy().reshape(-1).copy()

    outputs = {name: run(name) for name in backends}  # warm-up (ORT first-run allocations)
    times = {name: [] for name in backends}
    lat_times = {name: [] for name in backends}
    cpu_times = {name: [] for name in backends}
    for _ in range(args.repeats):
        for name in backends:
            total, t_lat, cpu, *_ = run(name)
            times[name].append(total)
            lat_times[name].append(t_lat)
            cpu_times[name].append(cpu)

    ref_z, ref_wav = outputs["torch_fp32"][3], outputs["torch_fp32"][4]
    base = statistics.median(times["torch_fp32"])
    base_cpu = statistics.median(cpu_times["torch_fp32"])
    result = {"threads": args.threads, "tokens": args.tokens, "phones": args.phones, "audio_s": audio_s,
              "repeats": args.repeats, "export_s": round(export_s, 2), "quantize_s": round(quant_s, 2)}
    print(f"SoVITS+vocoder, v2 dims, {audio_s:.2f} s audio, {args.threads} threads, median of {args.repeats}")
    print(f"{'backend':<12}{'latent s':>10}{'total s':>10}{'RTF':>8}{'vs torch':>10}{'cpu s':>8}{'cpu vs':>8}"
          f"{'z maxabs':>11}{'wav maxabs':>12}{'SNR dB':>8}")
    for name in backends:
        med, med_lat = statistics.median(times[name]), statistics.median(lat_times[name])
        med_cpu = statistics.median(cpu_times[name])
        z, wav = outputs[name][3], outputs[name][4]
        z_err, wav_err = float(np.abs(z - ref_z).max()), float(np.abs(wav - ref_wav).max())
        snr = snr_db(ref_wav, wav)
        print(f"{name:<12}{med_lat:>10.3f}{med:>10.3f}{med / audio_s:>8.3f}{med / base:>10.3f}"
              f"{med_cpu:>8.3f}{med_cpu / base_cpu:>8.3f}{z_err:>11.2e}{wav_err:>12.2e}{snr:>8.1f}")
        result[name] = {"latent_s": round(med_lat, 4), "total_s": round(med, 4), "rtf": round(med / audio_s, 4),
                        "ratio_vs_torch": round(med / base, 3), "cpu_s": round(med_cpu, 4),
                        "cpu_ratio_vs_torch": round(med_cpu / base_cpu, 3), "z_max_abs_vs_torch": z_err,
                        "wav_max_abs_vs_torch": wav_err, "wav_snr_db_vs_torch": round(snr, 1)}
    # INT8 against ORT fp32 too (the deviation quantization alone adds)
    q_wav, f_wav = outputs["ort_int8"][4], outputs["ort_fp32"][4]
    result["int8_vs_fp32"] = {"wav_max_abs": float(np.abs(q_wav - f_wav).max()),
                             "wav_snr_db": round(snr_db(f_wav, q_wav), 1),
                             "wav_peak": float(np.abs(f_wav).max())}
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)  # other processes on the host skew wall times
    print(f"INT8 vs fp32 audio: max abs {result['int8_vs_fp32']['wav_max_abs']:.3e}, "
          f"SNR {result['int8_vs_fp32']['wav_snr_db']:.1f} dB (fp32 peak {result['int8_vs_fp32']['wav_peak']:.3f})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
