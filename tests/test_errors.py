"""How failures reach the user: one line, the right exit code, a traceback only on request."""

import errno

import pytest
from typer.testing import CliRunner

import embcli.model
import embcli.store
import embcli.train
import embcli.vocab
from embcli.cli import app, error_message
from embcli.errors import EmbcliError

runner = CliRunner()


def fail(*args, **kwargs):
    raise ZeroDivisionError("deliberate fault")


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "embcli-model/.tmp-x-embeddings.npy")


# For each command: the core function it calls first, and arguments that reach it.
COMMANDS = {
    "build-vocab": (embcli.vocab, "build_vocab", ["build-vocab", "corpus.txt"]),
    "train": (embcli.train, "train_model", ["train", "--threads", "1"]),
    "lookup": (embcli.model.Model, "open", ["lookup", "word"]),
    "neighbors": (embcli.model.Model, "open", ["neighbors", "word"]),
    "info": (embcli.store, "read_meta", ["info"]),
}


def test_every_command_maps_errors():
    for command in app.registered_commands:
        assert getattr(command.callback, "handles_errors", False), command.callback.__name__


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_internal_error_is_one_line(monkeypatch, command):
    owner, name, args = COMMANDS[command]
    monkeypatch.setattr(owner, name, fail)
    monkeypatch.delenv("EMBCLI_DEBUG", raising=False)
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.startswith("embcli: error: internal error: ZeroDivisionError: deliberate fault")
    assert "EMBCLI_DEBUG=1" in result.stderr
    assert "--debug" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("switch", ["option", "environment"])
def test_debug_shows_traceback(monkeypatch, command, switch):
    owner, name, args = COMMANDS[command]
    monkeypatch.setattr(owner, name, fail)
    if switch == "option":
        args = ["--debug", *args]
    else:
        monkeypatch.setenv("EMBCLI_DEBUG", "1")
    result = runner.invoke(app, args)
    # The exception escapes the CLI, so Python prints its traceback.
    assert isinstance(result.exception, ZeroDivisionError)


def test_environment_failure_is_not_called_a_bug(monkeypatch):
    monkeypatch.setattr(embcli.vocab, "build_vocab", no_space)
    result = runner.invoke(app, ["build-vocab", "corpus.txt"])
    assert result.exit_code == 1
    assert result.stderr == (
        "embcli: error: no space left on device while writing embcli-model/.tmp-x-embeddings.npy; "
        "free some space or choose another --model directory\n"
    )


def test_options_appended_as_flags():
    failure = EmbcliError("lower the minimum count", options=("min_count", "decode_errors"))
    assert error_message(failure) == "lower the minimum count [--min-count, --decode-errors replace]"
    assert error_message(EmbcliError("no options")) == "no options"


def test_text_cut_inside_last_character(tmp_path):
    # Another encoding would not help a UTF-8 file that was cut short.
    corpus = tmp_path / "cut.txt"
    corpus.write_bytes("hello world café".encode()[:-1])
    result = CliRunner().invoke(app, ["build-vocab", str(corpus), "--min-count", "1"])
    assert result.exit_code == 1
    assert "the file ends inside a UTF-8 character, so it was cut short" in result.stderr
    assert "latin-1" not in result.stderr
