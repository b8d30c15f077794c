"""Subword (character n-gram) vectors: fastText's hash, training, and out-of-vocabulary queries."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import embcli
from embcli import subwords
from embcli.cli import app
from embcli.errors import EmbcliError

from conftest import interrupt_after

runner = CliRunner()

# Bucket ids (hash % buckets) of the n-grams (3 to 6 characters) of each word, in
# fastText's order, as fastText 0.9.2 (the fasttext-wheel package) returned them from
# `model.get_subwords(word)`, minus the vocabulary size.
FASTTEXT_BUCKETS_2M = {
    "where": [167652, 989715, 1526707, 1071586, 420941, 312621, 969176, 121234, 1473420, 1540811,
              114991, 1529033, 1568469, 867498],
    "naïve": [1806890, 1907692, 878190, 933201, 1590546, 1719404, 832043, 156687, 356832, 1223007,
              1505331, 1711570, 1788548, 1088654],
    "café": [916747, 1991831, 794639, 17187, 369661, 454601, 761685, 960362, 1966012, 1609697],
    "日本語": [758587, 4581, 524609, 35559, 928923, 1674355],
    "мир": [903527, 576678, 515400, 743496, 399042, 883374],
    "a": [1087600],
    "x😀y": [295204, 1977447, 1144987, 473085, 662393, 1501927],
    "walked": [724319, 1882441, 909446, 828121, 734299, 853648, 1236527, 79377, 433713, 1002300,
               106632, 1350146, 1708319, 1925537, 1550925, 588027, 23711, 477174],
}
# The same words' n-grams with 2**24 buckets: the low 24 bits of each 32-bit hash.
FASTTEXT_BUCKETS_2_24 = {
    "naïve": [9515690, 14155756, 483182, 10133073, 11587858, 5873772, 1502763, 1624847, 1255392,
              2569823, 12229299, 1772242, 9580932, 3199886],
    "日本語": [15636923, 457573, 16625729, 6045671, 3703451, 760307],
    "x😀y": [11950756, 1116647, 13795483, 7321085, 14361081, 11458791],
}
# fastText's n-grams of 1 to 3 characters: a lone '<' or '>' is never an n-gram.
FASTTEXT_NGRAMS_1_3 = {
    "naïve": ["<n", "<na", "n", "na", "naï", "a", "aï", "aïv", "ï", "ïv", "ïve", "v", "ve", "ve>",
              "e", "e>"],
    "日本語": ["<日", "<日本", "日", "日本", "日本語", "本", "本語", "本語>", "語", "語>"],
}


@pytest.mark.parametrize("word", sorted(FASTTEXT_BUCKETS_2M))
def test_hash_matches_fasttext_2m_buckets(word):
    _, hashes = subwords.ngram_hashes([word], 3, 6)
    assert [int(h) % 2_000_000 for h in hashes] == FASTTEXT_BUCKETS_2M[word]
    assert [subwords.fnv1a(g) % 2_000_000 for g in subwords.ngrams(word, 3, 6)] == FASTTEXT_BUCKETS_2M[word]


@pytest.mark.parametrize("word", sorted(FASTTEXT_BUCKETS_2_24))
def test_hash_matches_fasttext_2_24_buckets(word):
    _, hashes = subwords.ngram_hashes([word], 3, 6)
    assert [int(h) % 2**24 for h in hashes] == FASTTEXT_BUCKETS_2_24[word]


def test_hash_sign_extends_high_bytes():
    # Textbook FNV-1a XORs the byte 0xc3 as 0x000000c3, fastText as 0xffffffc3.
    textbook = ((2166136261 ^ 0xC3) * 16777619) & 0xFFFFFFFF
    quirk = ((2166136261 ^ 0xFFFFFFC3) * 16777619) & 0xFFFFFFFF
    assert subwords.fnv1a(b"\xc3") == quirk
    assert subwords.fnv1a(b"\xc3") != textbook
    assert subwords.fnv1a(b"a") == ((2166136261 ^ 0x61) * 16777619) & 0xFFFFFFFF


@pytest.mark.parametrize("word", sorted(FASTTEXT_NGRAMS_1_3))
def test_ngrams_skip_lone_markers(word):
    assert subwords.ngrams(word, 1, 3) == FASTTEXT_NGRAMS_1_3[word]


def test_vectorized_hashes_match_reference():
    words = ["where", "naïve", "日本語", "a", "", "über-cool", "x😀y", "ab", "zzzzzzzzzzzzzzzzzz"]
    offsets, hashes = subwords.ngram_hashes(words, 2, 5)
    for i, word in enumerate(words):
        expected = [subwords.fnv1a(g) for g in subwords.ngrams(word, 2, 5)]
        assert hashes[offsets[i] : offsets[i + 1]].tolist() == expected, word


def test_table_rows_start_with_word():
    table = subwords.SubwordTable.build(["where", "a"], 3, 6, 2_000_000, compact=False)
    assert table.rows[table.offsets[0] : table.offsets[1]].tolist() == [0] + [2 + b for b in FASTTEXT_BUCKETS_2M["where"]]
    assert table.rows[table.offsets[1] : table.offsets[2]].tolist() == [1, 2 + FASTTEXT_BUCKETS_2M["a"][0]]
    assert table.input_rows == 2 + 2_000_000


def test_compact_table_maps_used_buckets():
    table = subwords.SubwordTable.build(["where", "a"], 3, 6, 2_000_000)
    used = sorted(set(FASTTEXT_BUCKETS_2M["where"] + FASTTEXT_BUCKETS_2M["a"]))
    assert table.bucket_ids.tolist() == used
    assert table.input_rows == 2 + len(used)
    where = table.rows[table.offsets[0] : table.offsets[1]]
    assert where[0] == 0
    assert table.bucket_ids[where[1:] - 2].tolist() == FASTTEXT_BUCKETS_2M["where"]
    a = table.rows[table.offsets[1] : table.offsets[2]]
    assert a[0] == 1
    assert table.bucket_ids[a[1:] - 2].tolist() == FASTTEXT_BUCKETS_2M["a"]


@pytest.mark.parametrize("text, expected", [("3-6", (3, 6)), ("2", (2, 2)), ("off", (0, 0)), ("0", (0, 0))])
def test_parse_range(text, expected):
    assert subwords.parse_range(text) == expected


@pytest.mark.parametrize("text", ["6-3", "x", "0-4", "3-"])
def test_parse_range_rejects(text):
    with pytest.raises(subwords.EmbcliError, match="MIN"):
        subwords.parse_range(text)


def test_combine_rows_mean_and_sum():
    from types import SimpleNamespace

    from embcli.train_subwords import combine_word_vectors

    matrix = np.arange(12, dtype=np.float32).reshape(6, 2)
    offsets = np.array([0, 2, 2, 5])
    rows = np.array([0, 1, 2, 3, 5])
    mean = combine_word_vectors(matrix, SimpleNamespace(rows=rows, offsets=offsets, combination="mean"))
    total = combine_word_vectors(matrix, SimpleNamespace(rows=rows, offsets=offsets, combination="sum"))
    np.testing.assert_allclose(mean, [[1, 2], [0, 0], [20 / 3, 23 / 3]])
    np.testing.assert_allclose(total, [[2, 4], [0, 0], [20, 23]])


# -- trained models ---------------------------------------------------------------------


def invoke(*args, input=None):
    return runner.invoke(app, list(args), input=input)


@pytest.fixture(scope="module")
def subword_model(tmp_path_factory):
    """A skip-gram subword model trained once on kjv_small.txt (dim 48, 100,000 buckets)."""
    from embcli.tokenize import Tokenizer
    from embcli.train import TrainConfig, train_model
    from embcli.vocab import build_vocab

    model_dir = str(tmp_path_factory.mktemp("subwords") / "kjv")
    corpus = os.path.join(os.path.dirname(__file__), "data", "kjv_small.txt")
    build_vocab(model_dir, [corpus], Tokenizer(), min_count=3)
    config = TrainConfig(dim=48, epochs=5, threads=1, seed=3, min_n=3, max_n=6, buckets=100_000)
    train_model(model_dir, config)
    return model_dir


def corpus_words():
    from embcli.tokenize import Tokenizer

    text = open(os.path.join(os.path.dirname(__file__), "data", "kjv_small.txt"), encoding="utf-8").read()
    return set(Tokenizer().tokenize(text))


def test_subword_model_files(subword_model):
    meta = json.load(open(os.path.join(subword_model, "meta.json"), encoding="utf-8"))
    words = open(os.path.join(subword_model, "vocab.tsv"), encoding="utf-8").read().splitlines()
    embeddings = np.load(os.path.join(subword_model, "embeddings.npy"), allow_pickle=False)
    buckets = np.load(os.path.join(subword_model, "subwords.npy"), allow_pickle=False)
    bucket_ids = np.load(os.path.join(subword_model, "subword-buckets.npy"), allow_pickle=False)
    assert embeddings.shape == (len(words), 48)
    # One row per bucket that a vocabulary word's n-grams hash to, in bucket order.
    table = subwords.SubwordTable.build([word.split("\t")[0] for word in words], 3, 6, 100_000)
    assert np.array_equal(bucket_ids, table.bucket_ids)
    assert bucket_ids.dtype == np.uint32
    assert buckets.shape == (len(bucket_ids), 48)
    assert buckets.dtype == np.float32
    assert np.isfinite(buckets).all()
    assert meta["subwords"]["hash"] == "fasttext-fnv1a-32"
    assert (meta["subwords"]["min_n"], meta["subwords"]["max_n"]) == (3, 6)
    assert meta["subwords"]["buckets"] == 100_000
    assert meta["subwords"]["combination"] == "sum"
    assert meta["subwords"]["rows"] == "used"
    assert "subwords.npy" in meta["files"]
    assert "subword-buckets.npy" in meta["files"]


def test_embeddings_hold_word_plus_ngrams(subword_model):
    from embcli.model import Model

    model = Model.open(subword_model)
    buckets = np.load(os.path.join(subword_model, "subwords.npy"), allow_pickle=False)
    word = "tabernacle"
    own = model.vector(word)
    stored = np.load(os.path.join(subword_model, "subword-buckets.npy"), allow_pickle=False)
    ngram_rows = buckets[np.searchsorted(stored, model.subwords.bucket_ids(word))]
    # The stored vector is the mean of the word's own row and its n-gram rows, so it
    # points close to the mean of the n-gram rows alone.
    ngram_mean = ngram_rows.mean(axis=0)
    cosine = own @ ngram_mean / np.linalg.norm(own) / np.linalg.norm(ngram_mean)
    assert cosine > 0.5


def test_unseen_word_sums_only_stored_ngram_rows(subword_model):
    """Buckets that no vocabulary word uses have no row and add nothing; a word whose
    n-grams all fall in such buckets has no vector."""
    from embcli.errors import UnknownWord
    from embcli.model import Model

    model = Model.open(subword_model)
    buckets = np.load(os.path.join(subword_model, "subwords.npy"), allow_pickle=False)
    stored = np.load(os.path.join(subword_model, "subword-buckets.npy"), allow_pickle=False)
    word = "tabernaclezqxj"
    ids = model.subwords.bucket_ids(word)
    found = np.isin(ids, stored)
    assert 0 < found.sum() < len(ids)
    rows, vector, count = model.resolve(word)
    assert rows is None
    assert count == found.sum()
    expected = buckets[np.searchsorted(stored, np.sort(ids[found]))].sum(axis=0)
    assert np.allclose(vector, expected, atol=1e-6)
    # 14 % of the 100,000 buckets have a row here, so some short words have none.
    unseen = next(candidate for candidate in (f"q{a}{b}" for a in "xzjv" for b in "xzjkv")
                  if not np.isin(model.subwords.bucket_ids(candidate), stored).any())
    with pytest.raises(UnknownWord):
        model.resolve(unseen)


@pytest.mark.parametrize("unseen, known", [("tabernacles", "tabernacle"), ("famines", "famine"),
                                           ("wildernesses", "wilderness")])
def test_unseen_inflection_neighbors(subword_model, unseen, known):
    from embcli.model import Model

    assert unseen not in corpus_words()
    model = Model.open(subword_model)
    assert unseen not in model.index
    assert known in model.index
    neighbors = [word for word, _ in model.neighbors(unseen, k=10)]
    assert known in neighbors


def test_unseen_word_in_subword_model(subword_model):
    from embcli.model import Model

    model = Model.open(subword_model)
    assert "tabernacles" in model
    assert "tabernacles" not in model.index
    assert np.array_equal(model["tabernacles"], model.vector("tabernacles"))


def test_lookup_unseen_word_notes_on_stderr(subword_model):
    result = invoke("lookup", "-m", subword_model, "tabernacles")
    assert result.exit_code == 0, result.stderr
    fields = result.stdout.rstrip("\n").split("\t")
    assert fields[0] == "tabernacles"
    assert len(fields) == 49
    assert "tabernacles: not in vocabulary" in result.stderr
    assert "n-grams" in result.stderr


def test_note_counts_ngrams_once_per_word(subword_model):
    result = invoke("similarity", "-m", subword_model, "tabernacles", "tabernacles")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("tabernacles: not in vocabulary") == 1
    # The note counts the n-grams that have a row (those of some vocabulary word).
    model = embcli.load(subword_model)
    stored = np.load(os.path.join(subword_model, "subword-buckets.npy"), allow_pickle=False)
    found = int(np.isin(model.subwords.bucket_ids("tabernacles"), stored).sum())
    assert f"its vector combines {found} character n-grams\n" in result.stderr
    result = invoke("lookup", "-m", subword_model, "酒")  # one n-gram, <酒>, in no vocabulary word
    assert result.exit_code == 1
    assert "酒: not in vocabulary" in result.stderr


def test_lookup_known_word_has_no_note(subword_model):
    result = invoke("lookup", "-m", subword_model, "tabernacle")
    assert result.exit_code == 0
    assert result.stderr == ""


def test_no_subwords_rejects_unseen_word(subword_model):
    result = invoke("lookup", "-m", subword_model, "--no-subwords", "tabernacles")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "tabernacles: not in vocabulary" in result.stderr
    result = invoke("neighbors", "-m", subword_model, "--no-subwords", "tabernacles")
    assert result.exit_code == 1


def test_neighbors_unseen_word_cli(subword_model):
    result = invoke("neighbors", "-m", subword_model, "tabernacles", "-k", "5")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5
    assert "not in vocabulary" in result.stderr


def test_neighbors_unseen_word_without_torch(subword_model):
    code = (
        "import sys\n"
        "from embcli.cli import app\n"
        "try:\n"
        f"    app(['neighbors', '-m', {subword_model!r}, 'tabernacles', '-k', '3'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert len(result.stdout.splitlines()) == 3
    assert result.stderr.strip().endswith("NO-TORCH")


def test_similarity_unseen_word(subword_model):
    from embcli.model import Model

    model = Model.open(subword_model)
    expected = model.similarity("tabernacles", "tabernacle")
    assert expected > 0.5
    result = invoke("similarity", "-m", subword_model, "tabernacles", "tabernacle")
    assert result.exit_code == 0, result.stderr
    assert float(result.stdout) == pytest.approx(expected, abs=1e-4)
    assert "tabernacles: not in vocabulary" in result.stderr
    assert "n-grams" in result.stderr
    result = invoke("similarity", "-m", subword_model, "--json", "-", input="tabernacles\ttabernacle\nday\tnight\n")
    assert result.exit_code == 0, result.stderr
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["from_subwords"] == ["tabernacles"]
    assert "from_subwords" not in second
    assert second["score"] == pytest.approx(model.similarity("day", "night"), abs=1e-5)


def test_analogy_unseen_word(subword_model):
    from embcli.model import Model

    model = Model.open(subword_model)
    expected = model.analogy("famine", "famines", "tabernacle", k=3)
    assert len(expected) == 3
    assert "famine" not in [word for word, _ in expected]
    result = invoke("analogy", "-m", subword_model, "famine", "famines", "tabernacle", "-k", "3", "--json")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["word"] for line in lines] == [word for word, _ in expected]
    assert all(line["from_subwords"] == ["famines"] for line in lines)
    assert "famines: not in vocabulary" in result.stderr


def test_no_subwords_similarity_and_analogy(subword_model):
    from embcli.errors import UnknownWord
    from embcli.model import Model

    result = invoke("similarity", "-m", subword_model, "--no-subwords", "tabernacles", "tabernacle")
    assert result.exit_code == 1
    assert "tabernacles: not in vocabulary" in result.stderr
    result = invoke("analogy", "-m", subword_model, "--no-subwords", "famine", "famines", "tabernacle")
    assert result.exit_code == 1
    assert "famines: not in vocabulary" in result.stderr
    model = Model.open(subword_model)
    with pytest.raises(UnknownWord):
        model.similarity("tabernacles", "tabernacle", subwords=False)
    with pytest.raises(UnknownWord):
        model.analogy("famine", "famines", "tabernacle", subwords=False)


def test_json_marks_words_from_ngrams(subword_model):
    result = invoke("lookup", "-m", subword_model, "--json", "tabernacles", "tabernacle")
    unseen, known = (json.loads(line) for line in result.stdout.splitlines())
    assert unseen["from_subwords"] == ["tabernacles"]
    assert "from_subwords" not in known
    result = invoke("neighbors", "-m", subword_model, "--json", "-k", "1", "tabernacles", "tabernacle")
    unseen, known = (json.loads(line) for line in result.stdout.splitlines())
    assert unseen["from_subwords"] == ["tabernacles"]
    assert "from_subwords" not in known


def test_vec_export_reads_back_in_gensim(subword_model, tmp_path):
    from gensim.models import KeyedVectors

    from embcli.model import Model

    model = Model.open(subword_model)
    path = str(tmp_path / "model.vec")
    result = invoke("export", "-m", subword_model, path, "--format", "fasttext")
    assert result.exit_code == 0, result.stderr
    loaded = KeyedVectors.load_word2vec_format(path, binary=False)
    assert loaded.index_to_key == model.words
    np.testing.assert_allclose(loaded.vectors, model.matrix, rtol=1e-5, atol=1e-6)


def test_cbow_with_subwords_and_retrain_without(small_corpus):
    assert invoke("build-vocab", small_corpus, "--min-count", "3", "--quiet").exit_code == 0
    result = invoke("train", "--method", "cbow", "--subwords", "3-5", "--buckets", "5000", "--dim", "16",
                    "--epochs", "1", "--threads", "2", "--quiet")
    assert result.exit_code == 0, result.stderr
    meta = json.load(open("embcli-model/meta.json", encoding="utf-8"))
    assert meta["subwords"]["max_n"] == 5
    bucket_ids = np.load("embcli-model/subword-buckets.npy")
    assert bucket_ids[-1] < 5000
    assert np.load("embcli-model/subwords.npy").shape == (len(bucket_ids), 16)
    assert np.isfinite(np.load("embcli-model/embeddings.npy")).all()

    result = invoke("train", "--dim", "16", "--epochs", "1", "--threads", "1", "--quiet")
    assert result.exit_code == 0, result.stderr
    meta = json.load(open("embcli-model/meta.json", encoding="utf-8"))
    assert "subwords" not in meta
    assert "subwords.npy" not in meta["files"]
    assert not os.path.exists("embcli-model/subwords.npy")
    assert not os.path.exists("embcli-model/subword-buckets.npy")
    result = invoke("lookup", "tabernacles")
    assert result.exit_code == 1


def test_mean_combination_trains(small_corpus):
    assert invoke("build-vocab", small_corpus, "--min-count", "3", "--quiet").exit_code == 0
    result = invoke("train", "--subwords", "3-4", "--combination", "mean", "--buckets", "3000", "--dim", "8",
                    "--epochs", "1", "--threads", "1", "--quiet")
    assert result.exit_code == 0, result.stderr
    meta = json.load(open("embcli-model/meta.json", encoding="utf-8"))
    assert meta["subwords"]["combination"] == "mean"
    assert np.isfinite(np.load("embcli-model/embeddings.npy")).all()
    result = invoke("lookup", "tabernacles")
    assert result.exit_code == 0
    assert "not in vocabulary" in result.stderr


@pytest.mark.parametrize("buckets", ["100", "50000"])
def test_shared_ngrams_stable_on_two_workers(tmp_path, buckets):
    # 300 four-digit numbers share most of their n-grams ("<12", "123", ...), so a step
    # adds many words' changes to the same rows. Without the cap on those rows, this
    # corpus diverged on two workers at the default learning rate.
    import random

    generator = random.Random(1)
    numbers = [str(value) for value in range(1000, 1300)]
    corpus = tmp_path / "numbers.txt"
    corpus.write_text("".join(" ".join(generator.choice(numbers) for _ in range(20)) + "\n"
                              for _ in range(5000)))
    model = str(tmp_path / "model")
    assert invoke("build-vocab", str(corpus), "-m", model, "--quiet").exit_code == 0
    result = invoke("train", "-m", model, "--subwords", "3-6", "--buckets", buckets, "--dim", "32",
                    "--epochs", "1", "--threads", "2", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert np.isfinite(np.load(os.path.join(model, "embeddings.npy"))).all()


def test_train_rejects_bad_subword_range(small_corpus):
    assert invoke("build-vocab", small_corpus, "--min-count", "3", "--quiet").exit_code == 0
    result = invoke("train", "--subwords", "6-3", "--quiet")
    assert result.exit_code == 2
    assert "--subwords" in result.stderr


def test_resume_subwords_matches_uninterrupted(tmp_path, small_corpus):
    from embcli.errors import TrainingInterrupted
    from embcli.tokenize import Tokenizer
    from embcli.train import TrainConfig, train_model
    from embcli.vocab import build_vocab

    settings = dict(dim=8, epochs=2, threads=1, seed=5, chunk_tokens=8192, min_n=3, max_n=5, buckets=4000)
    model_dir = str(tmp_path / "model")
    build_vocab(model_dir, [small_corpus], Tokenizer(), min_count=3)
    reference = str(tmp_path / "reference")
    shutil.copytree(model_dir, reference)
    train_model(reference, TrainConfig(**settings))

    with pytest.raises(TrainingInterrupted):
        train_model(model_dir, TrainConfig(**settings), progress=interrupt_after(2))
    train_model(model_dir, TrainConfig(dim=8, threads=1), resume=True)
    for name in ("embeddings.npy", "subwords.npy"):
        resumed = np.load(os.path.join(model_dir, name), allow_pickle=False)
        uninterrupted = np.load(os.path.join(reference, name), allow_pickle=False)
        assert np.array_equal(resumed, uninterrupted), name


def test_buckets_beyond_hash_or_disk_rejected(small_corpus):
    assert invoke("build-vocab", small_corpus, "--min-count", "3").exit_code == 0
    too_many = invoke("train", "--subwords", "3-6", "--buckets", "5000000000", "--threads", "1")
    assert too_many.exit_code == 2  # a usage error, like other option values out of range
    assert "--buckets" in too_many.stderr
    assert "4294967295" in too_many.stderr
    with pytest.raises(EmbcliError, match="at most 4,294,967,295"):
        subwords.check_settings(3, 6, 5_000_000_000, "mean")
    # Thousands of rows of 10,000,000 floats (more than 100 TB) fit on no test machine's disk.
    no_room = invoke("train", "--subwords", "3-6", "--buckets", "4000000000", "--dim", "10000000",
                     "--threads", "1")
    assert no_room.exit_code == 1
    assert "saving this model needs" in no_room.stderr
    assert "GiB free" in no_room.stderr
    assert not os.path.exists(os.path.join("embcli-model", "embeddings.npy"))


@pytest.mark.parametrize("name, format", [("model.vec", "fasttext"), ("model.bin", "word2vec-binary")])
def test_subword_export_import_round_trip(subword_model, tmp_path, name, format):
    from embcli.model import Model

    path = tmp_path / name
    result = invoke("export", "-m", subword_model, str(path), "--format", format)
    assert result.exit_code == 0, result.stderr
    imported = str(tmp_path / "imported")
    result = invoke("import", str(path), "-m", imported, "-q")
    assert result.exit_code == 0, result.stderr
    original, copy = Model.open(subword_model), Model.open(imported)
    assert copy.words == original.words
    assert np.array_equal(np.asarray(copy.matrix), np.asarray(original.matrix))
    assert copy.neighbors("tabernacle", k=5) == original.neighbors("tabernacle", k=5)


def test_import_force_removes_ngram_rows(subword_model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(subword_model, copy)
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("2 3\nalpha 1 0 0\nbeta 0 1 0\n")
    result = invoke("import", str(vectors), "-m", str(copy), "--force", "-q")
    assert result.exit_code == 0, result.stderr
    assert not (copy / "subwords.npy").exists()
    assert not (copy / "tokens.npy").exists()
    result = invoke("neighbors", "-m", str(copy), "alpha", "-k", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("beta\t")


def test_export_of_subword_model_notes_the_ngrams(subword_model, tmp_path):
    result = invoke("export", "-m", subword_model, str(tmp_path / "model.vec"))
    assert result.exit_code == 0, result.stderr
    assert "n-gram rows that give vectors to unseen words stay in the model directory" in result.stderr


def test_approx_names_subwords_for_unknown_word(subword_model, tmp_path):
    # The index contains vocabulary rows only, so the message says how to reach the n-grams.
    pytest.importorskip("faiss")
    model = tmp_path / "copy"
    shutil.copytree(subword_model, model)
    assert invoke("index", "-m", str(model), "--nlist", "4", "-q").exit_code == 0
    result = invoke("neighbors", "-m", str(model), "--approx", "blessedly")
    assert result.exit_code == 1
    assert "--approx searches vocabulary words only" in result.stderr


def test_row_per_bucket_model_still_reads(subword_model, tmp_path):
    """Models saved before subword-buckets.npy existed hold one row per bucket."""
    from embcli import store

    old = str(tmp_path / "old")
    shutil.copytree(subword_model, old)
    stored = np.load(os.path.join(old, "subword-buckets.npy"), allow_pickle=False)
    rows = np.load(os.path.join(old, "subwords.npy"), allow_pickle=False)
    full = np.zeros((100_000, rows.shape[1]), dtype=np.float32)
    full[stored] = rows
    np.save(os.path.join(old, "subwords.npy"), full)
    os.remove(os.path.join(old, "subword-buckets.npy"))
    meta = json.load(open(os.path.join(old, "meta.json"), encoding="utf-8"))
    for key in ("rows", "bucket_ids_file"):
        del meta["subwords"][key]
    del meta["files"]["subword-buckets.npy"]
    meta["files"]["subwords.npy"] = store.fingerprint(os.path.join(old, "subwords.npy"))
    with open(os.path.join(old, "meta.json"), "w", encoding="utf-8") as handle:
        json.dump(meta, handle)
    before, after = embcli.load(subword_model), embcli.load(old)
    for word in ("tabernacles", "famines"):
        assert np.allclose(before.vector(word), after.vector(word), atol=1e-6)


def test_nan_in_ngram_rows_is_reported(subword_model, tmp_path):
    damaged = str(tmp_path / "damaged")
    shutil.copytree(subword_model, damaged)
    rows = np.load(os.path.join(damaged, "subwords.npy"), mmap_mode="r+")
    rows[:] = np.nan  # the same file size, other values
    rows.flush()
    del rows
    # Rewrite the fingerprint so that only the values are wrong.
    from embcli import store

    meta = json.load(open(os.path.join(damaged, "meta.json"), encoding="utf-8"))
    meta["files"]["subwords.npy"] = store.fingerprint(os.path.join(damaged, "subwords.npy"))
    with open(os.path.join(damaged, "meta.json"), "w", encoding="utf-8") as handle:
        json.dump(meta, handle)
    for command in ("lookup", "similarity"):
        words = ["tabernacles"] if command == "lookup" else ["tabernacles", "tabernacle"]
        result = invoke(command, "-m", damaged, *words)
        assert result.exit_code == 1
        assert "NaN or infinite" in result.stderr
        assert "subwords.npy" in result.stderr
