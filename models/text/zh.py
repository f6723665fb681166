"""Mandarin Chinese G2P for GPT-SoVITS v2 (upstream ``text/chinese2.py`` on its pypinyin path).

    normalize(text) -> norm_text        numbers etc. verbalised, punctuation mapped to ``! ? … , . -``,
                                        everything but CJK ideographs and those marks dropped
    g2p(norm_text) -> (phones, word2ph) two symbols per character (initial, final+tone), one per
                                        punctuation mark; ``len(word2ph) == len(norm_text)``

Pipeline of ``g2p``: cut after punctuation -> jieba POS tagging -> tone-sandhi regrouping ->
pypinyin initials/finals per word (``neutral_tone_with_five``) -> tone sandhi -> erhua tone fix ->
pypinyin syllable to the opencpop-strict symbols (derived by rule, see ``syllable_to_symbols``).

g2pW: upstream v2 predicts polyphone readings with the G2PW ONNX model. That path is **not
implemented yet**: passing ``g2pw_model_dir`` logs a warning once and uses pypinyin, which is
also what the golden vectors were made with. Readings of polyphonic characters can differ from a
default upstream install.
"""

from __future__ import annotations

import logging
import re
import threading
from functools import lru_cache
from pathlib import Path

from pypinyin import Style, lazy_pinyin

from models.text import tone_sandhi, zh_normalize
from models.text.symbols import PUNCTUATION

log = logging.getLogger(__name__)
_DATA = Path(__file__).resolve().parent / "data"

# ----------------------------------------------------------------------------------------------
# jieba (one shared, quiet tokenizer; the dictionary cache goes to the temp dir)
# ----------------------------------------------------------------------------------------------

_jieba_lock = threading.Lock()


@lru_cache(maxsize=1)
def jieba_tokenizer():
    import jieba

    jieba.setLogLevel(logging.CRITICAL)
    with _jieba_lock:
        jieba.dt.initialize()
    return jieba.dt


@lru_cache(maxsize=1)
def _pos_tokenizer():
    import jieba.posseg

    jieba_tokenizer()
    return jieba.posseg.dt


def pos_cut(sentence: str) -> list[tuple[str, str]]:
    return [(p.word, p.flag) for p in _pos_tokenizer().cut(sentence)]


# ----------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------

_PUNCT_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",",
    "、": ",", "...": "…", "$": ".", "/": ",", "—": "-", "~": "…", "～": "…",
}
_PUNCT_MAP_RE = re.compile("|".join(re.escape(k) for k in _PUNCT_MAP))
_PUNCT_CLASS = "".join(re.escape(p) for p in PUNCTUATION)
_NOT_HANZI_OR_PUNCT = re.compile(r"[^\u4e00-\u9fa5" + _PUNCT_CLASS + r"]+")
_REPEATED_PUNCT = re.compile(f"([{_PUNCT_CLASS}])([{_PUNCT_CLASS}])+")


def replace_consecutive_punctuation(text: str) -> str:
    """Any run of 2+ marks from ``! ? … , . -`` becomes its first mark."""
    return _REPEATED_PUNCT.sub(r"\1", text)


def map_punctuation(text: str) -> str:
    """Full-width and other marks -> the six kept marks; then drop all but hanzi and those."""
    text = text.replace("嗯", "恩").replace("呣", "母")  # readings pypinyin gets wrong (n / m)
    text = _PUNCT_MAP_RE.sub(lambda m: _PUNCT_MAP[m.group(0)], text)
    return _NOT_HANZI_OR_PUNCT.sub("", text)


def normalize(text: str) -> str:
    out = "".join(map_punctuation(s) for s in zh_normalize.normalize(text))
    # repeated marks would leak the reference's pauses into the prompt
    return replace_consecutive_punctuation(out)


# ----------------------------------------------------------------------------------------------
# pypinyin syllable -> opencpop-strict symbols
# ----------------------------------------------------------------------------------------------

# upstream's opencpop table spells finals after an initial in their short written form
_SHORT_FINALS = {"uei": "ui", "iou": "iu", "uen": "un"}


def syllable_to_symbols(initial: str, final: str) -> tuple[str, str] | None:
    """(pypinyin strict initial, toneless final) -> (symbol initial, symbol final), no tone.

    Equivalent to upstream's respelling + ``opencpop-strict.txt`` lookup for every syllable in
    that table. Zero-initial syllables get a pseudo-initial: AA/EE/OO before a-/e-/o-, y before
    i-/ü-, w before u-. Returns None for a syllable the table lacks (e.g. the nasal "m").
    """
    if not final:
        return None
    if initial:
        final = _SHORT_FINALS.get(final, final)
        if final == "i" and initial in ("zh", "ch", "sh", "r"):
            final = "ir"  # retroflex apical vowel (zhi chi shi ri)
        elif final == "i" and initial in ("z", "c", "s"):
            final = "i0"  # dental apical vowel (zi ci si)
        elif final.startswith("u") and initial in ("j", "q", "x"):
            final = "v" + final[1:]  # ju = jü
        return initial, final
    head = final[0]
    if head == "a":
        return "AA", final
    if head == "e":
        return "EE", final
    if head == "o":
        return "OO", final
    if head == "v":
        return "y", final  # yu yuan yue yun
    if head == "i":
        if final in ("i", "in", "ing"):
            return "y", final  # yi yin ying
        rest = final[1:]  # ya yao yang yo you yong; yan -> En, ye -> E
        return "y", {"an": "En", "e": "E"}.get(rest, rest)
    if head == "u":
        return ("w", "u") if final == "u" else ("w", final[1:])  # wu wa wo wai wei wen weng ...
    return None


# ----------------------------------------------------------------------------------------------
# Erhua
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _erhua_lists() -> tuple[frozenset[str], frozenset[str]]:
    sections: dict[str, set[str]] = {}
    current = None
    with open(_DATA / "zh_erhua.txt", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), set())
            else:
                current.add(line)
    return frozenset(sections["must_erhua"]), frozenset(sections["not_erhua"])


def _erhua(word: str, pos: str, initials: list[str], finals: list[str]) -> tuple[list[str], list[str]]:
    """儿 after a syllable takes that syllable's tone (it stays a syllable of its own)."""
    must, never = _erhua_lists()
    finals = list(finals)
    if finals and word[len(finals) - 1] == "儿" and finals[-1] == "er1":
        finals[-1] = "er2"
    if word not in must and (word in never or pos in {"a", "j", "nr"}):
        return initials, finals
    if len(finals) != len(word):
        return initials, finals
    last = len(word) - 1
    if last >= 1 and word[last] == "儿" and finals[last] in ("er2", "er5") and word[-2:] not in never:
        finals[last] = "er" + finals[last - 1][-1]
    return initials, finals


# ----------------------------------------------------------------------------------------------
# G2P
# ----------------------------------------------------------------------------------------------

_AFTER_PUNCT = re.compile(f"(?<=[{_PUNCT_CLASS}])\\s*")
_LATIN = re.compile("[a-zA-Z]+")
_warned_g2pw = False


def _initials_finals(word: str) -> tuple[list[str], list[str]]:
    initials = lazy_pinyin(word, neutral_tone_with_five=True, style=Style.INITIALS)
    finals = lazy_pinyin(word, neutral_tone_with_five=True, style=Style.FINALS_TONE3)
    return initials, finals


def _syllable_phones(initial: str, final: str) -> list[str]:
    if initial == final:  # pypinyin passes non-hanzi through: a punctuation mark
        return [initial] if initial in PUNCTUATION else ["UNK"]
    tone = final[-1]
    mapped = syllable_to_symbols(initial, final[:-1]) if tone in "12345" else None
    if mapped is None:  # upstream asserts here; we degrade to UNK and keep 2 per character
        return ["UNK", "UNK"]
    return [mapped[0], mapped[1] + tone]


def g2p(norm_text: str, g2pw_model_dir: str | None = None) -> tuple[list[str], list[int]]:
    """Normalised text -> (phone symbols, phones per character). See the module docstring."""
    global _warned_g2pw
    if g2pw_model_dir is not None and not _warned_g2pw:
        log.warning("g2pW (%s) is not implemented yet; using pypinyin for Chinese", g2pw_model_dir)
        _warned_g2pw = True
    phones: list[str] = []
    word2ph: list[int] = []
    for sentence in _AFTER_PUNCT.split(norm_text):
        if not sentence.strip():
            continue
        sentence = _LATIN.sub("", sentence)
        initials: list[str] = []
        finals: list[str] = []
        for word, pos in tone_sandhi.pre_merge(pos_cut(sentence)):
            if pos == "eng":
                continue
            word_initials, word_finals = _initials_finals(word)
            word_finals = tone_sandhi.apply_sandhi(word, pos, word_finals)
            word_initials, word_finals = _erhua(word, pos, word_initials, word_finals)
            initials += word_initials
            finals += word_finals
        for initial, final in zip(initials, finals):
            syllable = _syllable_phones(initial, final)
            phones += syllable
            word2ph.append(len(syllable))
    return phones, word2ph
