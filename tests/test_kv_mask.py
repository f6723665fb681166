"""The static (preallocated) KV cache masks the slots that hold no key yet.

A zero key still scores logit 0, not weight 0, so an unmasked static cache leaks attention onto
empty or stale positions: peers measured ~10 % broken (repeating) generations from exactly that.
Here the batched engine, with rows of very different lengths in one cache, must give the logits
of the unpadded path (`prefill_logits` for step 0, a full no-cache forward for every later step)
for short and long prompts, whatever the cache's capacity, and across power-of-two length
boundaries. A control shows the comparison would catch a missing mask.
"""

import pytest
import torch

from models.t2s import SamplingParams, T2SConfig, T2SEngine, Text2Semantic, prefill_logits

STEPS = 6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def random_model(seed=0) -> Text2Semantic:
    """Tiny random T2S with sharp attention (q/k scaled up), so a leak onto empty keys shows."""
    torch.manual_seed(seed)
    model = Text2Semantic(T2SConfig(dim=32, n_head=4, n_layer=2))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "alpha" in name:
                p.add_(0.1 * torch.randn_like(p))
        for layer in model.layers:
            layer.qkv.weight[: 2 * 32].mul_(3)
        model.predict.weight.mul_(10)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def model():
    return random_model()


@pytest.fixture(scope="module")
def upstream_tiny(tiny_ckpt_dir):
    return Text2Semantic.from_checkpoint(next(tiny_ckpt_dir.glob("*.ckpt")))


def inputs(L, T, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 732, (L,), generator=g), torch.randn(1024, L, generator=g),
            torch.randint(0, 1024, (T,), generator=g))


def unpadded_logits(model, phones, bert, prompt, generated):
    """No cache at all: the whole sequence, the last position's logits."""
    audio = torch.cat([prompt, torch.tensor(generated, dtype=torch.long)])
    with torch.inference_mode():
        return model(phones, bert, audio if audio.numel() else None, last_only=True)


def assert_close(got, want, rtol=1e-4):
    err = (got - want).abs().max().item()
    assert err <= rtol * want.abs().max().item(), err


def run_batched(model, rows, max_seq, steps=STEPS, engine=None):
    """Decode `rows` ({id: (phones, bert, prompt)}) together; returns {id: [(logits, token)]}."""
    engine = engine or T2SEngine(model, max_batch=len(rows), max_seq=max_seq)
    for i, (rid, inp) in enumerate(rows.items()):
        engine.add(rid, *inp, SamplingParams(seed=i, max_new_tokens=steps + 1), record_logits=True)
    seen = {rid: [] for rid in rows}
    for _ in range(steps):
        for out in engine.step():
            seen[out.request_id].append((out.logits, out.token))
    return seen


def check_against_unpadded(model, rows, seen):
    for rid, steps in seen.items():
        phones, bert, prompt = rows[rid]
        assert_close(steps[0][0], prefill_logits(model, phones, bert, prompt))
        generated = []
        for logits, token in steps:
            assert_close(logits, unpadded_logits(model, phones, bert, prompt, generated))
            generated.append(token)


# (phones, prompt tokens): a ref-free 3-phone row, short, medium and long prompts
MIXED = {"tiny": (3, 0), "short": (6, 2), "medium": (40, 150), "long": (120, 700)}


@pytest.mark.parametrize("capacity", ["exact", 1024, 4096])
def test_rows_of_very_different_lengths_match_the_unpadded_path(model, capacity):
    rows = {rid: inputs(L, T, seed=i) for i, (rid, (L, T)) in enumerate(MIXED.items())}
    need = max(L + T for L, T in MIXED.values()) + STEPS
    seen = run_batched(model, rows, need if capacity == "exact" else capacity)
    check_against_unpadded(model, rows, seen)


@pytest.mark.parametrize("edge", [64, 128, 256, 512])
def test_rows_crossing_power_of_two_lengths_match(model, edge):
    """Rows end just below, at and above a power of two and decode across it."""
    rows = {d: inputs(10, edge - 10 + d, seed=edge + d) for d in (-3, 0, 2)}
    rows["small"] = inputs(5, 1, seed=edge)
    seen = run_batched(model, rows, max_seq=2 * edge)
    check_against_unpadded(model, rows, seen)


def test_short_row_in_a_slot_that_held_a_long_one(model):
    """Stale keys of a finished long request sit past the new short row's length."""
    engine = T2SEngine(model, max_batch=2, max_seq=1024)
    engine.add("old", *inputs(100, 800, seed=1), SamplingParams(seed=0, max_new_tokens=20))
    for _ in range(3):
        engine.step()
    engine.cancel("old")
    rows = {"short": inputs(4, 3, seed=2), "mid": inputs(30, 60, seed=3)}
    seen = run_batched(model, rows, max_seq=1024, engine=engine)
    check_against_unpadded(model, rows, seen)


def test_upstream_tiny_checkpoint_batched_matches_unpadded(upstream_tiny):
    rows = {rid: inputs(L, T, seed=10 + i) for i, (rid, (L, T)) in enumerate(MIXED.items())}
    seen = run_batched(upstream_tiny, rows, max_seq=2048)
    check_against_unpadded(upstream_tiny, rows, seen)


def test_control_without_the_mask_the_logits_differ(model, monkeypatch):
    """The same comparison fails when the cache's decode mask is dropped: the test has teeth."""
    rows = {rid: inputs(L, T, seed=i) for i, (rid, (L, T)) in enumerate(MIXED.items())}
    engine = T2SEngine(model, max_batch=len(rows), max_seq=1024)
    begin = engine.cache.begin_decode

    def unmasked(positions, always_mask=False):
        begin(positions, always_mask)
        return None

    monkeypatch.setattr(engine.cache, "begin_decode", unmasked)
    seen = run_batched(model, rows, max_seq=1024, engine=engine)
    phones, bert, prompt = rows["tiny"]
    logits, token = seen["tiny"][1]  # step 1: the first decode step through the cache
    want = unpadded_logits(model, phones, bert, prompt, [seen["tiny"][0][1]])
    err = (logits - want).abs().max().item()
    assert err > 1e-2 * want.abs().max().item()
