"""Chinese normalisation, tone sandhi, erhua and syllable mapping (upstream v2, pypinyin path).

Expected values were produced by upstream GPT-SoVITS (commit 48b1a01, ``chinese2`` with
``is_g2pw = False``), i.e. they pin upstream's behaviour including its quirks.
"""

import pytest

from models.text import tone_sandhi, zh, zh_normalize
from models.text.symbols import SYMBOL_TO_ID

# (input, upstream text_normalize, upstream g2p phones)
NORMALIZATION_CASES = [
    ('今天是2024年3月5日。', '今天是二零二四年三月五日.', 'j in1 t ian1 sh ir4 EE er4 l ing2 EE er4 s i04 n ian2 s an1 y ve4 w u3 r ir4 .'),
    ('会议在2024-03-05举行', '会议在二零二四年三月五日举行', 'h ui4 y i4 z ai4 EE er4 l ing2 EE er4 s i04 n ian2 s an1 y ve4 w u3 r ir4 j v3 x ing2'),
    ('现在是12:30', '现在是十二点半', 'x ian4 z ai4 sh ir4 sh ir2 EE er4 d ian3 b an4'),
    ('时间是8:05-9:30', '时间是八点零五分至九点三十分', 'sh ir2 j ian1 sh ir4 b a1 d ian3 l ing2 w u3 f en1 zh ir4 j iu2 d ian3 s an1 sh ir2 f en1'),
    ('气温-3°C', '气温零下三度', 'q i4 w en1 l ing2 x ia4 s an1 d u4'),
    ('增长了25%', '增长了百分之二十五', 'z eng1 zh ang3 l e5 b ai3 f en1 zh ir1 EE er4 sh ir2 w u3'),
    ('减少-0.5%', '减少负百分之零点五', 'j ian2 sh ao3 f u4 b ai3 f en1 zh ir1 l ing2 d ian3 w u3'),
    ('价格是3.14元', '价格是三点一四元', 'j ia4 g e2 sh ir4 s an1 d ian3 y i2 s i04 y van2'),
    ('我有2个苹果', '我有两个苹果', 'w o2 y ou3 l iang3 g e5 p ing2 g uo3'),
    ('他30多岁了', '他三十多岁了', 't a1 s an1 sh ir2 d uo1 s ui4 l e5'),
    ('请拨打13800138000', '请拨打幺三八零零幺三八零零零', 'q ing3 b o1 d a3 y ao1 s an1 b a1 l ing2 l ing2 y ao1 s an1 b a1 l ing2 l ing2 l ing2'),
    ('电话010-12345678', '电话零幺零减幺二三四五六七八', 'd ian4 h ua4 l ing2 y ao1 l ing2 j ian3 y ao1 EE er4 s an1 s i04 w u3 l iu4 q i1 b a1'),
    ('客服400-123-4567', '客服四零零减幺二三减四五六七', 'k e4 f u2 s i04 l ing2 l ing2 j ian3 y ao1 EE er4 s an1 j ian3 s i04 w u3 l iu4 q i1'),
    ('版本2.0.1发布', '版本二点零点一发布', 'b an2 b en3 EE er4 d ian3 l ing2 d ian3 y i4 f a1 b u4'),
    ('一共1000人', '一共一千人', 'y i2 g ong4 y i1 q ian1 r en2'),
    ('编号007', '编号零零七', 'b ian1 h ao4 l ing2 l ing2 q i1'),
    ('距离1~3公里', '距离一到三公里', 'j v4 l i2 y i2 d ao4 s an1 g ong1 l i3'),
    ('3kg~5kg', '三千克至五千克', 's an1 q ian1 k e4 zh ir4 w u3 q ian1 k e4'),
    ('1/2的人', '二分之一的人', 'EE er4 f en1 zh ir1 y i1 d e5 r en2'),
    ('3+2=5', '三加二等于五', 's an1 j ia1 EE er4 d eng3 y v2 w u3'),
    ('x²', '的二次方', 'd e5 EE er4 c i04 f ang1'),
    ('①②③', '一二三', 'y i1 EE er4 s an1'),
    ('α粒子', '阿尔法粒子', 'AA a1 EE er3 f a3 l i4 z i05'),
    ('ＡＢＣ１２３', '幺二三', 'y ao1 EE er4 s an1'),
    ('這是繁體中文', '这是繁体中文', 'zh e4 sh ir4 f an2 t i3 zh ong1 w en2'),
    ('共100000001元', '共一亿零一元', 'g ong4 y i1 y i4 l ing2 y i4 y van2'),
    ('第10名', '第十名', 'd i4 sh ir2 m ing2'),
    ('他跑了5km', '他跑了五千米', 't a1 p ao3 l e5 w u3 q ian1 m i3'),
    ('花了$3.5', '花了.三点五', 'h ua1 l e5 . s an1 d ian3 w u3'),
    ('售价¥12', '售价十二', 'sh ou4 j ia4 sh ir2 EE er4'),
    ('嗯，好吧', '恩,好吧', 'EE en1 , h ao3 b a5'),
    ('网址是https://example.com/a?b=1', '网址是秒每每米.米每?等于一', 'w ang2 zh ir3 sh ir4 m iao3 m ei2 m ei3 m i3 . m i2 m ei3 ? d eng3 y v2 y i1'),
    ('你好😀世界', '你好世界', 'n i2 h ao3 sh ir4 j ie4'),
    ('你好…世界——再见～', '你好…世界再见…', 'n i2 h ao3 … sh ir4 j ie4 z ai4 j ian4 …'),
    ('《红楼梦》是名著', '红楼梦是名著', 'h ong2 l ou2 m eng4 sh ir4 m ing2 zh u4'),
]

SANDHI_CASES = [
    ('我不怕', '我不怕', 'w o3 b u2 p a4'),
    ('看不懂', '看不懂', 'k an4 b u5 d ong3'),
    ('一天一夜', '一天一夜', 'y i4 t ian1 y i2 y E4'),
    ('一段时间', '一段时间', 'y i2 d uan4 sh ir2 j ian1'),
    ('看一看', '看一看', 'k an4 y i5 k an4'),
    ('第一', '第一', 'd i4 y i1'),
    ('一二三', '一二三', 'y i1 EE er4 s an1'),
    ('奶奶好', '奶奶好', 'n ai3 n ai5 h ao3'),
    ('试试看', '试试看', 'sh ir4 sh ir5 k an4'),
    ('桌上有书', '桌上有书', 'zh uo1 sh ang5 y ou3 sh u1'),
    ('出去玩', '出去玩', 'ch u1 q v4 w an2'),
    ('两个人', '两个人', 'l iang3 g e5 r en2'),
    ('东西很多', '东西很多', 'd ong1 x i5 h en3 d uo1'),
    ('你们好', '你们好', 'n i3 m en5 h ao3'),
    ('展览馆', '展览馆', 'zh an2 l an2 g uan3'),
    ('纸老虎', '纸老虎', 'zh ir3 l ao2 h u3'),
    ('所有人', '所有人', 's uo2 y ou3 r en2'),
    ('好喜欢', '好喜欢', 'h ao2 x i3 h uan5'),
    ('小院儿', '小院儿', 'x iao3 y van4 EE er4'),
    ('花儿开了', '花儿开了', 'h ua1 EE er2 k ai1 l e5'),
    ('女儿很好', '女儿很好', 'n v3 EE er2 h en2 h ao3'),
    ('玩儿去', '玩儿去', 'w an2 EE er2 q v4'),
    ('嗯，好吧', '恩,好吧', 'EE en1 , h ao3 b a5'),
    ('网址是https://example.com/a?b=1', '网址是秒每每米.米每?等于一', 'w ang2 zh ir3 sh ir4 m iao3 m ei2 m ei3 m i3 . m i2 m ei3 ? d eng3 y v2 y i1'),
    ('你好😀世界', '你好世界', 'n i2 h ao3 sh ir4 j ie4'),
    ('你好…世界——再见～', '你好…世界再见…', 'n i2 h ao3 … sh ir4 j ie4 z ai4 j ian4 …'),
    ('《红楼梦》是名著', '红楼梦是名著', 'h ong2 l ou2 m eng4 sh ir4 m ing2 zh u4'),
]


@pytest.mark.parametrize("text,norm,phones", NORMALIZATION_CASES, ids=[c[0] for c in NORMALIZATION_CASES])
def test_normalize_matches_upstream(text, norm, phones):
    assert zh.normalize(text) == norm


@pytest.mark.parametrize("text,norm,phones", NORMALIZATION_CASES + SANDHI_CASES,
                         ids=[c[0] for c in NORMALIZATION_CASES + SANDHI_CASES])
def test_g2p_matches_upstream(text, norm, phones):
    got, word2ph = zh.g2p(zh.normalize(text))
    assert " ".join(got) == phones


@pytest.mark.parametrize("text", ["你好，欢迎使用语音合成系统。", "花儿开了!", "一天一夜…再见-", ".你好"])
def test_word2ph_two_per_hanzi_one_per_mark(text):
    norm = zh.normalize(text)
    phones, word2ph = zh.g2p(norm)
    assert len(word2ph) == len(norm)
    assert sum(word2ph) == len(phones)
    assert word2ph == [1 if ch in ",.!?…-" else 2 for ch in norm]
    assert all(p in SYMBOL_TO_ID for p in phones)


def test_normalize_keeps_only_hanzi_and_six_marks():
    norm = zh.normalize("Hello，世界！ABC？（测试）[x] 😀 100%")
    assert all("\u4e00" <= ch <= "\u9fa5" or ch in "!?…,.-" for ch in norm)


def test_repeated_punctuation_collapses():
    assert zh.normalize("好！！！真的？？？") == "好!真的?"


def test_empty_and_symbol_only_text():
    assert zh.normalize("") == ""
    assert zh.g2p("") == ([], [])
    assert zh.normalize("😀🎉") == ""


@pytest.mark.parametrize("value,reading", [
    ("0", "零"), ("10", "十"), ("12", "十二"), ("20", "二十"), ("105", "一百零五"),
    ("1000", "一千"), ("10001", "一万零一"), ("1000100", "一百万零一百"), ("100000001", "一亿零一"),
    ("25.5", "二十五点五"), (".5", "零点五"), ("3.20", "三点二零"), ("3.0", "三点零"),
])
def test_num2str(value, reading):
    assert zh_normalize.num2str(value) == reading


def test_num2str_rejects_two_points():
    with pytest.raises(ValueError):
        zh_normalize.num2str("1.2.3")


def test_traditional_to_simplified():
    assert zh_normalize.traditional_to_simplified("這是繁體中文") == "这是繁体中文"


def test_split_sentences_after_marks():
    assert zh_normalize.split_sentences("你好，世界。再 见！") == ["你好，", "世界。", "再见！"]


@pytest.mark.parametrize("initial,final,symbols", [
    ("", "a", ("AA", "a")), ("", "ai", ("AA", "ai")), ("", "e", ("EE", "e")), ("", "er", ("EE", "er")),
    ("", "o", ("OO", "o")), ("", "ou", ("OO", "ou")), ("", "i", ("y", "i")), ("", "in", ("y", "in")),
    ("", "ing", ("y", "ing")), ("", "ian", ("y", "En")), ("", "ie", ("y", "E")), ("", "iou", ("y", "ou")),
    ("", "iong", ("y", "ong")), ("", "u", ("w", "u")), ("", "uei", ("w", "ei")), ("", "uo", ("w", "o")),
    ("", "v", ("y", "v")), ("", "van", ("y", "van")), ("zh", "i", ("zh", "ir")), ("r", "i", ("r", "ir")),
    ("z", "i", ("z", "i0")), ("s", "i", ("s", "i0")), ("j", "v", ("j", "v")), ("q", "van", ("q", "van")),
    ("d", "uei", ("d", "ui")), ("l", "iou", ("l", "iu")), ("g", "uen", ("g", "un")), ("n", "ve", ("n", "ve")),
])
def test_syllable_to_symbols(initial, final, symbols):
    assert zh.syllable_to_symbols(initial, final) == symbols


def test_syllable_without_table_entry_is_unk():
    assert zh.syllable_to_symbols("", "m") is None
    assert zh._syllable_phones("", "m2") == ["UNK", "UNK"]


def test_pre_merge_groups_bu_yi_and_reduplication():
    words = tone_sandhi.pre_merge([("听", "v"), ("一", "m"), ("听", "v"), ("不", "d"), ("好", "a")])
    assert [w for w, _ in words] == ["听一听", "不好"]


def test_sandhi_does_not_modify_its_input():
    finals = ["u4", "a4"]
    assert tone_sandhi.apply_sandhi("不怕", "v", finals) == ["u2", "a4"]
    assert finals == ["u4", "a4"]


def test_g2pw_dir_falls_back_to_pypinyin():
    norm = zh.normalize("你好")
    assert zh.g2p(norm, g2pw_model_dir="/nonexistent/G2PWModel") == zh.g2p(norm)
