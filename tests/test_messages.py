"""Error messages name the option that fixes them, and count in the right number."""

import os

import pytest
from typer.testing import CliRunner

from embcli.cli import app

runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, list(args), input=input)


def test_damaged_checkpoint_names_force(small_corpus):
    assert invoke("build-vocab", small_corpus, "--min-count", "20", "-q").exit_code == 0
    with open(os.path.join("embcli-model", "checkpoint.json"), "w") as handle:
        handle.write("{not json")
    result = invoke("train", "--resume", "--dim", "8", "--epochs", "1", "--threads", "1", "-q")
    assert result.exit_code == 1
    assert "--force" in result.stderr
    result = invoke("train", "--force", "--dim", "8", "--epochs", "1", "--threads", "1", "-q")
    assert result.exit_code == 0, result.stderr


def test_max_size_one_names_max_size(small_corpus):
    result = invoke("build-vocab", small_corpus, "--max-size", "1")
    assert result.exit_code == 2
    assert "--max-size" in result.stderr
    assert "--min-count" not in result.stderr


def test_build_vocab_api_rejects_max_size_one(small_corpus):
    from embcli.errors import EmbcliError
    from embcli.tokenize import Tokenizer
    from embcli.vocab import build_vocab

    with pytest.raises(EmbcliError) as caught:
        build_vocab("model", [small_corpus], Tokenizer(), min_count=1, max_size=1)
    assert caught.value.options == ("max_size",)


def test_train_rejects_bad_lr_as_usage_error(small_corpus):
    assert invoke("build-vocab", small_corpus, "--min-count", "20", "-q").exit_code == 0
    for value in ("0", "-1", "nan"):
        result = invoke("train", "--lr", value, "--dim", "8", "--epochs", "1", "--threads", "1")
        assert result.exit_code == 2, value
        assert "--lr" in result.stderr, value


def test_similarity_stdin_errors_give_line(trained_model):
    result = invoke("similarity", "-m", trained_model, "-", input="lord god\nlord\nlord unicornword\n")
    assert result.exit_code == 1
    assert result.stdout.startswith("lord\tgod\t")
    assert "line 2:" in result.stderr
    assert "separated by spaces or a tab" in result.stderr
    assert "line 3: unicornword: not in vocabulary" in result.stderr


def test_analogy_stdin_errors_give_line(trained_model):
    result = invoke("analogy", "-m", trained_model, "-", "-k", "1", input="lord god\n\nlord god unicornword\n")
    assert result.exit_code == 1
    assert "line 1:" in result.stderr
    assert "line 3: unicornword: not in vocabulary" in result.stderr


def test_neighbors_stdin_errors_give_line(trained_model):
    result = invoke("neighbors", "-m", trained_model, "-", "-k", "1", input="lord\n\nunicornword\ngod\n")
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 2
    assert "<stdin>: line 3: unicornword: not in vocabulary" in result.stderr


def test_empty_model_and_output_are_usage_errors(trained_model):
    import subprocess
    import sys

    for args in (["info", "-m", ""], ["neighbors", "-m", "", "lord"], ["export", "-m", trained_model, ""]):
        result = invoke(*args)
        assert result.exit_code == 2, args
        option = "OUTPUT" if args[0] == "export" else "--model"
        assert option in result.stderr, args
        assert "is empty" in result.stderr, args
    # `neighbors` has its own argument parser in main(), which must hand this case to typer.
    process = subprocess.run([sys.executable, "-m", "embcli", "neighbors", "-m", "", "lord"],
                             capture_output=True, text=True, timeout=60)
    assert process.returncode == 2
    assert "the model directory is empty" in process.stderr


def test_help_shows_each_default_once():
    for command in ("train", "index"):
        text = " ".join(invoke(command, "--help").stdout.split())
        assert "[default: 0, one per core" in text, command
        assert "[default: 0;" not in text, command


def test_dash_among_words_is_usage_error(trained_model):
    for command in ("neighbors", "lookup"):
        result = invoke(command, "-m", trained_model, "lord", "-")
        assert result.exit_code == 2, command
        assert "must be the only word" in result.stderr, command


def test_dash_among_words_through_main(trained_model):
    import subprocess
    import sys

    process = subprocess.run([sys.executable, "-m", "embcli", "neighbors", "-m", trained_model, "lord", "-"],
                             capture_output=True, timeout=60)
    assert process.returncode == 2
    assert b"must be the only word" in process.stderr


def test_summaries_use_singular_for_one(tmp_path):
    corpus = tmp_path / "one-line.txt"
    corpus.write_text("cat dog cat dog\n")
    result = invoke("build-vocab", str(corpus), "--min-count", "1")
    assert result.exit_code == 0, result.stderr
    assert "on 1 line;" in result.stderr
    result = invoke("train", "--dim", "4", "--epochs", "1", "--threads", "1", "--sample", "0")
    assert result.exit_code == 0, result.stderr
    assert "trained 1 epoch over" in result.stderr
    vectors = tmp_path / "one.txt"
    vectors.write_text("1 1\ncat 0.5\n")
    result = invoke("import", str(vectors), "-m", "imported")
    assert result.exit_code == 0, result.stderr
    assert "imported 1 word x 1 dimension " in result.stderr


def test_model_error_printed_by_first_rank_only(monkeypatch, capsys):
    import typer

    from embcli.cli import handle_errors
    from embcli.errors import ModelCorrupt

    @handle_errors
    def fails():
        raise ModelCorrupt("model/checkpoint.json was saved by 2 workers")

    monkeypatch.setenv("WORLD_SIZE", "3")
    for local_rank, printed in (("1", False), ("0", True)):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        with pytest.raises(typer.Exit) as stopped:
            fails()
        assert stopped.value.exit_code == 1
        assert ("saved by 2 workers" in capsys.readouterr().err) == printed
