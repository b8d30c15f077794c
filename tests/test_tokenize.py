"""Each tokenizer on mixed scripts, normal forms and widths, and the checks on its output."""

import os
import subprocess
import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embcli import tokenize
from embcli.errors import EmbcliError, QueryError
from embcli.tokenize import Tokenizer, review_tokens

DEFAULT = Tokenizer("default")
WHITESPACE = Tokenizer("whitespace")
JIEBA = Tokenizer("jieba")


def nfd(text):
    return unicodedata.normalize("NFD", text)


# (text, default tokens, whitespace tokens)
MIXED = [
    pytest.param(
        "我用iPhone15拍了２０２４年的照片，共3.5MB。",
        ["我", "用", "iphone15", "拍", "了", "2024", "年", "的", "照", "片", "共", "3.5", "mb"],
        ["我用iphone15拍了2024年的照片,共3.5mb。"],
        id="chinese-latin-digits",
    ),
    pytest.param(
        "東京でコンピューターを買いました",
        ["東", "京", "で", "コンピューター", "を", "買", "い", "ま", "し", "た"],
        ["東京でコンピューターを買いました"],
        id="japanese-kana",
    ),
    pytest.param(
        "ｺﾝﾋﾟｭｰﾀｰとテレビ・ラジオ",
        ["コンピューター", "と", "テレビ", "ラジオ"],
        ["コンピューターとテレビ・ラジオ"],
        id="half-width-katakana",
    ),
    pytest.param(
        "한국어 텍스트를 처리합니다. LG전자 3명",
        ["한국어", "텍스트를", "처리합니다", "lg전자", "3명"],
        ["한국어", "텍스트를", "처리합니다.", "lg전자", "3명"],
        id="korean",
    ),
    pytest.param(
        nfd("한국어 텍스트를 처리합니다. LG전자 3명"),
        ["한국어", "텍스트를", "처리합니다", "lg전자", "3명"],
        ["한국어", "텍스트를", "처리합니다.", "lg전자", "3명"],
        id="korean-decomposed-jamo",
    ),
    pytest.param(
        "كَتَبَ الطالبُ الدرسَ، في عام ٢٠٢٤",
        ["كَتَبَ", "الطالبُ", "الدرسَ", "في", "عام", "٢٠٢٤"],
        ["كَتَبَ", "الطالبُ", "الدرسَ،", "في", "عام", "٢٠٢٤"],
        id="arabic-with-vowel-marks",
    ),
    pytest.param(
        "Café naïve résumé, Ångström",
        ["café", "naïve", "résumé", "ångström"],
        ["café", "naïve", "résumé,", "ångström"],
        id="accented-latin-nfc",
    ),
    pytest.param(
        nfd("Café naïve résumé, Ångström"),
        ["café", "naïve", "résumé", "ångström"],
        ["café", "naïve", "résumé,", "ångström"],
        id="accented-latin-nfd",
    ),
    pytest.param(
        "ＨＥＬＬＯ\u3000ｗｏｒｌｄ　１２３",
        ["hello", "world", "123"],
        ["hello", "world", "123"],
        id="full-width-latin",
    ),
    pytest.param(
        "zero\u200bwidth soft\u00adhyphen\ufeff tab\tand\x07bell",
        ["zerowidth", "softhyphen", "tab", "and", "bell"],
        ["zerowidth", "softhyphen", "tab", "and", "bell"],
        id="format-and-control-characters",
    ),
    pytest.param(
        "葛\U000e0100城 和 葛城",
        ["葛", "城", "和", "葛", "城"],
        ["葛城", "和", "葛城"],
        id="ideographic-variation-selector",
    ),
    pytest.param(
        "हिन्दी भाषा",
        ["हिन्दी", "भाषा"],
        ["हिन्दी", "भाषा"],
        id="devanagari-vowel-signs",
    ),
    pytest.param(
        "don't stop: web2.0 costs 1,000 or 5.00",
        ["don", "t", "stop", "web2", "0", "costs", "1,000", "or", "5.00"],
        ["don't", "stop:", "web2.0", "costs", "1,000", "or", "5.00"],
        id="english-punctuation",
    ),
]


@pytest.mark.parametrize("text, default_tokens, whitespace_tokens", MIXED)
def test_default_tokenizer_mixed_text(text, default_tokens, whitespace_tokens):
    assert DEFAULT.tokenize(text) == default_tokens


@pytest.mark.parametrize("text, default_tokens, whitespace_tokens", MIXED)
def test_whitespace_tokenizer_mixed_text(text, default_tokens, whitespace_tokens):
    assert WHITESPACE.tokenize(text) == whitespace_tokens


@pytest.mark.parametrize("text, default_tokens, whitespace_tokens", MIXED)
def test_jieba_regroups_only_ideographs(text, default_tokens, whitespace_tokens):
    tokens = JIEBA.tokenize(text)
    # The same characters as the default rule's tokens, grouped differently only
    # inside runs of CJK ideographs.
    assert "".join(tokens) == "".join(default_tokens)
    non_han = [t for t in default_tokens if not _is_han(t)]
    assert [t for t in tokens if not any(_is_han(ch) for ch in t)] == non_han


def _is_han(text):
    return all("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" for ch in text)


def test_jieba_segments_chinese_words():
    tokens = JIEBA.tokenize("我用iPhone15拍了２０２４年的照片")
    assert "照片" in tokens
    assert "iphone15" in tokens
    assert "2024" in tokens
    assert JIEBA.tokenize("北京大学生前来应聘") != DEFAULT.tokenize("北京大学生前来应聘")
    assert "北京" in JIEBA.tokenize("我们在北京工作")


def test_every_token_is_nfkc():
    text = nfd("Crème brûlée à Noël ") + "ＡＢＣ ｶﾀｶﾅ 한국어"
    for tokenizer in (DEFAULT, WHITESPACE, JIEBA):
        for token in tokenizer.tokenize(text):
            assert unicodedata.is_normalized("NFKC", token), (tokenizer.name, token)


def test_traditional_and_simplified_stay_distinct():
    assert DEFAULT.tokenize("國国發发") == ["國", "国", "發", "发"]
    assert WHITESPACE.tokenize("國家 国家") == ["國家", "国家"]
    # NFKC maps a compatibility ideograph (U+F900) to its unified form (U+8C48).
    assert DEFAULT.tokenize("\uf900") == ["\u8c48"]


def test_hiragana_is_one_token_per_character():
    assert DEFAULT.tokenize("ありがとうございます") == list("ありがとうございます")


def test_thai_run_stays_one_token():
    assert DEFAULT.tokenize("ภาษาไทยง่ายมาก ครับ") == ["ภาษาไทยง่ายมาก", "ครับ"]


def test_keep_case():
    assert Tokenizer("default", lowercase=False).tokenize("Paris ＰＡＲＩＳ") == ["Paris", "PARIS"]
    assert Tokenizer("whitespace", lowercase=False).tokenize("Paris.") == ["Paris."]


def test_config_records_the_rule():
    config = JIEBA.config()
    assert config["name"] == "jieba"
    assert config["lowercase"] is True
    assert config["normalization"] == "NFKC"
    assert config["unicode_version"] == unicodedata.unidata_version
    assert config["jieba_version"]
    rebuilt = Tokenizer.from_config(Tokenizer("whitespace", lowercase=False).config())
    assert rebuilt.name == "whitespace"
    assert rebuilt.lowercase is False


def test_unknown_tokenizer_names_the_choices():
    with pytest.raises(EmbcliError, match="default, whitespace, jieba"):
        Tokenizer("spacy")
    with pytest.raises(EmbcliError, match="upgrade embcli"):
        Tokenizer.from_config({"name": "sentencepiece"})


@pytest.mark.parametrize("query", ["ＩＰＨＯＮＥ", "iPhone", " iphone ", "i\u200bphone"])
def test_query_in_other_width_or_case_finds_word(query):
    assert DEFAULT.query_token(query, {"iphone": 0}) == "iphone"


def test_query_in_nfd_finds_nfc_word():
    assert DEFAULT.query_token(nfd("café"), {"café": 0}) == "café"
    assert WHITESPACE.query_token(nfd("résumé,"), {"résumé,": 0}) == "résumé,"


def test_query_found_whole_before_splitting():
    # jieba splits this query when it is typed alone; the corpus had it as one token.
    assert JIEBA.query_token("北京大学生", {"北京大学生": 0}) == "北京大学生"


def test_query_that_splits_names_tokens():
    with pytest.raises(QueryError) as caught:
        DEFAULT.query_token("北京", {"北": 0, "京": 1})
    message = str(caught.value)
    assert "2 tokens" in message
    assert "北 京" in message
    with pytest.raises(QueryError, match="北京 上海"):
        JIEBA.query_token("北京上海", {"北京": 0, "上海": 1})


def test_query_without_tokens_is_rejected():
    with pytest.raises(QueryError, match="contains no token"):
        DEFAULT.query_token("，。！", {})


def test_jieba_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "jieba", None)
    monkeypatch.setattr(tokenize, "_JIEBA", None)
    with pytest.raises(EmbcliError, match=r"pip install 'embcli\[zh\]'"):
        Tokenizer("jieba")
    # A model built with jieba still opens; only segmenting needs the package.
    tokenizer = Tokenizer.from_config({"name": "jieba"})
    assert tokenizer.query_token("北京", {"北京": 0}) == "北京"
    assert tokenizer.tokenize("hello world") == ["hello", "world"]
    with pytest.raises(EmbcliError, match=r"pip install 'embcli\[zh\]'"):
        tokenizer.tokenize("北京")


def test_jieba_prints_nothing(tmp_path):
    # With a fresh cache directory, jieba first builds its dictionary, then (after the
    # process-wide instance is dropped) loads the cache. jieba announces both on stderr
    # unless silenced.
    code = (
        "from embcli import tokenize\n"
        "for _ in range(2):\n"
        "    print(' '.join(tokenize.Tokenizer('jieba').tokenize('我们在北京工作')))\n"
        "    tokenize._JIEBA = None\n"
    )
    environment = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env=environment)
    assert result.stderr == ""
    assert result.stdout == "我们 在 北京 工作\n" * 2
    assert os.listdir(tmp_path / "embcli")


def review(lines, tokenizer):
    counts = {}
    for line in lines:
        for token in tokenizer.tokenize(line):
            counts[token] = counts.get(token, 0) + 1
    return review_tokens(list(counts), list(counts.values()), tokenizer.name)


CASE_24 = os.path.join(os.path.dirname(__file__), "data", "cases", "24-chinese-no-spaces")


def read_case(name):
    with open(os.path.join(CASE_24, name), encoding="utf-8") as handle:
        return handle.read().splitlines()


def test_review_warns_on_unsegmented_chinese():
    report = review(read_case("corpus.txt"), WHITESPACE)
    assert len(report.warnings) == 1
    assert "unsegmented" in report.warnings[0]
    assert "jieba" in report.warnings[0]
    assert report.cjk_median_length >= 6


def test_review_suggests_japanese_segmenter():
    lines = ["東京でコンピューターを買いました", "今日はいい天気ですね"] * 3
    report = review(lines, WHITESPACE)
    assert len(report.warnings) == 1
    assert "Japanese" in report.warnings[0]
    assert "jieba" not in report.warnings[0]
    by_character = review(lines, DEFAULT)
    assert by_character.warnings == []
    assert len(by_character.notes) == 1
    assert "MeCab" in by_character.notes[0]


def test_review_accepts_segmented_chinese():
    for lines, tokenizer in [(read_case("corpus_segmented.txt"), WHITESPACE),
                             (read_case("corpus.txt"), JIEBA)]:
        report = review(lines, tokenizer)
        assert report.warnings == []
        assert report.cjk_median_length <= 2


def test_review_notes_single_characters():
    report = review(read_case("corpus.txt"), DEFAULT)
    assert report.warnings == []
    assert report.single_han_share == 1.0
    assert len(report.notes) == 1
    assert "jieba" in report.notes[0]


def test_review_warns_on_long_tokens():
    lines = ["the_quick_brown_fox_jumps_over_the_lazy_dog_" + str(i) for i in range(20)]
    report = review(lines, WHITESPACE)
    assert report.median_length > 20
    assert len(report.warnings) == 1
    assert "not split into words" in report.warnings[0]
    thai = review(["ภาษาไทยเป็นภาษาที่ไม่มีการเว้นวรรคระหว่างคำ"] * 3, DEFAULT)
    assert "Thai" in thai.warnings[0]


def test_review_is_quiet_on_english():
    report = review(["In the beginning God created the heaven and the earth."] * 5, DEFAULT)
    assert report.warnings == []
    assert report.notes == []
    assert report.cjk_share == 0.0
    assert review(["plain english text"], JIEBA).notes


# Letters, marks and joiners that interact with NFKC and the token rule, mixed into
# arbitrary Unicode text.
TRICKY = st.sampled_from(list("漢字かなカナー한국ÅéŉǅΩﬁ①\u0301\u0308\u3099\u200d\ufe0f١٢ـ "))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.one_of(st.characters(), TRICKY), max_size=20))
def test_tokens_survive_retokenizing(text):
    # A word copied from vocab.tsv must be found as a query, so normalization is
    # idempotent and every token splits back into itself.
    for tokenizer in (DEFAULT, WHITESPACE):
        normalized = tokenizer.normalize(text)
        assert tokenizer.normalize(normalized) == normalized
        for token in tokenizer.tokenize(text):
            assert tokenizer.tokenize(token) == [token]


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab Z_09 .,\t\n\r\x0b\x0c\x1c\x1f\x7f-'")), max_size=30))
def test_ascii_split_path_matches_token_rule(text):
    # Text of only word characters and whitespace takes str.split; whatever the
    # characters, the tokens are the default rule's.
    import re

    normalized = DEFAULT.normalize(text)
    assert DEFAULT.tokenize(text) == re.findall(r"\d+(?:[.,]\d+)+|\w+", normalized, re.ASCII)


def test_ascii_split_path_on_plain_text():
    assert DEFAULT.tokenize("the cat\tsat\x0bon  1000 mats\n") == ["the", "cat", "sat", "on", "1000", "mats"]
    assert DEFAULT.tokenize("a\x1cb") == ["a", "b"]
    assert DEFAULT.tokenize("pay 1,000 now") == ["pay", "1,000", "now"]
