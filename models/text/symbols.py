"""The GPT-SoVITS phoneme tables (v1: 322 symbols, v2: 732 symbols).

This module is the only copy of the tables in the code base. They are built from their recipe
rather than written out, because the order of the ids is the contract with every checkpoint:

1. base = pad ``_`` + Chinese initials + Chinese finals x tones (tone-1 block first)
   + Japanese phonemes + punctuation + ``SP SP2 SP3 UNK`` + ARPAbet.
2. ``sorted(set(base))`` (code-point order; 19 initials coincide with Japanese phonemes)
   gives the 322-entry v1 table.
3. v2 appends the Japanese pitch marks ``[`` ``]``, the sorted Korean symbols and the sorted
   Cantonese (Jyutping, ``Y``-prefixed) symbols: 322 + 2 + 29 + 379 = 732.
"""

from __future__ import annotations

# Punctuation kept by the G2P modules; also the set "replace_consecutive_punctuation" collapses.
PUNCTUATION: tuple[str, ...] = ("!", "?", "…", ",", ".", "-")
PAD = "_"
SILENCES: tuple[str, ...] = ("SP", "SP2", "SP3", "UNK")

# Chinese initials, including the pseudo-initials AA/EE/OO (zero-initial a-/e-/o- syllables)
# and y/w (i-/u-/ü- syllables), as the opencpop-strict mapping writes them.
ZH_INITIALS: tuple[str, ...] = tuple(
    "AA EE OO b c ch d f g h j k l m n p q r s sh t w x y z zh".split()
)
# The 39 toneless finals; i0 = the apical vowel after z/c/s, ir = after zh/ch/sh/r,
# E / En = the finals of "ye" / "yan".
ZH_FINALS: tuple[str, ...] = tuple(
    "E En a ai an ang ao e ei en eng er i i0 ia ian iang iao ie in ing iong ir iu "
    "o ong ou u ua uai uan uang ui un uo v van ve vn".split()
)
ZH_TONES = "12345"  # 5 = neutral tone

JA_SYMBOLS: tuple[str, ...] = tuple(
    "I N U a b by ch cl d dy e f g gy h hy i j k ky m my n ny o p py r ry s sh t ts u v w y z".split()
)
JA_PITCH_MARKS: tuple[str, ...] = ("[", "]")

# CMU ARPAbet: vowels carry a stress digit 0-2; ER and IH also appear bare.
_ARPA_VOWELS = "AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split()
_ARPA_CONSONANTS = "B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH".split()
ARPA: frozenset[str] = frozenset(
    [v + s for v in _ARPA_VOWELS for s in "012"] + _ARPA_CONSONANTS + ["ER", "IH"]
)

# Korean: compatibility jamo plus 空 (space) and 停 (anything else), in upstream's string order.
KO_SYMBOLS = "ㄱㄴㄷㄹㅁㅂㅅㅇㅈㅊㅋㅌㅍㅎㄲㄸㅃㅆㅉㅏㅓㅗㅜㅡㅣㅐㅔ空停"

# Cantonese: Jyutping initials (toneless), finals with tones 1-6, and a few toneless finals that
# upstream's set also lists. Every symbol is prefixed with "Y".
_YUE_INITIALS = "b c d f g gw h j k kw l m n ng p s t w z".split()
_YUE_TONED_FINALS = (
    "a aa aai aak aam aan aang aap aat aau ai ak am an ang ap at au e ei ek eng eoi eon eot "
    "g i ik im in ing ip it iu k m n o oe oek oeng oi ok on ong ot ou p t u ui uk un ung ut "
    "yu yun yut"
).split()
_YUE_TONELESS_FINALS = "a aa ai ak au e o oi ok on ou uk".split()
YUE_SYMBOLS: frozenset[str] = frozenset(
    ["Y" + i for i in _YUE_INITIALS]
    + ["Y" + f + t for f in _YUE_TONED_FINALS for t in "123456"]
    + ["Y" + f for f in _YUE_TONELESS_FINALS]
)


def _base_symbols() -> list[str]:
    finals_with_tones = [f + t for t in ZH_TONES for f in ZH_FINALS]  # tone blocks, like upstream
    return (
        [PAD]
        + list(ZH_INITIALS)
        + finals_with_tones
        + list(JA_SYMBOLS)
        + list(PUNCTUATION)
        + list(SILENCES)
        + sorted(ARPA)
    )


SYMBOLS_V1: tuple[str, ...] = tuple(sorted(set(_base_symbols())))
SYMBOLS_V2: tuple[str, ...] = (
    SYMBOLS_V1 + JA_PITCH_MARKS + tuple(sorted(KO_SYMBOLS)) + tuple(sorted(YUE_SYMBOLS))
)
SYMBOLS = SYMBOLS_V2

SYMBOL_TO_ID_V1: dict[str, int] = {s: i for i, s in enumerate(SYMBOLS_V1)}
SYMBOL_TO_ID: dict[str, int] = {s: i for i, s in enumerate(SYMBOLS_V2)}
SYMBOL_TO_ID_V2 = SYMBOL_TO_ID

# Every version after v1 (v2, v2Pro, v2ProPlus, v3, v4) uses the v2 table.
_TABLES = {"v1": SYMBOL_TO_ID_V1}


def symbol_table(version: str = "v2") -> tuple[str, ...]:
    return SYMBOLS_V1 if version == "v1" else SYMBOLS_V2


def cleaned_text_to_sequence(phones: list[str], version: str = "v2") -> list[int]:
    """Map phone symbols to ids (upstream ``text.cleaned_text_to_sequence``).

    Raises ``KeyError`` naming the symbol when one is not in the table; the G2P modules map
    unknown symbols to ``UNK`` before this step, as upstream's ``clean_text`` does.
    """
    table = _TABLES.get(version, SYMBOL_TO_ID)
    try:
        return [table[p] for p in phones]
    except KeyError as e:
        raise KeyError(f"phone symbol {e.args[0]!r} is not in the {version} symbol table") from None


assert len(SYMBOLS_V1) == 322 and len(SYMBOLS_V2) == 732, (len(SYMBOLS_V1), len(SYMBOLS_V2))
