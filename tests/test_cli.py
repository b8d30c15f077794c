"""The commands end to end through typer's CliRunner, on a small real text."""

import json
import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from embcli.cli import app

runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, list(args), input=input)


def test_pipeline_build_train_lookup_neighbors(small_corpus):
    result = invoke("build-vocab", small_corpus, "--min-count", "3")
    assert result.exit_code == 0, result.stderr
    assert "distinct words" in result.stderr
    assert result.stdout == ""
    assert os.path.exists("embcli-model/vocab.tsv")

    result = invoke("train", "--dim", "24", "--epochs", "2", "--threads", "1", "--quiet")
    assert result.exit_code == 0, result.stderr
    matrix = np.load("embcli-model/embeddings.npy", allow_pickle=False)
    words = [line.split("\t")[0] for line in open("embcli-model/vocab.tsv", encoding="utf-8")]
    assert matrix.shape == (len(words), 24)
    assert matrix.dtype == np.float32
    assert np.isfinite(matrix).all()

    result = invoke("lookup", "lord")
    assert result.exit_code == 0
    fields = result.stdout.rstrip("\n").split("\t")
    assert fields[0] == "lord"
    assert len(fields) == 25
    np.testing.assert_allclose([float(v) for v in fields[1:]], matrix[words.index("lord")], rtol=1e-5)

    result = invoke("neighbors", "lord", "-k", "5")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert all(line.split("\t")[0] != "lord" for line in lines)
    scores = [float(line.split("\t")[1]) for line in lines]
    assert scores == sorted(scores, reverse=True)


def test_neighbors_batch_from_stdin_prefixes_query(trained_model):
    result = invoke("neighbors", "-m", trained_model, "-", "-k", "3", input="lord\nunicornword\n\nland\n")
    assert result.exit_code == 1
    queries = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert queries == ["lord"] * 3 + ["land"] * 3
    assert "unicornword: not in vocabulary" in result.stderr


def test_neighbors_json(trained_model):
    result = invoke("neighbors", "-m", trained_model, "lord", "-k", "2", "--json")
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["query"] for r in records] == ["lord", "lord"]
    assert all(-1 <= r["score"] <= 1 for r in records)


def test_unknown_word_is_one_line_error(trained_model):
    result = invoke("lookup", "-m", trained_model, "unicornword")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("embcli: error: unicornword: not in vocabulary")
    assert "Traceback" not in result.stderr


def test_query_is_normalized_like_corpus(trained_model):
    upper = invoke("lookup", "-m", trained_model, "LORD")
    lower = invoke("lookup", "-m", trained_model, "lord")
    assert upper.exit_code == 0
    assert upper.stdout.split("\t")[1:] == lower.stdout.split("\t")[1:]


def test_query_that_splits_names_tokens(trained_model):
    result = invoke("lookup", "-m", trained_model, "lord's")
    assert result.exit_code == 1
    assert "lord t" not in result.stderr
    assert "2 tokens" in result.stderr
    assert "lord s" in result.stderr


def test_missing_model_says_what_to_run(tmp_path):
    result = invoke("neighbors", "-m", str(tmp_path / "nothing"), "king")
    assert result.exit_code == 1
    assert "embcli build-vocab" in result.stderr


def test_model_option_beats_environment(trained_model, monkeypatch, tmp_path):
    monkeypatch.setenv("EMBCLI_MODEL", str(tmp_path / "elsewhere"))
    assert invoke("lookup", "lord").exit_code == 1
    assert invoke("lookup", "-m", trained_model, "lord").exit_code == 0


def test_environment_variable_selects_model(trained_model, monkeypatch):
    monkeypatch.setenv("EMBCLI_MODEL", trained_model)
    assert invoke("lookup", "lord").exit_code == 0


def test_info_and_version(trained_model):
    result = invoke("info", "-m", trained_model)
    assert result.exit_code == 0
    assert "vocabulary\t" in result.stdout
    assert "dim\t32" in result.stdout
    assert ", 1 worker\n" in result.stdout
    result = invoke("info", "-m", trained_model, "--json")
    assert result.stdout.count("\n") == 1  # one JSON line, like every --json output
    meta = json.loads(result.stdout)
    assert meta["training"]["settings"]["dim"] == 32
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("embcli ")


def test_every_command_has_help():
    for command in ("build-vocab", "train", "lookup", "neighbors", "info"):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        assert "Usage" in result.stdout


def test_global_flags_may_follow_the_command():
    from embcli.cli import _hoist_global_flags

    assert _hoist_global_flags(["neighbors", "king", "--debug", "-q"]) == ["--debug", "-q", "neighbors", "king"]
    # train has its own --quiet; a word after -- is never taken for a flag.
    assert _hoist_global_flags(["train", "-q", "--debug"]) == ["--debug", "train", "-q"]
    assert _hoist_global_flags(["lookup", "--", "--debug"]) == ["lookup", "--", "--debug"]


def test_train_rejects_bad_option_values_as_usage_errors(trained_model):
    for option, value in (("--method", "foo"), ("--device", "tpu"), ("--negatives", "none"),
                          ("--ns-exponent", "inf")):
        result = invoke("train", "-m", trained_model, option, value)
        assert result.exit_code == 2, (option, result.stderr)
        assert option in result.stderr


def test_info_names_corpus_given_to_train(small_corpus, tmp_path):
    other = tmp_path / "other.txt"
    lines = open(small_corpus, encoding="utf-8").read().splitlines()
    other.write_text("\n".join(lines[:1500]) + "\n", encoding="utf-8")
    assert invoke("build-vocab", small_corpus, "--min-count", "3", "-q").exit_code == 0
    assert invoke("train", str(other), "--dim", "8", "--epochs", "1", "--threads", "1", "-q").exit_code == 0
    result = invoke("info")
    assert f"trained on\t{other}" in result.stdout


def test_lookup_json_prints_shortest_float32_values(trained_model):
    import numpy as np

    import embcli

    result = invoke("lookup", "-m", trained_model, "lord", "--json")
    assert result.exit_code == 0
    record = json.loads(result.stdout)
    values = np.array(record["vector"], dtype=np.float32)
    assert (values == embcli.load(trained_model).vector("lord")).all()
    assert all(len(repr(value)) <= 16 for value in record["vector"])


def test_train_warns_changed_corpus(small_corpus, tmp_path):
    # Training reads the token cache, so a touched, edited or deleted corpus is a warning.
    corpus = tmp_path / "corpus.txt"
    shutil.copy(small_corpus, corpus)
    assert invoke("build-vocab", str(corpus), "--min-count", "3").exit_code == 0
    os.utime(corpus, ns=(0, 10**18))
    touched = invoke("train", "--dim", "8", "--epochs", "1", "--threads", "1")
    assert touched.exit_code == 0, touched.stderr
    assert f"warning: {corpus} was modified at" in touched.stderr
    assert "its size is the same" in touched.stderr
    corpus.unlink()
    gone = invoke("train", "--dim", "8", "--epochs", "1", "--threads", "1", "--force")
    assert gone.exit_code == 0, gone.stderr
    assert f"warning: {corpus}, the corpus the vocabulary was built from, is gone" in gone.stderr
    assert "run 'embcli build-vocab' again" not in gone.stderr


def test_build_vocab_keeps_files_of_another_program(small_corpus, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "meta.json").write_text('{"my": "project settings"}\n')
    (folder / "vocab.tsv").write_text("my\tlist\n")
    refused = invoke("build-vocab", "-m", str(folder), small_corpus)
    assert refused.exit_code == 1
    assert "meta.json, vocab.tsv but no model that embcli saved" in refused.stderr
    assert "[--force]" in refused.stderr
    assert (folder / "meta.json").read_text() == '{"my": "project settings"}\n'
    assert (folder / "vocab.tsv").read_text() == "my\tlist\n"
    replaced = invoke("build-vocab", "-m", str(folder), small_corpus, "--force")
    assert replaced.exit_code == 0, replaced.stderr
    assert json.loads((folder / "meta.json").read_text())["format_version"] == 1


def embcli_load_dim(path):
    import embcli

    return embcli.load(path).dim


def test_imported_model_info_and_train_say_imported(tmp_path):
    vectors = tmp_path / "v.txt"
    vectors.write_text("3 2\nking 1 0\nqueen 0 1\nman 1 1\n", encoding="utf-8")
    assert invoke("import", str(vectors), "-m", "imp").exit_code == 0
    info = invoke("info", "-m", "imp")
    assert "training\tnone: imported vectors" in info.stdout
    train = invoke("train", "-m", "imp", "--epochs", "1")
    assert train.exit_code != 0
    assert f"imp contains vectors imported from {vectors}" in train.stderr
    assert "Traceback" not in train.stderr
    # With a corpus too: the imported counts are all 0, so training could only destroy the vectors.
    corpus = tmp_path / "c.txt"
    corpus.write_text("king queen man " * 50 + "\n", encoding="utf-8")
    for options in ([], ["--sample", "0"]):
        train = invoke("train", "-m", "imp", str(corpus), "--epochs", "1", *options)
        assert train.exit_code == 1
        assert "no word counts to train with" in train.stderr
        assert "Warning" not in train.stderr
        assert "Traceback" not in train.stderr
    assert embcli_load_dim("imp") == 2


def test_buckets_without_subwords_warns(small_corpus):
    import subprocess
    import sys

    assert invoke("build-vocab", small_corpus, "--min-count", "3").exit_code == 0
    done = subprocess.run([sys.executable, "-m", "embcli", "train", "--buckets", "100", "--dim", "8",
                           "--epochs", "1", "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "warning: --buckets applies only with --subwords" in done.stderr


def test_unused_train_options_warn(small_corpus):
    import subprocess
    import sys

    assert invoke("build-vocab", small_corpus, "--min-count", "3").exit_code == 0
    done = subprocess.run([sys.executable, "-m", "embcli", "train", "--combination", "mean", "--encoding", "latin-1",
                           "--dim", "8", "--epochs", "1", "--threads", "1"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "warning: --combination applies only with --subwords" in done.stderr
    assert "warning: --encoding applies only to CORPUS files" in done.stderr


@pytest.mark.parametrize("option, value", [("--decode-errors", "ignore"), ("--combination", "max")])
def test_train_invalid_choice_is_usage_error(small_corpus, option, value):
    result = invoke("train", small_corpus, option, value)
    assert result.exit_code == 2
    assert option in result.stderr
    assert value in result.stderr
    assert not os.path.exists("embcli-model/embeddings.npy")


def test_lookup_stdin_error_names_line(trained_model):
    result = invoke("lookup", "-m", trained_model, "-", input="king\nzzqqxx\n")
    assert result.exit_code == 1
    assert result.stdout.startswith("king\t")
    assert "<stdin>: line 2: zzqqxx: not in vocabulary" in result.stderr


def test_train_after_train_corpus_names_cache(small_corpus, tmp_path):
    # `train CORPUS` replaces the token cache, and a later plain `train` trains on that
    # cache. That run must warn about it, and the model must record the cache's corpus.
    model_dir = str(tmp_path / "model")
    part = tmp_path / "part.txt"
    part.write_text("".join(open(small_corpus, encoding="utf-8").readlines()[:500]), encoding="utf-8")
    assert invoke("build-vocab", "-m", model_dir, small_corpus, "--min-count", "3", "-q").exit_code == 0
    options = ["-m", model_dir, "--epochs", "1", "--dim", "8", "--threads", "1", "--force"]
    first = invoke("train", *options, str(part))
    assert first.exit_code == 0, first.stderr
    assert "token cache holds" not in first.stderr
    second = invoke("train", *options)
    assert second.exit_code == 0, second.stderr
    assert f"the token cache holds {part}" in second.stderr
    with open(os.path.join(model_dir, "meta.json"), encoding="utf-8") as handle:
        meta = json.load(handle)
    assert [source["path"] for source in meta["training"]["corpus"]] == [str(part)]
    info = invoke("info", "-m", model_dir)
    assert "trained on" in info.stdout
    assert str(part) in info.stdout


def test_max_size_summary_names_max_size(small_corpus, tmp_path):
    result = invoke("build-vocab", "-m", str(tmp_path / "model"), small_corpus, "--max-size", "100")
    assert result.exit_code == 0, result.stderr
    assert "kept 100 with count >= 5 (the most frequent, --max-size)" in result.stderr
    assert "dropped" not in result.stderr


def test_lookup_text_gives_back_float32_values_exactly(trained_model):
    import embcli

    result = invoke("lookup", "-m", trained_model, "king", "lord")
    assert result.exit_code == 0, result.stderr
    model = embcli.load(trained_model)
    for line in result.stdout.splitlines():
        word, *values = line.split("\t")
        assert np.array_equal(np.array(values, dtype=np.float32), model.vector(word))


@pytest.mark.parametrize("compress", ["gzip", "bz2", "lzma"])
def test_build_vocab_reads_compressed_stdin_pipe(tmp_path, compress):
    import importlib
    import subprocess
    import sys

    data = importlib.import_module(compress).compress("the king and the queen\r\nthe king\r\n".encode())
    result = subprocess.run([sys.executable, "-m", "embcli", "build-vocab", "-m", str(tmp_path / "m"), "-",
                             "--min-count", "1"], input=data, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "vocab.tsv").read_text(encoding="utf-8").split() == [
        "the", "3", "king", "2", "and", "1", "queen", "1"]
