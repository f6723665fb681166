"""Korean: g2pk2 pronunciation -> compatibility jamo, as GPT-SoVITS v2 (``text/korean.py``).

* ``normalize`` is the identity (upstream has no Korean normaliser; g2pk2 reads numbers).
* ``g2p``: every Latin letter becomes its Hangul letter name (``a`` -> 에이, ...); g2pk2 applies
  the Korean pronunciation rules; the result is decomposed into compatibility jamo and compound
  vowels are split (ㅘ -> ㅗㅏ, ㅑ -> ㅣㅏ, ...); a g2pk2 liaison slip (``-을 ㄹ`` / ``-를 ㄹ`` read
  as ㄹ instead of ㄴ) is fixed; a ``.`` is appended when the text ends in a jamo. Then each
  character is one phone: punctuation mapped (``，`` -> ``,`` ...), blank -> ``空``, anything
  else outside the symbol table -> ``停``.

g2pk2's import wants to ``nltk.download('cmudict')`` and its constructor loads NLTK's cmudict
(for English words) and may ``pip install`` MeCab. None of that is needed here: Latin letters
are spelled out before g2pk2 sees them, so its English lexicon is never consulted, and MeCab is
python-mecab-ko with its bundled dictionary. The G2p object is therefore assembled directly,
with downloads disabled during the import.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading

from models.text.symbols import SYMBOL_TO_ID

__all__ = ["normalize", "g2p", "warmup"]

_LETTER_NAMES = {
    "a": "에이", "b": "비", "c": "시", "d": "디", "e": "이", "f": "에프", "g": "지",
    "h": "에이치", "i": "아이", "j": "제이", "k": "케이", "l": "엘", "m": "엠", "n": "엔",
    "o": "오", "p": "피", "q": "큐", "r": "아르", "s": "에스", "t": "티", "u": "유",
    "v": "브이", "w": "더블유", "x": "엑스", "y": "와이", "z": "제트",
}
_LATIN_RE = re.compile("[A-Za-z]")

# Compound vowels written as two simple ones (the symbol table only has simple vowels).
_VOWEL_SPLIT = str.maketrans({
    "ㅘ": "ㅗㅏ", "ㅙ": "ㅗㅐ", "ㅚ": "ㅗㅣ", "ㅝ": "ㅜㅓ", "ㅞ": "ㅜㅔ", "ㅟ": "ㅜㅣ", "ㅢ": "ㅡㅣ",
    "ㅑ": "ㅣㅏ", "ㅒ": "ㅣㅐ", "ㅕ": "ㅣㅓ", "ㅖ": "ㅣㅔ", "ㅛ": "ㅣㅗ", "ㅠ": "ㅣㅜ",
})

_MARK_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?",
    "\n": ".", "·": ",", "、": ",", " ": "空",
}
_TRAILING_JAMO_RE = re.compile(r"([\u3131-\u3163])$")


def normalize(text: str) -> str:
    return text


@contextlib.contextmanager
def _no_nltk_download():
    import nltk

    original = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        yield
    finally:
        nltk.download = original


_g2pk_lock = threading.Lock()


@functools.cache
def _g2pk():
    with _no_nltk_download():
        from g2pk2 import g2pk2 as g2pk_module
    from g2pk2.utils import get_rule_id2text, parse_table
    import mecab

    g = g2pk_module.G2p.__new__(g2pk_module.G2p)  # skip __init__: NLTK cmudict, pip checks
    g.use_konlpy = False
    g.mecab_path = None
    g.mecab = mecab.MeCab()
    g.table = parse_table()
    g.cmu = {}  # English is spelled out before g2pk2 runs, so this lexicon is never used
    g.rule2text = get_rule_id2text()
    g.idioms_path = os.path.join(os.path.dirname(g2pk_module.__file__), "idioms.txt")
    return g


def _spell_latin(text: str) -> str:
    return _LATIN_RE.sub(lambda m: _LETTER_NAMES[m.group(0).lower()], text)


def _to_jamo(text: str) -> str:
    from jamo import h2j, j2hcj

    return j2hcj(h2j(text)).translate(_VOWEL_SPLIT)


def _fix_liaison(text: str) -> str:
    """g2pk2 reads "을/를 + ㄹ..." with ㄹ; upstream rewrites the onset after the blank to ㄴ."""
    out = []
    i = 0
    while i < len(text) - 4:
        if text[i : i + 3] in ("ㅇㅡㄹ", "ㄹㅡㄹ") and text[i + 3] == " " and text[i + 4] == "ㄹ":
            out.append(text[i : i + 3] + " ㄴ")
            i += 5
        else:
            out.append(text[i])
            i += 1
    out.append(text[i:])
    return "".join(out)


def _phone(ch: str) -> str:
    ch = _MARK_MAP.get(ch, ch)
    return ch if ch in SYMBOL_TO_ID else "停"


def g2p(norm_text: str) -> tuple[list[str], None]:
    """One phone per jamo / mark; no word2ph for Korean."""
    text = _spell_latin(norm_text)
    with _g2pk_lock:  # g2pk2 shares one MeCab tagger
        text = _g2pk()(text)
    text = _fix_liaison(_to_jamo(text))
    text = _TRAILING_JAMO_RE.sub(r"\1.", text)
    return [_phone(ch) for ch in text], None


def warmup() -> None:
    """Load g2pk2 and MeCab now."""
    g2p("테스트")
