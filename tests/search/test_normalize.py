"""String normalisation and pinyin keys for Chinese names (app.search.normalize)."""

from __future__ import annotations

import pytest
from pypinyin import lazy_pinyin

from app.search.normalize import (
    COMPOUND_SURNAMES,
    SURNAME_READINGS,
    family_pinyin,
    given_pinyin,
    name_pinyin_forms,
    normalize_string,
    split_chinese_name,
    text_name_pinyin_forms,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Zhang San", "zhang san"),
        ("  ZHANG\t\nSan  ", "zhang san"),
        ("ＺＨＡＮＧ　ＳＡＮ", "zhang san"),  # full-width letters and ideographic space
        ("１３８００１３８０００", "13800138000"),
        ("José Müller", "jose muller"),
        ("Straße", "strasse"),
        ("Ōuyáng Nànà", "ouyang nana"),
        ("张三", "张三"),
        ("北京市 朝阳区", "北京市 朝阳区"),
        ("白细胞计数(WBC)", "白细胞计数(wbc)"),
        ("", ""),
    ],
)
def test_normalize_string_folds_case_accents_width_and_whitespace(
    text: str, expected: str
) -> None:
    assert normalize_string(text) == expected


def test_normalize_string_keeps_japanese_voiced_kana_and_hangul() -> None:
    # Only diacritics of alphabetic scripts are accents; が and 한 are distinct letters.
    assert normalize_string("がぎぐ 김한국") == "がぎぐ 김한국"


def test_normalize_string_maps_cjk_compatibility_ideographs_to_unified_ones() -> None:
    assert normalize_string("\uf900") == "\u8c48"


@pytest.mark.parametrize(
    ("surname", "reading"),
    [
        ("单", "shan"), ("曾", "zeng"), ("解", "xie"), ("仇", "qiu"), ("朴", "piao"),
        ("区", "ou"), ("查", "zha"), ("盖", "ge"), ("乐", "yue"), ("覃", "qin"),
        ("缪", "miao"), ("召", "shao"), ("繁", "po"), ("员", "yun"), ("种", "chong"),
        ("秘", "bi"), ("黑", "he"), ("宁", "ning"), ("翟", "zhai"), ("华", "hua"),
        ("任", "ren"), ("纪", "ji"), ("隗", "wei"),
        ("尉迟", "yuchi"), ("万俟", "moqi"), ("长孙", "zhangsun"), ("欧阳", "ouyang"),
        ("單", "shan"), ("區", "ou"),
    ],
)
def test_family_name_is_read_as_a_surname(surname: str, reading: str) -> None:
    assert family_pinyin(surname) == reading


def test_surname_table_overrides_pypinyin_defaults_for_common_surnames() -> None:
    # Every entry is a single character with a one-syllable reading; compounds live apart.
    assert all(len(ch) == 1 and reading.isalpha() for ch, reading in SURNAME_READINGS.items())
    assert all(len(name) == 2 for name in COMPOUND_SURNAMES)
    differing = [ch for ch, reading in SURNAME_READINGS.items() if lazy_pinyin(ch) != [reading]]
    assert set("单曾解仇朴区查盖乐覃缪翟") <= set(differing)


def test_surname_reading_applies_only_in_the_family_position() -> None:
    assert given_pinyin("单纯") == "danchun"
    assert family_pinyin("单") == "shan"
    assert given_pinyin("曾经") == "cengjing"
    assert given_pinyin("乐乐") == "lele"


def test_given_name_uses_phrase_aware_readings() -> None:
    assert given_pinyin("雄信") == "xiongxin"
    assert given_pinyin("长乐") == "changle"
    assert given_pinyin("娜娜") == "nana"


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("张三", ("张", "三")),
        ("单雄信", ("单", "雄信")),
        ("欧阳娜娜", ("欧阳", "娜娜")),
        ("诸葛亮", ("诸葛", "亮")),
        ("尉迟恭", ("尉迟", "恭")),
        ("欧阳", ("欧", "阳")),  # two characters: a single surname and a given name
        ("张 三", ("张", "三")),
    ],
)
def test_split_chinese_name_takes_a_compound_surname_or_the_first_character(
    text: str, parts: tuple[str, str]
) -> None:
    assert split_chinese_name(text) == parts


def test_name_forms_make_whole_part_and_spaced_pinyin_searchable() -> None:
    forms = name_pinyin_forms("张", ("三",))

    assert forms == ("zhangsan", "zhang san", "san")
    # `name=zhang` and `name=zhangs` find it by prefix; the surname alone is not stored twice.
    assert any(f.startswith("zhang") for f in forms)
    assert "zhang" not in forms


def test_name_forms_use_the_surname_reading_for_单雄信() -> None:
    assert name_pinyin_forms("单", ("雄信",)) == ("shanxiongxin", "shan xiongxin", "xiongxin")


def test_name_forms_for_a_compound_surname() -> None:
    assert name_pinyin_forms("欧阳", ("娜娜",)) == ("ouyangnana", "ouyang nana", "nana")


def test_text_only_name_is_split_before_reading() -> None:
    assert text_name_pinyin_forms("单雄信") == ("shanxiongxin", "shan xiongxin", "xiongxin")
    assert text_name_pinyin_forms("欧阳娜娜") == ("ouyangnana", "ouyang nana", "nana")
    assert text_name_pinyin_forms("万俟卨") == ("moqixie", "moqi xie", "xie")


def test_dotted_minority_name_has_no_han_surname_split() -> None:
    forms = text_name_pinyin_forms("买买提·吐尔逊")

    assert forms == ("maimaitituerxun", "maimaiti tuerxun", "tuerxun")


def test_names_without_han_characters_get_no_pinyin_forms() -> None:
    assert name_pinyin_forms("Smith", ("John",)) == ()
    assert text_name_pinyin_forms("John Smith") == ()


def test_mixed_latin_and_han_given_name_keeps_the_latin_word() -> None:
    assert name_pinyin_forms("李", ("Anna娜",)) == ("liannana", "li annana", "annana")


def test_heteronyms_never_multiply_the_stored_forms() -> None:
    # 乐, 长, 朝, 重 all have two common readings; a name still yields at most three forms.
    for name in ("乐长朝", "曾乐乐", "长孙重", "单单单"):
        assert len(text_name_pinyin_forms(name)) <= 3


def test_a_surname_alone_yields_its_reading() -> None:
    assert name_pinyin_forms("曾") == ("zeng",)
