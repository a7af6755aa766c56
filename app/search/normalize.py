"""String normalisation for FHIR string search (R4 search.html §3.1.1.5.5) and pinyin name keys.

FHIR string search is case- and accent-insensitive and matches the start of the stored value.
Storage compares normalised strings with a prefix match, so both the stored values and the
query go through `normalize_string`:

1. NFKC, which turns full-width ASCII (`ＺＨＡＮＧ`, `１３８`) into half-width and the ideographic
   space into a space, and maps CJK compatibility ideographs to the unified ones;
2. case folding (`ß` → `ss`);
3. accents removed: NFKD, drop the combining diacritical marks (Latin, Greek, Cyrillic), NFC
   again. Only the diacritic blocks are dropped, so Japanese voiced kana (が) and Hangul keep
   their identity; Chinese characters pass through unchanged;
4. runs of whitespace folded to one space, ends trimmed.

Pinyin keys for Chinese personal names (Patient, Practitioner, RelatedPerson, Person: `name`,
`family`, `given`, `phonetic`) let `name=zhangsan`, `name=zhang`, `name=zhang san`,
`given=san` and `family=shan` (单) find Chinese names. Stored forms, all lower case without
tone marks, `ü` written `v` as pypinyin does (吕 → `lv`):

- `family_pinyin(family)`: the surname read as a surname (单 → `shan`, 欧阳 → `ouyang`), one
  word: `family=shan`, `family=ouyang`.
- `given_pinyin(given)`: the given name as one word (雄信 → `xiongxin`); prefix matching then
  serves `given=xiong` too.
- `name_pinyin_forms(family, given)`: for the whole name, family then given:
  `shanxiongxin` (whole name as typed into most Chinese HIS search boxes; its prefixes cover
  `shan`, `shanx`…), `shan xiongxin` (surname and given name as separate words, the passport
  form), and the given name alone `xiongxin`. Forms that are a prefix of another stored form
  are dropped, as the prefix match already finds them.

Heteronyms: each character gets one reading. The surname takes its reading as a surname from
`SURNAME_READINGS` (pypinyin 0.55 has no surname mode; its phrase dictionary already reads
尉迟/万俟/长孙 right, but not 单, 曾, 解, 仇…). The given name takes pypinyin's phrase-aware
default reading. No reading combinations are generated: a name never expands into more than
three stored strings, and a rare reading that is not the default is not found by pinyin.

When only `HumanName.text` is known, `split_chinese_name` takes a known two-character compound
surname (欧阳, 诸葛, 尉迟…) when the name has more than two characters, else the first
character. Names written with a middle dot (阿卜杜拉·买买提, transliterated minority and
foreign names) have no Han surname: each dot-separated part is a word.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

from pypinyin import lazy_pinyin

__all__ = [
    "COMPOUND_SURNAMES",
    "SURNAME_READINGS",
    "family_pinyin",
    "given_pinyin",
    "has_han",
    "name_pinyin_forms",
    "normalize_string",
    "split_chinese_name",
    "text_name_pinyin_forms",
]

_COMBINING_MARKS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_NAME_DOTS = re.compile("[·•・‧.．]")


# Displays, units, city names and names recur across records; a hit costs a tenth of a miss.
@lru_cache(maxsize=65536)
def normalize_string(text: str) -> str:
    """Case-folded, accent-free, whitespace-folded form for string search (see module doc)."""
    if text.isascii():
        return " ".join(text.lower().split())
    folded = unicodedata.normalize("NFKC", text).casefold()
    stripped = _COMBINING_MARKS.sub("", unicodedata.normalize("NFKD", folded))
    return " ".join(unicodedata.normalize("NFC", stripped).split())


def has_han(text: str) -> bool:
    return _HAN.search(text) is not None


# Readings of characters in the family-name position that differ from pypinyin's default for
# the character (traditional forms too: records from Hong Kong, Macau and Taiwan use them).
SURNAME_READINGS: dict[str, str] = {
    "单": "shan", "單": "shan",
    "曾": "zeng",
    "解": "xie",
    "仇": "qiu",
    "朴": "piao",
    "区": "ou", "區": "ou",
    "查": "zha",
    "盖": "ge", "蓋": "ge",
    "乐": "yue", "樂": "yue",
    "覃": "qin",
    "缪": "miao", "繆": "miao",
    "召": "shao",
    "繁": "po",
    "员": "yun", "員": "yun",
    "种": "chong", "種": "chong",
    "秘": "bi",
    "黑": "he",
    "宁": "ning", "寧": "ning",
    "翟": "zhai",
    "华": "hua", "華": "hua",
    "任": "ren",
    "纪": "ji", "紀": "ji",
    "隗": "wei",
    "藏": "zang",
    "折": "she",
    "句": "gou",
    "阚": "kan", "闞": "kan",
    "洗": "xian",
    "蕃": "pi",
    "薄": "bo",
    "祭": "zhai",
    "炅": "gui",
    "角": "jue",
    "能": "nai",
    "都": "du",
    "佴": "nai",
    "粘": "nian",
    "便": "pian",
    "长": "chang", "長": "chang",
    "沈": "shen",
    "柏": "bai",
    "燕": "yan",
    "叶": "ye", "葉": "ye",
    "尉": "wei",
    "贲": "ben", "賁": "ben",
    "应": "ying", "應": "ying",
    "过": "guo", "過": "guo",
    "恽": "yun", "惲": "yun",
    "谌": "chen", "諶": "chen",
}

# Two-character surnames (复姓) with their readings as surnames.
COMPOUND_SURNAMES: dict[str, str] = {
    "欧阳": "ouyang", "歐陽": "ouyang",
    "司马": "sima", "司馬": "sima",
    "诸葛": "zhuge", "諸葛": "zhuge",
    "上官": "shangguan",
    "尉迟": "yuchi", "尉遲": "yuchi",
    "万俟": "moqi", "萬俟": "moqi",
    "长孙": "zhangsun", "長孫": "zhangsun",
    "东方": "dongfang", "東方": "dongfang",
    "皇甫": "huangfu",
    "令狐": "linghu",
    "慕容": "murong",
    "夏侯": "xiahou",
    "公孙": "gongsun", "公孫": "gongsun",
    "宇文": "yuwen",
    "司徒": "situ",
    "司空": "sikong",
    "端木": "duanmu",
    "独孤": "dugu", "獨孤": "dugu",
    "南宫": "nangong", "南宮": "nangong",
    "西门": "ximen", "西門": "ximen",
    "东郭": "dongguo", "東郭": "dongguo",
    "轩辕": "xuanyuan", "軒轅": "xuanyuan",
    "澹台": "tantai", "澹臺": "tantai",
    "闻人": "wenren", "聞人": "wenren",
    "赫连": "helian", "赫連": "helian",
    "呼延": "huyan",
    "申屠": "shentu",
    "太叔": "taishu",
    "宗政": "zongzheng",
    "濮阳": "puyang", "濮陽": "puyang",
    "淳于": "chunyu",
    "单于": "chanyu", "單于": "chanyu",
    "钟离": "zhongli", "鍾離": "zhongli",
    "公冶": "gongye",
    "公羊": "gongyang",
    "公西": "gongxi",
    "公良": "gongliang",
    "仲孙": "zhongsun", "仲孫": "zhongsun",
    "叔孙": "shusun", "叔孫": "shusun",
    "鲜于": "xianyu", "鮮于": "xianyu",
    "闾丘": "lvqiu", "閭丘": "lvqiu",
    "亓官": "qiguan",
    "子车": "ziju", "子車": "ziju",
    "颛孙": "zhuansun", "顓孫": "zhuansun",
    "巫马": "wuma", "巫馬": "wuma",
    "漆雕": "qidiao",
    "乐正": "yuezheng", "樂正": "yuezheng",
    "壤驷": "rangsi", "壤駟": "rangsi",
    "拓跋": "tuoba",
    "夹谷": "jiagu", "夾谷": "jiagu",
    "宰父": "zaifu",
    "谷梁": "guliang", "穀梁": "guliang",
    "段干": "duangan",
    "百里": "baili",
    "南门": "nanmen", "南門": "nanmen",
    "东门": "dongmen", "東門": "dongmen",
    "羊舌": "yangshe",
    "微生": "weisheng",
    "梁丘": "liangqiu",
    "左丘": "zuoqiu",
    "第五": "diwu",
}


def _words(text: str) -> list[str]:
    """Pinyin syllables of the Han characters, other runs (Latin letters, digits) kept as
    normalised words; punctuation and spaces separate words and are dropped."""
    out = []
    for chunk in lazy_pinyin(text):
        for word in normalize_string(chunk).split():
            word = "".join(ch for ch in word if ch.isalnum())
            if word:
                out.append(word)
    return out


# pypinyin takes ~10 µs a name and the same names recur across a hospital's records.
@lru_cache(maxsize=16384)
def family_pinyin(family: str) -> str:
    """A family name read as a surname, one lower-case word: 单 → shan, 欧阳 → ouyang."""
    family = normalize_string(family)
    if not family:
        return ""
    head = COMPOUND_SURNAMES.get(family[:2])
    if head is not None:
        return head + "".join(_words(family[2:]))
    first = SURNAME_READINGS.get(family[0])
    if first is not None:
        return first + "".join(_words(family[1:]))
    return "".join(_words(family))


@lru_cache(maxsize=16384)
def given_pinyin(given: str) -> str:
    """A given name in pinyin, one lower-case word: 雄信 → xiongxin."""
    return "".join(_words(normalize_string(given)))


def split_chinese_name(text: str) -> tuple[str, str]:
    """(family, given) of a Chinese name written in full, e.g. 欧阳娜娜 → (欧阳, 娜娜)."""
    name = "".join(normalize_string(text).split())
    if len(name) > 2 and name[:2] in COMPOUND_SURNAMES:
        return name[:2], name[2:]
    return name[:1], name[1:]


@lru_cache(maxsize=16384)
def name_pinyin_forms(family: str | None, given: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Stored pinyin forms of a name with known parts (see the module doc for the forms)."""
    fam = family_pinyin(family) if family and has_han(family) else ""
    giv = "".join(given_pinyin(g) for g in given if g and has_han(g))
    if not fam and not giv:
        return ()
    return _without_prefixes((fam + giv, f"{fam} {giv}".strip(), giv, fam))


@lru_cache(maxsize=16384)
def text_name_pinyin_forms(text: str) -> tuple[str, ...]:
    """Stored pinyin forms of a name known only as text (HumanName.text)."""
    if not has_han(text):
        return ()
    if _NAME_DOTS.search(text):
        parts = [p for p in (given_pinyin(p) for p in _NAME_DOTS.split(text)) if p]
        return _without_prefixes(("".join(parts), " ".join(parts), *parts))
    family, given = split_chinese_name(text)
    return name_pinyin_forms(family, (given,) if given else ())


def _without_prefixes(forms: Iterable[str]) -> tuple[str, ...]:
    unique = list(dict.fromkeys(f for f in forms if f))
    return tuple(f for f in unique if not any(o != f and o.startswith(f) for o in unique))
