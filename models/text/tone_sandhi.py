"""Mandarin tone sandhi on jieba words (the PaddleSpeech rules GPT-SoVITS v2 applies).

Two entry points, used in this order by ``zh.g2p``:

* ``pre_merge(words)`` regroups jieba's (word, pos) list so that the sandhi rules see the right
  units: 不 + next word, A一A reduplication, 一 + next word, AA reduplication, runs of third tones,
  and a trailing 儿.
* ``apply_sandhi(word, pos, finals)`` rewrites the tone digits of one word's finals
  (``["ao3", "i5"]`` style): 不, 一, neutral tones, then third-tone sandhi.

Tones are the last character of each final; ``5`` is the neutral tone.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pypinyin import Style, lazy_pinyin

_DATA = Path(__file__).resolve().parent / "data"

# Sentence punctuation after which 一 keeps its first tone ("一，二，三").
_PUNCT = "：，；。？！“”‘’':,;.?!"


def _read_words(name: str) -> frozenset[str]:
    with open(_DATA / name, encoding="utf-8") as f:
        return frozenset(w for w in (line.strip() for line in f) if w and not w.startswith("#"))


@lru_cache(maxsize=1)
def _neutral_words() -> frozenset[str]:
    return _read_words("zh_must_neutral_tone_words.txt")


@lru_cache(maxsize=1)
def _not_neutral_words() -> frozenset[str]:
    return _read_words("zh_must_not_neutral_tone_words.txt")


def _jieba():
    from models.text.zh import jieba_tokenizer  # one quiet, shared tokenizer

    return jieba_tokenizer()


def _set_tone(final: str, tone: str) -> str:
    return final[:-1] + tone


def _finals_tone3(word: str) -> list[str]:
    return lazy_pinyin(word, neutral_tone_with_five=True, style=Style.FINALS_TONE3)


def _all_third_tone(finals: list[str]) -> bool:
    return all(f[-1] == "3" for f in finals)


def _is_reduplication(word: str) -> bool:
    return len(word) == 2 and word[0] == word[1]


def split_word(word: str) -> list[str]:
    """Cut a word in two around its shortest search-mode sub-word (e.g. 蒙古包 -> 蒙古 / 包)."""
    subwords = sorted(_jieba().cut_for_search(word), key=len)  # stable: first shortest wins
    first = subwords[0]
    if word.find(first) == 0:
        return [first, word[len(first):]]
    return [word[: -len(first)], first]


# ----------------------------------------------------------------------------------------------
# Per-word rules
# ----------------------------------------------------------------------------------------------


def _bu_sandhi(word: str, finals: list[str]) -> list[str]:
    if len(word) == 3 and word[1] == "不":  # 看不懂: 不 is neutral
        finals[1] = _set_tone(finals[1], "5")
        return finals
    for i, char in enumerate(word):  # 不 before a fourth tone is bu2 (不怕)
        if char == "不" and i + 1 < len(word) and finals[i + 1][-1] == "4":
            finals[i] = _set_tone(finals[i], "2")
    return finals


def _yi_sandhi(word: str, finals: list[str]) -> list[str]:
    if "一" in word and all(c.isnumeric() for c in word if c != "一"):
        return finals  # digit sequences keep yi1 (一零零, 二一零); str.isnumeric covers 二三...
    if len(word) == 3 and word[1] == "一" and word[0] == word[-1]:
        finals[1] = _set_tone(finals[1], "5")  # 看一看
    elif word.startswith("第一"):
        finals[1] = _set_tone(finals[1], "1")  # ordinal
    else:
        for i, char in enumerate(word):
            if char == "一" and i + 1 < len(word):
                if finals[i + 1][-1] == "4":
                    finals[i] = _set_tone(finals[i], "2")  # 一段
                elif word[i + 1] not in _PUNCT:
                    finals[i] = _set_tone(finals[i], "4")  # 一天
    return finals


def _neutral_sandhi(word: str, pos: str, finals: list[str]) -> list[str]:
    neutral, not_neutral = _neutral_words(), _not_neutral_words()
    # reduplicated nouns / verbs / adjectives: 奶奶, 试试
    for j in range(1, len(word)):
        if word[j] == word[j - 1] and pos[0] in "nva" and word not in not_neutral:
            finals[j] = _set_tone(finals[j], "5")

    ge_idx = word.find("个")
    last = word[-1] if word else ""
    if last and last in "吧呢哈啊呐噻嘛吖嗨呐哦哒额滴哩哟喽啰耶喔诶":
        finals[-1] = _set_tone(finals[-1], "5")  # modal particles
    elif last and last in "的地得":
        finals[-1] = _set_tone(finals[-1], "5")
    elif len(word) == 1 and word in "了着过" and pos in {"ul", "uz", "ug"}:
        finals[-1] = _set_tone(finals[-1], "5")  # aspect particles
    elif len(word) > 1 and last in "们子" and pos in {"r", "n"} and word not in not_neutral:
        finals[-1] = _set_tone(finals[-1], "5")
    elif len(word) > 1 and last in "上下里" and pos in {"s", "l", "f"}:
        finals[-1] = _set_tone(finals[-1], "5")  # 桌上, 家里
    elif len(word) > 1 and last in "来去" and word[-2] in "上下进出回过起开":
        finals[-1] = _set_tone(finals[-1], "5")  # 上来, 出去
    elif (ge_idx >= 1 and (word[ge_idx - 1].isnumeric() or word[ge_idx - 1] in "几有两半多各整每做是")) or word == "个":
        finals[ge_idx] = _set_tone(finals[ge_idx], "5")  # 个 as a measure word
    elif word in neutral or word[-2:] in neutral:
        finals[-1] = _set_tone(finals[-1], "5")

    # the same lexical check on each half of the word (e.g. 老实 inside a longer word)
    halves = split_word(word)
    cut = len(halves[0])
    parts = [finals[:cut], finals[cut:]]
    for i, half in enumerate(halves):
        if half in neutral or half[-2:] in neutral:
            parts[i][-1] = _set_tone(parts[i][-1], "5")
    return parts[0] + parts[1]


def _three_sandhi(word: str, finals: list[str]) -> list[str]:
    if len(word) == 2 and _all_third_tone(finals):
        finals[0] = _set_tone(finals[0], "2")
    elif len(word) == 3:
        halves = split_word(word)
        if _all_third_tone(finals):
            if len(halves[0]) == 2:  # 蒙古/包: both of the first two change
                finals[0] = _set_tone(finals[0], "2")
                finals[1] = _set_tone(finals[1], "2")
            elif len(halves[0]) == 1:  # 纸/老虎
                finals[1] = _set_tone(finals[1], "2")
        else:
            cut = len(halves[0])
            parts = [finals[:cut], finals[cut:]]
            for i, sub in enumerate(parts):
                if _all_third_tone(sub) and len(sub) == 2:  # 所有/人
                    sub[0] = _set_tone(sub[0], "2")
                elif i == 1 and not _all_third_tone(sub) and sub[0][-1] == "3" and parts[0][-1][-1] == "3":
                    parts[0][-1] = _set_tone(parts[0][-1], "2")  # 好/喜欢
            finals = parts[0] + parts[1]
    elif len(word) == 4:  # idioms: two words of two
        parts = [finals[:2], finals[2:]]
        for sub in parts:
            if _all_third_tone(sub):
                sub[0] = _set_tone(sub[0], "2")
        finals = parts[0] + parts[1]
    return finals


def apply_sandhi(word: str, pos: str, finals: list[str]) -> list[str]:
    """Tone-sandhi one word. ``finals`` (one per character, tone digit last) is not modified."""
    finals = list(finals)
    finals = _bu_sandhi(word, finals)
    finals = _yi_sandhi(word, finals)
    finals = _neutral_sandhi(word, pos, finals)
    return _three_sandhi(word, finals)


# ----------------------------------------------------------------------------------------------
# Regrouping jieba's output before the per-word rules
# ----------------------------------------------------------------------------------------------


def _merge_bu(seg: list[list[str]]) -> list[list[str]]:
    out: list[list[str]] = []
    last = ""
    for word, pos in seg:
        if last == "不":
            word = last + word
        if word != "不":
            out.append([word, pos])
        last = word
    if last == "不":  # a sentence-final 不
        out.append(["不", "d"])
    return out


def _merge_yi(seg: list[list[str]]) -> list[list[str]]:
    # 1) verb 一 verb (听 一 听 -> 听一听)
    out: list[list[str]] = []
    i = 0
    while i < len(seg):
        word, pos = seg[i]
        if i >= 1 and word == "一" and i + 1 < len(seg):
            prev = out[-1]
            nxt = seg[i + 1]
            if prev[0] == nxt[0] and prev[1] == "v" and nxt[1] == "v":
                out[-1] = [prev[0] + "一" + nxt[0], prev[1]]
                i += 2
                continue
        out.append([word, pos])
        i += 1
    # 2) a lone 一 absorbs the next word
    merged: list[list[str]] = []
    for word, pos in out:
        if merged and merged[-1][0] == "一":
            merged[-1][0] += word
        else:
            merged.append([word, pos])
    return merged


def _merge_reduplication(seg: list[list[str]]) -> list[list[str]]:
    out: list[list[str]] = []
    for word, pos in seg:
        if out and word == out[-1][0]:
            out[-1][0] += word
        else:
            out.append([word, pos])
    return out


def _merge_third_tones(seg: list[list[str]], whole_words: bool) -> list[list[str]]:
    """Join neighbours so that third-tone sandhi sees them together (merged length <= 3).

    whole_words=True: both words are entirely third tone; False: only the touching syllables are.
    """
    finals = [_finals_tone3(word) for word, _ in seg]
    out: list[list[str]] = []
    merged_last = [False] * len(seg)
    for i, (word, pos) in enumerate(seg):
        if i >= 1 and not merged_last[i - 1]:
            if whole_words:
                touching = _all_third_tone(finals[i - 1]) and _all_third_tone(finals[i])
            else:
                touching = finals[i - 1][-1][-1] == "3" and finals[i][0][-1] == "3"
            # a reduplication before stays apart: it needs the neutral-tone rule
            if touching and not _is_reduplication(seg[i - 1][0]) and len(seg[i - 1][0]) + len(word) <= 3:
                out[-1][0] += word
                merged_last[i] = True
                continue
        out.append([word, pos])
    return out


def _merge_er(seg: list[list[str]]) -> list[list[str]]:
    out: list[list[str]] = []
    for i, (word, pos) in enumerate(seg):
        if i >= 1 and word == "儿" and seg[i - 1][0] != "#":
            out[-1][0] += word
        else:
            out.append([word, pos])
    return out


def pre_merge(words: list[tuple[str, str]]) -> list[list[str]]:
    """Regroup jieba (word, pos) pairs for the sandhi rules. Returns [word, pos] lists.

    Like upstream, a merge step that fails (unusual input) is skipped rather than fatal.
    """
    seg = _merge_bu([[w, p] for w, p in words])
    seg = _try(_merge_yi, seg)
    seg = _merge_reduplication(seg)
    seg = _try(lambda s: _merge_third_tones(s, whole_words=True), seg)
    seg = _try(lambda s: _merge_third_tones(s, whole_words=False), seg)
    return _merge_er(seg)


def _try(step, seg):
    try:
        return step(seg)
    except Exception:  # noqa: BLE001 - upstream swallows these too; keep the unmerged words
        return seg
