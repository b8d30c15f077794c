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
