"""The Python API (embcli.*, embcli.model.Model): defaults, input checks and errors."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

import embcli
from embcli import errors, search
from embcli.cli import app, error_message

from conftest import DATA

runner = CliRunner()


@pytest.fixture
def kings(tmp_path):
    """The six-word model of tests/data/cases/20-*, imported; returns its directory."""
    source = next((DATA / "cases").glob("20-*")) / "vectors.txt"
    directory = str(tmp_path / "kings")
    embcli.import_vectors(str(source), model=directory)
    return directory


def write_word2vec(path, words, matrix):
    lines = [f"{len(words)} {matrix.shape[1]}"]
    lines += [word + " " + " ".join(repr(float(value)) for value in row) for word, row in zip(words, matrix)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


# Export format


@pytest.mark.parametrize("name", ["out.bin", "OUT.BIN", "out.npy", "out.vec", "out.txt", "out"])
def test_export_default_format_matches_cli(kings, tmp_path, name):
    python_dir = tmp_path / "python"
    cli_dir = tmp_path / "cli"
    python_dir.mkdir()
    cli_dir.mkdir()
    written = embcli.export_vectors(str(python_dir / name), model=kings)
    result = runner.invoke(app, ["export", str(cli_dir / name), "-m", kings, "-q"])
    assert result.exit_code == 0, result.stderr
    assert sorted(os.listdir(python_dir)) == sorted(os.listdir(cli_dir))
    for path in written:
        other = cli_dir / os.path.basename(path)
        assert open(path, "rb").read() == other.read_bytes(), path


@pytest.mark.parametrize("name, expected", [("out.bin", "word2vec-binary"), ("out.npy", "npy"),
                                            ("out.vec", "fasttext"), ("out.tsv", "word2vec")])
def test_export_format_none_picks_extension(kings, tmp_path, name, expected):
    detected = tmp_path / ("detected-" + name)
    explicit = tmp_path / ("explicit-" + name)
    embcli.export_vectors(str(detected), model=kings, format=None)
    embcli.export_vectors(str(explicit), model=kings, format=expected)
    assert detected.read_bytes() == explicit.read_bytes()


def test_export_binary_name_is_not_text(kings, tmp_path):
    out = tmp_path / "vectors.bin"
    embcli.export_vectors(out, model=kings)
    again = embcli.import_vectors(str(out), model=str(tmp_path / "again"))
    assert again.meta["imported"]["format"] == "word2vec-binary"


# Query vectors


@pytest.mark.parametrize("values, cli_text, expected", [
    (np.full(3, np.nan), "nan nan nan", "the vector contains NaN or infinity"),
    (np.array([np.inf, 0.0, 1.0]), "inf 0 1", "the vector contains NaN or infinity"),
    (np.zeros(3), "0 0 0", "the vector is all zeros in float32, so cosine similarity is undefined"),
    (np.array([1e39, 1.0, 1.0]), "1e39 1 1", "is outside the float32 range (about -3.4e38 to 3.4e38)"),
])
def test_neighbors_of_vector_rejects_like_cli(kings, values, cli_text, expected):
    model = embcli.load(kings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(embcli.QueryError) as caught:
            model.neighbors_of_vector(values)
    assert str(caught.value).startswith("vector: ")
    assert expected in str(caught.value)
    result = runner.invoke(app, ["neighbors", "-m", kings, "--vector", cli_text])
    assert result.exit_code == 1
    assert expected in result.stderr


def test_neighbors_of_vectors_names_bad_row(kings):
    model = embcli.load(kings)
    vectors = np.ones((3, 3))
    vectors[2] = 0.0
    with pytest.raises(embcli.QueryError, match="^vectors row 2: the vector is all zeros"):
        model.neighbors_of_vectors(vectors)
    vectors[1, 1] = -1e39
    with pytest.raises(embcli.QueryError, match="^vectors row 1: the value -1e\\+39 is outside the float32 range"):
        model.neighbors_of_vectors(vectors)


def test_neighbors_of_vector_accepts_tiny_and_large(kings):
    model = embcli.load(kings)
    tiny = model.neighbors_of_vector([1e-45, 0.0, 0.0], k=1)
    large = model.neighbors_of_vector([3e38, 0.0, 0.0], k=1)
    assert tiny == large
    assert tiny[0][0] == "man"


# A model object opened before the directory changed


@pytest.fixture
def subword_model(tmp_path, small_corpus):
    directory = str(tmp_path / "subwords")
    embcli.build_vocab(small_corpus, model=directory, min_count=3)
    embcli.train_vectors(model=directory, subwords="3-4", buckets=5000, dim=8, epochs=1, threads=1)
    return directory


def test_stale_model_after_retrain(subword_model):
    stale = embcli.load(subword_model)
    embcli.train_vectors(model=subword_model, subwords="3-4", buckets=5000, dim=8, epochs=1, threads=1, seed=2)
    with pytest.raises(embcli.ModelCorrupt) as caught:
        stale.neighbors("tabernaclesque")
    message = str(caught.value)
    assert "was changed on disk after this object opened it" in message
    assert "open it again with embcli.load" in message
    fresh = embcli.load(subword_model)
    assert len(fresh.neighbors("lord", k=2)) == 2


def test_stale_model_after_retrain_without_subwords(subword_model):
    stale = embcli.load(subword_model)
    embcli.train_vectors(model=subword_model, dim=8, epochs=1, threads=1)
    with pytest.raises(embcli.ModelCorrupt, match="open it again with embcli.load"):
        stale.neighbors("tabernaclesque")


def test_replaced_subwords_file_is_still_corrupt(subword_model):
    opened = embcli.load(subword_model)
    path = os.path.join(subword_model, "subwords.npy")
    np.save(path, np.ones((5000, 8), dtype=np.float32))
    with pytest.raises(embcli.ModelCorrupt) as caught:
        opened.neighbors("tabernaclesque")
    assert "does not belong to this model's meta.json" in str(caught.value)
    assert "embcli.load" not in str(caught.value)


# Argument types


def test_batches_accept_generators(kings):
    model = embcli.load(kings)
    words = ["king", "apple"]
    assert model.neighbors_batch(word for word in words) == model.neighbors_batch(words)
    triples = [("man", "king", "woman"), ("pear", "apple", "queen")]
    assert model.analogy_batch(triple for triple in triples) == model.analogy_batch(triples)
    assert model.analogy_batch(iter([["man", "king", "woman"]]), k=1)[0][0][0] == "queen"


def test_batches_reject_str(kings):
    model = embcli.load(kings)
    with pytest.raises(TypeError, match="pass a list of words, not a str"):
        model.neighbors_batch("king")
    with pytest.raises(TypeError, match="not a str"):
        model.analogy_batch("abc")
    with pytest.raises(TypeError, match="triple of words"):
        model.analogy_batch(["abc"])
    with pytest.raises(TypeError, match="triple of words"):
        model.analogy_batch([("man", "king")])


def test_word_checks_row(kings):
    model = embcli.load(kings)
    assert model.word(1) == "queen"
    assert model.word(np.int64(5)) == "pear"
    for row in (6, 10**9, -1):
        with pytest.raises(IndexError, match=f"row {row} is outside 0..5"):
            model.word(row)
    for row in ("king", 1.0, True):
        with pytest.raises(TypeError, match="a row must be an int"):
            model.word(row)


def test_model_iterates_words(kings):
    model = embcli.load(kings)
    assert list(model) == ["king", "queen", "man", "woman", "apple", "pear"]
    assert list(model) == model.words
    assert dict.fromkeys(model).keys() == model.index.keys()


def test_contains_non_str_is_false(kings):
    model = embcli.load(kings)
    for key in (None, b"king", 0, ("king",)):
        assert key not in model
    assert "king" in model


def test_train_vectors_checks_setting_types(tmp_path, small_corpus):
    directory = str(tmp_path / "model")
    embcli.build_vocab(small_corpus, model=directory, min_count=3)
    cases = [("epochs", "1", "epochs must be an int, not str '1'"),
             ("dim", 2.5, "dim must be an int, not float 2.5"),
             ("window", True, "window must be an int, not bool True"),
             ("lr", "0.1", "lr must be a number or None, not str '0.1'"),
             ("sample", None, "sample must be a number, not NoneType None"),
             ("method", 1, "method must be a str, not int 1")]
    for name, value, expected in cases:
        with pytest.raises(TypeError) as caught:
            embcli.train_vectors(model=directory, threads=1, **{name: value})
        assert str(caught.value) == expected
    with pytest.raises(TypeError, match="subwords must be a range"):
        embcli.train_vectors(model=directory, subwords=(3, "6"))
    assert not os.path.exists(os.path.join(directory, "embeddings.npy"))


def test_train_vectors_takes_numpy_numbers(tmp_path, small_corpus):
    directory = str(tmp_path / "model")
    embcli.build_vocab(small_corpus, model=directory, min_count=3)
    embcli.train_vectors(model=directory, dim=np.int64(8), epochs=np.int32(1), lr=np.float64(0.025),
                         sample=0, threads=1)
    meta = json.loads(open(os.path.join(directory, "meta.json"), encoding="utf-8").read())
    assert meta["dim"] == 8


# The word index


def test_index_is_read_only(kings):
    model = embcli.load(kings)
    before = model.neighbors("king", k=3)
    with pytest.raises(TypeError):
        model.index["king"] = 0
    with pytest.raises(TypeError):
        del model.index["king"]
    assert model.index["king"] == 0
    assert model.index["pear"] == 5
    assert model.neighbors("king", k=3) == before
    assert model.row("pear") == 5


# Errors


def test_import_over_model_names_setting(kings, tmp_path):
    with pytest.raises(embcli.VectorFileError) as caught:
        embcli.import_vectors(str(next((DATA / "cases").glob("20-*")) / "vectors.txt"), model=kings)
    assert "already contains a model" in str(caught.value)
    assert "--" not in str(caught.value)
    assert caught.value.options == ("force",)
    assert error_message(caught.value).endswith("[--force]")


def test_import_force_replaces_model(kings, tmp_path):
    source = write_word2vec(tmp_path / "two.txt", ["alpha", "beta"], np.eye(2, dtype=np.float32))
    replaced = embcli.import_vectors(source, model=kings, force=True)
    assert replaced.words == ["alpha", "beta"]


def test_exceptions_at_top_level():
    for name in ("EmbcliError", "CorpusError", "EncodingError", "EmptyCorpus", "ModelNotFound", "ModelCorrupt",
                 "DiskFull", "ModelBusy", "UnknownWord", "QueryError", "VectorFileError", "TrainingError",
                 "TrainingDiverged", "TrainingInterrupted"):
        assert getattr(embcli, name) is getattr(errors, name), name
        assert name in embcli.__all__
    from embcli.evaluate import EvaluationError

    assert embcli.EvaluationError is EvaluationError
    for name in embcli.__all__:
        assert hasattr(embcli, name), name
    with pytest.raises(AttributeError):
        embcli.NoSuchError  # noqa: B018


def test_unknown_word_caught_from_top_level(kings):
    model = embcli.load(kings)
    with pytest.raises(embcli.UnknownWord):
        model.vector("unicornword")


def test_import_embcli_stays_light():
    code = "import sys, embcli; embcli.QueryError; print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# Exact search


def brute_force(matrix, queries, k):
    """Return the k best rows per query by cosine as lists, with ties to the lower row."""
    units = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    found = []
    for query in queries:
        cosines = (units @ (query / np.linalg.norm(query))).astype(np.float32)
        order = np.lexsort((np.arange(len(cosines)), -cosines))[:k]
        found.append(order.tolist())
    return found


def test_top_k_neighbours_in_late_rows():
    # The first rows point one way and the late rows another, so the best rows of a
    # late query are far past the first 1,024, where the search used to seed its top k.
    rng = np.random.default_rng(5)
    rows = 6000
    matrix = rng.standard_normal((rows, 16)).astype(np.float32) * 0.05
    matrix[:3000, 0] += 1.0
    matrix[3000:, 1] += 1.0
    # Copies of a row at several places: equal scores must go to the lower row.
    matrix[[4000, 4500, 5999]] = matrix[3500]
    queries = np.asarray(matrix[[3500, 5000, 10, 5999]], dtype=np.float32)
    for k in (1, 3, 10, 50):
        results = search.top_k(matrix, queries, k)
        expected = brute_force(matrix.astype(np.float64), queries.astype(np.float64), k)
        for (index, _), rows_expected in zip(results, expected):
            assert index.tolist() == rows_expected
    first, _ = search.top_k(matrix, queries[:1], 4)[0]
    assert first.tolist() == [3500, 4000, 4500, 5999]


def test_top_k_non_finite_query_gets_nothing():
    matrix = np.eye(4, dtype=np.float32)
    queries = np.array([[np.nan, 0, 0, 0], [1, 0, 0, 0], [np.inf, 1, 0, 0]], dtype=np.float32)
    results = search.top_k(matrix, queries, 2)
    assert [index.tolist() for index, _ in results] == [[], [0, 1], []]
    cosmul = search.top_k_cosmul(matrix, queries, matrix[:3], matrix[:3], 2)
    assert cosmul[0][0].tolist() == []
    assert cosmul[2][0].tolist() == []
    assert len(cosmul[1][0]) == 2
