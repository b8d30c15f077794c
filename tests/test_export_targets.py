"""export writes to stdout, follows symbolic links and writes FIFOs in place."""

import os
import shutil
import threading

import pytest
from typer.testing import CliRunner

from embcli.cli import app

runner = CliRunner()


def export(model, *args):
    return runner.invoke(app, ["export", "-m", model, *args])


def test_export_dash_writes_stdout(trained_model):
    result = export(trained_model, "-")
    assert result.exit_code == 0, result.stderr
    header = result.stdout.splitlines()[0].split()
    assert len(header) == 2
    assert int(header[1]) == 32
    assert not os.path.exists("-")


def test_export_projector_to_stdout_is_usage_error(trained_model):
    result = export(trained_model, "-", "--format", "projector")
    assert result.exit_code == 2
    assert "--format" in result.stderr
    assert not os.path.exists("-")


def test_export_follows_symbolic_link(trained_model, tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    result = export(trained_model, str(link))
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink()
    assert os.readlink(link) == str(target)
    assert target.read_text().split("\n", 1)[0].endswith(" 32")


def test_export_writes_fifo_in_place(trained_model, tmp_path):
    fifo = tmp_path / "vectors.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo, "rb").read()))
    reader.start()
    result = export(trained_model, str(fifo))
    reader.join(timeout=30)
    assert result.exit_code == 0, result.stderr
    assert fifo.is_fifo()
    assert received
    assert received[0].split(b"\n", 1)[0].endswith(b" 32")


def test_export_to_directory_is_error(trained_model, tmp_path):
    result = export(trained_model, str(tmp_path))
    assert result.exit_code == 1
    assert "is a directory" in result.stderr


def test_export_to_model_file_rejected(trained_model, tmp_path):
    # Writing over the model's own files would leave a directory that no command can read.
    model = tmp_path / "copy"
    shutil.copytree(trained_model, model)
    before = {name: (model / name).read_bytes() for name in os.listdir(model)}
    link = tmp_path / "link.npy"
    link.symlink_to(model / "embeddings.npy")
    for target in (model / "embeddings.npy", model / "vocab.tsv", model / "meta.json", link):
        result = export(str(model), str(target))
        assert result.exit_code == 1, target
        assert "the model's own" in result.stderr
        assert "Traceback" not in result.stderr
    assert {name: (model / name).read_bytes() for name in os.listdir(model)} == before
    # Another name in the model directory is allowed.
    assert export(str(model), str(model / "vectors.txt")).exit_code == 0
    assert runner.invoke(app, ["lookup", "-m", str(model), "lord"]).exit_code == 0


def test_export_to_closed_pipe_reports_nothing_written(trained_model):
    # The reader leaves after 10 bytes; the export must not claim it wrote everything.
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "embcli", "export", "-m", trained_model, "-",
                                "--format", "word2vec-binary"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.read(10)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0
    assert "wrote" not in stderr
    assert "Traceback" not in stderr


def test_export_to_full_stdout_names_standard_output(trained_model):
    import subprocess
    import sys

    with open("/dev/full", "wb") as full:
        result = subprocess.run([sys.executable, "-m", "embcli", "export", "-m", trained_model, "-"],
                                stdout=full, stderr=subprocess.PIPE, timeout=60)
    assert result.returncode == 1
    assert b"cannot write to standard output (No space left on device)" in result.stderr
    assert b"--model" not in result.stderr


def test_python_export_to_model_file_rejected(trained_model, tmp_path):
    import embcli
    from embcli.errors import EmbcliError

    model = tmp_path / "copy"
    shutil.copytree(trained_model, model)
    before = (model / "vocab.tsv").read_bytes()
    with pytest.raises(EmbcliError, match="the model's own vocab.tsv"):
        embcli.export_vectors(str(model / "vocab.tsv"), model=str(model), format="glove")
    assert (model / "vocab.tsv").read_bytes() == before


def test_export_format_from_file_name(trained_model, tmp_path):
    from embcli.formats import read_vectors

    for name, expected in (("v.bin", "word2vec-binary"), ("v.vec", "word2vec"), ("v.txt", "word2vec")):
        assert export(trained_model, str(tmp_path / name)).exit_code == 0
        assert read_vectors(str(tmp_path / name)).format == expected
    assert export(trained_model, str(tmp_path / "v.npy")).exit_code == 0
    assert (tmp_path / "v.words.txt").exists()


def test_failed_npy_export_replaces_nothing(trained_model, tmp_path):
    (tmp_path / "keep.npy").write_text("old\n")
    (tmp_path / "keep.words.txt").mkdir()
    result = export(trained_model, str(tmp_path / "keep.npy"))
    assert result.exit_code == 1
    assert "keep.words.txt: is a directory" in result.stderr
    assert (tmp_path / "keep.npy").read_text() == "old\n"


def test_export_removes_orphaned_temporary(trained_model, tmp_path):
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_pid = int(finished.stdout)
    orphan = tmp_path / f".tmp-{dead_pid}-0123abcd-vectors.txt"
    orphan.write_text("half a file")
    running = tmp_path / f".tmp-{os.getpid()}-89abcdef-vectors.txt"
    running.write_text("being written")
    result = export(trained_model, str(tmp_path / "vectors.txt"))
    assert result.exit_code == 0, result.stderr
    assert not orphan.exists()
    assert running.exists()
    assert (tmp_path / "vectors.txt").exists()


def test_npy_pair_killed_between_renames(tmp_path, monkeypatch):
    # A process killed after renaming the matrix but before the word list leaves a journal.
    # The next reader completes it, so a new matrix is never paired with old words.
    import numpy as np

    from embcli import formats

    out = str(tmp_path / "out.npy")
    old_words = [f"w{i}" for i in range(5)]
    formats.write_vectors(out, old_words, np.eye(5, dtype=np.float32), "npy")
    new_words = list(reversed(old_words))
    real_replace = os.replace
    calls = []

    def replace_then_die(source, target):
        if len(calls) == 1:
            raise SystemExit("killed")
        calls.append(target)
        real_replace(source, target)

    monkeypatch.setattr(formats.os, "replace", replace_then_die)
    with pytest.raises(SystemExit):
        formats.write_vectors(out, new_words, 2 * np.eye(5, dtype=np.float32), "npy")
    monkeypatch.setattr(formats.os, "replace", real_replace)
    assert calls == [out]
    assert os.path.exists(str(tmp_path / ".export-journal-out.npy.json"))

    vectors = formats.read_vectors(out)
    assert vectors.words == new_words
    assert np.array_equal(vectors.matrix, 2 * np.eye(5, dtype=np.float32))
    assert sorted(os.listdir(tmp_path)) == ["out.npy", "out.words.txt"]
