"""ONNX Runtime backend (models/onnx_runtime.py): exported graphs match PyTorch, lengths are
dynamic, the export cache is reused, INT8 runs, and the runners are drop-ins for the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from models import onnx_runtime as ort_backend  # noqa: E402
from models.demo import build_demo_assets  # noqa: E402
from models.pipeline import latent, vocode  # noqa: E402
from models.sovits import SoVITS  # noqa: E402
from models.vocoder import Vocoder  # noqa: E402

TINY_FILE = "harness_tiny_seed1234_e8_s240.pth"
TOL = 1e-3
LENGTHS = [(9, 5), (57, 23)]  # (codes T, phones P): two shapes through the same graphs


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx_cache")


@pytest.fixture(scope="module", params=["tiny", "demo"])
def model(request, tmp_path_factory, cache_dir):
    """One checkpoint with its PyTorch modules and its exported graphs (fp32 + INT8)."""
    if request.param == "tiny":
        path = request.getfixturevalue("tiny_ckpt_dir") / TINY_FILE
        if not path.exists():
            pytest.skip(f"{path} is absent")
    else:
        path = build_demo_assets(tmp_path_factory.mktemp("demo"))["sovits"]
    fp32 = ort_backend.export_checkpoint(path, cache_dir)
    int8 = ort_backend.export_checkpoint(path, cache_dir, int8=True)
    sovits = SoVITS.from_checkpoint(path)
    return {
        "name": request.param,
        "path": path,
        "sovits": sovits,
        "vocoder": Vocoder.from_checkpoint(path),
        "paths": fp32,
        "int8_paths": int8,
        "ort": (ort_backend.OrtSoVITS(fp32["latent"], path, fallback=sovits, num_threads=1),
                ort_backend.OrtVocoder(fp32["vocoder"], num_threads=1)),
    }


def _inputs(sovits: SoVITS, n_codes: int, n_phones: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1024, (n_codes,), generator=g)
    phones = torch.randint(0, sovits.config.n_symbols, (n_phones,), generator=g)
    ge = torch.randn(1, sovits.config.gin_channels, 1, generator=g) * 0.3
    noise = torch.randn(1, sovits.config.inter_channels, 2 * n_codes, generator=g)
    return codes, phones, ge, noise


@pytest.mark.parametrize("n_codes,n_phones", LENGTHS)
def test_latent_and_wav_match_pytorch(model, n_codes, n_phones):
    codes, phones, ge, noise = _inputs(model["sovits"], n_codes, n_phones)
    ort_sovits, ort_vocoder = model["ort"]
    z_ref = model["sovits"].decode_latent(codes, phones, ge, noise_scale=0.5, noise=noise)
    z = ort_sovits.decode_latent(codes, phones, ge, noise_scale=0.5, noise=noise)
    assert z.shape == z_ref.shape == (1, model["sovits"].config.inter_channels, 2 * n_codes)
    assert (z - z_ref).abs().max().item() < TOL

    wav_ref = model["vocoder"](z_ref, ge)
    wav = ort_vocoder(z_ref, ge)
    assert wav.shape == wav_ref.shape == (1, 1, 640 * 2 * n_codes)
    assert (wav - wav_ref).abs().max().item() < TOL


def test_noise_scale_zero_without_noise_is_the_prior_mean(model):
    codes, phones, ge, _ = _inputs(model["sovits"], 20, 8, seed=3)
    z_ref = model["sovits"].decode_latent(codes, phones, ge, noise_scale=0.0)
    z = model["ort"][0].decode_latent(codes, phones, ge, noise_scale=0.0)
    assert (z - z_ref).abs().max().item() < TOL


def test_speed_other_than_one_falls_back_to_pytorch(model):
    codes, phones, ge, _ = _inputs(model["sovits"], 20, 8, seed=4)
    z_ref = model["sovits"].decode_latent(codes, phones, ge, noise_scale=0.0, speed=1.3)
    z = model["ort"][0].decode_latent(codes, phones, ge, noise_scale=0.0, speed=1.3)
    assert z.shape == z_ref.shape == (1, model["sovits"].config.inter_channels, int(40 / 1.3) + 1)
    assert torch.equal(z, z_ref)


def test_pipeline_stage_functions_accept_the_ort_runners(model):
    """`models.pipeline.latent` / `vocode` run unchanged on the ORT runners (same seeded noise)."""
    codes, phones, ge, _ = _inputs(model["sovits"], 30, 12, seed=5)
    codes, phones, ge = codes.numpy(), phones.numpy(), ge.numpy()
    z_ref = latent(model["sovits"], codes, phones, ge, 0.5, 1.0, seed=7)
    z = latent(model["ort"][0], codes, phones, ge, 0.5, 1.0, seed=7)
    assert np.abs(z - z_ref).max() < TOL
    wav_ref = vocode(model["vocoder"], z_ref, ge)
    wav = vocode(model["ort"][1], z_ref, ge)
    assert wav.shape == wav_ref.shape and np.abs(wav - wav_ref).max() < TOL


def test_invalid_ids_are_refused(model):
    codes, phones, ge, noise = _inputs(model["sovits"], 5, 3)
    with pytest.raises(ValueError, match="semantic codes"):
        model["ort"][0].decode_latent(torch.tensor([0, 1024]), phones, ge)
    with pytest.raises(ValueError, match="phone ids"):
        model["ort"][0].decode_latent(codes, torch.tensor([-1]), ge)
    with pytest.raises(ValueError, match="non-empty"):
        model["ort"][0].decode_latent(torch.zeros(0, dtype=torch.long), phones, ge)


def test_second_export_reuses_the_cache(model, cache_dir, monkeypatch):
    paths = {**model["paths"], **{f"{k}_int8": v for k, v in model["int8_paths"].items()}}
    mtimes = {k: p.stat().st_mtime_ns for k, p in paths.items()}

    def no_export(*args, **kwargs):
        raise AssertionError("re-exported although the cache holds the graphs")

    for name in ("export_latent", "export_vocoder", "quantize_int8"):
        monkeypatch.setattr(ort_backend, name, no_export)
    again = ort_backend.export_checkpoint(model["path"], cache_dir)
    again_int8 = ort_backend.export_checkpoint(model["path"], cache_dir, int8=True)
    assert again == model["paths"] and again_int8 == model["int8_paths"]
    assert {k: p.stat().st_mtime_ns for k, p in paths.items()} == mtimes
    # keyed by the checkpoint's content
    assert paths["latent"].parent.parent.name == ort_backend.file_sha256(model["path"])


def test_int8_runs_and_stays_close(model):
    codes, phones, ge, noise = _inputs(model["sovits"], 40, 16, seed=6)
    q_sovits = ort_backend.OrtSoVITS(model["int8_paths"]["latent"], fallback=model["sovits"], num_threads=1)
    q_vocoder = ort_backend.OrtVocoder(model["int8_paths"]["vocoder"], num_threads=1)
    z = model["ort"][0].decode_latent(codes, phones, ge, noise_scale=0.5, noise=noise)
    z_q = q_sovits.decode_latent(codes, phones, ge, noise_scale=0.5, noise=noise)
    wav = model["ort"][1](z, ge).numpy().ravel()
    wav_q = q_vocoder(z_q, ge).numpy().ravel()
    z_err = (z_q - z).abs().max().item()
    wav_err = float(np.abs(wav_q - wav).max())
    snr = 10 * np.log10(np.sum(wav**2) / max(np.sum((wav - wav_q) ** 2), 1e-30))
    print(f"\n[{model['name']}] INT8 vs fp32: z max abs {z_err:.3e} (peak {z.abs().max().item():.2f}), "
          f"wav max abs {wav_err:.3e} (peak {np.abs(wav).max():.3f}), SNR {snr:.1f} dB")
    assert np.isfinite(z_q.numpy()).all() and np.isfinite(wav_q).all()
    assert z_err < 0.5 and wav_err < 0.5


def test_load_sovits_backend_picks_the_backend(model, cache_dir):
    lat, voc = ort_backend.load_sovits_backend(model["path"], "onnx", "cpu", cache_dir, num_threads=1)
    assert isinstance(lat, ort_backend.OrtSoVITS) and isinstance(voc, ort_backend.OrtVocoder)
    assert lat.providers[-1] == "CPUExecutionProvider"
    lat, voc = ort_backend.load_sovits_backend(model["path"], "torch", "cpu", cache_dir)
    assert isinstance(lat, SoVITS) and isinstance(voc, Vocoder)
    with pytest.raises(ValueError, match="backend"):
        ort_backend.load_sovits_backend(model["path"], "tensorrt", "cpu", cache_dir)


def test_cli_export_prints_the_cached_paths(model, cache_dir, capsys):
    ort_backend.main(["export", "--sovits", str(model["path"]), "--out", str(cache_dir), "--int8"])
    out = capsys.readouterr().out
    for path in [*model["paths"].values(), *model["int8_paths"].values()]:
        assert str(path) in out
