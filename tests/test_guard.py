"""Generation guard (models/guard.py): each failure mode gives its reason and a retry, healthy
generations pass untouched, retries are deterministic; crafted T2S weights drive the real
decoder into loops, runs, early stops and the cap."""

import asyncio

import numpy as np
import pytest
import torch

from deployments import guard_metrics
from models.guard import (
    HEADER,
    GuardConfig,
    GuardedStream,
    GuardLog,
    GuardVerdict,
    SentenceContext,
    SentenceOutcome,
    StreamingGuard,
    check_tokens,
    guarded_generate,
    guarded_generate_async,
    hit_cap,
    kept_index,
    repeated_phone_count,
    retry_seed,
    voice_silence_tokens,
    voice_tokens_per_phone,
)
from models.t2s import SamplingParams, T2SConfig, Text2Semantic, generate, generate_stream

EOS = 1024
SIL = (0, 7, 9)  # the silence tokens of the synthetic voice


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---- synthetic token sequences ----------------------------------------------------------------


def speech(rng, n_phones, tpp=3.0, edge=(16, 26), pause_p=0.03):
    """Speech-like tokens: each phone ~tpp tokens (gamma spread) of one or two tokens (a steady
    vowel repeats), edge silence and rare pauses flickering between the voice's silence tokens."""
    out = []

    def silence(k):
        for _ in range(k):
            r = rng.random()
            out.append(SIL[0] if r < 0.6 else SIL[1] if r < 0.85 else SIL[2])

    silence(int(rng.integers(0, edge[0])))
    for _ in range(n_phones):
        d = max(1, int(round(rng.gamma(4.0, tpp * 0.2))))
        a, b = rng.integers(10, 1024, size=2)
        split = int(rng.integers(0, d + 1))
        out += [int(a)] * split + [int(b)] * (d - split)
        if rng.random() < pause_p:
            silence(int(rng.integers(4, 15)))
    silence(int(rng.integers(3, edge[1])))
    return np.array(out)


def word_loop(rng, period_units, repeats, sub=0.0):
    """A word of `period_units` units said `repeats` times, durations jittered (1-4 tokens per
    unit), a share `sub` of units swapped for random tokens."""
    word = rng.integers(10, 1024, size=period_units)
    out = []
    for _ in range(repeats):
        for u in word:
            tok = int(rng.integers(10, 1024)) if rng.random() < sub else int(u)
            out += [tok] * int(rng.integers(1, 5))
    return np.array(out)


def ctx(n_phones=20, tpp=3.0, **kw):
    return SentenceContext(n_phones, tpp, **kw)


# ---- bounds from the request ------------------------------------------------------------------


def test_config_rejects_bad_values_and_unknown_keys():
    with pytest.raises(ValueError):
        GuardConfig(max_retries=-1)
    with pytest.raises(ValueError):
        GuardConfig(retry_reasons=("loop", "nonsense"))
    with pytest.raises(ValueError):
        GuardConfig.from_dict({"max_runs": 3})
    cfg = GuardConfig.from_dict({"max_retries": 2, "retry_reasons": ["loop", "cap"]})
    assert cfg.max_retries == 2 and cfg.retry_reasons == ("loop", "cap")


def test_voice_rate_removes_the_padding_and_is_clamped():
    assert voice_tokens_per_phone(15 + 120, 40) == pytest.approx(3.0)
    assert voice_tokens_per_phone(15 + 20, 40) == 1.5  # transcript far longer than the clip
    assert voice_tokens_per_phone(15 + 800, 40) == 6.0  # a clip with long silences
    assert voice_tokens_per_phone(0, 0) == GuardConfig().default_tokens_per_phone  # reference-free


def test_silence_tokens_come_from_the_prompt_padding():
    prompt = np.concatenate([np.arange(100, 200), [55, 56, 57], [0, 7, 0, 0, 9, 0, 0, 0, 7, 0, 0, 0]])
    assert voice_silence_tokens(prompt) == {0, 7, 9}
    assert voice_silence_tokens(None) == frozenset()


def test_repeated_phone_count_finds_text_that_repeats_itself():
    assert repeated_phone_count([1, 2, 3, 4, 5, 6]) == 0
    assert repeated_phone_count([9, 5, 6, 5, 6, 5, 6, 8]) == 6  # "ha ha ha"
    assert repeated_phone_count([1, 4, 4, 4, 4, 2]) == 4


def test_context_from_request():
    c = SentenceContext.from_request(np.r_[np.arange(100, 205), np.zeros(15, np.int64)],
                                     np.arange(35), np.array([3, 4, 3, 4, 8]))
    assert c.n_phones == 5 and c.tokens_per_phone == pytest.approx(3.0)
    assert c.repeated_phones == 4 and c.silence == {0}


# ---- healthy speech passes ----------------------------------------------------------------------


@pytest.mark.parametrize("silence", [frozenset(SIL), frozenset()], ids=["silence-known", "silence-unknown"])
@pytest.mark.parametrize("tpp", [2.0, 3.0, 4.5])
def test_speech_like_sequences_are_never_flagged(silence, tpp):
    rng = np.random.default_rng(int(tpp * 10) + len(silence))
    for _ in range(400):
        n = int(rng.integers(2, 150))
        tokens = speech(rng, n, tpp)
        verdict = check_tokens(tokens, n, tpp, False, silence=silence)
        assert verdict.ok, (verdict.describe(), tokens.tolist())


def test_speech_at_a_different_pace_than_the_reference_passes():
    rng = np.random.default_rng(5)
    for pace in (0.6, 1.6):  # 40 % faster / 60 % slower than the reference
        for _ in range(100):
            tokens = speech(rng, 60, 3.0 * pace)
            assert check_tokens(tokens, 60, 3.0, silence=SIL).ok


def test_a_two_second_pause_made_of_flickering_silence_is_not_a_loop():
    rng = np.random.default_rng(3)
    pause = np.array([SIL[int(i)] for i in rng.integers(0, 2, size=45)])
    tokens = np.concatenate([speech(rng, 12, edge=(1, 4)), pause, speech(rng, 12, edge=(1, 4))])
    assert check_tokens(tokens, 24, 3.0, silence=SIL).ok
    longer = np.concatenate([tokens[:40], np.zeros(60, np.int64), tokens[40:]])
    assert check_tokens(longer, 24, 3.0, silence=SIL).reason == "run"


# ---- each failure mode --------------------------------------------------------------------------


def test_run_of_one_token():
    tokens = np.r_[np.arange(100, 130), np.full(60, 500), np.arange(200, 220)]
    v = check_tokens(tokens, 30, 3.0)
    assert (v.ok, v.reason, v.position) == (False, "run", 30)
    assert v.score == pytest.approx(60 / 50)
    assert check_tokens(tokens[:80], 30, 3.0).ok  # a 50-token run is still fine


@pytest.mark.parametrize("period", [2, 3, 5, 8, 12, 20])
def test_short_periodic_loops(period):
    rng = np.random.default_rng(period)
    head = np.arange(300, 330)
    tokens = np.r_[head, word_loop(rng, period, max(3, 120 // period))]
    v = check_tokens(tokens, 40, 3.0)
    assert (v.ok, v.reason) == (False, "loop")
    assert len(head) <= v.position <= len(head) + 5 * period  # in the second period


def test_loops_with_sampling_noise_are_found():
    rng = np.random.default_rng(11)
    found = sum(check_tokens(word_loop(rng, 4, 30, sub=0.08), 40, 3.0).reason == "loop" for _ in range(50))
    assert found >= 48


def test_repeated_text_may_sound_like_a_loop():
    rng = np.random.default_rng(2)
    laugh = word_loop(rng, 3, 10)  # "哈哈哈..." said as written: ~75 tokens of a 3-unit period
    tokens = np.r_[np.arange(100, 110), laugh, np.arange(200, 210)]
    assert check_tokens(tokens, 24, 3.0).reason == "loop"
    assert check_tokens(tokens, 24, 3.0, repeated_phones=20).ok


def test_one_token_dominating():
    rng = np.random.default_rng(4)
    block = np.full(120, 42)
    block[::3] = rng.integers(100, 1024, size=40)  # "x 42 42 y 42 42 ...": 80 of 120 are token 42
    tokens = np.r_[np.arange(500, 540), block, np.arange(600, 620)]  # 80 / 180 = 44 %: fine
    assert check_tokens(tokens, 60, 3.0).ok
    tokens = np.r_[np.arange(500, 510), block, np.arange(600, 605)]  # 80 / 135 = 59 %
    v = check_tokens(tokens, 50, 3.0)
    assert (v.ok, v.reason) == (False, "dominant")


def test_too_long():
    tokens = np.random.default_rng(0).integers(10, 1024, size=200)
    v = check_tokens(tokens, 20, 3.0)  # expected 60: at most 2.5 * 60 + 50 = 200
    assert v.ok
    v = check_tokens(np.r_[tokens, 5], 20, 3.0)
    assert (v.ok, v.reason, v.position) == (False, "too_long", 200)


def test_hitting_the_cap():
    tokens = np.random.default_rng(0).integers(10, 1024, size=100)
    assert hit_cap(100, 100) and hit_cap(99, 100) and not hit_cap(98, 100) and not hit_cap(100, None)
    v = check_tokens(tokens, 60, 3.0, hit_cap=True)  # well within the length bounds, but never stopped
    assert (v.ok, v.reason, v.score) == (False, "cap", 2.0)


def test_stopping_far_too_early():
    tokens = np.arange(100, 115)
    v = check_tokens(tokens, 30, 3.0)  # expected 90, at least 0.35 * 90 = 31.5
    assert (v.ok, v.reason) == (False, "too_short")
    assert check_tokens(np.arange(100, 132), 30, 3.0).ok
    assert check_tokens(np.arange(100, 111), 8, 3.0).ok  # expected 24 < 30: not checked


def test_worst_check_names_the_failure():
    tokens = np.r_[np.arange(10, 40), np.full(300, 8)]
    v = check_tokens(tokens, 10, 3.0, hit_cap=True)
    assert v.reason == "run" and v.score == max(v.scores.values()) and v.scores["cap"] > 1


# ---- streaming guard ----------------------------------------------------------------------------


def random_mixture(rng):
    """Speech with a loop, a run or nothing spliced in at a random place."""
    n = int(rng.integers(5, 60))
    tokens = speech(rng, n)
    kind = rng.integers(0, 3)
    if kind == 0:
        insert = word_loop(rng, int(rng.integers(2, 21)), int(rng.integers(2, 12)), sub=float(rng.random() * 0.2))
    elif kind == 1:
        insert = np.full(int(rng.integers(20, 80)), int(rng.integers(10, 1024)))
    else:
        insert = np.zeros(0, np.int64)
    at = int(rng.integers(0, len(tokens)))
    return np.r_[tokens[:at], insert, tokens[at:]], n


def test_streaming_guard_finds_what_the_whole_check_finds():
    rng = np.random.default_rng(123)
    seen = set()
    for _ in range(300):
        tokens, n = random_mixture(rng)
        context = ctx(max(1, len(tokens) // 3), silence=frozenset(SIL))  # the length always fits
        whole = context.check(tokens)
        guard = StreamingGuard(context)
        for chunk in np.array_split(tokens, max(1, len(tokens) // 7)):
            guard.push(chunk)
        other = StreamingGuard(context)  # chunking does not matter
        for chunk in np.array_split(tokens, np.sort(rng.integers(0, len(tokens), size=5))):
            other.push(chunk)
        assert other.failure == guard.failure and other.n_tokens == guard.n_tokens
        repeats = {r for r in ("loop", "run") if whole.scores.get(r, 0) > 1}
        if guard.failed:
            assert guard.failure.reason in repeats
            if repeats == {"loop"}:
                assert guard.failure.position == whole.position
        else:
            assert not repeats
        seen.add(whole.reason)
    assert {None, "loop", "run"} <= seen


def test_streaming_guard_returns_the_cut():
    rng = np.random.default_rng(1)
    tokens = np.r_[np.arange(100, 140), word_loop(rng, 3, 40)]
    expected = check_tokens(tokens, 50, 3.0).position
    guard = StreamingGuard(ctx(50))
    kept, first = [], 0
    for chunk in np.array_split(tokens, len(tokens) // 12):
        keep = guard.push(chunk)
        kept.extend(chunk[:keep].tolist())
        first += len(chunk)
        if guard.failed:
            break
    assert guard.failure.reason == "loop" and guard.failure.position == expected
    assert kept == tokens[:expected].tolist() or guard.overrun > 0
    assert len(kept) == max(expected, first - len(chunk))
    assert guard.push(np.arange(5)) == 0  # nothing more after a failure


def test_streaming_finish_adds_the_whole_sentence_checks():
    guard = StreamingGuard(ctx(40))
    assert guard.push(np.arange(100, 120)) == 20
    assert not guard.failed
    assert guard.finish().reason == "too_short"
    assert guard.finish(hit_cap=False).ok is False


# ---- retry policy (stub decoders) ---------------------------------------------------------------


HEALTHY = np.arange(100, 160)  # 60 tokens for 20 phones at 3 tokens/phone
LOOP = np.r_[np.arange(100, 110), np.tile([5, 6, 7], 40)]
SHORT = np.arange(100, 112)


def stub(outputs: dict):
    """generate_fn whose output depends on the seed only; records the seeds it was called with."""
    calls = []

    def generate_fn(seed):
        calls.append(seed)
        return outputs.get(seed, outputs.get("default"))

    return generate_fn, calls


def test_healthy_generation_is_not_retried():
    fn, calls = stub({"default": HEALTHY})
    result, attempts, verdicts = guarded_generate(fn, 42, ctx(), cap=1500)
    assert attempts == 1 and calls == [42] and verdicts[0].ok and result is HEALTHY


@pytest.mark.parametrize("bad,reason", [(LOOP, "loop"), (SHORT, "too_short"),
                                        (np.full(80, 3), "run"), (np.arange(100, 1600), "cap")])
def test_failed_generation_is_retried_with_a_derived_seed(bad, reason):
    fn, calls = stub({42: bad, "default": HEALTHY})
    result, attempts, verdicts = guarded_generate(fn, 42, ctx(), cap=1500)
    assert calls == [42, retry_seed(42, 1)]
    assert attempts == 2 and verdicts[0].reason == reason and verdicts[1].ok
    assert result is HEALTHY


def test_when_every_attempt_fails_the_better_one_is_kept():
    worse = np.r_[np.arange(100, 110), np.tile([5, 6, 7], 200)]
    fn, calls = stub({42: worse, retry_seed(42, 1): LOOP})
    result, attempts, verdicts = guarded_generate(fn, 42, ctx(), cap=1500)
    assert attempts == 2 and not any(v.ok for v in verdicts)
    assert verdicts[1].score < verdicts[0].score and result is LOOP and kept_index(verdicts) == 1
    log = GuardLog()
    log.add(SentenceOutcome.from_attempts(3, attempts, verdicts))
    log.add(SentenceOutcome.from_attempts(0, 1, [GuardVerdict(True, None, 0.4)]))
    assert HEADER == "X-Generation-Guard"
    assert log.header_value() == "retried=1; kept_failure=loop@3"


def test_retry_count_and_reasons_are_configurable():
    fn, calls = stub({"default": LOOP})
    _, attempts, _ = guarded_generate(fn, 1, ctx(), GuardConfig(max_retries=3))
    assert attempts == 4 and calls == [retry_seed(1, i) for i in range(4)]
    assert len(set(calls)) == 4
    _, attempts, _ = guarded_generate(fn, 1, ctx(), GuardConfig(max_retries=0))
    assert attempts == 1
    _, attempts, verdicts = guarded_generate(fn, 1, ctx(), GuardConfig(retry_reasons=("cap",)))
    assert attempts == 1 and verdicts[0].reason == "loop"


def test_disabled_guard_decodes_once_without_checks():
    fn, calls = stub({"default": LOOP})
    result, attempts, verdicts = guarded_generate(fn, 5, ctx(), GuardConfig(enabled=False))
    assert (attempts, verdicts, calls) == (1, [], [5]) and result is LOOP


def test_a_cap_the_client_chose_is_not_a_failure():
    fn, _ = stub({"default": np.arange(100, 160)})
    assert guarded_generate(fn, 5, ctx(), cap=60)[1] == 2  # the server's cap: a failure
    assert guarded_generate(fn, 5, ctx(), cap=None)[1] == 1


def test_async_variant_matches():
    fn, _ = stub({42: LOOP, "default": HEALTHY})

    async def afn(seed):
        return fn(seed)

    sync = guarded_generate(fn, 42, ctx(), cap=1500)
    asy = asyncio.run(guarded_generate_async(afn, 42, ctx(), cap=1500))
    assert sync[1:] == asy[1:] and sync[0] is asy[0]


def test_retry_seed_is_deterministic_and_distinct():
    assert retry_seed(7, 0) == 7 and retry_seed(None, 3) is None
    seeds = [retry_seed(7, i) for i in range(1, 6)]
    assert seeds == [retry_seed(7, i) for i in range(1, 6)]
    assert len(set(seeds + [7, retry_seed(8, 1)])) == 7
    assert all(0 <= s < 2**63 for s in seeds)


def test_metrics_are_recorded_per_outcome(monkeypatch):
    events = []
    for name in ("guard_check", "guard_failure", "guard_retry", "guard_kept_failure", "guard_cut"):
        monkeypatch.setattr(guard_metrics, name, lambda *a, _n=name: events.append((_n,) + a))
    bad = GuardVerdict(False, "loop", 3.0, position=12)
    worse = GuardVerdict(False, "cap", 4.0)
    guard_metrics.record_outcome("m1", SentenceOutcome.from_attempts(0, 2, [worse, bad]))
    assert events == [("guard_check", "m1", "whole", 2), ("guard_failure", "m1", "cap", "whole"),
                      ("guard_retry", "m1", "cap", "whole"), ("guard_failure", "m1", "loop", "whole"),
                      ("guard_kept_failure", "m1", "loop", "whole")]
    events.clear()
    guard_metrics.record_outcome("m1", SentenceOutcome(1, 1, [bad], 0, "stream"))
    assert ("guard_cut", "m1", "loop") in events
    events.clear()
    guard_metrics.record_outcome("m1", SentenceOutcome.from_attempts(2, 1, [GuardVerdict(True, None, 0.2)]))
    assert events == [("guard_check", "m1", "whole", 1)]


def test_metrics_are_a_no_op_outside_ray():
    guard_metrics.record_outcome("m1", SentenceOutcome.from_attempts(0, 2, [GuardVerdict(False, "loop", 2.0),
                                                                            GuardVerdict(True, None, 0.5)]))


# ---- crafted T2S weights: the real decoder driven into each failure -----------------------------

DIM = 64
START = 900  # the prompt's last token: every generation starts from here
LOOP_PATH = [100, 101, 102]  # a 3-token cycle
SHORT_PATH = list(range(200, 211))  # 11 tokens (the least possible), then EOS: far too early
GOOD_PATH = list(range(300, 340))  # 40 distinct tokens, then EOS


def graph_model(edges: dict[int, list[int]]) -> Text2Semantic:
    """A T2S whose next token depends on the current token only, drawn uniformly from
    edges[token] (EOS allowed). Attention and FFN outputs are zeroed and audio positions
    switched off, so the last hidden state is LN(LN(E[token])); embeddings are zero-mean +-1
    Hadamard rows (exactly orthonormal after the norms), and the predictor row of each
    successor is the embedding of its predecessors: successor logits 64, all others 0."""
    torch.manual_seed(0)
    model = Text2Semantic(T2SConfig(dim=DIM, n_head=4, n_layer=1))
    h = torch.ones(1, 1)
    while h.shape[0] < DIM:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    tokens = sorted(set(edges) | {b for nxt in edges.values() for b in nxt} - {EOS})
    assert len(tokens) < DIM
    with torch.no_grad():
        block = model.layers[0]
        for lin in (block.proj, block.down):
            lin.weight.zero_()
            lin.bias.zero_()
        model.audio_alpha.zero_()
        for i, tok in enumerate(tokens):
            model.audio_embedding.weight[tok] = h[i + 1]  # row 0 is constant: skipped
        model.predict.weight.zero_()
        for a, nxt in edges.items():
            for b in nxt:
                model.predict.weight[b] += model.audio_embedding.weight[a]
    return model.eval().requires_grad_(False)


def chain(path, end):
    return {a: [b] for a, b in zip(path, path[1:] + [end])}


@pytest.fixture(scope="module")
def branching():
    """From START: a loop, a too-short chain or a healthy chain, by the seed's draw."""
    edges = {START: [LOOP_PATH[0], SHORT_PATH[0], GOOD_PATH[0]]}
    edges.update(chain(LOOP_PATH, LOOP_PATH[0]))
    edges.update(chain(SHORT_PATH, EOS))
    edges.update(chain(GOOD_PATH, EOS))
    return graph_model(edges)


def t2s_inputs(n_text=8):
    g = torch.Generator().manual_seed(0)
    phones = torch.randint(0, 732, (n_text,), generator=g)
    return phones, torch.randn(1024, n_text, generator=g), torch.tensor([5, 6, START])


CTX = SentenceContext(13, 3.0)  # expected 39 tokens: the good path's 40 fits
PARAMS = SamplingParams(max_new_tokens=200)


def decode(model, seed, params=PARAMS):
    return generate(model, *t2s_inputs(), params.with_seed(seed))


def path_of(tokens) -> str:
    first = int(tokens[0])
    return {LOOP_PATH[0]: "loop", SHORT_PATH[0]: "short", GOOD_PATH[0]: "good"}[first]


def test_crafted_model_takes_every_path(branching):
    paths = {path_of(decode(branching, s).tokens) for s in range(12)}
    assert paths == {"loop", "short", "good"}
    assert decode(branching, 0).tokens.tolist() == decode(branching, 0).tokens.tolist()


def test_real_decoder_failures_are_caught_and_retried(branching):
    cap = PARAMS.max_new_tokens
    fixed = 0
    for seed in range(16):
        first = decode(branching, seed)
        result, attempts, verdicts = guarded_generate(lambda s: decode(branching, s), seed, CTX, cap=cap)
        if path_of(first.tokens) == "good":  # healthy: decoded once, exactly as without the guard
            assert attempts == 1 and verdicts[0].ok
            assert torch.equal(result.tokens, first.tokens)
            continue
        expected = {"loop": "loop", "short": "too_short"}[path_of(first.tokens)]
        assert verdicts[0].reason == expected and attempts == 2
        retry = decode(branching, retry_seed(seed, 1))
        assert verdicts[1].ok == (path_of(retry.tokens) == "good")
        fixed += verdicts[1].ok
        assert torch.equal(result.tokens, (retry if verdicts[1].ok or verdicts[1].score < verdicts[0].score
                                           else first).tokens)
    assert fixed >= 1


def test_guarded_decoding_is_deterministic(branching):
    runs = [guarded_generate(lambda s: decode(branching, s), seed, CTX, cap=200)
            for seed in (3, 4, 5, 6) for _ in (0, 1)]
    for a, b in zip(runs[::2], runs[1::2]):
        assert torch.equal(a[0].tokens, b[0].tokens) and a[1] == b[1] and a[2] == b[2]
    assert {r[1] for r in runs} == {1, 2}  # healthy and retried sentences both repeat exactly


def test_crafted_run_and_cap():
    run_model = graph_model({START: [7], 7: [7]})
    res, attempts, verdicts = guarded_generate(lambda s: decode(run_model, s), 0, CTX, cap=200)
    assert len(res.tokens) == 200 and verdicts[0].reason == "run" and attempts == 2
    long_path = list(range(400, 460))
    cap_model = graph_model({START: [400], **chain(long_path, long_path[0])})  # a 60-token cycle
    params = SamplingParams(max_new_tokens=50)
    res, attempts, verdicts = guarded_generate(lambda s: decode(cap_model, s, params), 0,
                                               SentenceContext(30, 3.0), cap=50)
    assert len(res.tokens) == 50 and [v.reason for v in verdicts] == ["cap", "cap"]


# ---- streaming with the real decoder ------------------------------------------------------------


def opener(model, calls):
    phones, bert, prompt = t2s_inputs()

    def open_stream(seed):
        calls.append(seed)
        return generate_stream(model, phones, bert, prompt, PARAMS.with_seed(seed), chunk_sizes=(12, 48))

    return open_stream


def first_seed(model, path):
    return next(s for s in range(100) if path_of(decode(model, s).tokens) == path)


def test_stream_loop_after_audio_left_is_cut(branching):
    seed = first_seed(branching, "loop")
    calls, got, pulled = [], [], []
    open_stream = opener(branching, calls)

    def counting(s):
        for chunk in open_stream(s):
            pulled.append(len(chunk))
            yield chunk

    gs = GuardedStream(counting, seed, CTX, cap=200, chunk_sizes=(12, 48))
    for attempt, chunk in gs.chunks_sync(committed=lambda: bool(got)):
        got.append((attempt, chunk.tolist()))
    assert calls == [seed] and [a for a, _ in got] == [0]  # no retry once audio left
    assert got[0][1] == (LOOP_PATH * 4)[:12]  # the first chunk, heard before the loop showed
    assert gs.cut == 3 and gs.outcome.kept_failure == "loop" and gs.outcome.retries == 0
    assert pulled == [12, 48]  # decoding stopped at the loop (token 60), not at the 200-token cap


def test_stream_short_chunk_that_was_not_the_last():
    """A short chunk is held back until the stream's end confirms it; if more comes, it goes out
    in order; a retry decided meanwhile never lets a held token out."""
    def open_stream(chunks_by_seed):
        def open_(seed):
            yield from chunks_by_seed[seed]
        return open_

    good = [np.arange(100, 105), np.arange(105, 160)]
    gs = GuardedStream(open_stream({1: good}), 1, ctx(), chunk_sizes=(12, 48))
    out = [c for _, c in gs.chunks_sync(committed=lambda: True)]
    assert np.concatenate(out).tolist() == list(range(100, 160)) and gs.outcome.verdicts[0].ok
    looping = [np.arange(100, 105), np.full(60, 3)]
    gs = GuardedStream(open_stream({1: looping, retry_seed(1, 1): good}), 1, ctx(), chunk_sizes=(12, 48))
    out = list(gs.chunks_sync(committed=lambda: False))
    assert [a for a, _ in out] == [1] and np.concatenate([c for _, c in out]).tolist() == list(range(100, 160))
    assert [v.reason for v in gs.outcome.verdicts] == ["run", None]


def test_stream_failure_before_audio_is_retried_unheard(branching):
    seed = next(s for s in range(100) if path_of(decode(branching, s).tokens) == "short"
                and path_of(decode(branching, retry_seed(s, 1)).tokens) == "good")
    calls, got = [], []
    gs = GuardedStream(opener(branching, calls), seed, CTX, cap=200, chunk_sizes=(12, 48))
    for attempt, chunk in gs.chunks_sync(committed=lambda: bool(got)):
        got.append((attempt, chunk.tolist()))
    # the 11-token early stop fits in the first chunk: checked whole before any of it went out
    assert calls == [seed, retry_seed(seed, 1)]
    assert {a for a, _ in got} == {1} and sum((c for _, c in got), []) == GOOD_PATH
    assert gs.outcome.retries == 1 and gs.outcome.kept_failure is None
    assert [v.reason for v in gs.outcome.verdicts] == ["too_short", None]


def test_stream_loop_before_audio_is_retried_and_async_matches(branching):
    seed = first_seed(branching, "loop")
    calls, got = [], []
    gs = GuardedStream(opener(branching, calls), seed, CTX, cap=200, chunk_sizes=(12, 48))
    for attempt, chunk in gs.chunks_sync(committed=lambda: False):  # audio held back: all unheard
        got.append((attempt, chunk.tolist()))
    assert calls[:2] == [seed, retry_seed(seed, 1)] and gs.outcome.verdicts[0].reason == "loop"

    async def run():
        acalls, agot = [], []
        sync_open = opener(branching, acalls)

        async def open_async(s):
            for chunk in sync_open(s):
                yield chunk

        ags = GuardedStream(open_async, seed, CTX, cap=200, chunk_sizes=(12, 48))
        async for attempt, chunk in ags.chunks(committed=lambda: False):
            agot.append((attempt, chunk.tolist()))
        return acalls, agot, ags.outcome

    acalls, agot, aoutcome = asyncio.run(run())
    assert (acalls, agot) == (calls, got) and aoutcome == gs.outcome


def test_stream_healthy_sentence_passes_through(branching):
    seed = first_seed(branching, "good")
    calls, got = [], []
    gs = GuardedStream(opener(branching, calls), seed, CTX, cap=200, chunk_sizes=(12, 48))
    for attempt, chunk in gs.chunks_sync(committed=lambda: bool(got)):
        got.append(chunk)
    assert calls == [seed] and np.concatenate(got).tolist() == GOOD_PATH
    assert gs.outcome.attempts == 1 and gs.outcome.verdicts[0].ok
