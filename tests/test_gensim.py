"""Agreement with the real gensim: file round trips and evaluation scores."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from embcli.cli import app
from embcli.formats import read_vectors, write_vectors

from conftest import DATA

gensim_models = pytest.importorskip("gensim.models")
KeyedVectors = gensim_models.KeyedVectors
runner = CliRunner()
EVAL = DATA / "eval"


def invoke(*args, input=None):
    return runner.invoke(app, list(args), input=input)


def random_vectors(count=50, dim=7, seed=1):
    rng = np.random.default_rng(seed)
    words = [f"w{i}é" if i % 3 else f"W{i}" for i in range(count)]
    return words, rng.standard_normal((count, dim)).astype(np.float32)


@pytest.mark.parametrize("format, options", [("word2vec", {}), ("word2vec-binary", {"binary": True}),
                                             ("glove", {"no_header": True}), ("fasttext", {})])
def test_gensim_loads_our_export(tmp_path, format, options):
    words, matrix = random_vectors()
    path = tmp_path / "v"
    write_vectors(str(path), words, matrix, format)
    loaded = KeyedVectors.load_word2vec_format(str(path), **options)
    assert loaded.index_to_key == words
    assert loaded.vectors.tobytes() == matrix.tobytes()


def test_gensim_loads_projector_vectors(tmp_path):
    words, matrix = random_vectors()
    write_vectors(str(tmp_path / "p"), words, matrix, "projector")
    values = np.loadtxt(tmp_path / "p" / "vectors.tsv", delimiter="\t", dtype=np.float32)
    assert values.tobytes() == matrix.tobytes()


@pytest.mark.parametrize("binary", [False, True])
def test_we_import_gensim_output(tmp_path, binary):
    words, matrix = random_vectors(seed=2)
    vectors = KeyedVectors(matrix.shape[1])
    vectors.add_vectors(words, matrix)
    path = tmp_path / ("g.bin" if binary else "g.txt")
    vectors.save_word2vec_format(str(path), binary=binary)
    result = invoke("import", str(path), "-q")
    assert result.exit_code == 0, result.stderr
    model_words = [line.split("\t")[0] for line in open("embcli-model/vocab.tsv", encoding="utf-8")]
    assert model_words == words
    assert np.load("embcli-model/embeddings.npy").tobytes() == matrix.tobytes()
    assert read_vectors(str(path)).format == ("word2vec-binary" if binary else "word2vec")


def structured_vectors(dim=40, seed=3):
    """Vectors for the words of the test sets in which many analogies hold, plus noise.

    Each pair (x, y) of a questions-words section gets y = x + the section's offset +
    noise, so accuracy lands well between 0 and 1. Every seventh word is left out (out
    of vocabulary), and some words also appear title-cased further down the vocabulary.
    """
    rng = np.random.default_rng(seed)
    vectors = {}
    offset = None
    for line in (EVAL / "questions-words.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith(":"):
            offset = rng.standard_normal(dim)
            continue
        a, b, c, d = line.split()
        for x, y in ((a, b), (c, d)):
            if x not in vectors:
                vectors[x] = rng.standard_normal(dim)
            if y not in vectors:
                vectors[y] = vectors[x] + offset + rng.standard_normal(dim) * rng.uniform(0.2, 1.5)
    for name in ("wordsim353.tsv", "simlex999.txt"):
        for line in (EVAL / name).read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                continue
            first, second, score = line.split("\t")
            base = vectors.setdefault(first.lower(), rng.standard_normal(dim))
            if second.lower() not in vectors:
                vectors[second.lower()] = base * float(score) / 10 + rng.standard_normal(dim)
    words = [word for i, word in enumerate(vectors) if i % 7 != 3]
    present = set(words)
    words += [word.title() for word in words[::11] if word.title() not in present]
    matrix = np.array([vectors.get(word, vectors.get(word.lower())) for word in words], dtype=np.float32)
    matrix[5] = 0  # a zero vector must not disturb either tool
    return words, matrix


@pytest.mark.parametrize("restrict", [300_000, 1500])
def test_evaluation_agrees_with_gensim(tmp_path, restrict):
    words, matrix = structured_vectors()
    path = tmp_path / "vectors.txt"
    write_vectors(str(path), words, matrix, "word2vec")
    assert invoke("import", str(path), "-q").exit_code == 0
    result = invoke("evaluate", "--analogies", str(EVAL / "questions-words.txt"),
                    "--similarity", str(EVAL / "wordsim353.tsv"), "--similarity", str(EVAL / "simlex999.txt"),
                    "--restrict", str(restrict), "--json")
    assert result.exit_code == 0, result.stderr
    ours = json.loads(result.stdout)

    reference = KeyedVectors.load_word2vec_format(str(path))
    with np.errstate(all="ignore"):
        score, sections = reference.evaluate_word_analogies(str(EVAL / "questions-words.txt"),
                                                            restrict_vocab=restrict)
    overall = ours["analogies"][0]["overall"]
    assert 0.05 < overall["accuracy"] < 0.95
    assert overall["accuracy"] * 100 == pytest.approx(score * 100, abs=0.1)
    gensim_total = sections[-1]
    assert overall["answered"] == len(gensim_total["correct"]) + len(gensim_total["incorrect"])
    by_name = {s["section"]: s for s in ours["analogies"][0]["sections"]}
    for section in sections[:-1]:
        answered = len(section["correct"]) + len(section["incorrect"])
        assert by_name[section["section"]]["answered"] == answered
    for ours_pairs, name in zip(ours["similarity"], ("wordsim353.tsv", "simlex999.txt")):
        pearson, spearman, oov = reference.evaluate_word_pairs(str(EVAL / name), restrict_vocab=restrict)
        assert ours_pairs["pearson"] == pytest.approx(pearson[0], abs=0.001)
        assert ours_pairs["spearman"] == pytest.approx(spearman.statistic, abs=0.001)
        assert ours_pairs["oov_share"] * 100 == pytest.approx(oov, abs=1e-9)


def test_npy_export_matches_gensim_vectors(tmp_path):
    # The .npy matrix and its word list equal gensim's vectors and index_to_key.
    words, matrix = random_vectors()
    path = tmp_path / "v.npy"
    written = write_vectors(str(path), words, matrix, "npy")
    assert written == [str(path), str(tmp_path / "v.words.txt")]
    keyed = KeyedVectors(matrix.shape[1])
    keyed.add_vectors(words, matrix)
    assert np.load(path, allow_pickle=False).tobytes() == keyed.vectors.tobytes()
    assert (tmp_path / "v.words.txt").read_text(encoding="utf-8").splitlines() == keyed.index_to_key


def test_pickle_and_empty_bin_messages(tmp_path):
    # A gensim .kv file is a pickle, which embcli never loads; a fastText .bin starts with its magic.
    words, matrix = random_vectors()
    keyed = KeyedVectors(matrix.shape[1])
    keyed.add_vectors(words, matrix)
    keyed.save(str(tmp_path / "vectors.kv"))
    result = invoke("import", str(tmp_path / "vectors.kv"), "-m", str(tmp_path / "a"))
    assert result.exit_code == 1
    assert "is a Python pickle" in result.stderr
    assert "save_word2vec_format" in result.stderr
    (tmp_path / "model.bin").write_bytes((793712314).to_bytes(4, "little") + (12).to_bytes(4, "little") + bytes(64))
    result = invoke("import", str(tmp_path / "model.bin"), "-m", str(tmp_path / "b"))
    assert result.exit_code == 1
    assert "the fastText model is truncated: it ends inside its settings" in result.stderr
