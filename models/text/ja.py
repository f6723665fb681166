"""Japanese: OpenJTalk phonemes with prosody marks, as GPT-SoVITS v2 (``text/japanese.py``).

* ``normalize`` only collapses runs of the punctuation marks ``! ? … , . -``.
* ``g2p``: ``％`` is read パーセント, the text is lower-cased and cut at every character that is
  not Japanese (kana, kanji, ``々``, ASCII letters/digits, full-width letters and digits 1-9,
  half-width katakana). Each Japanese span goes through OpenJTalk and the ESPnet-style prosody
  labelling: phonemes plus ``[`` (pitch rise), ``]`` (pitch fall), ``#`` (accent-phrase border),
  ``_`` (pause); unvoiced vowels are lower-cased; the leading ``^`` and the final ``$``/``?`` are
  dropped. The cut characters are kept as phones (blanks skipped) and mapped ``：；，、·`` -> ``,``,
  ``。`` -> ``.`` and so on. Anything outside the symbol table becomes ``UNK``; that includes
  ``#``, exactly as in upstream training data.

OpenJTalk is ``pyopenjtalk-plus`` (dictionary inside the wheel, nothing downloaded), run in its
"vanilla" mode so that its extra reading heuristics stay off, as with upstream's ``pyopenjtalk``.
Upstream's one-entry user dictionary (``data/ja/userdict.csv``) is compiled once per process
into a temporary folder and used by a private OpenJTalk instance (the global one is untouched).
"""

from __future__ import annotations

import atexit
import functools
import logging
import re
import shutil
import tempfile
import threading
from pathlib import Path

from models.text.symbols import PUNCTUATION, SYMBOL_TO_ID

logger = logging.getLogger(__name__)

USERDICT_CSV = Path(__file__).resolve().parent / "data" / "ja" / "userdict.csv"

__all__ = ["normalize", "g2p", "warmup"]

_PUNCT_CLASS = "".join(re.escape(p) for p in PUNCTUATION)
_REPEATED_PUNCT_RE = re.compile(f"([{_PUNCT_CLASS}])([{_PUNCT_CLASS}])+")

# What upstream treats as Japanese text (everything else is a "mark" between spans). Note the
# full-width digit range starts at １ (U+FF11): ０ is a mark, as upstream has it.
_JA_CHARS = r"A-Za-z\d\u3005\u3040-\u30ff\u4e00-\u9fff\uff11-\uff19\uff21-\uff3a\uff41-\uff5a\uff66-\uff9d"
_JA_CHAR_RE = re.compile(f"[{_JA_CHARS}]")
_MARK_RE = re.compile(f"[^{_JA_CHARS}]")

_MARK_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?",
    "\n": ".", "·": ",", "、": ",", "...": "…",
}


def normalize(text: str) -> str:
    """Collapse repeated punctuation (so a reference's long pauses do not leak)."""
    return _REPEATED_PUNCT_RE.sub(r"\1", text)


# ----------------------------------------------------------------------------------------------
# OpenJTalk
# ----------------------------------------------------------------------------------------------

_jtalk_lock = threading.Lock()


@functools.cache
def _jtalk():
    """A private OpenJTalk with upstream's user dictionary, or None (= pyopenjtalk's global)."""
    import pyopenjtalk

    try:
        out_dir = Path(tempfile.mkdtemp(prefix="gsv_ja_userdic_"))
        atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
        dic = out_dir / "user.dic"
        pyopenjtalk.mecab_dict_index(str(USERDICT_CSV), str(dic))
        return pyopenjtalk.OpenJTalk(
            dn_mecab=pyopenjtalk.OPEN_JTALK_DICT_DIR, userdic=str(dic).encode("utf-8")
        )
    except Exception as e:  # upstream ignores a user dictionary that fails to load, too
        logger.warning("Japanese user dictionary not loaded (%s: %s)", type(e).__name__, e)
        return None


def _labels(text: str) -> list[str]:
    import pyopenjtalk

    with _jtalk_lock:
        jtalk = _jtalk()
    features = pyopenjtalk.run_frontend(text, use_vanilla=True, jtalk=jtalk)
    return pyopenjtalk.make_label(features, jtalk=jtalk)


def _feature(pattern: re.Pattern, label: str) -> int:
    m = pattern.search(label)
    return int(m.group(1)) if m else -50


_P3 = re.compile(r"\-(.*?)\+")          # current phoneme
_A1 = re.compile(r"/A:([0-9\-]+)\+")    # mora position relative to the accent nucleus
_A2 = re.compile(r"\+(\d+)\+")          # mora index in the accent phrase (forward)
_A3 = re.compile(r"\+(\d+)/")           # mora index in the accent phrase (backward)
_F1 = re.compile(r"/F:(\d+)_")          # morae in the accent phrase
_E3 = re.compile(r"!(\d+)_")            # 1 if the (last) accent phrase is a question


def _prosody_phones(text: str) -> list[str]:
    """ESPnet ``pyopenjtalk_g2p_prosody``: phonemes with ``^ $ ? [ ] # _`` marks."""
    labels = _labels(text)
    phones: list[str] = []
    for n, label in enumerate(labels):
        p3 = _P3.search(label).group(1)
        if p3 in "AEIOU":  # unvoiced vowels are written as plain vowels
            p3 = p3.lower()
        if p3 == "sil":
            if n == 0:
                phones.append("^")
            elif n == len(labels) - 1:
                e3 = _feature(_E3, label)
                if e3 == 0:
                    phones.append("$")
                elif e3 == 1:
                    phones.append("?")
            continue
        if p3 == "pau":
            phones.append("_")
            continue
        phones.append(p3)

        a1, a2, a3 = _feature(_A1, label), _feature(_A2, label), _feature(_A3, label)
        f1 = _feature(_F1, label)
        a2_next = _feature(_A2, labels[n + 1])
        if a3 == 1 and a2_next == 1 and p3 in "aeiouAEIOUNcl":
            phones.append("#")  # accent-phrase border
        elif a1 == 0 and a2_next == a2 + 1 and a2 != f1:
            phones.append("]")  # pitch falls after the nucleus
        elif a2 == 1 and a2_next == 2:
            phones.append("[")  # pitch rises after the first mora
    return phones


def g2p(norm_text: str) -> tuple[list[str], None]:
    """Phones (with pitch marks) of normalised Japanese text; no word2ph for Japanese."""
    text = norm_text.replace("％", "パーセント").lower()
    spans = _MARK_RE.split(text)
    marks = _MARK_RE.findall(text)
    raw: list[str] = []
    for i, span in enumerate(spans):
        if _JA_CHAR_RE.match(span):
            raw += _prosody_phones(span)[1:-1]  # drop "^" and the final "$" / "?"
        if i < len(marks) and marks[i] != " ":
            raw.append(marks[i])
    phones = [_MARK_MAP.get(p, p) for p in raw]
    return [p if p in SYMBOL_TO_ID else "UNK" for p in phones], None


def warmup() -> None:
    """Compile the user dictionary and load OpenJTalk now."""
    g2p("テスト")
