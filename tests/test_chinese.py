"""Chinese and mixed-script corpora end to end: build-vocab, train, queries."""

import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import embcli
from embcli import tokenize
from embcli.cli import app

runner = CliRunner()
CASE_24 = Path(__file__).parent / "data" / "cases" / "24-chinese-no-spaces"
UNSEGMENTED = str(CASE_24 / "corpus.txt")
SEGMENTED = str(CASE_24 / "corpus_segmented.txt")
SAMPLE_POEMS = str(Path(__file__).resolve().parents[1] / "sample_data" / "tang300.txt.gz")


def invoke(*args):
    return runner.invoke(app, list(args))


def vocabulary(model_dir):
    with open(os.path.join(model_dir, "vocab.tsv"), encoding="utf-8") as handle:
        return {word: int(count) for word, count in (line.rstrip("\n").split("\t") for line in handle)}


def test_unsegmented_with_whitespace_warns():
    result = invoke("build-vocab", UNSEGMENTED, "--tokenizer", "whitespace", "--min-count", "1")
    assert result.exit_code == 0, result.stderr
    # Each line is one token, as documented for the whitespace tokenizer.
    assert vocabulary("embcli-model") == {"我喜欢吃苹果": 1, "他喜欢吃香蕉": 1, "我们都喜欢水果": 1}
    assert "warning:" in result.stderr
    assert "unsegmented" in result.stderr
    assert "jieba tokenizer" in result.stderr
    assert "default tokenizer" in result.stderr
    meta = json.loads(Path("embcli-model/meta.json").read_text(encoding="utf-8"))
    assert meta["vocab"]["token_review"]["warnings"]


def test_unsegmented_below_min_count_blames_tokenizer():
    result = invoke("build-vocab", UNSEGMENTED, "--tokenizer", "whitespace")
    assert result.exit_code == 1
    assert "lower the minimum count" in result.stderr
    assert "unsegmented" in result.stderr
    assert "Traceback" not in result.stderr


def test_segmented_with_whitespace():
    result = invoke("build-vocab", SEGMENTED, "--tokenizer", "whitespace", "--min-count", "1")
    assert result.exit_code == 0, result.stderr
    words = vocabulary("embcli-model")
    assert len(words) == 9
    assert words["喜欢"] == 3
    assert "warning:" not in result.stderr


def test_unsegmented_with_default_is_characters():
    result = invoke("build-vocab", UNSEGMENTED, "--min-count", "1")
    assert result.exit_code == 0, result.stderr
    words = vocabulary("embcli-model")
    assert all(len(word) == 1 for word in words)
    assert words["喜"] == 3
    assert "warning:" not in result.stderr
    assert "note:" in result.stderr
    assert "single Chinese characters" in result.stderr


def test_unsegmented_with_jieba_matches_gold():
    result = invoke("build-vocab", UNSEGMENTED, "--tokenizer", "jieba", "--min-count", "1")
    assert result.exit_code == 0, result.stderr
    gold = invoke("build-vocab", SEGMENTED, "-m", "gold", "--tokenizer", "whitespace", "--min-count", "1")
    assert gold.exit_code == 0
    assert vocabulary("embcli-model") == vocabulary("gold")
    assert "warning:" not in result.stderr


def test_unknown_tokenizer_is_usage_error():
    result = invoke("build-vocab", UNSEGMENTED, "--tokenizer", "bert")
    assert result.exit_code == 2
    assert "default, whitespace, jieba" in result.stderr


def test_jieba_missing_is_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "jieba", None)
    monkeypatch.setattr(tokenize, "_JIEBA", None)
    result = invoke("build-vocab", UNSEGMENTED, "--tokenizer", "jieba")
    assert result.exit_code == 1
    assert result.stderr.startswith("embcli: error: the jieba tokenizer needs the jieba package")
    assert "pip install 'embcli[zh]'" in result.stderr
    assert not os.path.exists("embcli-model")


# Lines with full-width Latin and digits, decomposed accents and Chinese place names,
# repeated so that every word passes the default minimum count.
MIXED_LINES = [
    "我在北京用ｉＰｈｏｎｅ拍照片，花了１０００元。",
    "他在上海的Cafe\u0301喝咖啡，用iPhone拍照片。",
    "北京和上海都是大城市，１９９８年我去过北京。",
]


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("mixed") / "mixed.txt"
    path.write_text("\n".join(MIXED_LINES * 6) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mixed_corpus):
    """Return {tokenizer name: model directory}, each trained briefly on the mixed corpus."""
    from embcli.tokenize import Tokenizer
    from embcli.train import TrainConfig, train_model
    from embcli.vocab import build_vocab

    models = {}
    for name in ("default", "jieba"):
        model_dir = str(tmp_path_factory.mktemp("models") / name)
        build_vocab(model_dir, [mixed_corpus], Tokenizer(name), min_count=3)
        train_model(model_dir, TrainConfig(dim=8, epochs=1, threads=1, seed=1))
        models[name] = model_dir
    return models


def lookup(model_dir, word):
    return invoke("lookup", "-m", model_dir, word)


def test_meta_records_tokenizer(trained):
    meta = json.loads(Path(trained["jieba"], "meta.json").read_text(encoding="utf-8"))
    assert meta["tokenizer"]["name"] == "jieba"
    assert meta["tokenizer"]["normalization"] == "NFKC"
    assert embcli.load(trained["jieba"]).tokenizer.name == "jieba"


@pytest.mark.parametrize("query", ["iphone", "ＩＰＨＯＮＥ", "iPhone", "ｉｐｈｏｎｅ"])
def test_query_in_other_width_finds_word(trained, query):
    for model_dir in trained.values():
        expected = lookup(model_dir, "iphone").stdout.split("\t")[1:]
        result = lookup(model_dir, query)
        assert result.exit_code == 0, result.stderr
        assert result.stdout.split("\t")[1:] == expected


def test_query_in_other_normal_form_finds_word(trained):
    for model_dir in trained.values():
        assert "café" in vocabulary(model_dir)  # the corpus spelled it decomposed
        composed = lookup(model_dir, "caf\u00e9")
        decomposed = lookup(model_dir, "cafe\u0301")
        assert composed.exit_code == 0
        assert decomposed.exit_code == 0
        assert composed.stdout.split("\t")[1:] == decomposed.stdout.split("\t")[1:]


def test_full_width_number_query(trained):
    model = embcli.load(trained["default"])
    assert model.row("１０００") == model.row("1000")


def test_jieba_model_answers_chinese_words(trained):
    words = vocabulary(trained["jieba"])
    assert "北京" in words
    assert "上海" in words
    result = invoke("neighbors", "-m", trained["jieba"], "北京", "-k", "3")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3


def test_query_that_splits_names_its_tokens(trained):
    result = lookup(trained["default"], "北京")
    assert result.exit_code == 1
    assert "2 tokens" in result.stderr
    assert "北 京" in result.stderr
    result = lookup(trained["jieba"], "北京上海")
    assert result.exit_code == 1
    assert "北京 上海" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_query_names_normalized_form(trained):
    result = lookup(trained["default"], "ＺＥＢＲＡ")
    assert result.exit_code == 1
    assert "ＺＥＢＲＡ: not in vocabulary (looked up as zebra" in result.stderr


def test_sample_poems_build_without_warnings():
    result = invoke("build-vocab", SAMPLE_POEMS)
    assert result.exit_code == 0, result.stderr
    words = vocabulary("embcli-model")
    assert {"月", "山", "春", "风"} <= set(words)
    assert "warning:" not in result.stderr


def test_gb18030_line_suggests_east_asian_encodings(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes("hello world\n".encode() + "北京是中国的首都 我们爱学习\n".encode("gb18030"))
    result = CliRunner().invoke(app, ["build-vocab", str(path), "-m", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "line 2" in result.stderr
    assert "gb18030 (Chinese)" in result.stderr
    # A Latin-1 line keeps the Western suggestion.
    path.write_bytes(b"caf\xe9 ok\n")
    result = CliRunner().invoke(app, ["build-vocab", str(path), "-m", str(tmp_path / "n")])
    assert "such as latin-1 or cp1252" in result.stderr
