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
