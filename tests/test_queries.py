"""neighbors, analogy and similarity on hand-made and imported vectors, and the Python API."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import embcli
from embcli import search
from embcli.cli import app

from conftest import DATA

CASES = DATA / "cases"
runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, list(args), input=input)


def imported(name, tmp_path):
    directory = next(CASES.glob(f"{name}-*"))
    model = str(tmp_path / name)
    result = invoke("import", str(directory / "vectors.txt"), "-m", model, "-q")
    assert result.exit_code == 0, result.stderr
    return model


def test_zero_vector_query_is_an_error(tmp_path):
    model = imported("18", tmp_path)
    result = invoke("neighbors", "-m", model, "pad")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "all zeros" in result.stderr


def test_zero_vector_never_gives_nan(tmp_path):
    model = imported("18", tmp_path)
    result = invoke("neighbors", "-m", model, "cat")
    assert result.exit_code == 0
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["dog", "the", "pad"]
    assert result.stdout.splitlines()[-1] == "pad\t0.0000"
    assert "nan" not in result.stdout and "inf" not in result.stdout
    result = invoke("similarity", "-m", model, "cat", "pad")
    assert result.stdout == "0.0000\n"


def test_analogy_leaves_inputs_out(tmp_path):
    model = imported("20", tmp_path)
    result = invoke("analogy", "-m", model, "man", "king", "woman")
    assert result.exit_code == 0
    answers = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert answers[0] == "queen"
    assert not {"king", "man", "woman"} & set(answers)


def test_analogy_include_inputs_gives_king(tmp_path):
    model = imported("20", tmp_path)
    result = invoke("analogy", "-m", model, "man", "king", "woman", "--include-inputs", "-k", "2")
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["king", "queen"]


def test_analogy_3cosmul_ranks_queen_first(tmp_path):
    model = imported("20", tmp_path)
    result = invoke("analogy", "-m", model, "man", "king", "woman", "--method", "3cosmul", "--json")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[0]["word"] == "queen"
    assert records[0]["query"] == ["man", "king", "woman"]


def test_analogy_batch_reports_bad_lines(tmp_path):
    model = imported("20", tmp_path)
    result = invoke("analogy", "-m", model, "-", "-k", "1", input="man king woman\nman unicornword woman\nonly two\n"
                    "woman queen man\n")
    assert result.exit_code == 1
    single = [invoke("analogy", "-m", model, *triple.split(), "-k", "1").stdout
              for triple in ("man king woman", "woman queen man")]
    assert result.stdout.splitlines() == ["man\tking\twoman\t" + single[0].strip(),
                                          "woman\tqueen\tman\t" + single[1].strip()]
    assert single[0].startswith("queen\t")
    assert "unicornword: not in vocabulary" in result.stderr
    assert "expected three words" in result.stderr


def test_oov_lookup_prints_nothing(tmp_path):
    model = imported("21", tmp_path)
    for command in ("lookup", "neighbors"):
        result = invoke(command, "-m", model, "unicornword")
        assert result.exit_code == 1
        assert result.stdout == ""
        assert result.stderr == f"embcli: error: unicornword: not in vocabulary (6 words in {model})\n"


def test_oov_batch_answers_others_in_order(tmp_path):
    model = imported("21", tmp_path)
    queries = (CASES / "21-oov-query" / "queries.txt").read_text()
    result = invoke("neighbors", "-m", model, "-", "-k", "1", input=queries)
    assert result.exit_code == 1
    assert result.stdout == "king\tqueen\t0.8863\nqueen\tking\t0.8863\n"
    assert result.stderr.count("embcli: error:") == 1


def test_similarity_batch_and_json(tmp_path):
    model = imported("21", tmp_path)
    result = invoke("similarity", "-m", model, "-", "--json", input="king\tqueen\nking\tnope\nman woman\n")
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["word1"], r["word2"]) for r in records] == [("king", "queen"), ("man", "woman")]
    assert records[0]["score"] == pytest.approx(0.886261, abs=1e-6)


def test_similarity_matches_neighbors(tmp_path):
    model = imported("21", tmp_path)
    listing = invoke("neighbors", "-m", model, "king", "-k", "5").stdout.splitlines()
    for line in listing:
        word, score = line.split("\t")
        assert invoke("similarity", "-m", model, "king", word).stdout.strip() == score


def test_neighbors_restrict_searches_top_rows(tmp_path):
    model = imported("21", tmp_path)
    result = invoke("neighbors", "-m", model, "apple", "--restrict", "3")
    # The first three rows are king, queen and man; woman and pear are nearer apple but later.
    assert sorted(line.split("\t")[0] for line in result.stdout.splitlines()) == ["king", "man", "queen"]


def test_neighbors_vector_from_stdin(tmp_path):
    model = imported("21", tmp_path)
    result = invoke("neighbors", "-m", model, "--vector", "-", "-k", "1",
                    input="0.5 0.5 0.7\n\n1 2\n0.9\t0.1\t0\n")
    assert result.exit_code == 1
    assert result.stdout == "1\tking\t1.0000\n4\tman\t1.0000\n"
    assert "<stdin>: line 3: the vector has 2 values, but the model has 3 dimensions" in result.stderr


def test_neighbors_vector_and_words_conflict(tmp_path):
    model = imported("21", tmp_path)
    result = invoke("neighbors", "-m", model, "king", "--vector", "1 2 3")
    assert result.exit_code == 2


def test_blocked_search_matches_brute_force():
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((3000, 16)).astype(np.float32)
    matrix[7] = 0
    queries = rng.standard_normal((40, 16)).astype(np.float32)
    old_rows, old_queries = search.ROW_BLOCK, search.QUERY_BLOCK
    search.ROW_BLOCK, search.QUERY_BLOCK = 700, 16
    try:
        results = search.top_k(matrix, queries, 9, exclude=[(q,) for q in range(40)], limit=2500)
    finally:
        search.ROW_BLOCK, search.QUERY_BLOCK = old_rows, old_queries
    norms = np.linalg.norm(matrix[:2500], axis=1)
    for q, (index, score) in enumerate(results):
        cosines = matrix[:2500] @ queries[q] / np.where(norms > 0, norms, 1) / np.linalg.norm(queries[q])
        cosines[[q, 7]] = -np.inf
        expected = np.argsort(-cosines, kind="stable")[:9]
        assert index.tolist() == expected.tolist()
        np.testing.assert_allclose(score, cosines[expected], rtol=1e-5)


def test_python_api_queries(tmp_path):
    model = embcli.load(imported("20", tmp_path))
    assert model.vector("king").dtype == np.float32
    assert model.neighbors("king", k=1)[0][0] == "queen"
    assert model.analogy("man", "king", "woman", k=1)[0][0] == "queen"
    assert model.similarity("king", "king") == pytest.approx(1.0)
    assert "queen" in model and "unicornword" not in model
    assert model["king"].tobytes() == model.vector("king").tobytes()
    with pytest.raises(KeyError):
        model["unicornword"]  # noqa: B018


def test_python_api_build_train_import_export(tmp_path, small_corpus):
    directory = str(tmp_path / "api")
    summary = embcli.build_vocab(small_corpus, model=directory, min_count=3)
    assert summary.kept > 100
    stats = embcli.train_vectors(model=directory, dim=8, epochs=1, threads=1)
    assert stats.words > 0
    model = embcli.load(directory)
    assert model.dim == 8
    out = str(tmp_path / "out.bin")
    embcli.export_vectors(out, model=directory, format="word2vec-binary")
    again = embcli.import_vectors(out, model=str(tmp_path / "again"))
    assert again.words == model.words
    np.testing.assert_array_equal(np.asarray(again.matrix), np.asarray(model.matrix))


def test_python_api_trains_subwords(tmp_path, small_corpus):
    directory = str(tmp_path / "api")
    embcli.build_vocab(small_corpus, model=directory, min_count=3)
    embcli.train_vectors(model=directory, subwords="3-4", buckets=5000, dim=8, epochs=1, threads=1)
    model = embcli.load(directory)
    assert model.meta["subwords"]["min_n"] == 3
    assert model.meta["subwords"]["max_n"] == 4
    assert "tabernacles" in model
    with pytest.raises(TypeError, match="min_count"):
        embcli.train_vectors(model=directory, min_count=3)


def test_to_torch_is_the_only_torch_import(tmp_path):
    model = imported("20", tmp_path)
    code = (
        "import sys, embcli\n"
        f"m = embcli.load({model!r})\n"
        "m.neighbors('king'); m.analogy('man', 'king', 'woman'); m.similarity('king', 'queen')\n"
        "assert 'torch' not in sys.modules\n"
        "e = m.to_torch()\n"
        "print(type(e).__name__, tuple(e.weight.shape), float(e.weight[0, 2]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    assert result.returncode == 0, result.stderr
    name, shape_and_value = result.stdout.split(" ", 1)
    assert name == "Embedding"
    assert shape_and_value.startswith("(6, 3) 0.69999")


def test_new_commands_have_help():
    for command in ("analogy", "similarity", "evaluate", "export", "import"):
        result = invoke(command, "--help")
        assert result.exit_code == 0, command
        assert "Usage" in result.stdout


def test_api_rejects_bad_k_and_word_lists(tmp_path):
    from embcli.errors import QueryError

    model = embcli.load(imported("20", tmp_path))
    for bad in (dict(k=-1), dict(k=2.5), dict(restrict=0)):
        with pytest.raises(QueryError):
            model.neighbors("king", **bad)
    with pytest.raises(TypeError, match="must be a str"):
        model.neighbors(["king", "queen"])
    assert len(model.neighbors("king", k=2)) == 2


def test_api_k_zero_and_key_error(tmp_path):
    from embcli.errors import UnknownWord

    model = embcli.load(imported("20", tmp_path))
    assert model.neighbors("king", k=0) == []
    assert model.neighbors_batch(["king", "queen"], k=0) == [[], []]
    assert model.analogy("man", "king", "woman", k=0) == []
    with pytest.raises(KeyError):
        model.vector("unicornword")
    with pytest.raises(KeyError) as caught:
        model.similarity("king", "unicornword")
    assert isinstance(caught.value, UnknownWord)
    assert str(caught.value).startswith("unicornword: not in vocabulary")
    assert caught.value.word == "unicornword"
