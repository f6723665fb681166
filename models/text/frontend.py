"""Text frontend: sentence splitting, phonemes and BERT features for GPT-SoVITS v2.

    fe = TextFrontend(bert_dir, device="cpu")
    sentences = fe.split_sentences(text, "zh", method="cut5")       # target text only
    ph = fe.phonemize(sentence, "zh")                                # Phonemized
    bert = fe.bert(ph)                                               # [1024, len(ph.phone_ids)]
    fe.process_batch([(text, lang), ...])                            # BERT batched over all zh runs

Behaviour follows upstream ``TextPreprocessor.get_phones_and_bert`` / ``clean_text``:
* the text is cut into language runs (``langseg``) according to the language code (see
  ``SUPPORTED_LANGUAGES``); each run is normalised and phonemised by its language module;
* a result with fewer than 6 phones is redone once with ``"."`` prepended (very short prompts
  and sentences otherwise synthesise badly);
* in a zh run, ``￥`` / ``^`` mark pauses: they become ``,`` and every ``,`` phone of that run
  becomes ``SP2`` / ``SP3``;
* phones outside the symbol table become ``UNK``;
* only runs labelled ``zh`` get BERT features; every other run (en, ja, ko, **yue**) gets zeros.

Deliberate differences: an unknown language code raises ``UnsupportedLanguageError`` (upstream
silently speaks " " in English), and empty text raises ``EmptyTextError``.
"""

from __future__ import annotations

import importlib
import re
import threading
from dataclasses import dataclass, field
from typing import Sequence

import torch

from models.text import zh as zh_module
from models.text.split import EmptyTextError, pre_seg_text, replace_consecutive_punctuation
from models.text.symbols import SYMBOL_TO_ID, cleaned_text_to_sequence

__all__ = [
    "SUPPORTED_LANGUAGES", "BERT_FEATURE_DIM", "EmptyTextError", "UnsupportedLanguageError",
    "Segment", "Phonemized", "TextFrontend",
]

# The one list of language codes (v2 and later). "all_xx": everything except Latin-script runs
# is read as xx; "xx": runs detected as non-English are read as xx; "auto": detected per run;
# "*_yue": Chinese runs read as Cantonese.
SUPPORTED_LANGUAGES: tuple[str, ...] = (
    "auto", "auto_yue", "en", "zh", "ja", "yue", "ko", "all_zh", "all_ja", "all_yue", "all_ko",
)
# Width of the T2S BERT input; upstream's zero features for non-zh runs always have 1024 rows.
BERT_FEATURE_DIM = 1024
MIN_PHONES = 6  # fewer -> retry with "." prepended
_V2_TABLE_VERSIONS = ("v2", "v2Pro", "v2ProPlus", "v3", "v4")
_G2P_LANGUAGES = ("zh", "ja", "en", "ko", "yue")
_PAUSE_MARKS = (("￥", "SP2"), ("^", "SP3"))  # zh only, checked in this order


class UnsupportedLanguageError(ValueError):
    def __init__(self, lang: object):
        super().__init__(
            f"unsupported language {lang!r}; supported: {', '.join(SUPPORTED_LANGUAGES)}"
        )
        self.lang = lang


@dataclass(frozen=True)
class Segment:
    """One language run of a phonemised text."""

    lang: str  # the G2P used: zh, ja, ko, yue or en
    text: str  # the run as cut from the input
    phone_ids: list[int]
    phone_symbols: list[str]
    word2ph: list[int] | None  # phones per norm_text character (zh / yue only)
    norm_text: str
    bert_input_ids: list[int] | None = None  # zh runs, when a BERT is loaded


@dataclass(frozen=True)
class Phonemized:
    phone_ids: list[int]
    phone_symbols: list[str]
    norm_text: str
    segments: list[Segment] = field(default_factory=list)
    attempt: int = 1  # 2 when redone with "." prepended (fewer than 6 phones)


def check_language(lang: str) -> str:
    if lang not in SUPPORTED_LANGUAGES:
        raise UnsupportedLanguageError(lang)
    return lang


def _language_module(lang: str):
    if lang == "zh":
        return zh_module
    return importlib.import_module(f"models.text.{lang}")


def _split_by_language(text: str, default: str | None = None) -> list[tuple[str, str]]:
    from models.text import langseg

    return langseg.split_by_language(text, default=default)


def language_runs(text: str, lang: str) -> list[tuple[str, str]]:
    """(run language, run text) pairs for a language code (upstream ``get_phones_and_bert``)."""
    check_language(lang)
    if lang == "en":
        return [("en", text)]
    if lang.startswith("all_"):
        target = lang[4:]
        default = "zh" if target == "yue" else target
        runs = _split_by_language(text, default=default)
        return [("yue" if (target == "yue" and rl == "zh") else rl, rt) for rl, rt in runs]
    if lang in ("auto", "auto_yue"):
        runs = _split_by_language(text)
        return [("yue" if (lang == "auto_yue" and rl == "zh") else rl, rt) for rl, rt in runs]
    # "zh" / "ja" / "ko" / "yue": English runs stay English, everything between them is `lang`
    merged: list[list[str]] = []
    for rl, rt in _split_by_language(text):
        is_en = rl == "en"
        if merged and (merged[-1][0] == "en") == is_en:
            merged[-1][1] += rt
        else:
            merged.append(["en" if is_en else lang, rt])
    return [(rl, rt) for rl, rt in merged]


class TextFrontend:
    def __init__(self, bert_dir: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, *, g2pw_model_dir: str | None = None,
                 bert_cache_size: int = 128, bert_max_batch: int = 16):
        """``bert_dir``: a chinese-roberta-wwm-ext-large folder, or None for phonemes only.

        ``g2pw_model_dir``: accepted for compatibility; g2pW is not implemented yet (pypinyin is
        used and a warning logged, see ``models.text.zh``).
        """
        self.device = torch.device(device)
        self.dtype = dtype
        self.g2pw_model_dir = g2pw_model_dir
        self._bert = None
        if bert_dir is not None:
            from models.text.bert import BertFeatures

            self._bert = BertFeatures.from_dir(bert_dir, device=device, dtype=dtype,
                                               cache_size=bert_cache_size, max_batch=bert_max_batch)
        # the G2P libraries (jieba, pyopenjtalk, g2p_en's tagger) are not all thread-safe
        self._g2p_lock = threading.RLock()

    @property
    def bert_model(self):
        return self._bert

    # ------------------------------------------------------------------------------------------
    # text -> sentences

    def split_sentences(self, text: str, lang: str, method: str = "cut5") -> list[str]:
        """Target text -> sentences (upstream ``preprocess`` before phonemisation)."""
        check_language(lang)
        return pre_seg_text(replace_consecutive_punctuation(text), lang, method)

    # ------------------------------------------------------------------------------------------
    # text -> phonemes

    def phonemize(self, text: str, lang: str, version: str = "v2") -> Phonemized:
        check_language(lang)
        if version not in _V2_TABLE_VERSIONS:
            raise ValueError(f"unsupported model version {version!r}; expected one of {_V2_TABLE_VERSIONS}")
        if not text or not text.strip():
            raise EmptyTextError("the text is empty")
        text = re.sub(" {2,}", " ", text)
        with self._g2p_lock:
            result = self._phonemize_once(text, lang, version, attempt=1)
            if len(result.phone_ids) < MIN_PHONES:
                result = self._phonemize_once("." + text, lang, version, attempt=2)
        if not result.phone_ids:
            raise EmptyTextError(f"nothing to speak in {text!r}")
        return result

    def _phonemize_once(self, text: str, lang: str, version: str, attempt: int) -> Phonemized:
        segments = [self._clean(run_text, run_lang, version) for run_lang, run_text in language_runs(text, lang)]
        return Phonemized(
            phone_ids=[i for s in segments for i in s.phone_ids],
            phone_symbols=[p for s in segments for p in s.phone_symbols],
            norm_text="".join(s.norm_text for s in segments),
            segments=segments,
            attempt=attempt,
        )

    def _clean(self, text: str, lang: str, version: str) -> Segment:
        """One run -> Segment (upstream ``clean_text`` + ``cleaned_text_to_sequence``)."""
        if lang not in _G2P_LANGUAGES:  # upstream: an unknown run language is spoken as " " in English
            lang, text = "en", " "
        module = _language_module(lang)
        pause = None
        if lang == "zh":
            pause = next(((mark, sym) for mark, sym in _PAUSE_MARKS if mark in text), None)
        source = text.replace(pause[0], ",") if pause else text
        norm_text = module.normalize(source)
        if lang == "zh":
            phones, word2ph = module.g2p(norm_text, g2pw_model_dir=self.g2pw_model_dir)
        else:
            phones, word2ph = module.g2p(norm_text)
        phones = list(phones)
        if word2ph is not None:
            word2ph = [int(n) for n in word2ph]
            if sum(word2ph) != len(phones) or len(word2ph) != len(norm_text):
                raise RuntimeError(
                    f"{lang} G2P is inconsistent for {norm_text!r}: {len(phones)} phones, "
                    f"word2ph {word2ph}"
                )
        if pause:
            phones = [pause[1] if p == "," else p for p in phones]
        phones = [p if p in SYMBOL_TO_ID else "UNK" for p in phones]
        bert_ids = None
        if lang == "zh" and self._bert is not None and norm_text:
            bert_ids = self._bert.token_ids(norm_text)
        return Segment(
            lang=lang,
            text=text,
            phone_ids=cleaned_text_to_sequence(phones, version),
            phone_symbols=phones,
            word2ph=word2ph,
            norm_text=norm_text,
            bert_input_ids=bert_ids,
        )

    # ------------------------------------------------------------------------------------------
    # phonemes -> BERT features

    def bert(self, phonemized: Phonemized, cache: bool = False) -> torch.Tensor:
        """[hidden, n_phones] features; ``cache=True`` uses the LRU (meant for prompt texts)."""
        return self.bert_batch([phonemized], cache=cache)[0]

    def bert_batch(self, items: Sequence[Phonemized], cache: bool = False) -> list[torch.Tensor]:
        """Features for many texts, with one batched BERT pass over all their zh runs."""
        zh_runs = [s for ph in items for s in ph.segments if _needs_bert(s)]
        if zh_runs and self._bert is None:
            raise RuntimeError("this TextFrontend has no BERT model (bert_dir=None); zh text needs one")
        if cache:
            features = [self._bert.cached(s.norm_text, s.word2ph) for s in zh_runs]
        else:
            features = self._bert.batch([(s.norm_text, s.word2ph) for s in zh_runs]) if zh_runs else []
        it = iter(features)
        out = []
        for ph in items:
            width = self._zero_rows(ph)
            parts = [
                next(it) if _needs_bert(s)
                else torch.zeros(width, len(s.phone_ids), dtype=self.dtype, device=self.device)
                for s in ph.segments
            ]
            out.append(torch.cat(parts, dim=1) if parts else torch.zeros(width, 0, dtype=self.dtype, device=self.device))
        return out

    def _zero_rows(self, ph: Phonemized) -> int:
        # Real models: BERT hidden == 1024 == T2S input. A test BERT of another width can only be
        # concatenated with zeros of its own width (upstream raises there); use that width then.
        if self._bert is not None and any(_needs_bert(s) for s in ph.segments):
            return self._bert.hidden_size
        return BERT_FEATURE_DIM

    # ------------------------------------------------------------------------------------------
    # whole requests

    def process_batch(self, items: Sequence[tuple[str, str]], version: str = "v2",
                      cache: bool = False) -> list[tuple[list[int], torch.Tensor, str]]:
        """[(text, lang)] -> [(phone_ids, bert [hidden, n], norm_text)], BERT batched across all."""
        phonemized = [self.phonemize(text, lang, version) for text, lang in items]
        berts = self.bert_batch(phonemized, cache=cache)
        return [(ph.phone_ids, b, ph.norm_text) for ph, b in zip(phonemized, berts)]

    def preprocess(self, text: str, lang: str, method: str = "cut5",
                   version: str = "v2") -> list[tuple[list[int], torch.Tensor, str]]:
        """Upstream ``TextPreprocessor.preprocess``: split, then phonemes + BERT per sentence.

        Sentences that normalise to nothing (e.g. emoji only) are dropped, as upstream does.
        """
        sentences = self.split_sentences(text, lang, method)
        kept = []
        for sentence in sentences:
            try:
                ph = self.phonemize(sentence, lang, version)
            except EmptyTextError:
                continue
            if ph.norm_text:
                kept.append(ph)
        if not kept:
            raise EmptyTextError("the text has nothing to speak")
        berts = self.bert_batch(kept)
        return [(ph.phone_ids, b, ph.norm_text) for ph, b in zip(kept, berts)]


def _needs_bert(segment: Segment) -> bool:
    return segment.lang == "zh" and bool(segment.norm_text)
