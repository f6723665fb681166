"""TextFrontend against upstream's golden frontend vectors, plus its own contract.

Golden: ../shared/reference/gpt_sovits_v2/golden/tiny_seed1234_A/frontend.json (+ frontend_bert.npz),
made by upstream ``TextPreprocessor.get_phones_and_bert`` with the tiny BERT (hidden 32).
"""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"

# English G2P reads NLTK's POS tagger from $NLTK_DATA (as `make test` sets it).
if (SHARED / "vendor" / "nltk_data").is_dir():
    os.environ.setdefault("NLTK_DATA", str((SHARED / "vendor" / "nltk_data").resolve()))

from models.text.frontend import (  # noqa: E402
    BERT_FEATURE_DIM, SUPPORTED_LANGUAGES, EmptyTextError, TextFrontend, UnsupportedLanguageError,
    language_runs,
)

GOLDEN = SHARED / "reference" / "gpt_sovits_v2" / "golden" / "tiny_seed1234_A"
BERT_DIR = SHARED / "reference" / "gpt_sovits_v2" / "checkpoints" / "tiny_seed1234" / "chinese-roberta-wwm-ext-large"
RTOL = 1e-4


def _records():
    path = GOLDEN / "frontend.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text(encoding="utf-8"))["records"]


def _needs(record) -> list[str]:
    """Modules (owned by the other language helpers) a record depends on."""
    mods = ["models.text.langseg"] if record["language"] != "en" else []
    if any(s["segment_lang"] == "en" for s in record["segments"]):
        mods.append("models.text.en")
    return mods


def _skip_unless_importable(modules):
    for mod in modules:
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not available yet")


@pytest.fixture(scope="module")
def fe():
    if not BERT_DIR.is_dir():
        pytest.skip(f"{BERT_DIR} is absent")
    torch.set_num_threads(1)
    return TextFrontend(str(BERT_DIR))


@pytest.fixture(scope="module")
def golden_bert():
    path = GOLDEN / "frontend_bert.npz"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return np.load(path)


def _close(got: torch.Tensor, want: np.ndarray) -> bool:
    got = got.detach().double().numpy()
    return got.shape == want.shape and np.abs(got - want).max() <= RTOL * np.abs(want).max()


# ----------------------------------------------------------------------------------------------
# golden records


@pytest.mark.parametrize("record", _records(), ids=[r["key"] for r in _records()])
def test_golden_phones_text_segments(fe, record):
    _skip_unless_importable(_needs(record))
    ph = fe.phonemize(record["text"], record["language"])
    assert ph.phone_ids == record["phones"]
    assert ph.phone_symbols == record["phone_symbols"]
    assert ph.norm_text == record["norm_text"]
    assert ph.attempt == record["final_attempt"]
    got = [(s.lang, s.text, s.phone_ids, s.word2ph, s.norm_text) for s in ph.segments]
    want = [(s["segment_lang"], s["segment_text"], s["phones"], s["word2ph"], s["norm_text"]) for s in record["segments"]]
    assert got == want
    for seg, wseg in zip(ph.segments, record["segments"]):
        assert seg.bert_input_ids == wseg.get("bert_input_ids")


@pytest.mark.parametrize("record", [r for r in _records() if r["bert_key"]],
                         ids=[r["key"] for r in _records() if r["bert_key"]])
def test_golden_bert(fe, golden_bert, record):
    _skip_unless_importable(_needs(record))
    bert = fe.bert(fe.phonemize(record["text"], record["language"]))
    assert _close(bert, golden_bert[record["bert_key"]])


def test_golden_preprocess(fe):
    path = GOLDEN / "frontend.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    _skip_unless_importable(["models.text.langseg"])
    pp = json.loads(path.read_text(encoding="utf-8"))["preprocess"]
    assert fe.split_sentences(pp["text"], pp["lang"], pp["text_split_method"]) == pp["pre_seg_text"]
    items = fe.preprocess(pp["text"], pp["lang"], pp["text_split_method"])
    assert len(items) == len(pp["items"])
    for (phone_ids, bert, norm_text), want in zip(items, pp["items"]):
        assert phone_ids == want["phones"]
        assert norm_text == want["norm_text"]
        assert list(bert.shape) == want["bert_shape"]


# ----------------------------------------------------------------------------------------------
# BERT batching and cache


SENTENCES = ["你好，欢迎使用语音合成系统。", "今天是二零二四年三月五日.", "第一句话.", "我今天用", "效果很好."]


def test_bert_batch_equals_one_at_a_time(fe):
    phs = [fe.phonemize(t, "all_zh") for t in SENTENCES]
    one = [fe.bert(ph) for ph in phs]
    batched = fe.bert_batch(phs)
    for a, b in zip(one, batched):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=0, atol=1e-5 * a.abs().max().item())


def test_process_batch_equals_single_calls(fe):
    out = fe.process_batch([(t, "all_zh") for t in SENTENCES])
    for text, (ids, bert, norm) in zip(SENTENCES, out):
        ph = fe.phonemize(text, "all_zh")
        assert ids == ph.phone_ids and norm == ph.norm_text
        assert bert.shape == (fe.bert_model.hidden_size, len(ids))
        assert torch.allclose(bert, fe.bert(ph), atol=1e-5 * bert.abs().max().item())


def test_bert_lru_cache(fe):
    ph = fe.phonemize("缓存测试的提示文本。", "all_zh")
    first = fe.bert(ph, cache=True)
    again = fe.bert(ph, cache=True)
    assert torch.equal(first, again)
    assert torch.allclose(first, fe.bert(ph), atol=1e-6)
    assert fe.bert_model.cache_info()["size"] >= 1


def test_bert_cache_is_bounded():
    from models.text.bert import BertFeatures

    feats = BertFeatures.__new__(BertFeatures)
    BertFeatures.__init__(feats, _FakeEncoder(), _FakeTokenizer(), cache_size=2)
    for text in ["一", "二", "三"]:
        feats.cached(text, [2])
    assert feats.cache_info() == {"size": 2, "max_size": 2}


class _FakeEncoder(torch.nn.Module):
    class config:  # noqa: N801 - mimics transformers' config attribute
        hidden_size = 4

    def forward(self, input_ids, attention_mask=None, **_):
        from types import SimpleNamespace

        return SimpleNamespace(last_hidden_state=torch.ones(*input_ids.shape, 4))


class _FakeTokenizer:
    def __call__(self, texts, padding=False, return_tensors=None):
        texts = [texts] if isinstance(texts, str) else texts
        n = max(len(t) for t in texts) + 2
        ids = torch.zeros(len(texts), n, dtype=torch.long)
        mask = torch.tensor([[1] * (len(t) + 2) + [0] * (n - len(t) - 2) for t in texts])
        return {"input_ids": ids, "attention_mask": mask}


# ----------------------------------------------------------------------------------------------
# language handling and errors


@pytest.mark.parametrize("lang", ["fr", "", "ZH", "all_en", None])
def test_unsupported_language(fe, lang):
    with pytest.raises(UnsupportedLanguageError) as err:
        fe.phonemize("你好", lang)
    assert isinstance(err.value, ValueError)
    assert "all_zh" in str(err.value) and "auto_yue" in str(err.value)


def test_supported_languages_are_upstream_v2_codes():
    assert set(SUPPORTED_LANGUAGES) == {"auto", "auto_yue", "en", "zh", "ja", "yue", "ko",
                                        "all_zh", "all_ja", "all_yue", "all_ko"}


@pytest.mark.parametrize("text", ["", " ", "   \n\t "])
def test_empty_text(fe, text):
    with pytest.raises(EmptyTextError):
        fe.phonemize(text, "all_zh")
    with pytest.raises(EmptyTextError):
        fe.split_sentences(text, "all_zh")


def test_short_text_retried_with_period(fe):
    ph = fe.phonemize("好", "all_zh")
    assert ph.attempt == 2
    assert ph.phone_symbols == [".", "h", "ao3"]


def test_pause_marks_become_sp2_sp3(fe):
    ph = fe.phonemize("你好￥我们走吧，再见", "all_zh")
    assert ph.phone_symbols.count("SP2") == 2 and "," not in ph.phone_symbols
    ph = fe.phonemize("你好^我们走吧", "all_zh")
    assert "SP3" in ph.phone_symbols and "," not in ph.phone_symbols


def test_emoji_and_url_in_chinese(fe):
    _skip_unless_importable(["models.text.langseg"])
    ph = fe.phonemize("你好😀世界", "all_zh")
    assert ph.norm_text == "你好世界"
    assert ph.phone_symbols == ["n", "i2", "h", "ao3", "sh", "ir4", "j", "ie4"]
    # Latin letters in all_zh are English runs, not dropped
    ph = fe.phonemize("请访问www点example点com网站", "all_zh")
    assert [s.lang for s in ph.segments][0] == "zh" and "en" in [s.lang for s in ph.segments]


def test_long_text_preprocess_within_bert_limit(fe):
    text = "这是一个很长的句子没有标点符号" * 50  # 750 chars, no marks
    items = fe.preprocess(text, "all_zh", "cut0")
    assert len(items) >= 2
    for ids, bert, norm in items:
        assert len(norm) <= 511 and bert.shape[1] == len(ids)


def test_non_chinese_runs_get_zero_features(fe):
    _skip_unless_importable(["models.text.en"])
    ph = fe.phonemize("Hello world, this is a test.", "en")
    bert = fe.bert(ph)
    assert bert.shape == (BERT_FEATURE_DIM, len(ph.phone_ids))
    assert not bert.any()


def test_yue_runs_get_zero_features(fe):
    _skip_unless_importable(["models.text.langseg", "models.text.yue"])
    ph = fe.phonemize("今日天气好好。", "all_yue")
    assert {s.lang for s in ph.segments} == {"yue"}
    assert not fe.bert(ph).any()


def test_zh_mode_merges_non_english_runs(monkeypatch):
    import models.text.frontend as frontend

    runs = [("zh", "我"), ("ja", "は"), ("en", "OK"), ("en", " yes"), ("zh", "好")]
    monkeypatch.setattr(frontend, "_split_by_language", lambda text, default=None: runs)
    assert language_runs("x", "zh") == [("zh", "我は"), ("en", "OK yes"), ("zh", "好")]
    assert language_runs("x", "ja") == [("ja", "我は"), ("en", "OK yes"), ("ja", "好")]
    assert language_runs("x", "auto_yue") == [("yue", "我"), ("ja", "は"), ("en", "OK"), ("en", " yes"), ("yue", "好")]


def test_frontend_without_bert_phonemizes_but_refuses_zh_features():
    fe = TextFrontend(None)
    ph = fe.phonemize("你好，欢迎使用语音合成系统。", "all_zh")
    assert len(ph.phone_ids) == 26
    with pytest.raises(RuntimeError, match="no BERT"):
        fe.bert(ph)


def test_bert_run_longer_than_510_chars(fe):
    text = "这是一个很长的句子没有标点符号" * 40  # 600 hanzi in one run (upstream BERT would fail)
    ph = fe.phonemize(text, "all_zh")
    bert = fe.bert(ph)
    assert bert.shape == (fe.bert_model.hidden_size, len(ph.phone_ids)) == (fe.bert_model.hidden_size, 1200)
    # the first 510 characters are encoded exactly like a run of their own
    head = fe.bert_model(ph.norm_text[:510], [2] * 510)
    assert torch.allclose(bert[:, :1020], head, atol=1e-5 * head.abs().max().item())


def test_bert_aligns_per_character_when_tokens_differ(fe):
    # "ab" is one WordPiece token: rows are then aligned per character instead
    bert = fe.bert_model("你ab好", [2, 1, 1, 2])
    assert bert.shape == (fe.bert_model.hidden_size, 6)
    assert torch.isfinite(bert).all()
