"""Query words given on the command line: bytes that are not UTF-8, zero vectors in analogies."""

import subprocess
import sys

import numpy as np
from typer.testing import CliRunner

from embcli.cli import app

runner = CliRunner()


def embcli_bytes(*args):
    """Run embcli in a child process with `args` as raw bytes, as a shell passes them."""
    command = [sys.executable.encode(), b"-m", b"embcli", *[a if isinstance(a, bytes) else a.encode() for a in args]]
    return subprocess.run(command, capture_output=True, timeout=120)


def test_invalid_utf8_word_is_rejected(trained_model):
    # A Latin-1 "é" after "lord": Python decodes it to a lone surrogate, which the
    # tokenizer would split off, so the query would return the neighbours of "lord".
    result = embcli_bytes("neighbors", "-m", trained_model, b"lord\xe9")
    assert result.returncode == 1
    assert b"invalid UTF-8 (byte 0xe9)" in result.stderr
    assert result.stdout == b""


def test_batch_answers_other_words(trained_model):
    result = embcli_bytes("lookup", "-m", trained_model, b"lord\xff", "god")
    assert result.returncode == 1
    assert b"invalid UTF-8 (byte 0xff)" in result.stderr
    assert result.stdout.startswith(b"god\t")
    assert len(result.stdout.splitlines()) == 1


def test_pair_and_triple_commands_reject_it(trained_model):
    for args in (("similarity", "lord\udce9", "god"), ("analogy", "man", "lord\udce9", "woman")):
        result = runner.invoke(app, [args[0], "-m", trained_model, *args[1:]])
        assert result.exit_code == 1, args
        assert "invalid UTF-8 (byte 0xe9)" in result.stderr


def test_analogy_of_zero_vector_is_error(trained_model, tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path / "v.vec"), "-m", trained_model])
    assert result.exit_code == 0, result.stderr
    lines = (tmp_path / "v.vec").read_text(encoding="utf-8").splitlines()
    dim = int(lines[0].split()[1])
    lines = [("god " + " ".join(["0"] * dim)) if line.startswith("god ") else line for line in lines]
    (tmp_path / "z.vec").write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = str(tmp_path / "zero")
    assert runner.invoke(app, ["import", str(tmp_path / "z.vec"), "-m", model]).exit_code == 0

    result = runner.invoke(app, ["analogy", "-m", model, "man", "god", "woman"])
    assert result.exit_code == 1
    assert "god: its vector is all zeros" in result.stderr
    assert result.stdout == ""
    # In a batch, the other questions are answered.
    result = runner.invoke(app, ["analogy", "-m", model, "-", "-k", "1"], input="man god woman\nman lord woman\n")
    assert result.exit_code == 1
    assert "<stdin>: line 1: god: its vector is all zeros" in result.stderr
    assert result.stdout.startswith("man\tlord\twoman\t")
    assert np.isfinite(float(result.stdout.split("\t")[-1]))


def test_word_with_tab_keeps_fields(tmp_path):
    (tmp_path / "tab.vec").write_text("3 2\nfoo\tbar 0.1 0.2\nbaz 0.3 0.1\nqux 0.2 0.2\n", encoding="utf-8")
    model = str(tmp_path / "m")
    assert runner.invoke(app, ["import", str(tmp_path / "tab.vec"), "-m", model]).exit_code == 0
    result = runner.invoke(app, ["neighbors", "-m", model, "baz", "-k", "2"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[1] == "foo bar\t0.7071"
    result = runner.invoke(app, ["lookup", "-m", model, "foo\tbar"])
    assert result.stdout == "foo bar\t0.1\t0.2\n"
    result = runner.invoke(app, ["neighbors", "-m", model, "qux", "-k", "1", "--json"])
    assert '"word": "foo\\tbar"' in result.stdout


def test_python_query_with_lone_surrogate(trained_model):
    import embcli

    model = embcli.load(trained_model)
    try:
        model.vector("lord\udce9")
    except embcli.QueryError as error:
        assert "lone surrogate" in str(error)
    else:
        raise AssertionError("a lone surrogate was answered")
    assert "lord\udce9" not in model
    assert "lord" in model
