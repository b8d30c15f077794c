"""A full disk is reported as such, naming the file, not as an internal error."""

import os

import pytest
import typer

from embcli import store
from embcli.cli import handle_errors
from embcli.errors import DiskFull

# Linux's /dev/full fails every write with ENOSPC.
needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


def _write_to_full_device():
    with open("/dev/full", "wb") as handle:
        handle.write(b"x" * 4096)
        handle.flush()


@needs_dev_full
def test_removed_on_error_raises_disk_full(tmp_path):
    temporary = store.temp_path(str(tmp_path), "embeddings.npy")
    with pytest.raises(DiskFull) as caught:
        with store.removed_on_error(temporary):
            open(temporary, "wb").close()
            _write_to_full_device()
    assert caught.value.path == str(tmp_path / "embeddings.npy")
    assert not os.path.exists(temporary)


@needs_dev_full
def test_cli_reports_disk_full_with_file(capsys):
    @handle_errors
    def command():
        with store.removed_on_error(os.path.join(os.getcwd(), ".tmp-0123abcd-vocab.tsv")):
            _write_to_full_device()

    with pytest.raises(typer.Exit) as caught:
        command()
    assert caught.value.exit_code == 1
    message = capsys.readouterr().err
    assert "no space left on device while writing" in message
    assert "vocab.tsv" in message
    assert "--model" in message
    assert "bug" not in message


@needs_dev_full
def test_cli_reports_bare_enospc(capsys):
    @handle_errors
    def command():
        _write_to_full_device()

    with pytest.raises(typer.Exit) as caught:
        command()
    assert caught.value.exit_code == 1
    assert "no space left on device while writing" in capsys.readouterr().err


@needs_dev_full
@pytest.mark.parametrize("buffered", [False, True])
@pytest.mark.parametrize("command", [["neighbors", "a", "-k", "1"], ["similarity", "a", "b"], ["info"]])
def test_full_stdout_names_standard_output(tmp_path, command, buffered):
    import subprocess
    import sys

    source = tmp_path / "small.glove"
    source.write_text("a 1 2 0\nb 2 1 0\nc 0 0 1\n")
    model = str(tmp_path / "small")
    subprocess.run([sys.executable, "-m", "embcli", "import", str(source), "-m", model, "-q"], check=True)
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    if not buffered:
        environment["PYTHONUNBUFFERED"] = "1"
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "embcli", command[0], "-m", model, *command[1:]],
                                stdout=full, stderr=subprocess.PIPE, text=True, env=environment, timeout=60)
    assert result.returncode == 1
    assert result.stderr == "embcli: error: cannot write to standard output (No space left on device)\n"
