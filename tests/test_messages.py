"""Error messages name the option that fixes them, and count in the right number."""

import os

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
