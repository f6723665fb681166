"""Cantonese: Jyutping initials/finals with a ``Y`` prefix, as GPT-SoVITS v2 (``text/cantonese.py``).

* ``normalize``: the Chinese text normaliser (``zh_normalize.normalize``: numbers, dates,
  traditional -> simplified, ... sentence by sentence), then Cantonese's own punctuation map
  (quotes and brackets -> ``'``, ``~ ～ —`` -> ``-``, full-width marks -> ASCII) and removal of
  everything that is not a CJK ideograph (U+4E00..U+9FA5) or one of ``! ? … , . -``. Unlike
  Mandarin, repeated punctuation is not collapsed.
* ``g2p``: ToJyutping gives one syllable per character; each syllable is split into an
  "initial" (first match in upstream's ordered list, which also holds some vowel onsets such as
  ``aa`` or ``ou``) and the rest with the tone digit; both get the ``Y`` prefix. word2ph is 2 per
  syllable and 1 per punctuation mark, so ``len(norm_text) == len(word2ph)``.

BERT features for Cantonese are zeros (upstream), which is the frontend's business.
"""

from __future__ import annotations

import functools
import re

from models.text import zh_normalize
from models.text.symbols import PUNCTUATION, SYMBOL_TO_ID

__all__ = ["normalize", "g2p", "warmup"]

_PUNCT_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",", "、": ",",
    "...": "…", "$": ".",
    "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'", "（": "'", "）": "'", "(": "'", ")": "'",
    "《": "'", "》": "'", "【": "'", "】": "'", "[": "'", "]": "'", "「": "'", "」": "'",
    "—": "-", "～": "-", "~": "-",
}
_PUNCT_MAP_RE = re.compile("|".join(re.escape(k) for k in _PUNCT_MAP))
_NOT_KEPT_RE = re.compile("[^\u4e00-\u9fa5" + re.escape("".join(PUNCTUATION)) + "]+")

# Ordered: the first prefix that matches is the "initial" (upstream's list, order included).
_INITIALS = (
    "aa aai aak aap aat aau ai au ap at ak a p b e ts t dz d kw k gw g f h l m ng n s y w c z j "
    "ong on ou oi ok o uk ung sp spl spn sil"
).split()
_PUNCT_SET = frozenset(PUNCTUATION)
_ALL_PUNCT_RE = re.compile(f"^[{re.escape(''.join(PUNCTUATION))}]+$")
_JYUTPING_RE = re.compile(r"^([a-z]+[1-6]+[ ]?)+$")


def normalize(text: str) -> str:
    out = []
    for sentence in zh_normalize.normalize(text):
        sentence = _PUNCT_MAP_RE.sub(lambda m: _PUNCT_MAP[m.group(0)], sentence)
        out.append(_NOT_KEPT_RE.sub("", sentence))
    return "".join(out)


@functools.cache
def _jyutping_list():
    import ToJyutping

    return ToJyutping.get_jyutping_list


def _syllables(text: str) -> list[str]:
    """One Jyutping syllable (e.g. ``gwong2``) or punctuation mark per character."""
    out: list[str] = []
    for char, jyutping in _jyutping_list()(text):
        if _ALL_PUNCT_RE.match(char):
            out.extend(char)
        elif jyutping is None or not _JYUTPING_RE.match(jyutping):
            raise ValueError(f"no Jyutping reading for {char!r}: {jyutping!r}")
        else:
            out.append(jyutping)
    return out


def _split_syllable(syllable: str) -> list[str] | None:
    """``"gwong2"`` -> ``["Ygw", "Yong2"]``; None when no initial matches (upstream drops it)."""
    tone = syllable[-1] if syllable[-1].isdigit() else ""
    body = syllable[:-1] if tone else syllable
    for initial in _INITIALS:
        if body.startswith(initial):
            # A syllable that is only its "initial" (m4, ng5, aa3) repeats the last letter as final.
            final = body[len(initial):] or initial[-1]
            return ["Y" + initial, "Y" + final + tone]
    return None


def g2p(norm_text: str) -> tuple[list[str], list[int]]:
    phones: list[str] = []
    word2ph: list[int] = []
    for syllable in _syllables(norm_text):
        if syllable in _PUNCT_SET:
            phones.append(syllable)
            word2ph.append(1)
            continue
        pair = _split_syllable(syllable)
        if pair is not None:
            phones.extend(pair)
            word2ph.append(2)
    return [p if p in SYMBOL_TO_ID else "UNK" for p in phones], word2ph


def warmup() -> None:
    """Load ToJyutping's dictionary now."""
    g2p(normalize("测试"))
