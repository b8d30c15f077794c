"""Damaged model directories, commits cut short, and queries at their edges."""

import json
import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from embcli import store
from embcli.cli import app
from embcli.errors import ModelCorrupt, ModelNotFound, QueryError
from embcli.model import Model

runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, [str(arg) for arg in args], input=input)


@pytest.fixture
def model_copy(trained_model, tmp_path):
    """A private copy of the trained model that a test may damage."""
    return shutil.copytree(trained_model, str(tmp_path / "copy"))


def rewrite_embeddings(model_dir, array, record=True, allow_pickle=False):
    """Replace embeddings.npy with `array`; with `record`, update the fingerprint too."""
    path = os.path.join(model_dir, "embeddings.npy")
    np.save(path, array, allow_pickle=allow_pickle)
    if record:
        meta = json.load(open(os.path.join(model_dir, "meta.json"), encoding="utf-8"))
        meta["files"]["embeddings.npy"] = store.fingerprint(path)
        json.dump(meta, open(os.path.join(model_dir, "meta.json"), "w", encoding="utf-8"))


def lookup_error(model_dir, word="lord"):
    result = invoke("lookup", "-m", model_dir, word)
    assert result.exit_code == 1, result.stdout
    assert result.stderr.startswith("embcli: error: ")
    assert "Traceback" not in result.stderr
    return result.stderr


def test_missing_embeddings_says_train(model_copy):
    os.remove(os.path.join(model_copy, "embeddings.npy"))
    assert "missing" in lookup_error(model_copy)


def test_truncated_embeddings_is_corrupt(model_copy):
    path = os.path.join(model_copy, "embeddings.npy")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    assert "does not belong to this model" in lookup_error(model_copy)
    rewrite_embeddings(model_copy, np.zeros((3, 4), np.float32))
    open(path, "wb").write(open(path, "rb").read()[:100])
    meta = json.load(open(os.path.join(model_copy, "meta.json")))
    meta["files"]["embeddings.npy"] = store.fingerprint(path)
    json.dump(meta, open(os.path.join(model_copy, "meta.json"), "w"))
    assert "not a valid .npy file" in lookup_error(model_copy)


def test_row_count_mismatch(model_copy):
    matrix = np.load(os.path.join(model_copy, "embeddings.npy"))
    rewrite_embeddings(model_copy, matrix[:-1])
    assert "rows but the vocabulary has" in lookup_error(model_copy)


@pytest.mark.parametrize(
    ("array", "message"),
    [(np.zeros((5, 2, 2), np.float32), "expected a 2-D matrix"),
     (np.zeros(5, np.float32), "expected a 2-D matrix"),
     (np.zeros((5, 2), np.int32), "expected float32 values"),
     (np.zeros((5, 2), np.complex64), "expected float32 values")],
    ids=["3-D", "1-D", "int32", "complex"],
)
def test_wrong_shape_or_dtype(model_copy, array, message):
    rewrite_embeddings(model_copy, array)
    assert message in lookup_error(model_copy)


def test_float64_matrix_is_read_as_float32(model_copy):
    matrix = np.load(os.path.join(model_copy, "embeddings.npy"))
    rewrite_embeddings(model_copy, matrix.astype(np.float64))
    vector = Model.open(model_copy).vector("lord")
    assert vector.dtype == np.float32


def test_pickled_matrix_is_never_unpickled(model_copy, tmp_path):
    marker = tmp_path / "unpickled"
    array = np.array([_Explode(str(marker))] * 3, dtype=object)
    rewrite_embeddings(model_copy, array, allow_pickle=True)
    stderr = lookup_error(model_copy)
    assert "object (pickled) array" in stderr
    assert not marker.exists()


class _Explode:
    """Unpickling this object creates a file: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_unlisted_embeddings_rejected(model_copy):
    meta = json.load(open(os.path.join(model_copy, "meta.json")))
    del meta["files"]["embeddings.npy"]
    json.dump(meta, open(os.path.join(model_copy, "meta.json"), "w"))
    assert "is not listed in meta.json" in lookup_error(model_copy)


def test_swapped_vocabulary_rejected(model_copy):
    path = os.path.join(model_copy, "vocab.tsv")
    lines = open(path, encoding="utf-8").read().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    open(path, "w", encoding="utf-8").write("\n".join(lines) + "\n")
    assert "does not belong to this model" in lookup_error(model_copy)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"format_version": 99}, "format version 99"),
     ({"format_version": "1"}, "meta.json: format_version should be an integer, not '1'"),
     ({"format_version": None}, "format_version should be an integer, not None"),
     ({"files": ["vocab.tsv"]}, "'files' should be a JSON dict"),
     ({"tokenizer": "default"}, "'tokenizer' should be a JSON dict"),
     ({"tokenizer": {"name": "bogus"}}, "meta.json: unknown tokenizer 'bogus' (this embcli has default, "),
     ({"tokenizer": {"name": "default", "lowercase": "yes"}}, "lowercase should be true or false, not 'yes'"),
     ({"dim": -3}, "dim should be a positive integer")],
    ids=["newer", "string-version", "null-version", "files-list", "tokenizer-string", "tokenizer-unknown",
         "lowercase-string", "negative-dim"],
)
def test_bad_metadata(model_copy, change, message):
    meta = json.load(open(os.path.join(model_copy, "meta.json")))
    meta.update(change)
    json.dump(meta, open(os.path.join(model_copy, "meta.json"), "w"))
    assert message in lookup_error(model_copy)
    info = invoke("info", "-m", model_copy)
    assert info.exit_code == 1
    assert message in info.stderr


def test_missing_format_version(model_copy):
    meta = json.load(open(os.path.join(model_copy, "meta.json")))
    del meta["format_version"]
    json.dump(meta, open(os.path.join(model_copy, "meta.json"), "w"))
    assert "meta.json: no format_version" in lookup_error(model_copy)


def test_store_knows_every_tokenizer():
    from embcli import store, tokenize

    assert store.TOKENIZER_NAMES == tokenize.TOKENIZER_NAMES


def test_meta_not_json(model_copy):
    open(os.path.join(model_copy, "meta.json"), "wb").write(b"\x00{not json")
    assert "not valid JSON" in lookup_error(model_copy)


def test_duplicate_vocabulary_word(model_copy):
    path = os.path.join(model_copy, "vocab.tsv")
    lines = open(path, encoding="utf-8").read().splitlines()
    lines[3] = lines[1].split("\t")[0] + "\t" + lines[3].split("\t")[1]
    open(path, "w", encoding="utf-8").write("\n".join(lines) + "\n")
    meta = json.load(open(os.path.join(model_copy, "meta.json")))
    meta["files"]["vocab.tsv"] = store.fingerprint(path)
    json.dump(meta, open(os.path.join(model_copy, "meta.json"), "w"))
    # A query checks its own word; reading the whole word list checks every word.
    twice = lines[1].split("\t")[0]
    assert "is on line 2 and again on line 4" in lookup_error(model_copy, twice)
    with pytest.raises(ModelCorrupt, match="is on line 2 and again on line 4"):
        Model.open(model_copy).index  # noqa: B018


def test_non_finite_rows_reported(model_copy):
    matrix = np.load(os.path.join(model_copy, "embeddings.npy"))
    matrix[4, 0] = np.nan
    rewrite_embeddings(model_copy, matrix)
    model = Model.open(model_copy)
    with pytest.raises(ModelCorrupt, match="NaN or infinite"):
        model.vector(model.words[4])
    result = invoke("neighbors", "-m", model_copy, "lord")
    assert result.exit_code == 1
    assert f"row 4 ({model.words[4]!r})" in result.stderr


def test_zero_vector_scores_defined(model_copy):
    model = Model.open(model_copy)
    matrix = np.load(os.path.join(model_copy, "embeddings.npy"))
    matrix[7] = 0
    rewrite_embeddings(model_copy, matrix)
    result = invoke("neighbors", "-m", model_copy, "lord", "-k", "100000")
    assert result.exit_code == 0
    scores = {line.split("\t")[0]: float(line.split("\t")[1]) for line in result.stdout.splitlines()}
    assert scores[model.words[7]] == 0.0
    assert all(np.isfinite(list(scores.values())))
    zero = invoke("neighbors", "-m", model_copy, model.words[7])
    assert zero.exit_code == 1
    assert "all zeros" in zero.stderr


def test_not_a_model_directory(tmp_path):
    file_path = tmp_path / "file.txt"
    file_path.write_text("x")
    with pytest.raises(ModelNotFound, match="not a model directory"):
        Model.open(str(file_path))
    result = invoke("build-vocab", file_path, "-m", file_path)
    assert result.exit_code == 1
    assert "exists and is not a directory" in result.stderr


# -- commits cut short -------------------------------------------------------------


class Crash(BaseException):
    """Stands for the process dying at this point."""


def write_set(directory, tag):
    """Commit vocab.tsv, embeddings.npy and meta.json that all carry `tag`."""
    renames = _temporaries(directory, tag)
    store.commit(directory, renames)


def _temporaries(directory, tag):
    vocab = store.save_vocab_temp(directory, [f"{tag}a", f"{tag}b"], [3, 2])
    matrix = store.save_npy_temp(directory, "embeddings.npy",
                                 np.full((2, 3), float(len(tag)), np.float32))
    meta = store.new_meta({"name": "whitespace", "lowercase": False})
    meta["tag"] = tag
    meta["files"] = {"vocab.tsv": store.fingerprint(vocab), "embeddings.npy": store.fingerprint(matrix)}
    return {"vocab.tsv": vocab, "embeddings.npy": matrix, "meta.json": store.meta_temp(directory, meta)}


def read_set(directory):
    model = Model.open(directory)
    return model.meta["tag"], model.words, float(model.matrix[0, 0])


@pytest.mark.parametrize("steps", range(0, 8))
def test_commit_killed_after_each_step(tmp_path, monkeypatch, steps):
    directory = str(tmp_path / "m")
    with store.writer_lock(directory):
        write_set(directory, "old")
        renames = _temporaries(directory, "newer")
        done = [0]
        real_replace, real_remove = os.replace, os.remove

        def counted(real):
            def step(*args):
                if done[0] == steps:
                    raise Crash()
                done[0] += 1
                return real(*args)
            return step

        monkeypatch.setattr(os, "replace", counted(real_replace))
        monkeypatch.setattr(os, "remove", counted(real_remove))
        try:
            store.commit(directory, renames, remove=["tokens.npy"])
            crashed = False
        except Crash:
            crashed = True
        monkeypatch.setattr(os, "replace", real_replace)
        monkeypatch.setattr(os, "remove", real_remove)
    tag, words, value = read_set(directory)
    assert not os.path.exists(os.path.join(directory, store.JOURNAL))
    if steps == 0:
        assert crashed
        assert (tag, words, value) == ("old", ["olda", "oldb"], 3.0)
    else:
        assert (tag, words, value) == ("newer", ["newera", "newerb"], 5.0)


def test_reader_waits_for_live_writer_commit(tmp_path):
    directory = str(tmp_path / "m")
    with store.writer_lock(directory):
        write_set(directory, "old")
        # A journal while the lock is held: a commit in progress in another process.
        open(os.path.join(directory, store.JOURNAL), "w").write('{"renames": {}, "remove": []}')
        with pytest.raises(store.ModelBusy, match="has been saving"):
            store.settle(directory, wait=0.2)
        os.remove(os.path.join(directory, store.JOURNAL))
    assert read_set(directory)[0] == "old"


def test_damaged_journal_is_reported(tmp_path):
    directory = str(tmp_path / "m")
    with store.writer_lock(directory):
        write_set(directory, "old")
    open(os.path.join(directory, store.JOURNAL), "w").write("[1, 2")
    with pytest.raises(ModelCorrupt, match="unreadable commit journal"):
        Model.open(directory)


# -- queries at their edges ----------------------------------------------------------


def test_k_zero_prints_nothing(trained_model):
    result = invoke("neighbors", "-m", trained_model, "lord", "-k", "0")
    assert result.exit_code == 0
    assert result.stdout == ""
    unknown = invoke("neighbors", "-m", trained_model, "unicornword", "-k", "0")
    assert unknown.exit_code == 1


def test_k_beyond_vocabulary_lists_every_other_word(trained_model):
    size = len(Model.open(trained_model).words)
    result = invoke("neighbors", "-m", trained_model, "lord", "-k", str(size * 10))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == size - 1
    assert "lord" not in {line.split("\t")[0] for line in lines}


def test_negative_k_is_usage_error(trained_model):
    assert invoke("neighbors", "-m", trained_model, "lord", "-k", "-1").exit_code == 2


@pytest.mark.parametrize("command", ["lookup", "neighbors"])
@pytest.mark.parametrize("stdin", ["", "\n  \n\n"], ids=["empty", "blank-lines"])
def test_empty_stdin_answers_nothing(trained_model, command, stdin):
    result = invoke(command, "-m", trained_model, "-", input=stdin)
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == ""


def test_unknown_words_reported_others_answered(trained_model):
    result = invoke("lookup", "-m", trained_model, "lord", "unicornword", "god")
    assert result.exit_code == 1
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["lord", "god"]
    assert result.stderr.count("not in vocabulary") == 1


def test_build_vocab_over_trained_model(model_copy, small_corpus):
    before = open(os.path.join(model_copy, "embeddings.npy"), "rb").read()
    result = invoke("build-vocab", small_corpus, "-m", model_copy, "--min-count", "4")
    assert result.exit_code == 1
    assert "already contains trained embeddings" in result.stderr
    assert "[--force]" in result.stderr
    assert open(os.path.join(model_copy, "embeddings.npy"), "rb").read() == before

    assert invoke("index", "-m", model_copy, "--kind", "hnsw", "-q").exit_code == 0
    derived = ["norms.npy", "ann.json", "ann-hnsw.bin"]
    assert all(os.path.exists(os.path.join(model_copy, name)) for name in derived)
    result = invoke("build-vocab", small_corpus, "-m", model_copy, "--min-count", "4", "--force")
    assert result.exit_code == 0, result.stderr
    assert not os.path.exists(os.path.join(model_copy, "embeddings.npy"))
    for name in derived:
        assert not os.path.exists(os.path.join(model_copy, name)), name
    assert "embeddings.npy" not in store.read_meta(model_copy)["files"]
    missing = invoke("lookup", "-m", model_copy, "lord")
    assert missing.exit_code == 1
    assert "no embeddings; run 'embcli train' first" in missing.stderr


def test_stdin_invalid_line_reported_others_answered(trained_model):
    data = "\ufefflord\r\n".encode() + b"caf\xe9\n" + b"god\n"
    result = runner.invoke(app, ["lookup", "-m", trained_model, "-"], input=data)
    assert result.exit_code == 1
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["lord", "god"]
    assert "<stdin>: line 2: invalid UTF-8 (byte 0xe9" in result.stderr
    assert "Traceback" not in result.stderr
    # The failure count belongs to one command: the next one starts clean.
    assert invoke("lookup", "-m", trained_model, "lord").exit_code == 0


@pytest.mark.parametrize(
    ("tokens", "message"),
    [(np.array([0, 1, 99999, 0xFFFFFFFF], np.uint32), "beyond the vocabulary"),
     (np.zeros(4, np.float32), "expected a 1-D uint32 array"),
     (None, "not a valid token cache")],
    ids=["id-out-of-range", "float-tokens", "truncated"],
)
def test_damaged_token_cache(model_copy, tokens, message):
    path = os.path.join(model_copy, "tokens.npy")
    if tokens is None:
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    else:
        np.save(path, tokens)
    meta = json.load(open(os.path.join(model_copy, "meta.json")))
    meta["files"]["tokens.npy"] = store.fingerprint(path)
    json.dump(meta, open(os.path.join(model_copy, "meta.json"), "w"))
    result = invoke("train", "-m", model_copy, "--threads", "1", "--epochs", "1", "--force")
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_fingerprints_of_earlier_versions_still_checked(model_copy):
    # Models saved by embcli 0.1 carry fingerprints of the first and last MiB, unprefixed.
    meta_path = os.path.join(model_copy, "meta.json")
    meta = json.load(open(meta_path))
    for name in meta["files"]:
        meta["files"][name] = store.fingerprint(os.path.join(model_copy, name), store.LEGACY_FINGERPRINT_WINDOW)
        assert not meta["files"][name].startswith("2:")
    json.dump(meta, open(meta_path, "w"))
    assert invoke("lookup", "-m", model_copy, "lord").exit_code == 0
    with open(os.path.join(model_copy, "vocab.tsv"), "ab") as handle:
        handle.write(b"extra\t1\n")
    assert "was changed or replaced" in lookup_error(model_copy)


def test_embeddings_edited_after_norms_detected(model_copy):
    # The fingerprints cover the first and last 64 KiB, so an edit of a middle row goes
    # unseen and leaves norms.npy stale. A query whose results include that row reports
    # it instead of printing a cosine above 1.
    model = Model.open(model_copy)
    middle = len(model) // 2
    assert middle * model.dim * 4 > store.FINGERPRINT_WINDOW + 128
    matrix = np.load(os.path.join(model_copy, "embeddings.npy"))
    matrix[middle] *= 10
    rewrite_embeddings(model_copy, matrix, record=False)
    result = invoke("neighbors", "-m", model_copy, "lord", "-k", str(len(model)))
    assert result.exit_code == 1
    assert "norms.npy does not match embeddings.npy" in result.stderr
    assert f"row {middle} ({model.words[middle]!r})" in result.stderr
    # Without norms.npy the norms come from the edited matrix, and cosines stay in range.
    os.remove(os.path.join(model_copy, "norms.npy"))
    meta = json.load(open(os.path.join(model_copy, "meta.json")))
    del meta["files"]["norms.npy"]
    json.dump(meta, open(os.path.join(model_copy, "meta.json"), "w"))
    answered = invoke("neighbors", "-m", model_copy, "lord", "-k", str(len(model)))
    assert answered.exit_code == 0, answered.stderr
    assert max(float(line.split("\t")[1]) for line in answered.stdout.splitlines()) <= 1.0


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_row_edited_to_nan_after_norms_detected(model_copy, value):
    # norms.npy keeps the row's old, finite norm, so only the row itself shows the edit.
    # Every query that would score the row reports it, whatever k is.
    model = Model.open(model_copy)
    middle = len(model) // 2
    word = model.words[middle]
    matrix = np.load(os.path.join(model_copy, "embeddings.npy"))
    matrix[middle, 3] = value
    rewrite_embeddings(model_copy, matrix, record=False)
    expected = f"row {middle} ({word!r}) contains NaN or infinite values"

    first, other = model.words[0], model.words[1]
    for command in (["neighbors", "lord", "-k", "3"], ["neighbors", "lord", "-k", str(len(model))],
                    ["similarity", word, first], ["similarity", first, other],
                    ["analogy", first, other, word], ["analogy", first, other, "lord"],
                    ["analogy", first, other, "lord", "--method", "3cosmul"]):
        result = invoke(*command, "-m", model_copy)
        if command == ["similarity", first, other]:
            assert result.exit_code == 0, result.stderr  # the edited row is not involved
            continue
        assert result.exit_code == 1, (command, result.stdout)
        assert expected in result.stderr, (command, result.stderr)
        assert "Traceback" not in result.stderr

    batch = invoke("similarity", "-", "-m", model_copy, input=f"{first} {other}\n{word} {first}\n")
    assert batch.exit_code == 1
    assert expected in batch.stderr
    assert "line 2" in batch.stderr
    assert [line.split("\t")[:2] for line in batch.stdout.splitlines()] == [[first, other]]

    opened = Model.open(model_copy)
    for call in (lambda: opened.similarity(word, first), lambda: opened.neighbors("lord", 3),
                 lambda: opened.analogy(first, other, "lord")):
        with pytest.raises(ModelCorrupt, match=expected.replace("(", r"\(").replace(")", r"\)")):
            call()


@pytest.mark.parametrize("target, options", [("v.txt", []), ("v.bin", []), ("v.npy", []),
                                             ("projected", ["--format", "projector"])])
def test_export_refuses_rows_with_nan(model_copy, tmp_path, target, options):
    # Every reader rejects NaN, so export names the row instead of writing a file none can read.
    model = Model.open(model_copy)
    matrix = np.load(os.path.join(model_copy, "embeddings.npy"))
    middle = len(model) // 2  # outside the fingerprinted start and end of the file
    matrix[middle, 0] = np.nan
    rewrite_embeddings(model_copy, matrix, record=False)
    output = tmp_path / target
    result = invoke("export", str(output), "-m", model_copy, *options)
    assert result.exit_code == 1
    assert f"row {middle} ({model.words[middle]!r}) contains NaN or infinite values" in result.stderr
    assert not output.exists() or os.listdir(output) == []
    assert [name for name in os.listdir(tmp_path) if name != "copy"] == ([target] if output.exists() else [])


def test_analogy_that_cancels_to_zero_is_an_error(tmp_path):
    # Unit vectors 120 degrees apart: y - x + c is exactly zero.
    source = tmp_path / "tri.txt"
    source.write_text("x 1 0\ny 0.5 0.8660254\nc 0.5 -0.8660254\nw 0 1\nv -1 0\n", encoding="utf-8")
    model_dir = str(tmp_path / "tri")
    assert invoke("import", str(source), "-m", model_dir).exit_code == 0
    single = invoke("analogy", "x", "y", "c", "-m", model_dir)
    assert single.exit_code == 1
    assert "x y c: B - A + C is all zeros" in single.stderr
    batch = invoke("analogy", "-", "-m", model_dir, "-k", "1", input="x y w\nx y c\ny x w\n")
    assert batch.exit_code == 1
    assert [line.split("\t")[:3] for line in batch.stdout.splitlines()] == [["x", "y", "w"], ["y", "x", "w"]]
    assert "line 2" in batch.stderr
    assert "B - A + C is all zeros" in batch.stderr
    # 3CosMul multiplies shifted cosines, which stay defined.
    assert invoke("analogy", "x", "y", "c", "-m", model_dir, "--method", "3cosmul").exit_code == 0
    with pytest.raises(QueryError, match="all zeros"):
        Model.open(model_dir).analogy("x", "y", "c")


def test_deleted_embeddings_named_as_missing(model_copy):
    os.remove(os.path.join(model_copy, "embeddings.npy"))
    result = invoke("lookup", "-m", model_copy, "lord")
    assert result.exit_code == 1
    assert "embeddings.npy is missing, but meta.json lists it" in result.stderr
    with pytest.raises(ModelCorrupt):
        Model.open(model_copy)
