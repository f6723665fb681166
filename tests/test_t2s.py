"""T2S model, slot KV cache, sampling and batched engine, on tiny random models."""

import math

import pytest
import torch

from models.t2s import (
    MAX_NEW_TOKENS,
    EngineFullError,
    SamplingParams,
    T2SConfig,
    T2SEngine,
    T2SRequest,
    Text2Semantic,
    generate,
    generate_batch,
    generate_stream,
    logits_to_probs,
    prefix_lm_mask,
    sample_tokens,
    upstream_sovits_codes,
)

EOS = 1024


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_model(seed=0, dim=32, n_head=4, n_layer=2) -> Text2Semantic:
    """Random weights; norms and alphas perturbed so nothing is trivially 1 or 0."""
    torch.manual_seed(seed)
    model = Text2Semantic(T2SConfig(dim=dim, n_head=n_head, n_layer=n_layer))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "alpha" in name:
                p.add_(0.1 * torch.randn_like(p))
        model.predict.weight.mul_(10)
    return model.eval().requires_grad_(False)


def rigged_model(eos_logit: float, seed=0) -> Text2Semantic:
    """The last layer outputs all-ones hidden states, so logits = row sums of `predict`:
    EOS gets `eos_logit`, every other token a random logit in about [-1, 1]."""
    model = tiny_model(seed, dim=16, n_head=2, n_layer=1)
    with torch.no_grad():
        model.layers[-1].ffn_norm.weight.zero_()
        model.layers[-1].ffn_norm.bias.fill_(1.0)
        w = model.predict.weight
        w.copy_(torch.rand_like(w) * 2 - 1).div_(w.shape[1])
        w[EOS] = eos_logit / w.shape[1]
    return model


def make_inputs(L, T, seed):
    g = torch.Generator().manual_seed(seed)
    phones = torch.randint(0, 732, (L,), generator=g)
    bert = torch.randn(1024, L, generator=g)
    prompt = torch.randint(0, 1024, (T,), generator=g)
    return phones, bert, prompt


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def recompute_logits(model, phones, bert, prompt, generated):
    """No cache at all: the whole sequence again, last position's logits."""
    audio = torch.cat([prompt, torch.tensor(generated, dtype=torch.long)])
    with torch.inference_mode():
        return model(phones, bert, audio, last_only=True)


def assert_close(got, want, rtol=1e-4):
    err = (got - want).abs().max().item()
    assert err <= rtol * want.abs().max().item(), err


# ---- model pieces ----------------------------------------------------------------------------


def test_prefix_lm_mask():
    m = prefix_lm_mask(2, 3)
    want = torch.tensor([
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(m, want)


def test_config_caps_tokens_like_upstream():
    assert T2SConfig().max_new_tokens == 1500  # 50 * 54 + 1 = 2701 > 1500
    assert T2SConfig(max_sec=2).max_new_tokens == 101  # early_stop_num 100 -> 101 sampled


def test_loads_upstream_keys_strictly(tiny_ckpt_dir):
    from models.checkpoints import load_gpt_checkpoint

    ckpt = load_gpt_checkpoint(next(tiny_ckpt_dir.glob("*.ckpt")))
    model = Text2Semantic.from_config_and_weights(ckpt.config, ckpt.weights)
    w = ckpt.weights["model.h.layers.1.self_attn.in_proj_weight"]
    assert torch.equal(model.layers[1].qkv.weight, w.float())
    assert model.text_alpha.item() == ckpt.weights["model.ar_text_position.alpha"].float().item()
    missing = {k: v for k, v in ckpt.weights.items() if k != "model.ar_predict_layer.weight"}
    with pytest.raises(ValueError, match="predict"):
        Text2Semantic.from_config_and_weights(ckpt.config, missing)
    extra = dict(ckpt.weights, **{"model.ar_predict_layer.bias": torch.zeros(1025)})
    with pytest.raises(ValueError, match="ar_predict_layer.bias"):
        Text2Semantic.from_config_and_weights(ckpt.config, extra)


# ---- KV cache vs full recompute ----------------------------------------------------------------


@pytest.mark.parametrize("L,T,steps", [(5, 3, 20), (60, 200, 30)])
def test_cached_decode_matches_full_recompute(model, L, T, steps):
    phones, bert, prompt = make_inputs(L, T, seed=L)
    res = generate(model, phones, bert, prompt,
                   SamplingParams(max_new_tokens=steps, seed=1), record_logits=True)
    assert len(res.tokens) == steps
    for k in range(steps):
        assert_close(res.logits[k], recompute_logits(model, phones, bert, prompt, res.tokens[:k].tolist()))


def test_masked_batch_with_stale_slot_matches_full_recompute(model):
    """Rows of different lengths (mask on) in a slot that held a longer request before."""
    engine = T2SEngine(model, max_batch=3, max_seq=400)
    engine.add("old", *make_inputs(80, 150, seed=9), SamplingParams(seed=0, max_new_tokens=50))
    for _ in range(5):
        engine.step()
    engine.cancel("old")  # slot 0 keeps its stale keys past the next request's length
    reqs = {"a": make_inputs(4, 2, 1), "b": make_inputs(30, 50, 2), "c": make_inputs(11, 0, 3)}
    for i, (rid, inp) in enumerate(reqs.items()):
        engine.add(rid, *inp, SamplingParams(seed=i, top_k=5 + i, max_new_tokens=50), record_logits=True)
    tokens = {rid: [] for rid in reqs}
    for _ in range(12):
        for out in engine.step():
            phones, bert, prompt = reqs[out.request_id]
            assert_close(out.logits, recompute_logits(model, phones, bert, prompt, tokens[out.request_id]))
            tokens[out.request_id].append(out.token)


# ---- batching ----------------------------------------------------------------------------------


def three_requests():
    return [
        T2SRequest(*make_inputs(7, 5, 11), SamplingParams(seed=1, max_new_tokens=40)),
        T2SRequest(*make_inputs(23, 31, 12), SamplingParams(seed=2, top_k=3, temperature=0.7,
                                                           repetition_penalty=1.0, max_new_tokens=25)),
        T2SRequest(*make_inputs(15, 12, 13), SamplingParams(seed=3, top_k=50, top_p=0.8,
                                                           temperature=1.3, max_new_tokens=33)),
    ]


def test_batched_rows_match_decoding_alone(model):
    reqs = three_requests()
    batched = generate_batch(model, reqs)
    for req, res in zip(reqs, batched):
        alone = generate(model, req.phone_ids, req.bert, req.prompt, req.params)
        assert torch.equal(res.tokens, alone.tokens)
        assert res.stop_reason == alone.stop_reason == "max_tokens"
        assert len(res.tokens) == req.params.max_new_tokens


def decode_with_joins(engine: T2SEngine, reqs) -> dict[int, list]:
    """Request i joins the engine before step 0, 6 and 13 (i = 0, 1, 2); tokens per request."""
    tokens = {i: [] for i in range(len(reqs))}
    joins = {0: 0, 6: 1, 13: 2}  # step index -> request that joins before it
    for step in range(200):
        if step in joins:
            i = joins[step]
            engine.add(i, reqs[i].phone_ids, reqs[i].bert, reqs[i].prompt, reqs[i].params)
        for out in engine.step():
            tokens[out.request_id].append(out.token)
        if step > 13 and engine.num_active == 0:
            break
    return tokens


def test_request_joining_midway_matches_alone(model):
    reqs = three_requests()
    tokens = decode_with_joins(T2SEngine(model, max_batch=3, max_seq=200), reqs)
    for i, req in enumerate(reqs):
        alone = generate(model, req.phone_ids, req.bert, req.prompt, req.params)
        assert tokens[i] == alone.tokens.tolist()


def test_generate_batch_with_fewer_slots_than_requests(model):
    reqs = three_requests()
    assert [r.tokens.tolist() for r in generate_batch(model, reqs, max_batch=2)] == \
        [r.tokens.tolist() for r in generate_batch(model, reqs)]


# ---- sampling ----------------------------------------------------------------------------------


def test_seeded_sampling_is_deterministic(model):
    inp = make_inputs(9, 6, 5)
    a = generate(model, *inp, SamplingParams(seed=42, max_new_tokens=40))
    b = generate(model, *inp, SamplingParams(seed=42, max_new_tokens=40))
    c = generate(model, *inp, SamplingParams(seed=43, max_new_tokens=40))
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, c.tokens)


def upstream_style_decode(model, phones, bert, prompt, p: SamplingParams):
    """SPEC 4.5 written out for one sequence: full recompute, the global RNG seeded with
    torch.manual_seed, the EOS column sliced off, penalty by gather/scatter over the history."""
    y = prompt.clone()
    with torch.random.fork_rng():
        torch.manual_seed(p.seed)
        for idx in range(p.max_new_tokens):
            logits = recompute_logits(model, phones, bert, prompt, y[len(prompt):].tolist())[None]
            if idx < 11:
                logits = logits[:, :-1]
            hist = y[None]
            score = logits.gather(1, hist)
            score = torch.where(score < 0, score * p.repetition_penalty, score / p.repetition_penalty)
            logits = logits.scatter(1, hist, score)
            scaled = logits / max(p.temperature, 1e-5)
            pivot = torch.topk(scaled, min(p.top_k, scaled.shape[1])).values[:, -1:]
            probs = torch.softmax(torch.where(scaled < pivot, -math.inf, scaled), -1)
            sample = torch.argmax(probs / torch.empty_like(probs).exponential_(1), -1)
            if logits.argmax(-1).item() == EOS or sample.item() == EOS:
                break
            y = torch.cat([y, sample])
    return y[len(prompt):]


def test_seeded_sampling_reproduces_upstream_rng_stream(model):
    phones, bert, _ = make_inputs(8, 0, 6)
    prompt = torch.tensor([5, 5, 9, 5, 300, 9])  # repeated ids are penalised once
    params = SamplingParams(top_k=15, temperature=0.9, seed=1234, max_new_tokens=30)
    ours = generate(model, phones, bert, prompt, params)
    assert torch.equal(ours.tokens, upstream_style_decode(model, phones, bert, prompt, params))


def test_eos_is_suppressed_for_the_first_11_steps():
    model = rigged_model(eos_logit=50.0)  # EOS wins whenever it is allowed
    res = generate(model, *make_inputs(6, 4, 7), SamplingParams(seed=0))
    assert res.stop_reason == "eos"
    assert len(res.tokens) == 11
    assert EOS not in res.tokens.tolist()
    assert torch.equal(upstream_sovits_codes(res), res.tokens)  # EOS stop: nothing dropped


def test_length_cap_is_1500_and_drops_first_token_for_sovits():
    model = rigged_model(eos_logit=-50.0)  # EOS never wins
    res = generate(model, *make_inputs(6, 4, 8), SamplingParams(seed=0, max_new_tokens=5000))
    assert res.stop_reason == "max_tokens"
    assert len(res.tokens) == MAX_NEW_TOKENS
    assert torch.equal(upstream_sovits_codes(res), res.tokens[1:])
    assert torch.equal(upstream_sovits_codes(res, parallel=True), res.tokens[:-1])


def test_ref_free_result_keeps_every_token(model):
    phones, bert, _ = make_inputs(10, 0, 4)
    res = generate(model, phones, bert, None, SamplingParams(seed=0, max_new_tokens=12))
    assert res.ref_free and len(res.tokens) == 12
    assert torch.equal(upstream_sovits_codes(res), res.tokens)


def probs_of(logits, seen=None, *, rp=1.0, top_p=1.0, temperature=1.0, top_k=None, suppress=False):
    logits = torch.as_tensor(logits, dtype=torch.float32)[None]
    V = logits.shape[1]
    seen = torch.zeros(1, V, dtype=torch.bool) if seen is None else torch.as_tensor(seen)[None]
    probs, greedy = logits_to_probs(
        logits, seen, repetition_penalty=torch.tensor([rp]), top_p=torch.tensor([top_p]),
        temperature=torch.tensor([temperature]), top_k=torch.tensor([top_k or V]),
        suppress_eos=[suppress], eos=V - 1)
    return probs[0], greedy.item()


def test_top_k_keeps_ties():
    probs, _ = probs_of([3.0, 2.0, 2.0, 1.0, 0.0, -5.0], top_k=2)
    assert (probs > 0).tolist() == [True, True, True, False, False, False]


def test_top_p_has_no_shift_right():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    probs, _ = probs_of(logits, top_p=0.7)  # cumulative 0.5, 0.8: the crossing token goes too
    assert (probs > 0).tolist() == [True, False, False, False]
    probs, _ = probs_of(logits, top_p=0.85)
    assert (probs > 0).tolist() == [True, True, False, False]


def test_top_p_runs_before_temperature():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    probs, _ = probs_of(logits, top_p=0.7, temperature=100.0)
    assert (probs > 0).tolist() == [True, False, False, False]


def test_repetition_penalty_on_history_only():
    logits = [2.0, -2.0, 1.0, -1.0, 0.5]
    seen = [True, True, False, False, False]
    probs, greedy = probs_of(logits, seen, rp=2.0)
    want = torch.softmax(torch.tensor([1.0, -4.0, 1.0, -1.0, 0.5]), -1)
    assert torch.allclose(probs, want)
    assert greedy == 0  # ties go to the first index, as torch.argmax does


def test_eos_suppression_in_probs():
    probs, greedy = probs_of([0.0, 1.0, 9.0], suppress=True)
    assert probs[2] == 0 and greedy == 1
    probs, greedy = probs_of([0.0, 1.0, 9.0], suppress=False)
    assert greedy == 2


def test_zero_temperature_is_greedy():
    probs, _ = probs_of([0.1, 0.3, 0.2, 0.0], temperature=0.0)
    assert probs.tolist() == [0.0, 1.0, 0.0, 0.0]


def test_stop_on_penalised_argmax_even_if_sample_is_not_eos():
    # EOS (id 3) is the argmax, but top-p would keep it anyway; make the sample certain to be
    # another id by top_k=1 on a row whose best non-history token differs: use the stop flag.
    logits = torch.tensor([[5.0, 0.0, 0.0, 6.0]])
    seen = torch.tensor([[False, False, False, False]])
    gen = torch.Generator().manual_seed(0)
    tokens, stop = sample_tokens(logits, seen, generators=[gen], eos=3, suppress_eos=[False],
                                 repetition_penalty=torch.tensor([1.0]), top_p=torch.tensor([1.0]),
                                 temperature=torch.tensor([1.0]), top_k=torch.tensor([1]))
    assert tokens.item() == 3 and stop.item()


def test_rows_with_different_params_in_one_call():
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(0))
    seen = torch.zeros(2, 50, dtype=torch.bool)
    seen[1, :10] = True
    batched, _ = logits_to_probs(logits, seen, repetition_penalty=torch.tensor([1.0, 1.5]),
                                 top_p=torch.tensor([1.0, 0.6]), temperature=torch.tensor([0.5, 2.0]),
                                 top_k=torch.tensor([3, 40]), suppress_eos=[True, False], eos=49)
    for i, (rp, tp, t, k, s) in enumerate([(1.0, 1.0, 0.5, 3, True), (1.5, 0.6, 2.0, 40, False)]):
        alone, _ = logits_to_probs(logits[i:i + 1], seen[i:i + 1], repetition_penalty=torch.tensor([rp]),
                                   top_p=torch.tensor([tp]), temperature=torch.tensor([t]),
                                   top_k=torch.tensor([k]), suppress_eos=[s], eos=49)
        assert torch.equal(batched[i], alone[0])


@pytest.mark.parametrize("bad", [dict(top_k=0), dict(top_p=0.0), dict(temperature=-1.0),
                                 dict(repetition_penalty=0.0), dict(max_new_tokens=0)])
def test_sampling_params_validation(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


# ---- engine bookkeeping ------------------------------------------------------------------------


def test_cancel_frees_the_slot(model):
    engine = T2SEngine(model, max_batch=2, max_seq=100)
    params = SamplingParams(seed=0, max_new_tokens=50)
    engine.add("a", *make_inputs(5, 5, 1), params)
    engine.add("b", *make_inputs(6, 4, 2), params)
    with pytest.raises(EngineFullError):
        engine.add("c", *make_inputs(5, 5, 3), params)
    engine.step()
    assert engine.cancel("a") is True
    assert engine.cancel("a") is False
    engine.add("c", *make_inputs(5, 5, 3), params)
    assert sorted(engine.request_ids) == ["b", "c"]
    assert {o.request_id for o in engine.step()} == {"b", "c"}


def test_finished_requests_leave_the_engine(model):
    engine = T2SEngine(model, max_batch=2, max_seq=100)
    engine.add("short", *make_inputs(5, 5, 1), SamplingParams(seed=0, max_new_tokens=2))
    engine.add("long", *make_inputs(5, 5, 2), SamplingParams(seed=0, max_new_tokens=4))
    outs = [engine.step() for _ in range(4)]
    assert [o.finished for o in outs[1]] == [True, False]
    assert outs[1][0].reason == "max_tokens" and outs[1][0].token is not None
    assert [o.request_id for o in outs[2]] == ["long"]
    assert outs[3][0].finished and engine.num_active == 0 and engine.step() == []


def test_add_rejects_what_does_not_fit(model):
    engine = T2SEngine(model, max_batch=1, max_seq=64)
    with pytest.raises(ValueError, match="max_seq"):
        engine.add("x", *make_inputs(30, 30, 1), SamplingParams(max_new_tokens=10))
    engine.add("y", *make_inputs(30, 30, 1), SamplingParams(max_new_tokens=5))
    with pytest.raises(ValueError, match="already active"):
        engine.add("y", *make_inputs(3, 3, 1))
    engine.cancel("y")
    phones, bert, prompt = make_inputs(5, 3, 1)
    with pytest.raises(ValueError, match="prompt tokens"):
        engine.add("z", phones, bert, torch.tensor([1, 1024]), SamplingParams(max_new_tokens=5))
    with pytest.raises(ValueError, match="phone ids"):
        engine.add("z", phones + 732, bert, prompt, SamplingParams(max_new_tokens=5))


def test_stream_chunks_concatenate_to_generate(model):
    inp = make_inputs(9, 6, 5)
    params = SamplingParams(seed=7, max_new_tokens=30)
    chunks = list(generate_stream(model, *inp, params, chunk_sizes=(4, 10)))
    assert [len(c) for c in chunks] == [4, 10, 10, 6]
    assert torch.equal(torch.cat(chunks), generate(model, *inp, params).tokens)


def test_compiled_engine_decodes_the_same_tokens_as_eager(model):
    """torch.compile'd decode steps (symbolic batch size and span): requests joining and
    leaving at different steps still get exactly the tokens they get alone, eagerly."""
    reqs = three_requests()
    engine = T2SEngine(model, max_batch=3, max_seq=200, compile=True)
    engine.warm_up()
    tokens = decode_with_joins(engine, reqs)
    for i, req in enumerate(reqs):
        assert tokens[i] == generate(model, req.phone_ids, req.bert, req.prompt, req.params).tokens.tolist()
