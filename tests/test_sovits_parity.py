"""SoVITS v2 + HiFi-GAN + HuBERT against upstream goldens (sovits.npz, prompt_semantic.npz)."""

import numpy as np
import pytest
import torch

from models.checkpoints import load_sovits_checkpoint
from models.hubert import HubertFeatures
from models.sovits import SoVITS, SoVITSConfig
from models.vocoder import Vocoder

SOVITS_FILE = "harness_tiny_seed1234_e8_s240.pth"
RTOL = 1e-4


def assert_close(actual, golden, name=""):
    actual = np.asarray(torch.as_tensor(actual).float().cpu(), dtype=np.float64)
    assert actual.size == golden.size, f"{name}: shape {actual.shape} vs {golden.shape}"
    err = np.abs(actual.reshape(golden.shape) - golden).max()
    assert err <= RTOL * np.abs(golden).max(), f"{name}: max err {err:.3e}"


@pytest.fixture(scope="module")
def models(tiny_ckpt_dir):
    torch.set_num_threads(1)
    ckpt = load_sovits_checkpoint(tiny_ckpt_dir / SOVITS_FILE)
    return SoVITS.from_checkpoint(ckpt), Vocoder.from_checkpoint(ckpt)


@pytest.fixture(scope="module")
def golden(golden_dir):
    return {name: np.load(golden_dir / f"{name}.npz") for name in ("sovits", "ref_spec", "prompt_semantic")}


def _specs(golden):
    return [torch.from_numpy(golden["ref_spec"][k][0]) for k in ("ref_spec", "ref2_spec")]


def test_config_from_checkpoint(tiny_ckpt_dir):
    ckpt = load_sovits_checkpoint(tiny_ckpt_dir / SOVITS_FILE)
    cfg = SoVITSConfig.from_checkpoint_config(ckpt.config, ckpt.version)
    assert (cfg.version, cfg.n_symbols, cfg.ref_bins, cfg.inter_channels) == ("v2", 732, 704, 16)
    assert cfg.hop_length == 640 and cfg.spec_channels == 1025


@pytest.mark.parametrize("index", [0, 1])
def test_ge_per_reference(models, golden, index):
    sovits, _ = models
    ge = sovits.reference_embedding([_specs(golden)[index]])
    assert ge.shape == (1, 512, 1)
    assert_close(ge, golden["sovits"]["tworef_ns0__ge_per_ref"][index], "ge")


@pytest.mark.parametrize(
    "case,n_refs,noise_scale",
    [("ns0__", 1, 0.0), ("ns05__", 1, 0.5), ("tworef_ns0__", 2, 0.0)],
)
def test_decode_matches_upstream(models, golden, case, n_refs, noise_scale):
    sovits, vocoder = models
    g = golden["sovits"]
    ge = sovits.reference_embedding(_specs(golden)[:n_refs])
    assert_close(ge, g[case + "ge"], "ge")
    noise = torch.from_numpy(g["ns05__noise"]) if case == "ns05__" else None
    out = sovits.decode_latent(
        torch.from_numpy(g["codes"]), torch.from_numpy(g["phones"]), ge,
        noise_scale=noise_scale, noise=noise, return_intermediates=True,
    )
    for key in ("m_p", "logs_p", "y_mask", "z"):
        assert_close(out[key], g[case + key], key)
    wav = vocoder(out["z"], ge)
    assert wav.shape == (1, 1, 640 * 80)
    assert_close(wav, g[case + "wav"], "wav")


def test_prompt_semantic_matches_upstream(models, golden, tiny_ckpt_dir):
    sovits, _ = models
    ps = golden["prompt_semantic"]
    hubert = HubertFeatures.from_dir(tiny_ckpt_dir / "chinese-hubert-base")
    feats = hubert(torch.from_numpy(ps["hubert_input_wav16k"][0]))
    assert feats.shape == (1, 768, 189)
    assert_close(feats.transpose(1, 2), ps["hubert_last_hidden_state"], "hubert")
    assert_close(sovits.project_ssl(feats), ps["ssl_proj_out"], "ssl_proj")
    codes = sovits.extract_prompt_tokens(feats)
    assert codes.dtype == torch.int64
    np.testing.assert_array_equal(codes.numpy(), ps["prompt_semantic"])


def test_generator_makes_noise_reproducible(models, golden):
    sovits, _ = models
    g = golden["sovits"]
    ge = torch.from_numpy(g["ns0__ge"])
    codes, phones = torch.from_numpy(g["codes"]), torch.from_numpy(g["phones"])
    z1 = sovits.decode_latent(codes, phones, ge, generator=torch.Generator().manual_seed(5))
    z2 = sovits.decode_latent(codes, phones, ge, generator=torch.Generator().manual_seed(5))
    z0 = sovits.decode_latent(codes, phones, ge, noise_scale=0.0)
    torch.testing.assert_close(z1, z2)
    assert not torch.allclose(z1, z0)


@pytest.mark.parametrize("speed", [0.8, 1.5])
def test_speed_changes_latent_length(models, golden, speed):
    sovits, vocoder = models
    g = golden["sovits"]
    ge = torch.from_numpy(g["ns0__ge"])
    z = sovits.decode_latent(torch.from_numpy(g["codes"]), torch.from_numpy(g["phones"]), ge,
                             noise_scale=0.0, speed=speed)
    frames = int(80 / speed) + 1
    assert z.shape == (1, 16, frames)
    assert vocoder(z, ge).shape == (1, 1, 640 * frames)


def test_out_of_range_codes_are_rejected(models):
    sovits, _ = models
    ge = torch.zeros(1, 512, 1)
    with pytest.raises(ValueError):
        sovits.decode_latent(torch.tensor([1, 1024]), torch.tensor([5]), ge)


def test_upstream_state_dict_round_trips(models, tiny_ckpt_dir):
    sovits, vocoder = models
    stored = load_sovits_checkpoint(tiny_ckpt_dir / SOVITS_FILE).weights
    written = {**sovits.upstream_state_dict(), **vocoder.upstream_state_dict()}
    assert set(written) == set(stored)
    for key, value in stored.items():
        assert written[key].shape == value.shape, key
    fresh = SoVITS(sovits.config)
    fresh.load_upstream_state_dict(written)
    for (name, a), b in zip(sovits.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_v1_checkpoint_builds_and_uses_all_bins(tmp_path):
    from collections import OrderedDict

    from models import demo
    from models.vocoder import VocoderConfig

    config = demo.sovits_config()
    config["model"]["version"] = "v1"
    torch.manual_seed(0)
    v1 = SoVITS(SoVITSConfig.from_checkpoint_config(config, "v1"))
    weights = {**v1.upstream_state_dict(), **Vocoder(VocoderConfig.from_model_config(config["model"])).upstream_state_dict()}
    assert weights["enc_p.text_embedding.weight"].shape[0] == 322
    assert weights["ref_enc.spectral.0.fc.weight"].shape == (128, 1025)
    path = tmp_path / "v1.pth"
    torch.save(OrderedDict(weight={k: v.half() for k, v in weights.items()}, config=config, info="v1"), path)
    ckpt = load_sovits_checkpoint(path)
    assert ckpt.version == "v1"
    model = SoVITS.from_checkpoint(ckpt)
    spec = torch.rand(1025, 50)
    ge = model.reference_embedding([spec])
    spec_hi = spec.clone()
    spec_hi[704:] += 1.0  # v1 looks at the bins above 704 too
    assert not torch.allclose(ge, model.reference_embedding([spec_hi]))
    z = model.decode_latent(torch.arange(10), torch.tensor([0, 321]), ge, noise_scale=0.0)
    assert z.shape == (1, 16, 20)
