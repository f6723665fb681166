"""Generation guard: catch runaway or broken T2S generations before anyone hears them.

The autoregressive T2S model fails in a few recognisable ways: it repeats one token (a stuck
hum or silence), loops over a syllable or word, lets one token take over the output, never
emits EOS (runs to the 1500-token cap, 60 s of audio), or stops after a fraction of the text
("swallowed words"). Each sentence's semantic tokens are checked against bounds derived from the
request itself; a failed sentence is decoded again with another seed derived from the request's
(so the same request still gives the same audio), and if every attempt fails the least bad one is
kept and reported.

What the thresholds rest on (all measured in 25 Hz semantic tokens, 40 ms each):

* Speaking rate. A phone lasts about 50-250 ms, i.e. 1-6 tokens. Mandarin speech runs at 4-5
  syllables/s, two v2 phones each (initial + final; zero-initial syllables get a pseudo-initial),
  English at 10-15 phones/s: 2-3.5 tokens per phone on average. The voice's own rate is taken
  from its reference: prompt tokens / prompt phones, after removing the 0.6 s of zeros the
  pipeline appends to every reference before HuBERT (15 tokens), and clamped to [1.5, 6] so a
  transcript that does not match its clip (a common user mistake) cannot skew the bounds far.
* Length. expected = sentence phones x tokens-per-phone. Within one speaker the rate of single
  sentences varies by roughly +-30 %, and a generation carries up to ~1 s of edge silence (it
  continues the reference, which ends in the 0.6 s of padding, and it pauses before EOS). So
  "too long" is > 2.5 x expected + 50 tokens (2 s): a sentence 2.5 times slower than its own
  speaker plus 2 s. "Too short" is < 0.35 x expected, checked only when expected >= 30 tokens
  (1.2 s): EOS cannot come before token 11 (0.44 s), so very short sentences carry no signal.
* Silence. A pause is not one token: the silence of a voice flickers between a few tokens, which
  would look like a short loop ("s1 s2 s1 s1 s2"). Those tokens are known from the request: the
  last tokens of the prompt encode the 0.6 s of zeros appended to the reference
  (`voice_silence_tokens`). Every check treats them as one symbol, so a flickering pause is a
  plain run (of silence) and the edge silence is trimmed as one run.
* Runs of one token. Inside a phone the same token repeats 1-6 times (a steady vowel); a pause
  is a run of the silence token of 5-20 tokens (0.2-0.8 s), and sentences are already split at
  punctuation. A run longer than 50 tokens (2 s) is a stuck generation.
* Short periodic loops. A looping model repeats a syllable or word with jittered durations, so
  the tokens are run-length compressed first ("a a b c c" -> "a b c"; a unit is about one phone
  part) and periodicity is looked for in the units: period 2..20 units (up to a word or two), at
  least 3 repetitions, spanning >= 50 tokens (2 s), with >= 75 % of the units equal to the unit
  one period earlier (sampling noise swaps a unit now and then inside a real loop). Distinct
  neighbouring units of natural speech match at a fixed lag by chance only a few % of the time.
* One token dominating. With the edge silence trimmed, one speech token holding > 50 % of
  >= 50 tokens is a collapsed generation; in speech the commonest speech token holds well under
  20 %. Silence may add up to more (several pauses), so it is left to the run and length checks;
  besides the known silence tokens, the tokens a sentence starts and ends with count as silence
  here (they are its pauses, even when the voice's own silence tokens are not known).
* The token cap. Reaching the length cap means the model never chose to stop: always a failure
  when the cap is the server's. A cap the client chose (`max_new_tokens` below the server's) is
  the client's decision: the caller passes `cap=None` and reaching it is not checked.
* Text that repeats itself ("哈哈哈哈", "no, no, no") is spoken as a loop on purpose: the longest
  periodic stretch of the sentence's own phones (`repeated_phone_count`) raises the run and loop
  limits to what that stretch may last (phones x rate x 2.5), and switches the dominance check off
  when it covers half the sentence.

Every check yields a score, observed / limit, so 1.0 is the threshold; a verdict fails when its
largest score exceeds 1. "The better attempt" is the one with the lower score.

This module is pure logic (numpy and the standard library): `SentenceContext` (the bounds' inputs,
from the request), `check_tokens` for a whole sentence, `StreamingGuard` while tokens arrive,
`guarded_generate[_async]` (retry policy, whole sentences), `GuardedStream` (retry policy for
streamed sentences), `GuardLog` (the `X-Generation-Guard` response header).

Use. The guard wraps the T2S call a caller already makes; only the seed changes between attempts
(attempt 0 keeps the sentence's own seed, so healthy output is exactly what it was without the
guard, and SoVITS keeps the sentence seed for its noise):

    context = SentenceContext.from_request(prompt.prompt_tokens, prompt.prompt_phones, target.phone_ids)
    codes, attempts, verdicts = guarded_generate(lambda s: t2s(..., seed=s), seed, context, config,
                                                 cap=guard_cap(params.max_new_tokens))
    log.add(SentenceOutcome.from_attempts(index, attempts, verdicts))   # header: log.header_value()

Streamed: `GuardedStream(open_stream, seed, context, ...).chunks(committed)` yields
(attempt, chunk); a new attempt number means "start the sentence over" (it only happens while
none of its audio has left). With the default chunking (12 tokens, then 48) audio leaves after
the first chunk, so an unheard retry covers failures that show within it (a sentence that stops
after 11 tokens); a loop found later (it needs >= 2 s of tokens to show) is cut instead.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Sequence

import numpy as np

__all__ = [
    "GuardConfig",
    "GuardVerdict",
    "SentenceContext",
    "REASONS",
    "HEADER",
    "check_tokens",
    "hit_cap",
    "guard_cap",
    "StreamingGuard",
    "voice_tokens_per_phone",
    "voice_silence_tokens",
    "repeated_phone_count",
    "retry_seed",
    "kept_index",
    "guarded_generate",
    "guarded_generate_async",
    "SentenceOutcome",
    "GuardLog",
    "GuardedStream",
]

HEADER = "X-Generation-Guard"
REASONS = ("cap", "run", "loop", "dominant", "too_long", "too_short")  # also the order breaking score ties
SILENCE = -1  # the one symbol every silence token is mapped to before the checks


@dataclass(frozen=True)
class GuardConfig:
    """Thresholds of the guard; the module docstring gives the reasoning for each default."""

    enabled: bool = True
    max_retries: int = 1  # extra decodes of a failed sentence (each costs a full T2S pass)
    retry_reasons: tuple[str, ...] = REASONS  # failures worth a retry

    # voice rate: prompt tokens / prompt phones
    default_tokens_per_phone: float = 3.0  # reference-free requests (no prompt tokens)
    min_tokens_per_phone: float = 1.5
    max_tokens_per_phone: float = 6.0
    prompt_pad_tokens: int = 15  # 0.6 s of zeros appended to every reference (9600 samples at 16 kHz)
    silence_margin: int = 3  # pad tokens next to the speech (context still mixes speech in)

    # length
    too_long_ratio: float = 2.5
    too_long_slack: int = 50  # tokens (2 s) of edge silence and pauses on top
    too_short_ratio: float = 0.35
    too_short_min_expected: int = 30  # tokens (1.2 s); EOS is impossible before token 11

    # repetition
    max_run: int = 50  # one token (or silence) for 2 s
    loop_min_tokens: int = 50  # a loop lasts >= 2 s ...
    loop_min_repeats: int = 3  # ... shows >= 3 periods ...
    loop_max_period: int = 20  # ... of 2..20 run-length units ...
    loop_match: float = 0.75  # ... with >= 75 % of units equal to the unit a period earlier
    dominant_share: float = 0.5
    dominant_min_tokens: int = 50
    text_repeat_max_period: int = 12  # phones; for `repeated_phone_count`

    def __post_init__(self):
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        unknown = set(self.retry_reasons) - set(REASONS)
        if unknown:
            raise ValueError(f"unknown retry reasons {sorted(unknown)}; known: {REASONS}")
        if not 0 < self.min_tokens_per_phone <= self.max_tokens_per_phone:
            raise ValueError("need 0 < min_tokens_per_phone <= max_tokens_per_phone")
        if not 0 < self.loop_match <= 1:
            raise ValueError(f"loop_match must lie in (0, 1], got {self.loop_match}")
        if self.loop_max_period < 2 or self.loop_min_repeats < 2:
            raise ValueError("loop_max_period and loop_min_repeats must be >= 2")
        for name in ("max_run", "loop_min_tokens", "dominant_min_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "GuardConfig":
        """From settings / a Serve user_config: known keys only (lists become tuples)."""
        values = dict(values or {})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown guard settings {sorted(unknown)}")
        if "retry_reasons" in values:
            values["retry_reasons"] = tuple(values["retry_reasons"])
        return cls(**values)


@dataclass(frozen=True)
class GuardVerdict:
    ok: bool
    reason: str | None  # one of REASONS when not ok
    score: float  # max over the checks of observed / limit; > 1 fails. Lower is better.
    position: int | None = None  # token index where the failure starts (a cut point), if it has one
    n_tokens: int = 0
    expected: float = 0.0  # expected token count of the sentence
    scores: dict[str, float] = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        what = "ok" if self.ok else self.reason
        at = "" if self.position is None else f" at token {self.position}"
        return f"{what}{at} ({self.n_tokens} tokens, expected ~{self.expected:.0f}, score {self.score:.2f})"


# --------------------------------------------------------------------------------------------
# what the bounds are derived from


def voice_tokens_per_phone(n_prompt_tokens: int, n_prompt_phones: int, config: GuardConfig | None = None) -> float:
    """The voice's speaking rate from its reference prompt, padding removed, clamped."""
    cfg = config or GuardConfig()
    if n_prompt_tokens <= 0 or n_prompt_phones <= 0:
        return cfg.default_tokens_per_phone
    speech = max(n_prompt_tokens - cfg.prompt_pad_tokens, 1)
    return min(max(speech / n_prompt_phones, cfg.min_tokens_per_phone), cfg.max_tokens_per_phone)


def voice_silence_tokens(prompt_tokens, config: GuardConfig | None = None) -> frozenset[int]:
    """The voice's silence tokens: those of the prompt's padding (its last tokens, less a margin
    next to the speech). Empty without a prompt."""
    cfg = config or GuardConfig()
    tokens = np.asarray(prompt_tokens if prompt_tokens is not None else [], dtype=np.int64).reshape(-1)
    n = cfg.prompt_pad_tokens - cfg.silence_margin
    if n <= 0 or len(tokens) <= cfg.prompt_pad_tokens:
        return frozenset()
    return frozenset(int(t) for t in tokens[-n:])


def repeated_phone_count(phone_ids, max_period: int = 12) -> int:
    """Phones in the longest stretch of the text that repeats itself (a period of <= max_period
    phones, at least two periods): "哈哈哈" -> 6. Zero when the text does not repeat."""
    ids = np.asarray(phone_ids, dtype=np.int64).reshape(-1)
    best = 0
    for q in range(1, min(max_period, len(ids) // 2) + 1):
        run = _longest_true_run(ids[q:] == ids[:-q])
        if run >= q:  # q matches in a row = two full periods
            best = max(best, run + q)
    return best


def _longest_true_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return int((edges[1::2] - edges[::2]).max())


@dataclass(frozen=True)
class SentenceContext:
    """Everything the guard needs to know about one sentence of one request."""

    n_phones: int  # the sentence's phones (the prompt transcript's excluded)
    tokens_per_phone: float  # the voice's rate, `voice_tokens_per_phone`
    repeated_phones: int = 0  # `repeated_phone_count(sentence phones)`
    silence: frozenset[int] = frozenset()  # `voice_silence_tokens(prompt tokens)`

    @classmethod
    def from_request(cls, prompt_tokens, prompt_phones, sentence_phones,
                     config: GuardConfig | None = None) -> "SentenceContext":
        """From the arrays the orchestrator holds: VoicePrompt.prompt_tokens / .prompt_phones and
        TextFeatures.phone_ids (anything with a length; None for a reference-free request)."""
        cfg = config or GuardConfig()
        n_prompt = 0 if prompt_tokens is None else len(prompt_tokens)
        n_prompt_phones = 0 if prompt_phones is None else len(prompt_phones)
        return cls(len(sentence_phones), voice_tokens_per_phone(n_prompt, n_prompt_phones, cfg),
                   repeated_phone_count(sentence_phones, cfg.text_repeat_max_period),
                   voice_silence_tokens(prompt_tokens, cfg))

    def check(self, tokens, hit_cap: bool = False, config: GuardConfig | None = None) -> GuardVerdict:
        return check_tokens(tokens, self.n_phones, self.tokens_per_phone, hit_cap, config,
                            repeated_phones=self.repeated_phones, silence=self.silence)


@dataclass(frozen=True)
class _Limits:
    expected: float
    upper: int  # more tokens than this is too long
    lower: float  # fewer than this is too short (0: not checked)
    run: int
    loop: int
    check_dominance: bool


def _limits(n_phones: int, tokens_per_phone: float, cfg: GuardConfig, repeated_phones: int) -> _Limits:
    expected = max(int(n_phones), 0) * float(tokens_per_phone)
    upper = int(math.floor(cfg.too_long_ratio * expected + cfg.too_long_slack))
    lower = cfg.too_short_ratio * expected if expected >= cfg.too_short_min_expected else 0.0
    # text that repeats itself may sound like a loop for as long as that text may last
    allowance = math.ceil(repeated_phones * tokens_per_phone * cfg.too_long_ratio) if repeated_phones else 0
    return _Limits(expected, upper, lower, max(cfg.max_run, allowance), max(cfg.loop_min_tokens, allowance),
                   check_dominance=2 * repeated_phones < max(int(n_phones), 1))


def _map_silence(tokens: np.ndarray, silence) -> np.ndarray:
    silence = np.fromiter(silence, dtype=np.int64) if not isinstance(silence, np.ndarray) else silence
    if not len(silence):
        return tokens
    return np.where(np.isin(tokens, silence), SILENCE, tokens)


# --------------------------------------------------------------------------------------------
# whole-sentence check (vectorised)


def _runs(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-length compression: (unit values, unit start indices, unit lengths)."""
    starts = np.concatenate([[0], np.flatnonzero(tokens[1:] != tokens[:-1]) + 1])
    lengths = np.diff(np.append(starts, len(tokens)))
    return tokens[starts], starts, lengths


def _periods(cfg: GuardConfig) -> np.ndarray:
    return np.arange(2, cfg.loop_max_period + 1)[:, None]  # [P, 1]


def _repeat_counts(values: np.ndarray, m0: int, m1: int, periods: np.ndarray) -> np.ndarray:
    """[P, m1 - m0]: for units j in [m0, m1), whether unit j equals unit j - p (0 where j < p)."""
    js = np.arange(m0, m1)[None, :]
    return (js >= periods) & (values[js] == values[np.maximum(js - periods, 0)])


def _loop_hits(starts: np.ndarray, cum: np.ndarray, m0: int, m1: int, periods: np.ndarray,
               cfg: GuardConfig, min_span: int) -> tuple[np.ndarray, np.ndarray]:
    """For the units j in [m0, m1) and every period p: (does a loop show at j, window start k).

    cum[i, j] counts the units u < j equal to unit u - p (p = periods[i]). A loop of period p
    shows at unit j when the shortest stretch of compared units k..j that covers >= min_span
    tokens (from the start of unit k-p to the first token of unit j) and >= loop_min_repeats
    periods has a share of units equal to the unit p earlier of at least loop_match."""
    js = np.arange(m0, m1)[None, :]
    # a: the last unit starting at or before starts[j] + 1 - min_span (-1: none)
    a = np.searchsorted(starts[:m1], starts[m0:m1] + 1 - min_span, side="right")[None, :] - 1
    k = np.minimum(a + periods, js + 1 - (cfg.loop_min_repeats - 1) * periods)
    rows = np.arange(len(periods))[:, None]
    matches = cum[rows, js + 1] - cum[rows, np.maximum(k, 0)]
    hit = (a >= 0) & (k >= periods) & (matches >= cfg.loop_match * (js - k + 1))
    return hit, k


def _loop_start(values: np.ndarray, k: int, p: int) -> int:
    """The unit where the repetition starts, from the first window that showed it (start k):
    past the window's leading units that do not repeat (the window may reach back into the
    speech before the loop), then back over units that repeat exactly."""
    while values[k] != values[k - p]:
        k += 1
    while k - 1 >= p and values[k - 1] == values[k - 1 - p]:
        k -= 1
    return k


def _first_loop(values, starts, hit, k, m0, periods, min_span):
    """(token where the first loop shows, its position, its score) from `_loop_hits`: the
    earliest unit, then the shortest period."""
    col = int(np.flatnonzero(hit.any(axis=0))[0])
    row = int(np.flatnonzero(hit[:, col])[0])
    j, p, kk = m0 + col, int(periods[row, 0]), int(k[row, col])
    return int(starts[j]), int(starts[_loop_start(values, kk, p)]), (starts[j] + 1 - starts[kk - p]) / min_span


def _loops(values: np.ndarray, starts: np.ndarray, cfg: GuardConfig, min_span: int) -> tuple[float, int | None]:
    """(score, position of the first loop) over periods 2..loop_max_period of run-length units
    (`_loop_hits` has the definition; the position is where the repetition starts, i.e. the
    second period). Score: the longest stretch covered by overlapping loop windows / min_span."""
    m = len(values)
    periods = _periods(cfg)
    cum = np.zeros((len(periods), m + 1), np.int64)
    np.cumsum(_repeat_counts(values, 0, m, periods), axis=1, out=cum[:, 1:])
    hit, k = _loop_hits(starts, cum, 0, m, periods, cfg, min_span)
    if not hit.any():
        return 0.0, None
    best = 0.0
    for row in np.flatnonzero(hit.any(axis=1)):
        js = np.flatnonzero(hit[row])
        lo, hi = starts[k[row, js] - periods[row, 0]], starts[js] + 1
        reach = np.maximum.accumulate(hi)  # merge overlapping windows (lo is non-decreasing)
        new = np.concatenate([[True], lo[1:] > reach[:-1]])
        group = np.cumsum(new) - 1
        span = np.zeros(group[-1] + 1, dtype=np.int64)
        np.maximum.at(span, group, reach - lo[new][group])
        best = max(best, float(span.max()) / min_span)
    return best, _first_loop(values, starts, hit, k, 0, periods, min_span)[1]


def check_tokens(tokens, n_phones: int, tokens_per_phone: float, hit_cap: bool = False,
                 config: GuardConfig | None = None, *, repeated_phones: int = 0,
                 silence=frozenset()) -> GuardVerdict:
    """Check one sentence's semantic tokens (EOS excluded) against the request's bounds.

    tokens: an int sequence, array or CPU tensor. n_phones: the sentence's phone count.
    tokens_per_phone: `voice_tokens_per_phone(...)`. hit_cap: decoding stopped at the server's
    length cap (`hit_cap(len, cap)`). repeated_phones / silence: see `SentenceContext`."""
    cfg = config or GuardConfig()
    t = _map_silence(np.asarray(tokens, dtype=np.int64).reshape(-1), silence)
    n = len(t)
    lim = _limits(n_phones, tokens_per_phone, cfg, repeated_phones)
    scores: dict[str, float] = {"too_long": n / max(lim.upper, 1)}
    positions: dict[str, int | None] = {"too_long": lim.upper if n > lim.upper else None}
    if hit_cap:
        scores["cap"] = max(2.0, scores["too_long"])  # never stopping counts as at least twice over
    if lim.lower > 0:
        scores["too_short"] = lim.lower / max(n, 1)
    if n:
        values, starts, lengths = _runs(t)
        scores["run"] = float(lengths.max()) / lim.run
        over = np.flatnonzero(lengths > lim.run)
        positions["run"] = int(starts[over[0]]) if len(over) else None
        if n >= lim.loop:
            scores["loop"], positions["loop"] = _loops(values, starts, cfg, lim.loop)
        if lim.check_dominance:
            edge = _edge_tokens(t)
            core = _trim_edges(t, edge)
            speech = core[~np.isin(core, edge)]  # pauses are for the run and length checks
            if len(core) >= cfg.dominant_min_tokens and len(speech):
                top = np.unique(speech, return_counts=True)[1].max()
                scores["dominant"] = top / len(core) / cfg.dominant_share

    scores = {name: float(value) for name, value in scores.items()}
    score = max(scores.values())
    if score <= 1.0:
        return GuardVerdict(True, None, score, None, n, lim.expected, scores)
    reason = next(r for r in REASONS if scores.get(r) == score)
    return GuardVerdict(False, reason, score, positions.get(reason), n, lim.expected, scores)


def _edge_tokens(t: np.ndarray, k: int = 3) -> np.ndarray:
    """Silence as this generation shows it: the silence symbol and the first / last k tokens (a
    sentence starts and ends in a pause, also where the voice's silence tokens are not known)."""
    return np.unique(np.r_[SILENCE, t[:k], t[-k:]])


def _trim_edges(t: np.ndarray, edge_tokens: np.ndarray, blip: int = 2) -> np.ndarray:
    """The tokens without the leading and trailing stretches of edge tokens, other tokens inside
    such a stretch for at most `blip` tokens (a flickering pause) included."""
    edge = np.isin(t, edge_tokens)
    bounds = np.flatnonzero(np.diff(np.concatenate([[1], edge.astype(np.int8), [1]])))
    for lo, hi in zip(bounds[::2], bounds[1::2]):  # [lo, hi): a stretch of other tokens
        if hi - lo <= blip and lo > 0 and hi < len(t):
            edge[lo:hi] = True
    inner = np.flatnonzero(~edge)
    return t[inner[0]: inner[-1] + 1] if len(inner) else t[:0]


def guard_cap(requested_max_new_tokens: int, model_cap: int = 1500) -> int | None:
    """The cap whose hitting is a failure: the model's own (1500, upstream's loop bound, for the
    v2 config), unless the client asked for fewer tokens, which is its choice (None)."""
    return model_cap if requested_max_new_tokens >= model_cap else None


def hit_cap(n_tokens: int, cap: int | None) -> bool:
    """Whether a sentence stopped at the length cap, from its length: `cap` sampled tokens, or one
    fewer once upstream's SoVITS handoff (`upstream_sovits_codes`) dropped the first of them.
    Works the same on tokens and codes, so every path reaches the same verdict."""
    return cap is not None and n_tokens >= cap - 1


# --------------------------------------------------------------------------------------------
# incremental check while decoding


class StreamingGuard:
    """The run, loop and too-long checks of `check_tokens`, while decoding, chunk by chunk.

    `push(chunk)` returns how many tokens of the chunk may be kept: all of them until a failure
    shows, then only those before the failure's position (a cut point), and none after. A failure
    is reported at the token where it first shows, and a loop at the position `check_tokens`
    gives it (same definition, evaluated only for the run-length units each chunk adds,
    vectorised over units and periods). Tokens between the cut and the detection that had been
    handed on already cannot be called back; `overrun` counts them.
    """

    def __init__(self, context: SentenceContext, config: GuardConfig | None = None):
        self.context, self.config = context, config or GuardConfig()
        self.limits = _limits(context.n_phones, context.tokens_per_phone, self.config, context.repeated_phones)
        self.failure: GuardVerdict | None = None
        self.overrun = 0
        self._silence = np.fromiter(context.silence, dtype=np.int64)
        self._tokens = np.zeros(256, np.int64)  # as decoded
        self._n = 0
        self._values = np.zeros(256, np.int64)  # run-length units (silence mapped)
        self._starts = np.zeros(256, np.int64)
        self._m = 0
        self._periods = _periods(self.config)
        # _cum[i, j]: units u < j with u >= p and unit u == unit u - p, for period p = _periods[i]
        self._cum = np.zeros((len(self._periods), 257), np.int64)

    @property
    def tokens(self) -> np.ndarray:
        return self._tokens[: self._n]

    @property
    def n_tokens(self) -> int:
        return self._n

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def push(self, chunk) -> int:
        """Feed the next tokens; returns how many of them to keep."""
        raw = np.asarray(chunk, dtype=np.int64).reshape(-1)
        if self.failure is not None or not len(raw):
            return 0
        n0, m0 = self._n, self._m
        self._append_tokens(raw)
        mapped = _map_silence(raw, self._silence)
        # run-length units that start in this chunk
        new = np.ones(len(mapped), bool)
        new[1:] = mapped[1:] != mapped[:-1]
        if m0:
            new[0] = mapped[0] != self._values[m0 - 1]
        self._append_units(mapped[new], n0 + np.flatnonzero(new))

        failures = []  # (token index where it shows, order, reason, position, score)
        lim = self.limits
        # runs: token i's run started at its unit's start
        index = n0 + np.arange(len(mapped))
        run_start = self._starts[np.searchsorted(self._starts[: self._m], index, side="right") - 1]
        over = np.flatnonzero(index - run_start + 1 > lim.run)
        if len(over):
            i = int(index[over[0]])
            failures.append((i, 0, "run", int(run_start[over[0]]), (i - run_start[over[0]] + 1) / lim.run))
        loop = self._new_loops(m0)
        if loop is not None:
            failures.append(loop)
        if self._n > lim.upper:
            i = max(lim.upper, n0)
            failures.append((i, 1, "too_long", lim.upper, (i + 1) / max(lim.upper, 1)))
        if not failures:
            return len(raw)
        shown, _, reason, position, score = min(failures)
        self._n = shown + 1  # what was decoded when the failure showed
        self.failure = GuardVerdict(False, reason, float(score), position, self._n, lim.expected)
        self.overrun = max(0, n0 - position)
        return max(0, position - n0)

    def finish(self, hit_cap: bool = False) -> GuardVerdict:
        """The sentence's verdict once decoding ended: the failure found while decoding, else the
        whole-sentence check (which adds the cap, too-short and dominance checks)."""
        full = self.context.check(self.tokens, hit_cap, self.config)
        if self.failure is None:
            return full
        f = self.failure
        return GuardVerdict(False, f.reason, max(full.score, f.score), f.position, self._n,
                            self.limits.expected, full.scores)

    # ---- internals -------------------------------------------------------------------------
    def _append_tokens(self, raw: np.ndarray) -> None:
        end = self._n + len(raw)
        if end > len(self._tokens):
            self._tokens = np.resize(self._tokens, 2 * end)
        self._tokens[self._n: end] = raw
        self._n = end

    def _append_units(self, values: np.ndarray, starts: np.ndarray) -> None:
        m0, m1 = self._m, self._m + len(values)
        if m1 > len(self._values):
            cap = 2 * m1
            self._values, self._starts = np.resize(self._values, cap), np.resize(self._starts, cap)
            cum = np.zeros((self._cum.shape[0], cap + 1), np.int64)
            cum[:, : m0 + 1] = self._cum[:, : m0 + 1]
            self._cum = cum
        self._values[m0:m1], self._starts[m0:m1] = values, starts
        self._m = m1
        if m1 == m0:
            return
        eq = _repeat_counts(self._values, m0, m1, self._periods)
        self._cum[:, m0 + 1: m1 + 1] = self._cum[:, m0: m0 + 1] + np.cumsum(eq, axis=1)

    def _new_loops(self, m0: int):
        """The first loop that shows at a unit added since unit m0, as a failure tuple, or None."""
        m, span = self._m, self.limits.loop
        if m == m0:
            return None
        hit, k = _loop_hits(self._starts, self._cum, m0, m, self._periods, self.config, span)
        if not hit.any():
            return None
        shown, position, score = _first_loop(self._values[:m], self._starts[:m], hit, k, m0, self._periods, span)
        return (shown, 0, "loop", position, score)


# --------------------------------------------------------------------------------------------
# retry policy, whole sentences


def retry_seed(seed: int | None, attempt: int) -> int | None:
    """Seed of decoding attempt `attempt`. Attempt 0 keeps the request's own seed, so a healthy
    sentence decodes exactly as it would without the guard; later ones are derived from it
    (deterministic, distinct per attempt). None (unseeded) stays None."""
    if attempt == 0 or seed is None:
        return seed
    digest = hashlib.blake2b(f"guard-retry:{seed}:{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def kept_index(verdicts: Sequence[GuardVerdict]) -> int:
    """Which attempt to keep: the first that passed, else the lowest score (the earliest on ties)."""
    for i, v in enumerate(verdicts):
        if v.ok:
            return i
    return min(range(len(verdicts)), key=lambda i: verdicts[i].score)


def _should_retry(verdict: GuardVerdict, attempt: int, cfg: GuardConfig) -> bool:
    return not verdict.ok and attempt < cfg.max_retries and verdict.reason in cfg.retry_reasons


def _verdict(result, context: SentenceContext, cfg: GuardConfig, cap: int | None, tokens_of) -> GuardVerdict:
    tokens = tokens_of(result) if tokens_of is not None else getattr(result, "tokens", result)
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    return context.check(tokens, hit_cap(len(tokens), cap), cfg)


def guarded_generate(generate_fn: Callable[[int | None], Any], seed: int | None, context: SentenceContext,
                     config: GuardConfig | None = None, *, cap: int | None = None,
                     tokens_of: Callable[[Any], Any] | None = None) -> tuple[Any, int, list[GuardVerdict]]:
    """Decode one sentence under the guard. `generate_fn(seed)` decodes it (returns a
    GenerationResult, or the token/code array itself); after a failed check it is called again
    with `retry_seed(seed, i)`, at most `config.max_retries` times. Returns (the kept result, the
    number of attempts, one verdict per attempt); the kept result is `kept_index(verdicts)`'s.

    cap: the server's effective token cap (min of the request's max_new_tokens and the model's);
    None when the client chose a tighter cap. tokens_of(result) selects what is checked (default:
    `.tokens`, or the result itself). With the guard disabled: one call, no verdicts."""
    cfg = config or GuardConfig()
    if not cfg.enabled:
        return generate_fn(seed), 1, []
    results, verdicts = [], []
    for attempt in range(cfg.max_retries + 1):
        results.append(generate_fn(retry_seed(seed, attempt)))
        verdicts.append(_verdict(results[-1], context, cfg, cap, tokens_of))
        if not _should_retry(verdicts[-1], attempt, cfg):
            break
    return results[kept_index(verdicts)], len(results), verdicts


async def guarded_generate_async(generate_fn: Callable[[int | None], Awaitable[Any]], seed: int | None,
                                 context: SentenceContext, config: GuardConfig | None = None, *,
                                 cap: int | None = None, tokens_of: Callable[[Any], Any] | None = None
                                 ) -> tuple[Any, int, list[GuardVerdict]]:
    """`guarded_generate` for an async `generate_fn` (the orchestrator's `stages.t2s`)."""
    cfg = config or GuardConfig()
    if not cfg.enabled:
        return await generate_fn(seed), 1, []
    results, verdicts = [], []
    for attempt in range(cfg.max_retries + 1):
        results.append(await generate_fn(retry_seed(seed, attempt)))
        verdicts.append(_verdict(results[-1], context, cfg, cap, tokens_of))
        if not _should_retry(verdicts[-1], attempt, cfg):
            break
    return results[kept_index(verdicts)], len(results), verdicts


# --------------------------------------------------------------------------------------------
# outcomes and the response header


@dataclass
class SentenceOutcome:
    index: int  # the sentence's index in the request
    attempts: int
    verdicts: list[GuardVerdict]
    kept: int  # index into verdicts of the attempt that was used
    mode: str = "whole"  # "whole" | "stream"

    @classmethod
    def from_attempts(cls, index: int, attempts: int, verdicts: Sequence[GuardVerdict],
                      mode: str = "whole") -> "SentenceOutcome":
        return cls(index, attempts, list(verdicts), kept_index(verdicts) if verdicts else 0, mode)

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)

    @property
    def kept_verdict(self) -> GuardVerdict | None:
        return self.verdicts[self.kept] if self.verdicts else None

    @property
    def kept_failure(self) -> str | None:
        v = self.kept_verdict
        return None if v is None or v.ok else v.reason


class GuardLog:
    """One request's guard outcomes, for the response header and logs."""

    def __init__(self) -> None:
        self.outcomes: list[SentenceOutcome] = []

    def add(self, outcome: SentenceOutcome) -> SentenceOutcome:
        self.outcomes.append(outcome)
        return outcome

    @property
    def retries(self) -> int:
        return sum(o.retries for o in self.outcomes)

    @property
    def kept_failures(self) -> list[tuple[int, str]]:
        return sorted((o.index, o.kept_failure) for o in self.outcomes if o.kept_failure)

    def header_value(self) -> str:
        """`retried=0`, or e.g. `retried=2; kept_failure=loop@0,cap@3` (reason@sentence index)."""
        value = f"retried={self.retries}"
        if self.kept_failures:
            value += "; kept_failure=" + ",".join(f"{reason}@{index}" for index, reason in self.kept_failures)
        return value


# --------------------------------------------------------------------------------------------
# retry policy, streamed sentences


class _Attempt:
    """One streamed decoding attempt, sans I/O: `feed(chunk)` / `end()` -> (action, tokens to hand
    on), action "go" (continue), "retry" (drop this attempt), "cut" or "end" (stop here)."""

    def __init__(self, owner: "GuardedStream", attempt: int, committed: Callable[[], bool]):
        self.owner, self.attempt, self.committed = owner, attempt, committed
        self.guard = StreamingGuard(owner.context, owner.config)
        self.received = 0  # chunks fed so far
        self.held: np.ndarray | None = None  # a short chunk, probably the last: checked with the end

    def feed(self, chunk) -> tuple[str, np.ndarray]:
        chunk = np.asarray(chunk, dtype=np.int64).reshape(-1)
        out = np.zeros(0, np.int64)
        if self.held is not None:  # it was not the last after all
            action, out = self._decide(self.held, last=False)
            self.held = None
            if action != "go":
                return action, out
        sizes, index = self.owner.chunk_sizes, self.received
        self.received += 1
        if sizes is not None and len(chunk) < sizes[min(index, 1)]:
            self.held = chunk
            return "go", out
        action, more = self._decide(chunk, last=False)
        if action == "retry":  # nothing of a dropped attempt may be handed on
            return action, more
        return action, np.concatenate([out, more])

    def end(self) -> tuple[str, np.ndarray]:
        held, self.held = self.held, None
        return self._decide(held if held is not None else np.zeros(0, np.int64), last=True)

    def _decide(self, chunk: np.ndarray, last: bool) -> tuple[str, np.ndarray]:
        owner, guard = self.owner, self.guard
        keep = guard.push(chunk)
        if guard.failed or last:
            verdict = guard.finish(hit_cap(guard.n_tokens, owner.cap) if not guard.failed else False)
            owner.verdicts.append(verdict)
            if not self.committed() and _should_retry(verdict, self.attempt, owner.config):
                return "retry", chunk[:0]
            if guard.failed:
                owner.cut = guard.failure.position
                return "cut", chunk[:keep]
            return "end", chunk
        return "go", chunk


class GuardedStream:
    """One streamed sentence's T2S under the guard.

    `open_stream(seed)` opens the token-chunk stream of one decoding attempt (an async iterator
    for `chunks`, a plain iterator for `chunks_sync`; closing it must stop that decode).
    `committed()` says whether any audio of this sentence has left. Iterating yields
    (attempt, chunk); when `attempt` changes, the consumer drops what it built from the previous
    attempt's chunks (that happens only while nothing was committed).

    * A failure found while decoding (run, loop, too long) before any audio left: that attempt
      is closed and the sentence decodes again with `retry_seed`, unheard, up to max_retries.
    * Once audio left: the tokens from the failure's position on are withheld and the decode is
      stopped: the sentence is cut at the loop.
    * When the stream ends, the whole-sentence check runs (cap, too short, dominance). With
      `chunk_sizes` given, a chunk shorter than asked for (normally the last) is held until the
      stream's end confirms it, so a sentence that fits in its first chunk is still checked whole
      before any of it is handed on.
    * After the last retry, that attempt is kept (the earlier attempts' tokens are gone).

    `outcome` (a SentenceOutcome, mode "stream") is set once the iteration finished.
    """

    def __init__(self, open_stream: Callable[[int | None], Any], seed: int | None, context: SentenceContext,
                 config: GuardConfig | None = None, *, cap: int | None = None,
                 chunk_sizes: tuple[int, int] | None = None, index: int = 0):
        self.open_stream, self.seed, self.context = open_stream, seed, context
        self.config = config or GuardConfig()
        self.cap, self.chunk_sizes, self.index = cap, chunk_sizes, index
        self.verdicts: list[GuardVerdict] = []
        self.cut: int | None = None  # where the kept attempt was cut, if it was
        self.outcome: SentenceOutcome | None = None

    def _done(self, attempts: int) -> None:
        self.outcome = SentenceOutcome(self.index, attempts, list(self.verdicts),
                                       max(len(self.verdicts) - 1, 0), "stream")

    async def chunks(self, committed: Callable[[], bool]) -> AsyncIterator[tuple[int, np.ndarray]]:
        attempt = 0
        while True:
            stream = self.open_stream(retry_seed(self.seed, attempt))
            if not self.config.enabled:
                try:
                    async for chunk in stream:
                        yield 0, np.asarray(chunk)
                finally:
                    await _aclose(stream)
                self._done(1)
                return
            state, action = _Attempt(self, attempt, committed), "go"
            try:
                async for chunk in stream:
                    action, out = state.feed(chunk)
                    if out.size:
                        yield attempt, out
                    if action != "go":
                        break
                if action == "go":
                    action, out = state.end()
                    if out.size:
                        yield attempt, out
            finally:
                await _aclose(stream)
            if action != "retry":
                self._done(attempt + 1)
                return
            attempt += 1

    def chunks_sync(self, committed: Callable[[], bool]) -> Iterator[tuple[int, np.ndarray]]:
        """`chunks` over a plain iterator stream (the in-process Pipeline)."""
        attempt = 0
        while True:
            stream = self.open_stream(retry_seed(self.seed, attempt))
            if not self.config.enabled:
                try:
                    for chunk in stream:
                        yield 0, np.asarray(chunk)
                finally:
                    _close(stream)
                self._done(1)
                return
            state, action = _Attempt(self, attempt, committed), "go"
            try:
                for chunk in stream:
                    action, out = state.feed(chunk)
                    if out.size:
                        yield attempt, out
                    if action != "go":
                        break
                if action == "go":
                    action, out = state.end()
                    if out.size:
                        yield attempt, out
            finally:
                _close(stream)
            if action != "retry":
                self._done(attempt + 1)
                return
            attempt += 1


async def _aclose(stream) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


def _close(stream) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        close()
