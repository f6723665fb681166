"""Sentence splitting (cut0..cut5) and upstream's preprocess order.

Expected strings were produced with upstream ``text_segmentation_method.py`` (commit 48b1a01).
"""

import json

import pytest

from models.text import split
from models.text.split import EmptyTextError, pre_seg_text

TEN = "一。二。三。四。五。六。七。八。九。十。"
MIXED = "你好，世界。今天天气很好！我们去公园吧？好的。走吧。"
EN = "Hello world. Pi is 3.14. Bye"
MARKS = "价格是3.14元，好的；明天见、再见：谢谢…"

CUT_CASES = [
    ("cut0", TEN, TEN),
    ("cut0", "……", "\n"),
    ("cut1", TEN, "一。二。三。四。\n五。六。七。八。九。十。"),  # last chunk takes 6 clauses
    ("cut1", MIXED, MIXED),  # <= 8 clauses stay whole
    ("cut1", "……", ""),
    ("cut2", TEN, TEN),  # < 50 chars: one chunk
    ("cut2", EN, EN + "。"),
    ("cut2", "……", "……"),
    ("cut3", TEN, "一\n二\n三\n四\n五\n六\n七\n八\n九\n十"),
    ("cut3", MIXED, "你好，世界\n今天天气很好！我们去公园吧？好的\n走吧"),
    ("cut4", EN, "Hello world\n Pi is 3.14. Bye"),
    ("cut4", TEN, TEN),
    ("cut5", MIXED, "你好，\n世界。\n今天天气很好！\n我们去公园吧？\n好的。\n走吧。"),
    ("cut5", EN, "Hello world.\n Pi is 3.14.\n Bye"),  # no cut at a decimal point
    ("cut5", MARKS, "价格是3.14元，\n好的；明天见、\n再见：\n谢谢…"),  # '；' (full width) does not cut
    ("cut5", "……", ""),
]


@pytest.mark.parametrize("method,text,expected", CUT_CASES)
def test_cut_methods_match_upstream(method, text, expected):
    assert split.get_cut_method(method)(text) == expected


def test_cut2_merges_short_tail():
    text = "这是第一个比较长的分句，它有二十多个字符呢。" * 3 + "短句。"
    chunks = split.cut2(text).split("\n")
    assert all(len(c) > 50 for c in chunks)
    assert "".join(chunks) == text


def test_unknown_cut_method():
    with pytest.raises(ValueError, match="cut9"):
        split.get_cut_method("cut9")


def test_replace_consecutive_punctuation():
    assert split.replace_consecutive_punctuation("好!!!?真的...吗,.-") == "好!真的.吗,"


def test_merge_short_text_in_array():
    assert split.merge_short_text_in_array(["一。", "二。", "三四五六。", "七。"], 5) == ["一。二。三四五六。七。"]
    assert split.merge_short_text_in_array(["短。"], 5) == ["短。"]
    assert split.merge_short_text_in_array(["一二三四五", "六。"], 5) == ["一二三四五六。"]


def test_split_big_text_cuts_at_marks_within_limit():
    text = "这是一个很长的句子，" * 60
    pieces = split.split_big_text(text)
    assert [len(p) for p in pieces] == [510, 90]
    assert "".join(pieces) == text


def test_split_big_text_hard_cuts_text_without_marks():
    pieces = split.split_big_text("字" * 1200)
    assert [len(p) for p in pieces] == [510, 510, 180]


def test_pre_seg_text_prepends_mark_to_short_first_clause():
    assert pre_seg_text("你好，今天天气很好。", "zh", "cut0") == ["。你好，今天天气很好。"]
    assert pre_seg_text("Hi, how are you today?", "en", "cut0") == [".Hi, how are you today?"]
    # with cut5 the prepended mark is cut off as a symbols-only piece, the short clause merged
    assert pre_seg_text("你好。今天天气很好。", "zh", "cut5") == ["你好。今天天气很好。"]


def test_pre_seg_text_appends_closing_mark():
    assert pre_seg_text("今天天气很好，我们去公园", "all_zh", "cut0") == ["今天天气很好，我们去公园。"]
    assert pre_seg_text("It is a nice day", "en", "cut0") == ["It is a nice day."]


def test_pre_seg_text_merges_short_items():
    assert pre_seg_text("今天晴。好。明天下雨。", "zh", "cut5") == ["今天晴。好。", "明天下雨。"]


def test_pre_seg_text_long_sentence_is_cut_for_bert():
    text = "这是一个很长的句子，" * 120
    sentences = pre_seg_text(text, "zh", "cut0")
    assert [len(s) for s in sentences] == [510, 510, 180]
    assert "".join(sentences) == text


@pytest.mark.parametrize("text", ["", "\n\n", "   ", "。。。", "!?,"])
def test_pre_seg_text_empty_raises(text):
    with pytest.raises(EmptyTextError):
        pre_seg_text(text, "zh", "cut5")


def test_empty_text_error_is_value_error():
    assert issubclass(EmptyTextError, ValueError)


def test_golden_pre_seg_text(golden_dir):
    pp = json.loads((golden_dir / "frontend.json").read_text(encoding="utf-8"))["preprocess"]
    text = split.replace_consecutive_punctuation(pp["text"])
    assert pre_seg_text(text, pp["lang"], pp["text_split_method"]) == pp["pre_seg_text"]
