"""A query line of megabytes fails fast with a short message."""

import os
import subprocess
import sys

from typer.testing import CliRunner

from embcli.cli import app

runner = CliRunner()


def test_long_line_error_is_short(trained_model):
    line = "lord " * 400_000
    result = runner.invoke(app, ["neighbors", "-m", trained_model, "-"], input=line + "\n")
    assert result.exit_code == 1
    assert "2,000,000 characters" in result.stderr
    assert len(result.stderr) < 1000


def test_long_unknown_word_is_shortened(trained_model):
    word = "x" * 100_000
    result = runner.invoke(app, ["neighbors", "-m", trained_model, word])
    assert result.exit_code == 1
    assert "100,000 characters" in result.stderr
    assert len(result.stderr) < 1000


def test_long_line_through_pipe(trained_model):
    # A real pipe, so stdin is read with os.read() in blocks, not line by line.
    line = ("lord " * 600_000 + "\nland\n").encode()
    process = subprocess.run(
        [sys.executable, "-m", "embcli", "neighbors", "-m", trained_model, "-", "-k", "2"],
        input=line, capture_output=True, timeout=120, env={**os.environ, "EMBCLI_MODEL": ""},
    )
    assert process.returncode == 1
    assert len(process.stderr) < 1000
    assert [row.split(b"\t")[0] for row in process.stdout.splitlines()] == [b"land", b"land"]


def build_vocab(corpus, model, *options):
    return runner.invoke(app, ["build-vocab", str(corpus), "-m", str(model), "--min-count", "1", *options])


def test_word_cut_by_long_run_warns(tmp_path):
    corpus = tmp_path / "run.txt"
    corpus.write_text("a b " + "x" * 1_500_000 + " c\n" + "a b c\n" * 5)
    result = build_vocab(corpus, tmp_path / "model", "--tokenizer", "whitespace")
    assert result.exit_code == 0, result.stderr
    assert "run.txt: line 1: a run of more than 64 KiB" in result.stderr
    assert "a word across two pieces was counted as two tokens" in result.stderr


def test_chinese_long_line_cut_between_tokens(tmp_path):
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\u9152\u6625\u6708" * 500_000 + "\n", encoding="utf-8")
    result = build_vocab(corpus, tmp_path / "model")
    assert result.exit_code == 0, result.stderr
    assert "a run of more than 64 KiB" not in result.stderr
    assert "read 1,500,000 tokens" in result.stderr
