"""Sentence splitting of target text (upstream ``text_segmentation_method.py`` + ``TextPreprocessor``).

``pre_seg_text(text, lang, method)`` is the whole upstream preparation: prepend a mark to a short
first clause, cut with ``cut0..cut5``, drop empty and symbol-only pieces, merge pieces shorter than
5 characters, close each piece with a sentence mark and cut pieces longer than 510 characters (the
BERT limit). ``preprocess`` callers first apply ``replace_consecutive_punctuation``.

Each cut method returns the pieces joined with ``"\\n"`` as upstream does.
"""

from __future__ import annotations

import re
from typing import Callable

from models.text.symbols import PUNCTUATION


class EmptyTextError(ValueError):
    """The text has nothing to speak (empty, whitespace or symbols only)."""


# Marks after which upstream cuts / which count as a sentence end (seg.py ``splits``).
SPLITS = frozenset("，。？！,.?!~:：—…")
# cut0..cut4 drop pieces made only of these (note the space).
_SYMBOLS_AND_SPACE = frozenset(PUNCTUATION) | {" "}
# cut5 cuts after these (ASCII ';' only; full-width '；' is not in the set).
_CUT5_MARKS = frozenset(",.;?!、，。？！：…")
BERT_MAX_CHARS = 510

_REPEATED_PUNCT = re.compile("([{0}])([{0}])+".format("".join(re.escape(p) for p in PUNCTUATION)))


def replace_consecutive_punctuation(text: str) -> str:
    """Any run of 2+ marks from ``! ? … , . -`` becomes its first mark."""
    return _REPEATED_PUNCT.sub(r"\1", text)


def _only(chars: frozenset[str], text: str) -> bool:
    return set(text) <= chars


def _split_after_marks(text: str) -> list[str]:
    """Upstream ``split()``: normalise long dashes/ellipses, close the text, cut after each mark."""
    text = text.replace("……", "。").replace("——", "，")
    if not text:
        return []
    if text[-1] not in SPLITS:
        text += "。"
    pieces, start = [], 0
    for i, char in enumerate(text):
        if char in SPLITS:
            pieces.append(text[start : i + 1])
            start = i + 1
    return pieces


def _join_kept(pieces: list[str], drop: frozenset[str] = _SYMBOLS_AND_SPACE) -> str:
    return "\n".join(p for p in pieces if not _only(drop, p))


def cut0(text: str) -> str:
    """No cut (a symbols-only text becomes an empty line)."""
    return "\n" if _only(_SYMBOLS_AND_SPACE, text) else text


def cut1(text: str) -> str:
    """Four clauses per chunk; the last chunk takes the remainder (5-8 clauses)."""
    text = text.strip("\n")
    pieces = _split_after_marks(text)
    if not pieces:
        return ""
    starts = list(range(0, len(pieces), 4))
    starts[-1] = None  # upstream quirk: the last boundary is dropped
    if len(starts) > 1:
        chunks = ["".join(pieces[a:b]) for a, b in zip(starts[:-1], starts[1:])]
    else:
        chunks = [text]
    return _join_kept(chunks)


def cut2(text: str) -> str:
    """Chunks of just over 50 characters; a short tail joins the previous chunk."""
    text = text.strip("\n")
    pieces = _split_after_marks(text)
    if len(pieces) < 2:
        return text
    chunks, current = [], ""
    for piece in pieces:
        current += piece
        if len(current) > 50:
            chunks.append(current)
            current = ""
    if current:
        chunks.append(current)
    if len(chunks) > 1 and len(chunks[-1]) < 50:
        tail = chunks.pop()
        chunks[-1] += tail
    return _join_kept(chunks)


def cut3(text: str) -> str:
    """Cut at the Chinese full stop (which is dropped)."""
    text = text.strip("\n")
    return _join_kept(text.strip("。").split("。"))


def cut4(text: str) -> str:
    """Cut at '.' unless it sits between two digits (the '.' is dropped)."""
    text = text.strip("\n")
    return _join_kept(re.split(r"(?<!\d)\.(?!\d)", text.strip(".")))


def cut5(text: str) -> str:
    """Cut after every punctuation mark (kept), except a decimal point between digits."""
    text = text.strip("\n")
    pieces, current = [], []
    for i, char in enumerate(text):
        current.append(char)
        if char in _CUT5_MARKS:
            decimal_point = char == "." and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()
            if not decimal_point:
                pieces.append("".join(current))
                current = []
    if current:
        pieces.append("".join(current))
    return _join_kept(pieces, drop=_CUT5_MARKS)


CUT_METHODS: dict[str, Callable[[str], str]] = {
    "cut0": cut0, "cut1": cut1, "cut2": cut2, "cut3": cut3, "cut4": cut4, "cut5": cut5,
}


def get_cut_method(name: str) -> Callable[[str], str]:
    try:
        return CUT_METHODS[name]
    except KeyError:
        raise ValueError(f"unknown text split method {name!r}; expected one of {sorted(CUT_METHODS)}") from None


def split_big_text(text: str, max_len: int = BERT_MAX_CHARS) -> list[str]:
    """Cut text at sentence marks into pieces of at most ``max_len`` characters.

    Same greedy packing as upstream; unlike upstream, empty pieces are never returned and a
    stretch with no mark longer than ``max_len`` is cut hard at ``max_len`` (upstream would hand
    BERT more than 512 tokens and fail).
    """
    parts = re.split("([" + re.escape("".join(sorted(SPLITS))) + "])", text)
    pieces, current = [], ""
    for part in parts:
        if len(current + part) > max_len:
            pieces.append(current)
            current = part
        else:
            current += part
    if current:
        pieces.append(current)
    out = []
    for piece in pieces:
        out.extend(piece[i : i + max_len] for i in range(0, len(piece), max_len))
    return [p for p in out if p]


def merge_short_text_in_array(texts: list[str], threshold: int) -> list[str]:
    """Concatenate consecutive items until each has >= threshold chars; a short tail joins the last."""
    if len(texts) < 2:
        return texts
    merged, current = [], ""
    for text in texts:
        current += text
        if len(current) >= threshold:
            merged.append(current)
            current = ""
    if current:
        if merged:
            merged[-1] += current
        else:
            merged.append(current)
    return merged


def _first_clause(text: str) -> str:
    return re.split("[" + re.escape("".join(sorted(SPLITS))) + "]", text)[0].strip()


def pre_seg_text(text: str, lang: str, method: str = "cut5") -> list[str]:
    """Upstream ``TextPreprocessor.pre_seg_text``: target text -> sentences to synthesise.

    Raises ``EmptyTextError`` when nothing speakable remains and ``ValueError`` for an unknown
    method. The sentence mark appended is ``。``, or ``.`` when ``lang == "en"``.
    """
    cut = get_cut_method(method)
    text = text.strip("\n")
    if not text.strip():
        raise EmptyTextError("the text is empty")
    mark = "." if lang == "en" else "。"
    if text[0] not in SPLITS and len(_first_clause(text)) < 4:
        text = mark + text  # a very short first clause otherwise gets swallowed by the model
    text = cut(text)
    while "\n\n" in text:
        text = text.replace("\n\n", "\n")
    items = text.split("\n")
    if all(item in ("", " ", "\n") for item in items):
        raise EmptyTextError("the text has nothing to speak")
    items = merge_short_text_in_array([t for t in items if t not in ("", " ")], 5)
    sentences = []
    for item in items:
        if not item.strip() or not re.sub(r"\W+", "", item):
            continue  # blank or symbols only
        if item[-1] not in SPLITS:
            item += mark
        sentences.extend(split_big_text(item) if len(item) > BERT_MAX_CHARS else [item])
    if not sentences:
        raise EmptyTextError("the text has nothing to speak (symbols only)")
    return sentences
