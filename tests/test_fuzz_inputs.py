"""Property-based fuzzing of the two parsers that take raw user input: the text frontend and the
upload decoder.

* `TextFrontend.split_sentences` (every cut method) and `TextFrontend.phonemize`, for every
  supported language code, on arbitrary Unicode and on mixtures of the characters the language
  normalisers special-case (digits, currency, dates, units, scripts, emoji, controls). The only
  exceptions allowed out are the frontend's own ValueError subclasses (`EmptyTextError`,
  `UnsupportedLanguageError`), which the API turns into 400s; anything else would be a 500.
* `serve_app.audio_io.decode_audio` on arbitrary bytes, on WAV headers with fuzzed fields, and
  on files of one container spliced onto another's header. Only `AudioInputError` may come out,
  and a successful decode returns finite mono float32 at a sane rate. (tests/test_audio_io.py
  fuzzes plain random bytes and corrupted real files; this file adds the structured cases.)
* One regression found on the way: encoding a long clip must not crash the process (run in a
  child process, since the failure is a segfault).

Each test is bounded three ways: `max_examples`, a per-example Hypothesis deadline, and a
wall-clock guard (`pytest.mark.timeout`, pytest-timeout) that fails a hang instead of waiting.
More examples on demand: GSV_FUZZ_EXAMPLES=2000.
"""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.text.frontend import SUPPORTED_LANGUAGES, EmptyTextError, TextFrontend, UnsupportedLanguageError
from serve_app.audio_io import AUDIO_ERROR_CODES, AudioInputError, decode_audio, encode_audio

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("GSV_FUZZ_EXAMPLES", "60"))
CUT_METHODS = ("cut0", "cut1", "cut2", "cut3", "cut4", "cut5")
FRONTEND_ERRORS = (EmptyTextError, UnsupportedLanguageError)
# Wall clock per test: generous, but a hang fails instead of blocking CI. The "thread" method
# works even when the hang is inside C code (FFmpeg, libsndfile, OpenJTalk) that never returns to
# Python for a signal handler to run: it dumps every stack and ends the test process.
GUARD = pytest.mark.timeout(120 + EXAMPLES, method="thread")


def _fuzz(examples: int, deadline_s: float):
    return settings(max_examples=examples, deadline=timedelta(seconds=deadline_s), derandomize=True,
                    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------------------------ text
@pytest.fixture(scope="module")
def frontend() -> TextFrontend:
    fe = TextFrontend(bert_dir=None)
    # The G2P back ends load lazily (dictionaries, MeCab, OpenJTalk): once here, not inside a
    # deadline-bound example.
    for text, lang in (("Hello 12.", "en"), ("你好 12。", "zh"), ("今日は12。", "ja"), ("안녕 12.", "ko"),
                       ("你好 12。", "yue"), ("Hi 你好。", "auto")):
        fe.phonemize(text, lang)
    return fe


# What the normalisers special-case, so generated text reaches them: numbers in all their forms,
# currency, percentages, dates/times, units, math, every script the languages read, repeat marks,
# the zh pause marks, quotes and brackets, emoji, combining marks, controls, bidi and odd spaces.
_TRICKY = (
    "0123456789０１２３" ".,:;-/+%$€£¥￥^~@#&*=<>()[]{}\"'`_|\\"
    "年月日时分秒点元角个万亿零一二三四五六七八九十百千两第负"
    "你好是的吗了不人大中国们行长重还乐数得地说"
    "あいうえおかきくけこんアイウエオカキンーッャュョ漢字々〆ヶ"
    "가나다라마바사아자차카타파하한국어읽습니다ㄱㄴㅏㅓ"
    "abcxyzABCXYZ Mr Dr St km kg mph vs etc I'm can't"
    "，。？！、；：「」『』（）《》…—·～"
    "é ñ ü ß ø Ω π ∞ √ ² ½ № ™ ℃ ° µ"
    "😀👍🏽🇨🇳\u200d\u0301\u0308\u00a0\u2028\u202e\u200b\ufeff\x00\x07\t\n\r"
)
TEXTS = st.one_of(
    st.text(max_size=80),                                   # anything Unicode has
    st.text(alphabet=st.sampled_from(_TRICKY), max_size=80),  # what the normalisers special-case
    st.lists(st.sampled_from(["12", "3.5", "-7", "1,000", "2024-01-02", "12:30", "50%", "$3", "¥5",
                              "第3", "10km", "3/4", "1e5", "一百", "Hello", "世界", "の", "는", "!", "。",
                              " ", "\n", "...", "——", "……", "^", "￥"]),
             max_size=20).map("".join),                     # plausible tokens glued together
)


def _phonemize_or_frontend_error(fe: TextFrontend, text: str, lang: str) -> None:
    try:
        ph = fe.phonemize(text, lang)
    except FRONTEND_ERRORS:
        return
    assert len(ph.phone_ids) == len(ph.phone_symbols) > 0
    assert all(isinstance(i, int) and i >= 0 for i in ph.phone_ids)


@GUARD
@pytest.mark.parametrize("lang", SUPPORTED_LANGUAGES)
def test_phonemize_raises_only_frontend_errors(frontend, lang):
    @_fuzz(EXAMPLES, deadline_s=5)
    @given(text=TEXTS)
    def run(text):
        _phonemize_or_frontend_error(frontend, text, lang)

    run()


@GUARD
@pytest.mark.parametrize("lang", SUPPORTED_LANGUAGES)
def test_split_sentences_raises_only_frontend_errors(frontend, lang):
    @_fuzz(EXAMPLES, deadline_s=2)
    @given(text=TEXTS, method=st.sampled_from(CUT_METHODS))
    def run(text, method):
        try:
            sentences = frontend.split_sentences(text, lang, method)
        except FRONTEND_ERRORS:
            return
        assert isinstance(sentences, list) and all(isinstance(s, str) for s in sentences)
        assert all(len(s) <= 510 for s in sentences)  # the BERT limit every piece is cut to

    run()


@GUARD
def test_every_sentence_of_a_split_phonemizes_or_is_empty(frontend):
    """What the server does with a request: split, then phonemize each sentence."""
    @_fuzz(EXAMPLES, deadline_s=10)
    @given(text=TEXTS, lang=st.sampled_from(SUPPORTED_LANGUAGES), method=st.sampled_from(CUT_METHODS))
    def run(text, lang, method):
        try:
            sentences = frontend.split_sentences(text, lang, method)
        except FRONTEND_ERRORS:
            return
        for sentence in sentences:
            _phonemize_or_frontend_error(frontend, sentence, lang)

    run()


@pytest.mark.parametrize("lang", ["", "EN", "english", "zh-CN", None, 3, "all_en", "auto\x00"])
def test_unknown_language_codes_are_refused(frontend, lang):
    with pytest.raises(UnsupportedLanguageError):
        frontend.phonemize("hello", lang)
    with pytest.raises(UnsupportedLanguageError):
        frontend.split_sentences("hello", lang)


# ----------------------------------------------------------------------------------- audio
MAX_BYTES = 256 * 1024


def _decode_or_audio_error(data: bytes, max_seconds: float = 30.0) -> None:
    try:
        samples, sr = decode_audio(data, max_bytes=MAX_BYTES, max_seconds=max_seconds)
    except AudioInputError as exc:
        assert exc.code in AUDIO_ERROR_CODES
        return
    assert samples.dtype == np.float32 and samples.ndim == 1 and samples.size > 0
    assert 4000 <= sr <= 384_000
    assert np.all(np.isfinite(samples))
    assert samples.size <= (max_seconds + 1) * sr  # decoding stops at the length limit


@GUARD
@_fuzz(EXAMPLES * 5, deadline_s=5)
@given(data=st.binary(min_size=0, max_size=8192))
def test_decode_arbitrary_bytes(data):
    _decode_or_audio_error(data)


def _wav(fmt_tag: int, channels: int, rate: int, byte_rate: int, block_align: int, bits: int,
         data_size: int, payload: bytes, riff_size: int | None = None, fmt_size: int = 16) -> bytes:
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, byte_rate, block_align, bits)
    fmt = fmt[:fmt_size].ljust(fmt_size, b"\0")
    body = b"WAVE" + b"fmt " + struct.pack("<I", fmt_size) + fmt + b"data" + struct.pack("<I", data_size) + payload
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


U16, U32 = st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)


@GUARD
@_fuzz(EXAMPLES * 3, deadline_s=5)
@given(fmt_tag=st.one_of(st.sampled_from([1, 3, 6, 7, 0xFFFE, 0x55]), U16),
       channels=st.one_of(st.integers(0, 20), U16),
       rate=st.one_of(st.sampled_from([0, 1, 3999, 8000, 16000, 32000, 48000, 384_001]), U32),
       byte_rate=U32, block_align=U16,
       bits=st.one_of(st.sampled_from([0, 8, 16, 24, 32, 64]), U16),
       data_size=st.one_of(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF]), U32),
       payload=st.binary(max_size=4096),
       riff_size=st.one_of(st.none(), U32),
       fmt_size=st.sampled_from([14, 16, 18, 40]))
def test_decode_wav_with_fuzzed_header_fields(fmt_tag, channels, rate, byte_rate, block_align, bits, data_size,
                                               payload, riff_size, fmt_size):
    _decode_or_audio_error(_wav(fmt_tag, channels, rate, byte_rate, block_align, bits, data_size, payload,
                                riff_size, fmt_size))


def _tone(seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)


_REAL = {fmt: encode_audio(_tone(0.5, 32000), 32000, fmt) for fmt in ("wav", "flac", "mp3", "opus", "ogg", "aac")}


@GUARD
@_fuzz(EXAMPLES * 3, deadline_s=5)
@given(head=st.sampled_from(sorted(_REAL)), tail=st.sampled_from(sorted(_REAL)),
       cut_head=st.integers(0, 512), cut_tail=st.integers(0, 4096), junk=st.binary(max_size=64))
def test_decode_spliced_containers(head, tail, cut_head, cut_tail, junk):
    """One container's header, maybe some junk, then another container's body."""
    _decode_or_audio_error(_REAL[head][:cut_head] + junk + _REAL[tail][cut_tail:])


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("fmt", ["FLAC", "OGG", "WAV"])
def test_highly_compressible_upload_stops_at_the_length_limit(fmt):
    """10 minutes of silence compress to little (FLAC/Vorbis) or are just long: decoding stops
    at max_seconds with audio_too_long instead of expanding the whole file in memory."""
    sr = 8000
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", samplerate=sr, channels=1, format=fmt) as f:
        for _ in range(600):  # one second per write: libsndfile's Vorbis encoder crashes on
            f.write(np.zeros(sr, np.float32))  # ~2M frames in one call (see the test below)
    data = buf.getvalue()
    with pytest.raises(AudioInputError) as exc:
        decode_audio(data, max_bytes=len(data), max_seconds=30.0)
    assert exc.value.code == "audio_too_long"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ["ogg", "wav", "flac", "mp3", "opus", "aac"])
def test_encoding_a_long_clip_does_not_crash_the_process(fmt):
    """70 s of audio in one `encode_audio` call (a non-streamed response to a long text). Run in
    a child process: libsndfile's Ogg Vorbis encoder segfaults when handed >= ~2M frames in one
    write, which would take the whole ingress replica down with every request in flight."""
    code = ("import numpy as np; from serve_app.audio_io import encode_audio; "
            f"x = (0.3 * np.sin(np.arange(70 * 32000) * 0.05)).astype(np.float32); "
            f"assert len(encode_audio(x, 32000, {fmt!r})) > 0")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"


def test_upload_over_the_byte_limit_is_refused_before_decoding():
    with pytest.raises(AudioInputError) as exc:
        decode_audio(b"RIFF" + b"\0" * 100, max_bytes=50)
    assert exc.value.code == "audio_too_large"
