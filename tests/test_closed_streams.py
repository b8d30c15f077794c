"""Commands started with stdin, stdout or stderr closed, or whose stderr reader goes away."""

import os
import subprocess
import sys

EMBCLI = [sys.executable, "-m", "embcli"]


def run_with_closed(fd, args, cwd):
    """Run embcli with descriptor `fd` closed (as `>&-` does); return the CompletedProcess."""
    streams = {0: "stdin", 1: "stdout", 2: "stderr"}
    kwargs = {name: subprocess.PIPE for number, name in streams.items() if number != fd and number != 0}
    command = "exec " + " ".join(f"'{part}'" for part in EMBCLI + args) + f" {fd}>&-"
    return subprocess.run(["bash", "-c", command], cwd=cwd, text=True, timeout=120, **kwargs)


def test_stdout_closed_file_commands_run(small_corpus, tmp_path):
    result = run_with_closed(1, ["build-vocab", "-m", "model", small_corpus, "--min-count", "3"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "model" / "vocab.tsv").exists()
    result = run_with_closed(1, ["export", "-m", "model", "words.vec"], tmp_path)
    # A vocabulary without vectors cannot be exported: the error still reaches stderr.
    assert result.returncode == 1
    assert "embcli: error:" in result.stderr


def test_stdout_closed_queries_fail_with_a_message(trained_model, tmp_path):
    result = run_with_closed(1, ["neighbors", "-m", trained_model, "king"], tmp_path)
    assert result.returncode == 1
    assert "cannot write to standard output" in result.stderr
    exported = tmp_path / "v.txt"
    result = run_with_closed(1, ["export", "-m", trained_model, str(exported)], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = exported.read_text(encoding="utf-8").splitlines()
    count, dim = map(int, lines[0].split())
    assert len(lines) == count + 1
    assert len(lines[1].split()) == dim + 1


def test_stdin_closed_is_an_error_not_empty_input(trained_model, small_corpus, tmp_path):
    result = run_with_closed(0, ["neighbors", "-m", trained_model, "-"], tmp_path)
    assert result.returncode == 1
    assert "standard input is closed" in result.stderr
    result = run_with_closed(0, ["build-vocab", "-m", "model", "-"], tmp_path)
    assert result.returncode == 1
    assert "<stdin>: cannot read" in result.stderr
    assert not (tmp_path / "model").exists()


def test_stderr_reader_gone_failed_query_exits_1(trained_model):
    process = subprocess.Popen(EMBCLI + ["neighbors", "-m", trained_model, "zzzq"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    process.stderr.close()  # the reader goes away before the error is written
    assert process.wait(timeout=60) == 1
    process = subprocess.Popen(EMBCLI + ["neighbors", "-m", trained_model, "king"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    process.stderr.close()
    assert process.wait(timeout=60) == 0


def test_stderr_closed_commands_run_and_exit_codes_report(small_corpus, trained_model, tmp_path):
    result = run_with_closed(2, ["build-vocab", "-m", "model", small_corpus, "--min-count", "3"], tmp_path)
    assert result.returncode == 0
    assert (tmp_path / "model" / "vocab.tsv").exists()
    result = run_with_closed(2, ["neighbors", "-m", trained_model, "zzzq"], tmp_path)
    assert result.returncode == 1
    result = run_with_closed(2, ["neighbors", "-m", trained_model, "king", "-k", "1"], tmp_path)
    assert result.returncode == 0
    assert result.stdout.count("\n") == 1
