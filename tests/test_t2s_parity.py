"""T2S against upstream's golden vectors (tiny_seed1234_A, README 3.3 of the goldens)."""

import json

import numpy as np
import pytest
import torch

from models.t2s import SamplingParams, Text2Semantic, generate, prefill_logits, upstream_sovits_codes

CASES = ("randbert_rp135", "zerobert_rp135", "randbert_rp100")
RTOL = 1e-4  # max|a-b| <= RTOL * max|b|


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model(tiny_ckpt_dir):
    return Text2Semantic.from_checkpoint(next(tiny_ckpt_dir.glob("*.ckpt")))


@pytest.fixture(scope="module")
def golden(golden_dir):
    return np.load(golden_dir / "t2s.npz"), json.loads((golden_dir / "t2s.json").read_text())


def inputs(golden, case):
    z, meta = golden
    bert = z["bert_rand"] if meta["cases"][case]["bert"] == "bert_rand" else np.zeros_like(z["bert_rand"])
    return torch.from_numpy(z["x_ids"]), torch.from_numpy(bert), torch.from_numpy(z["prompt_semantic"])


@pytest.fixture(scope="module")
def results(model, golden):
    """Greedy decode of every case, as the checker asks: top_k 1, 40 sampled tokens."""
    _, meta = golden
    out = {}
    for case in CASES:
        params = SamplingParams(top_k=1, top_p=1.0, temperature=1.0,
                                repetition_penalty=meta["cases"][case]["repetition_penalty"],
                                max_new_tokens=meta["max_new_tokens"])
        out[case] = generate(model, *inputs(golden, case), params, record_logits=True)
    return out


def assert_close(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    err = np.abs(got - want).max()
    assert err <= RTOL * np.abs(want).max(), f"max abs error {err:.3g} vs max {np.abs(want).max():.3g}"


def test_checkpoint_config(model):
    cfg = model.config
    assert (cfg.dim, cfg.n_head, cfg.n_layer, cfg.vocab_size, cfg.phoneme_vocab_size, cfg.eos) == (
        32, 2, 2, 1025, 732, 1024)
    assert model.predict.weight.dtype == torch.float32


@pytest.mark.parametrize("case", CASES)
def test_first_step_logits(model, golden, case):
    got = prefill_logits(model, *inputs(golden, case))
    assert_close(got, golden[0][case + "__first_step_logits"])


@pytest.mark.parametrize("case", CASES)
def test_greedy_tokens(results, golden, case):
    z, meta = golden
    res = results[case]
    np.testing.assert_array_equal(res.tokens.numpy(), z[case + "__generated"])
    assert res.stop_reason == ("eos" if meta["cases"][case]["hit_eos"] else "max_tokens")


@pytest.mark.parametrize("case", CASES)
def test_step_logits(results, golden, case):
    assert_close(results[case].logits, golden[0][case + "__raw_logits"])


@pytest.mark.parametrize("case", CASES)
def test_sovits_codes_drop_first_token_on_length_stop(results, golden, case):
    z, _ = golden
    codes = upstream_sovits_codes(results[case]).numpy()
    np.testing.assert_array_equal(codes, z[case + "__sovits_codes"])
    np.testing.assert_array_equal(codes, z[case + "__generated"][1:])
