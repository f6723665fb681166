"""The random-weight demo voice (models/demo.py) loads through our loaders and runs."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from models import audio, demo
from models.checkpoints import load_gpt_checkpoint, load_sovits_checkpoint
from models.hubert import HubertFeatures
from models.sovits import SoVITS
from models.vocoder import Vocoder


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    torch.set_num_threads(1)
    return demo.build_demo_assets(tmp_path_factory.mktemp("demo"))


def test_gpt_checkpoint_format(assets):
    ckpt = load_gpt_checkpoint(assets["gpt"])
    assert ckpt.info == demo.INFO
    assert ckpt.config["model"]["EOS"] == 1024 and ckpt.config["data"]["max_sec"] == 54
    assert all(k.startswith("model.") and v.dtype == torch.float16 for k, v in ckpt.weights.items())
    assert ckpt.weights["model.h.layers.1.self_attn.in_proj_weight"].shape == (192, 64)
    assert ckpt.weights["model.bert_proj.weight"].shape == (64, 1024)


def test_sovits_checkpoint_has_upstream_layout(assets, tiny_ckpt_dir):
    ckpt = load_sovits_checkpoint(assets["sovits"])
    assert (ckpt.version, ckpt.info) == ("v2", demo.INFO)
    assert ckpt.weights["quantizer.vq.layers.0._codebook.inited"].item() == 1
    # same dims as the upstream-written tiny reference file, so the same keys and shapes
    reference = load_sovits_checkpoint(tiny_ckpt_dir / "harness_tiny_seed1234_e8_s240.pth").weights
    assert {k: tuple(v.shape) for k, v in ckpt.weights.items()} == {k: tuple(v.shape) for k, v in reference.items()}


def test_sovits_and_vocoder_run(assets):
    ckpt = load_sovits_checkpoint(assets["sovits"])
    sovits, vocoder = SoVITS.from_checkpoint(ckpt), Vocoder.from_checkpoint(ckpt)
    wav, sr = sf.read(assets["reference_wav"], dtype="float32")
    assert sr == audio.SAMPLE_RATE and len(wav) == int(demo.REFERENCE_SECONDS * sr)
    hubert = HubertFeatures.from_dir(assets["hubert_dir"])
    feats = hubert(audio.hubert_input(wav))
    codes = sovits.extract_prompt_tokens(feats)
    assert codes.shape == (feats.shape[-1] // 2,) and int(codes.max()) < 1024
    ge = sovits.reference_embedding([audio.spectrogram(torch.from_numpy(wav))])
    z = sovits.decode_latent(codes[:25], torch.arange(10), ge, generator=torch.Generator().manual_seed(0))
    out = vocoder(z, ge)
    assert out.shape == (1, 1, 25 * audio.SAMPLES_PER_TOKEN)
    assert torch.isfinite(out).all() and 0.01 < out.abs().max() <= 1.0


def test_bert_folder_tokenizes_chinese(assets):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets["bert_dir"], local_files_only=True)
    ids = tokenizer("你好，世界。")["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) == 8  # [CLS] + 6 characters + [SEP]
    model = AutoModelForMaskedLM.from_pretrained(assets["bert_dir"], local_files_only=True)
    hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    assert hidden[-3].shape == (1, 8, 1024)


def test_manifest_and_reuse(assets):
    manifest = json.loads(assets["manifest"].read_text(encoding="utf-8"))
    assert manifest["info"] == demo.INFO
    assert manifest["reference"]["text"] == assets["reference_text"]
    before = assets["sovits"].stat().st_mtime_ns
    again = demo.build_demo_assets(assets["gpt"].parent)  # complete folder: nothing rebuilt
    assert again["sovits"].stat().st_mtime_ns == before


def test_weights_are_deterministic():
    a = demo.gpt_weights(torch.Generator().manual_seed(demo.SEED))
    b = demo.gpt_weights(torch.Generator().manual_seed(demo.SEED))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ref = demo.synthetic_reference()
    np.testing.assert_array_equal(ref, demo.synthetic_reference())
    assert np.abs(ref).max() == pytest.approx(0.5)
