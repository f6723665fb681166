"""Japanese, Korean and Cantonese G2P (models/text/ja.py, ko.py, yue.py).

Expected phones are upstream GPT-SoVITS v2's ``japanese.g2p`` / ``korean.g2p`` /
``cantonese.g2p`` (after ``clean_text``'s UNK mapping) for the same inputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.text import ja, ko, yue
from models.text.symbols import SYMBOL_TO_ID


def ja_phones(text: str) -> list[str]:
    ph, word2ph = ja.g2p(ja.normalize(text))
    assert word2ph is None
    return ph


def ko_phones(text: str) -> list[str]:
    ph, word2ph = ko.g2p(ko.normalize(text))
    assert word2ph is None
    return ph


# ---------------------------------------------------------------------------------------------
# Japanese
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("こんにちは。", ["k", "o", "[", "N", "n", "i", "ch", "i", "w", "a", "."]),
        ("本当ですか？", ["h", "o", "[", "N", "t", "o", "o", "d", "e", "]", "s", "u", "k", "a", "?"]),
        ("東京、大阪！", ["t", "o", "[", "o", "ky", "o", "o", ",", "o", "[", "o", "s", "a", "k", "a", "!"]),
        ("今日は 晴れ", ["ky", "o", "]", "o", "w", "a", "h", "a", "[", "r", "e"]),  # blank skipped
    ],
)
def test_ja_words_and_punctuation(text, expected):
    assert ja_phones(text) == expected


def test_ja_numbers_and_percent():
    assert ja_phones("100％です") == [
        "hy", "a", "[", "k", "u", "p", "a", "a", "s", "e", "]", "N", "t", "o", "d", "e", "s", "u"
    ]


def test_ja_latin_letters_are_read_by_openjtalk():
    assert ja_phones("Hello、世界") == [
        "e", "[", "i", "ch", "i", "i", "i", "e", "r", "u", "e", "r", "u", "o", "o", ",",
        "s", "e", "]", "k", "a", "i",
    ]


def test_ja_accent_phrase_border_is_unk():
    ph = ja_phones("私は東京に住んでいます。")
    assert ph[:10] == ["w", "a", "[", "t", "a", "sh", "i", "w", "a", "UNK"]  # "#" -> UNK
    assert "#" not in ph and all(p in SYMBOL_TO_ID for p in ph)


def test_ja_repeated_punctuation_collapses():
    assert ja.normalize("えー!!!") == "えー!"
    assert ja_phones("えー!!!") == ["e", "[", "e", "!"]


def test_ja_user_dictionary():
    assert ja_phones("主殿") == ["a", "[", "r", "u", "j", "i", "]", "d", "o", "n", "o"]


def test_ja_empty_and_marks_only():
    assert ja.g2p("") == ([], None)
    assert ja.g2p("!?") == (["!", "?"], None)
    assert ja_phones("!?") == ["!"]  # normalize keeps the first of a run of marks


# ---------------------------------------------------------------------------------------------
# Korean
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("안녕하세요", ["ㅇ", "ㅏ", "ㄴ", "ㄴ", "ㅣ", "ㅓ", "ㅇ", "ㅎ", "ㅏ", "ㅅ", "ㅔ", "ㅇ", "ㅣ", "ㅗ", "."]),
        ("밥을 먹었어요.", ["ㅂ", "ㅏ", "ㅂ", "ㅡ", "ㄹ", "空", "ㅁ", "ㅓ", "ㄱ", "ㅓ", "ㅆ", "ㅓ", "ㅇ", "ㅣ", "ㅗ", "."]),
        ("왜요", ["ㅇ", "ㅗ", "ㅐ", "ㅇ", "ㅣ", "ㅗ", "."]),  # compound vowels split
    ],
)
def test_ko_words(text, expected):
    assert ko_phones(text) == expected


def test_ko_full_width_punctuation():
    assert ko_phones("좋아요，정말！") == [
        "ㅈ", "ㅗ", "ㅇ", "ㅏ", "ㅇ", "ㅣ", "ㅗ", ",", "ㅈ", "ㅓ", "ㅇ", "ㅁ", "ㅏ", "ㄹ", "!"
    ]


def test_ko_latin_letters_spelled_in_hangul():
    assert ko_phones("ABC 방송국") == [
        "ㅇ", "ㅔ", "ㅇ", "ㅣ", "ㅂ", "ㅣ", "ㅅ", "ㅣ", "空", "ㅂ", "ㅏ", "ㅇ", "ㅅ", "ㅗ", "ㅇ", "ㄱ", "ㅜ", "ㄱ", "."
    ]


def test_ko_numbers():
    assert ko_phones("3개") == ["ㅅ", "ㅔ", "ㄱ", "ㅐ", "."]


def test_ko_unknown_chars_become_stop_symbol():
    assert ko_phones("안녕@") == ["ㅇ", "ㅏ", "ㄴ", "ㄴ", "ㅣ", "ㅓ", "ㅇ", "停"]


def test_ko_empty_and_blank():
    assert ko.g2p("") == ([], None)
    assert ko.normalize("  ") == "  "
    assert ko_phones("  ") == ["空", "空"]


# ---------------------------------------------------------------------------------------------
# Cantonese
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, norm, expected, word2ph",
    [
        ("佢個鋤頭太短啦。", "佢个锄头太短啦.",
         ["Yk", "Yeoi5", "Yg", "Yo3", "Yc", "Yo4", "Yt", "Yau2", "Yt", "Yaai3", "Yd", "Yyun2", "Yl", "Yaa1", "."],
         [2, 2, 2, 2, 2, 2, 2, 1]),
        ("我哋一齊去唔去？", "我哋一齐去唔去?",
         ["Yng", "Yo5", "Yd", "Yei6", "Yj", "Yat1", "Yc", "Yai4", "Yh", "Yeoi3", "Ym", "Ym4", "Yh", "Yeoi3", "?"],
         [2, 2, 2, 2, 2, 2, 2, 1]),
    ],
)
def test_yue_sentences(text, norm, expected, word2ph):
    assert yue.normalize(text) == norm
    assert yue.g2p(norm) == (expected, word2ph)


def test_yue_numbers_are_verbalised():
    norm = yue.normalize("五個人食咗3碗飯")
    assert norm == "五个人食咗三碗饭"
    ph, word2ph = yue.g2p(norm)
    assert ph[:2] == ["Yng", "Yg5"]  # a syllable that is only its "initial" repeats its last letter
    assert len(ph) == sum(word2ph) and len(word2ph) == len(norm)


def test_yue_brackets_and_tilde():
    assert yue.normalize("「好」～") == "好-"
    assert yue.g2p("好-") == (["Yh", "You2", "-"], [2, 1])


def test_yue_repeated_punctuation_is_kept():
    assert yue.normalize("你好!!") == "你好!!"
    assert yue.g2p("你好!!") == (["Yn", "Yei5", "Yh", "You2", "!", "!"], [2, 2, 1, 1])


def test_yue_latin_removed_and_all_symbols_known():
    norm = yue.normalize("呢個係ABC嘅嘢，好正！")
    assert "A" not in norm
    ph, word2ph = yue.g2p(norm)
    assert all(p in SYMBOL_TO_ID for p in ph)
    assert len(ph) == sum(word2ph) and len(word2ph) == len(norm)


def test_yue_empty():
    assert yue.normalize("") == ""
    assert yue.g2p("") == ([], [])


def test_yue_char_without_reading_raises():
    with pytest.raises(ValueError):
        yue.g2p("abc")


_NO_NETWORK = r"""
import socket
def _refuse(*args, **kwargs):
    raise RuntimeError("network access attempted")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
from models.text import ja, ko, yue
print(ja.g2p(ja.normalize("こんにちは"))[0])
print(ko.g2p(ko.normalize("안녕하세요 ABC"))[0])
print(yue.g2p(yue.normalize("你好"))[0])
"""


def test_no_network_at_import_or_use():
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK], cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "'ㅇ'" in result.stdout and "'Yn'" in result.stdout and "'ch'" in result.stdout
