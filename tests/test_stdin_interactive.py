"""Batch queries on stdin get their results as they arrive when the writer waits for each result."""

import queue
import subprocess
import sys
import threading

import pytest
from typer.testing import CliRunner

from embcli.cli import app

VECTORS = """6 3
king 0.9 0.8 0.1
queen 0.85 0.82 0.2
man 0.5 0.1 0.05
woman 0.45 0.15 0.2
apple 0.1 0.05 0.95
pear 0.12 0.1 0.9
"""
# Each case sends one query, waits for its result lines, then sends the next. With -k 2,
# a neighbors or analogy query prints two lines; a similarity or lookup query prints one.
CASES = {
    "neighbors": (["neighbors", "-", "-k", "2"], ["king", "apple"]),
    "neighbors --vector": (["neighbors", "--vector", "-", "-k", "2"], ["1 1 0", "0 0 1"]),
    "analogy": (["analogy", "-", "-k", "2"], ["man king woman", "apple pear king"]),
    "similarity": (["similarity", "-"], ["king\tqueen", "apple\tpear", "man\twoman", "king\tpear"]),
    "lookup": (["lookup", "-"], ["king", "pear"]),
}
TIMEOUT = 60  # seconds to wait for one result line on a loaded machine


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text(VECTORS, encoding="utf-8")
    directory = str(tmp_path / "model")
    result = CliRunner().invoke(app, ["import", str(path), "-m", directory, "-q"])
    assert result.exit_code == 0, result.stderr
    return directory


class Session:
    """An embcli process whose stdout lines are read by a thread, with a timeout per line."""

    def __init__(self, arguments, model):
        self.process = subprocess.Popen([sys.executable, "-m", "embcli", *arguments, "-m", model],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line)

    def send(self, line):
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def receive(self, count):
        received = []
        for _ in range(count):
            try:
                received.append(self.lines.get(timeout=TIMEOUT))
            except queue.Empty:
                self.process.kill()
                pytest.fail(f"no answer within {TIMEOUT} s; got {received!r}")
        return received

    def close(self):
        self.process.stdin.close()
        return self.process.wait(timeout=TIMEOUT)


@pytest.mark.parametrize("name", CASES)
def test_each_query_answered_before_next(name, model):
    arguments, queries = CASES[name]
    per_query = 1 if name in ("similarity", "lookup") else 2
    session = Session(arguments, model)
    try:
        for query in queries:
            session.send(query)
            answer = session.receive(per_query)
            assert len(answer) == per_query
            assert all(line.endswith("\n") and "\t" in line for line in answer)
        assert session.close() == 0
        assert session.process.stdout.read() == ""
    finally:
        if session.process.poll() is None:
            session.process.kill()


def test_interactive_neighbors_match_batch(model):
    """Results printed one query at a time equal those of the same queries read in one block."""
    batch = subprocess.run([sys.executable, "-m", "embcli", "neighbors", "-", "-k", "2", "-m", model],
                           input="king\napple\n", capture_output=True, text=True, timeout=TIMEOUT)
    assert batch.returncode == 0, batch.stderr
    session = Session(["neighbors", "-", "-k", "2"], model)
    try:
        answers = []
        for query in ("king", "apple"):
            session.send(query)
            answers.extend(session.receive(2))
        assert session.close() == 0
    finally:
        if session.process.poll() is None:
            session.process.kill()
    assert "".join(answers) == batch.stdout
    assert answers[0].startswith("king\tqueen\t")
    assert answers[2].startswith("apple\tpear\t")


def test_unknown_word_answered_then_next(model):
    session = Session(["neighbors", "-", "-k", "1"], model)
    try:
        session.send("nosuchword")
        session.send("king")
        assert session.receive(1)[0].startswith("king\tqueen\t")
        assert session.close() == 1
        assert "nosuchword" in session.process.stderr.read()
    finally:
        if session.process.poll() is None:
            session.process.kill()


def test_vector_stdin_reports_invalid_utf8(model):
    result = subprocess.run([sys.executable, "-m", "embcli", "neighbors", "--vector", "-", "-k", "1", "-m", model],
                            input=b"\xff 1 0\n1 1 0\n", capture_output=True, timeout=TIMEOUT)
    assert result.returncode == 1
    assert b"line 1: invalid UTF-8" in result.stderr
    assert b"Traceback" not in result.stderr
    assert result.stdout.startswith(b"2\tking\t")


@pytest.mark.parametrize("approx", [False, True], ids=["exact", "approx"])
def test_stdin_errors_keep_input_order(trained_model, tmp_path, approx):
    import shutil

    directory = str(shutil.copytree(trained_model, tmp_path / "model"))
    options = []
    if approx:
        assert CliRunner().invoke(app, ["index", "-m", directory, "--kind", "hnsw", "-q"]).exit_code == 0
        options = ["--approx"]
    # stderr merged into stdout shows the order in which the two were written.
    result = subprocess.run([sys.executable, "-m", "embcli", "neighbors", "-", "-k", "1", "-m", directory, *options],
                            input=b"lord\nbad\xff\n\tgod\n", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=TIMEOUT)
    lines = result.stdout.decode().splitlines()
    assert result.returncode == 1
    assert len(lines) == 3, lines
    assert lines[0].startswith("lord\t")
    assert "line 2: invalid UTF-8" in lines[1]
    # A tab inside a query does not add a field.
    assert len(lines[2].split("\t")) == 3
    assert lines[2].startswith(" god\t")
