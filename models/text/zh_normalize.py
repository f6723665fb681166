"""Chinese text normalisation: non-standard words (numbers, dates, ...) to Chinese characters.

Behaviour follows the PaddleSpeech-derived ``zh_normalization.TextNormalizer`` that GPT-SoVITS v2
uses, rule for rule and in the same order, because the order decides the reading: a date is
verbalised before a range, a range before a negative number, ``3+`` digits without a unit are read
digit by digit, and so on. Quirks that change the output are kept on purpose and marked "upstream
quirk" (the phones must match what the models were trained on).

Public API:
    split_sentences(text) -> list[str]      upstream ``TextNormalizer._split``
    normalize_sentence(sentence) -> str     upstream ``TextNormalizer.normalize_sentence``
    normalize(text) -> list[str]            both
    num2str(value) -> str                   "25.5" -> "二十五点五"
"""

from __future__ import annotations

import re
import string
from functools import lru_cache
from pathlib import Path

_DATA = Path(__file__).resolve().parent / "data"

# ----------------------------------------------------------------------------------------------
# Character-level conversions
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _trad_to_simp_table() -> dict[int, str]:
    """One-to-one traditional -> simplified character table (PaddleSpeech's, not OpenCC's:
    OpenCC converts phrases and would change some characters differently)."""
    table: dict[int, str] = {}
    with open(_DATA / "zh_trad2simp.tsv", encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            trad, simp = line.rstrip("\n").split("\t")
            table[ord(trad)] = simp
    return table


def traditional_to_simplified(text: str) -> str:
    return text.translate(_trad_to_simp_table())


# Full-width ASCII letters and digits -> half width. Upstream also lists U+3000 -> space, but as a
# str key, which str.translate never matches: the ideographic space is left alone (and is dropped
# later by the CJK filter), so it is not converted here either.
_FULL_TO_HALF = {ord(c) + 0xFEE0: ord(c) for c in string.ascii_letters + string.digits}


# ----------------------------------------------------------------------------------------------
# Number verbalisation
# ----------------------------------------------------------------------------------------------

DIGITS = "零一二三四五六七八九"
# power of ten -> unit character; readings group by 10^4 (万) and 10^8 (亿)
_UNITS = ((8, "亿"), (4, "万"), (3, "千"), (2, "百"), (1, "十"))


def verbalize_digit(value: str, alt_one: bool = False) -> str:
    """Digit by digit: "2024" -> "二零二四"; with ``alt_one`` 1 is read 幺 (phone numbers)."""
    out = "".join(DIGITS[int(d)] for d in value)
    return out.replace("一", "幺") if alt_one else out


def _cardinal_parts(value: str, use_zero: bool = True) -> list[str]:
    # ``value`` may carry leading zeros (the low part of a split number): one 零 stands for them.
    stripped = value.lstrip("0")
    if not stripped:
        return []
    if len(stripped) == 1:
        digit = DIGITS[int(stripped)]
        return [DIGITS[0], digit] if use_zero and len(stripped) < len(value) else [digit]
    power, unit = next((p, u) for p, u in _UNITS if p < len(stripped))
    return _cardinal_parts(value[:-power]) + [unit] + _cardinal_parts(value[-power:])


def verbalize_cardinal(value: str) -> str:
    """Integer reading: "105" -> "一百零五", "12" -> "十二" (a leading 一十 is shortened)."""
    if not value:
        return ""
    value = value.lstrip("0")
    if not value:
        return DIGITS[0]
    parts = _cardinal_parts(value)
    if len(parts) >= 2 and parts[0] == "一" and parts[1] == "十":
        parts = parts[1:]
    return "".join(parts)


def num2str(value: str) -> str:
    """Integer or decimal: "25.5" -> "二十五点五", ".5" -> "零点五"."""
    integer, _, decimal = value.partition(".")
    if "." in decimal:
        raise ValueError(f"number {value!r} has more than one decimal point")
    result = verbalize_cardinal(integer)
    # upstream quirk: trailing zeros collapse to a single zero ("3.20" -> 三点二零, "3.0" -> 三点零)
    decimal = decimal.rstrip("0") + "0" if decimal.endswith("0") else decimal
    if decimal:
        result = (result or DIGITS[0]) + "点" + verbalize_digit(decimal)
    return result


# ----------------------------------------------------------------------------------------------
# Rules: one compiled pattern + one replacement function each, applied in upstream order
# ----------------------------------------------------------------------------------------------

# Dates: "2024年3月5日", "24年", "3月5号" needs the year.
RE_DATE = re.compile(r"(\d{4}|\d{2})年((0?[1-9]|1[0-2])月)?(((0?[1-9])|((1|2)[0-9])|30|31)([日号]))?")


def _date(m: re.Match) -> str:
    year, month, day, day_suffix = m.group(1), m.group(3), m.group(5), m.group(9)
    out = verbalize_digit(year) + "年"
    if month:
        out += verbalize_cardinal(month) + "月"
    if day:
        out += verbalize_cardinal(day) + day_suffix
    return out


# Dates written 2024-03-05, 2024/03/05, 2024.03.05 or with spaces (same separator twice).
RE_DATE2 = re.compile(r"(\d{4})([- /.])(0[1-9]|1[012])\2(0[1-9]|[12][0-9]|3[01])")


def _date2(m: re.Match) -> str:
    return (
        verbalize_digit(m.group(1)) + "年"
        + verbalize_cardinal(m.group(3)) + "月"
        + verbalize_cardinal(m.group(4)) + "日"
    )


_CLOCK = r"([0-1]?[0-9]|2[0-3]):([0-5][0-9])(:([0-5][0-9]))?"
RE_TIME = re.compile(_CLOCK)
RE_TIME_RANGE = re.compile(_CLOCK + r"(~|-)" + _CLOCK)


def _clock_part(num: str) -> str:
    # minutes/seconds keep a spoken leading zero: 08 -> 零八
    out = num2str(num.lstrip("0"))
    return DIGITS[0] + out if num.startswith("0") else out


def _clock(hour: str, minute: str, second: str | None, half_if: str) -> str:
    out = num2str(hour) + "点"
    if minute.lstrip("0"):
        out += "半" if int(half_if) == 30 else _clock_part(minute) + "分"
    if second and second.lstrip("0"):
        out += _clock_part(second) + "秒"
    return out


def _time(m: re.Match) -> str:
    first = _clock(m.group(1), m.group(2), m.group(4), half_if=m.group(2))
    if m.re.groups <= 5:
        return first
    # upstream quirk: the end time says 半 when the START minute is 30
    return first + "至" + _clock(m.group(6), m.group(7), m.group(9), half_if=m.group(2))


_NUM = r"((-?)((\d+)(\.\d+)?)|(\.(\d+)))"
_RANGE_UNITS = r"(%|°C|℃|度|摄氏度|cm2|cm²|cm3|cm³|cm|db|ds|kg|km|m2|m²|m³|m3|ml|m|mm|s)"
# "10%~20%", "3kg~5kg": the tilde reads 至 (the numbers are verbalised by later rules)
RE_TO_RANGE = re.compile(_NUM + _RANGE_UNITS + "[~]" + _NUM + _RANGE_UNITS)

# Temperatures: a minus sign reads 零下.
RE_TEMPERATURE = re.compile(r"(-?)(\d+(\.\d+)?)(°C|℃|度|摄氏度)")


def _temperature(m: re.Match) -> str:
    sign = "零下" if m.group(1) else ""
    unit = "摄氏度" if m.group(4) == "摄氏度" else "度"
    return sign + num2str(m.group(2)) + unit


# Unit abbreviations, replaced as plain substrings in this order. Upstream quirk: "m" comes
# before "mm" (so "mm" reads 米米) and a bare "s" anywhere reads 秒.
MEASURES = (
    ("cm2", "平方厘米"), ("cm²", "平方厘米"), ("cm3", "立方厘米"), ("cm³", "立方厘米"),
    ("cm", "厘米"), ("db", "分贝"), ("ds", "毫秒"), ("kg", "千克"), ("km", "千米"),
    ("m2", "平方米"), ("m²", "平方米"), ("m³", "立方米"), ("m3", "立方米"), ("ml", "毫升"),
    ("m", "米"), ("mm", "毫米"), ("s", "秒"),
)


def _measures(sentence: str) -> str:
    for abbr, word in MEASURES:
        sentence = sentence.replace(abbr, word)
    return sentence


# Arithmetic "a+b", "x=3", "2²+1": operator words; applied until nothing matches.
_SUP = "[⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ]*"
_OPERAND = r"((-?)((\d+)(\.\d+)?" + _SUP + r")|(\.\d+" + _SUP + r")|([A-Za-z]" + _SUP + r"))"
RE_ASMD = re.compile(_OPERAND + r"([\+\-\×÷=])" + _OPERAND)
_OPERATORS = {"+": "加", "-": "减", "×": "乘", "÷": "除", "=": "等于"}


def _asmd(m: re.Match) -> str:
    return m.group(1) + _OPERATORS[m.group(8)] + m.group(9)


RE_POWER = re.compile(r"[⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ]+")
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ", "0123456789xyn")


def _power(m: re.Match) -> str:
    # the exponent stays in ASCII digits here; the number rules below read it
    return "的" + m.group(0).translate(_SUPERSCRIPTS) + "次方"


RE_FRAC = re.compile(r"(-?)(\d+)/(\d+)")


def _frac(m: re.Match) -> str:
    sign = "负" if m.group(1) else ""
    return f"{sign}{num2str(m.group(3))}分之{num2str(m.group(2))}"


RE_PERCENTAGE = re.compile(r"(-?)(\d+(\.\d+)?)%")


def _percentage(m: re.Match) -> str:
    sign = "负" if m.group(1) else ""
    return f"{sign}百分之{num2str(m.group(2))}"


# Phone numbers: mobile (mainland prefixes), landline with area code, 400 numbers.
RE_MOBILE_PHONE = re.compile(r"(?<!\d)((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})(?!\d)")
RE_TELEPHONE = re.compile(r"(?<!\d)((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})(?!\d)")
RE_NATIONAL_UNIFORM_NUMBER = re.compile(r"(400)(-)?\d{3}(-)?\d{4}")


def _mobile(m: re.Match) -> str:
    return "，".join(verbalize_digit(part, alt_one=True) for part in m.group(0).strip("+").split())


def _landline(m: re.Match) -> str:
    return "，".join(verbalize_digit(part, alt_one=True) for part in m.group(0).split("-"))


# Number ranges "1-3", "1.5~2": read 到 (not preceded/followed by another number or operator).
RE_RANGE = re.compile(
    r"(?<![\d\+\-\×÷=])((-?)((\d+)(\.\d+)?))[-~]((-?)((\d+)(\.\d+)?))(?![\d\+\-\×÷=])"
)
RE_NUMBER = re.compile(r"(-?)((\d+)(\.\d+)?)|(\.(\d+))")


def _number(m: re.Match) -> str:
    pure_decimal = m.group(5)
    if pure_decimal:
        return num2str(pure_decimal)
    return ("负" if m.group(1) else "") + num2str(m.group(2))


def _range(m: re.Match) -> str:
    return RE_NUMBER.sub(_number, m.group(1)) + "到" + RE_NUMBER.sub(_number, m.group(6))


RE_INTEGER = re.compile(r"(-)(\d+)")


def _negative(m: re.Match) -> str:
    return "负" + num2str(m.group(2))


# Versions / IP-like numbers with 3+ parts: every digit read alone, dots read 点.
RE_VERSION_NUM = re.compile(r"((\d+)(\.\d+)(\.\d+)?(\.\d+)+)")


def _version(m: re.Match) -> str:
    return "".join("点" if c == "." else num2str(c) for c in m.group(1))


RE_DECIMAL_NUM = re.compile(r"(-?)((\d+)(\.\d+))|(\.(\d+))")

# Measure words after a number ("3个", "2元"): 二 becomes 两. The alternation is upstream's list
# verbatim (a data table; its order decides nothing here because the matched unit is copied).
COM_QUANTIFIERS = (
    "(处|台|架|枚|趟|幅|平|方|堵|间|床|株|批|项|例|列|篇|栋|注|亩|封|艘|把|目|套|段|人|所|朵|匹|张|座|回|场|尾|条|个|首|阙|阵|网|炮|顶|丘|棵|只|支|袭|辆|挑|担|颗|壳|窠|曲|墙|群|腔|砣|座|客|贯|扎|捆|刀|令|打|手|罗|坡|山|岭|江|溪|钟|队|单|双|对|出|口|头|脚|板|跳|枝|件|贴|针|线|管|名|位|身|堂|课|本|页|家|户|层|丝|毫|厘|分|钱|两|斤|担|铢|石|钧|锱|忽|(千|毫|微)克|毫|厘|(公)分|分|寸|尺|丈|里|寻|常|铺|程|(千|分|厘|毫|微)米|米|撮|勺|合|升|斗|石|盘|碗|碟|叠|桶|笼|盆|盒|杯|钟|斛|锅|簋|篮|盘|桶|罐|瓶|壶|卮|盏|箩|箱|煲|啖|袋|钵|年|月|日|季|刻|时|周|天|秒|分|小时|旬|纪|岁|世|更|夜|春|夏|秋|冬|代|伏|辈|丸|泡|粒|颗|幢|堆|条|根|支|道|面|片|张|颗|块|元|(亿|千万|百万|万|千|百)|(亿|千万|百万|万|千|百|美|)元|(亿|千万|百万|万|千|百|十|)吨|(亿|千万|百万|万|千|百|)块|角|毛|分)"
)
RE_POSITIVE_QUANTIFIERS = re.compile(r"(\d+)([多余几\+])?" + COM_QUANTIFIERS)


def _quantifier(m: re.Match) -> str:
    number = num2str(m.group(1))
    number = "两" if number == "二" else number
    approx = "多" if m.group(2) == "+" else (m.group(2) or "")
    return number + approx + m.group(3)


# Any remaining run of 3+ digits is an identifier: read digit by digit, 1 as 幺.
RE_DEFAULT_NUM = re.compile(r"\d{3}\d*")


def _default_num(m: re.Match) -> str:
    return verbalize_digit(m.group(0), alt_one=True)


# Final symbol readings (after the number rules), in upstream order.
_POST_REPLACEMENTS = (
    ("/", "每"),
    *zip("①②③④⑤⑥⑦⑧⑨⑩", "一二三四五六七八九十"),
    ("α", "阿尔法"), ("β", "贝塔"), ("γ", "伽玛"), ("Γ", "伽玛"), ("δ", "德尔塔"), ("Δ", "德尔塔"),
    ("ε", "艾普西龙"), ("ζ", "捷塔"), ("η", "依塔"), ("θ", "西塔"), ("Θ", "西塔"), ("ι", "艾欧塔"),
    ("κ", "喀帕"), ("λ", "拉姆达"), ("Λ", "拉姆达"), ("μ", "缪"), ("ν", "拗"), ("ξ", "克西"),
    ("Ξ", "克西"), ("ο", "欧米克伦"), ("π", "派"), ("Π", "派"), ("ρ", "肉"), ("ς", "西格玛"),
    ("Σ", "西格玛"), ("σ", "西格玛"), ("τ", "套"), ("υ", "宇普西龙"), ("φ", "服艾"), ("Φ", "服艾"),
    ("χ", "器"), ("ψ", "普赛"), ("Ψ", "普赛"), ("ω", "欧米伽"), ("Ω", "欧米伽"),
    ("+", "加"), ("-", "减"), ("×", "乘"), ("÷", "除"), ("=", "等"),
)
_POST_FILTER = re.compile(r"[-——《》【】<=>{}()（）#&@“”^_|\\]")

# ----------------------------------------------------------------------------------------------
# Sentence splitting and the full pipeline
# ----------------------------------------------------------------------------------------------

_PRE_FILTER = re.compile(r"[——《》【】<>{}()（）#&@“”^_|\\]")
_SENTENCE_END = re.compile(r"([：、，；。？！,;?!][”’]?)")


def split_sentences(text: str) -> list[str]:
    """Drop spaces and bracket/quote symbols, then cut after sentence punctuation."""
    text = _PRE_FILTER.sub("", text.replace(" ", ""))
    text = _SENTENCE_END.sub(r"\1\n", text).strip()
    return [s.strip() for s in re.split(r"\n+", text)]


def normalize_sentence(sentence: str) -> str:
    s = traditional_to_simplified(sentence).translate(_FULL_TO_HALF)
    s = RE_DATE.sub(_date, s)
    s = RE_DATE2.sub(_date2, s)
    s = RE_TIME_RANGE.sub(_time, s)  # ranges before single times
    s = RE_TIME.sub(_time, s)
    s = RE_TO_RANGE.sub(lambda m: m.group(0).replace("~", "至"), s)
    s = RE_TEMPERATURE.sub(_temperature, s)
    s = _measures(s)
    while RE_ASMD.search(s):
        s = RE_ASMD.sub(_asmd, s)
    s = RE_POWER.sub(_power, s)
    s = RE_FRAC.sub(_frac, s)
    s = RE_PERCENTAGE.sub(_percentage, s)
    s = RE_MOBILE_PHONE.sub(_mobile, s)
    s = RE_TELEPHONE.sub(_landline, s)
    s = RE_NATIONAL_UNIFORM_NUMBER.sub(_landline, s)
    s = RE_RANGE.sub(_range, s)
    s = RE_INTEGER.sub(_negative, s)
    s = RE_VERSION_NUM.sub(_version, s)
    s = RE_DECIMAL_NUM.sub(_number, s)
    s = RE_POSITIVE_QUANTIFIERS.sub(_quantifier, s)
    s = RE_DEFAULT_NUM.sub(_default_num, s)
    s = RE_NUMBER.sub(_number, s)
    for old, new in _POST_REPLACEMENTS:
        s = s.replace(old, new)
    return _POST_FILTER.sub("", s)


def normalize(text: str) -> list[str]:
    """Text -> normalised sentences (punctuation still full width, nothing filtered yet)."""
    return [normalize_sentence(s) for s in split_sentences(text)]
