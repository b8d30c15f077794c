"""embcli index and neighbors --approx: an HNSW index tied to the model's embeddings."""

import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import embcli
from embcli.cli import app
from embcli.train import TrainConfig, train_model

runner = CliRunner()
QUERIES = ["lord", "god", "land", "king", "house", "people", "son", "day"]


def invoke(*args):
    return runner.invoke(app, list(args))


@pytest.fixture
def model_copy(trained_model, tmp_path):
    return shutil.copytree(trained_model, tmp_path / "model")


def neighbour_lines(output):
    return [line.split("\t") for line in output.splitlines()]


def test_approx_neighbors_match_exact(model_copy):
    built = invoke("index", "-m", str(model_copy))
    assert built.exit_code == 0, built.stderr
    assert "indexed" in built.stderr

    found = total = 0
    for word in QUERIES:
        approx = invoke("neighbors", "-m", str(model_copy), word, "-k", "10", "--approx")
        exact = invoke("neighbors", "-m", str(model_copy), word, "-k", "10")
        assert approx.exit_code == 0, approx.stderr
        approx_rows = neighbour_lines(approx.stdout)
        exact_scores = dict((w, float(s)) for w, s in neighbour_lines(exact.stdout))
        assert len(approx_rows) == 10
        assert all(w != word for w, _ in approx_rows)
        scores = [float(s) for _, s in approx_rows]
        assert scores == sorted(scores, reverse=True)
        for neighbor, score in approx_rows:
            if neighbor in exact_scores:
                assert float(score) == pytest.approx(exact_scores[neighbor], abs=2e-4)
        found += len({w for w, _ in approx_rows} & set(exact_scores))
        total += 10
    assert found / total >= 0.95


def test_retrained_model_rejects_stale_index(model_copy):
    assert invoke("index", "-m", str(model_copy), "-q").exit_code == 0
    train_model(str(model_copy), TrainConfig(dim=32, epochs=1, threads=1, seed=9))
    result = invoke("neighbors", "-m", str(model_copy), "lord", "--approx")
    assert result.exit_code == 1
    assert "built from other embeddings" in result.stderr
    assert "embcli index" in result.stderr
    assert invoke("neighbors", "-m", str(model_copy), "lord").exit_code == 0


def test_missing_index_names_command(model_copy):
    result = invoke("neighbors", "-m", str(model_copy), "lord", "--approx")
    assert result.exit_code == 1
    assert "embcli index" in result.stderr


def test_approx_with_restrict_is_usage_error(model_copy):
    result = invoke("neighbors", "-m", str(model_copy), "lord", "--approx", "--restrict", "100")
    assert result.exit_code == 2
    assert "--restrict" in result.stderr


def test_index_without_hnswlib_says_how_to_install(model_copy):
    # A None entry in sys.modules makes `import hnswlib` raise ImportError, as if not installed.
    code = (
        "import sys\n"
        "sys.modules['hnswlib'] = None\n"
        "from embcli.cli import app\n"
        f"app(['index', '-m', {str(model_copy)!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "pip install 'embcli[ann]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_index_files_are_committed_next_to_model(model_copy):
    assert invoke("index", "-m", str(model_copy), "-q").exit_code == 0
    names = {path.name for path in model_copy.iterdir()}
    assert {"ann-hnsw.bin", "ann.json"} <= names
    assert not any(name.startswith(".tmp-") for name in names)
    model = embcli.load(str(model_copy))
    from embcli.ann import open_index

    index = open_index(model)
    assert index.description["rows"] == len(model.words)
    assert index.description["embeddings"] == model.meta["files"]["embeddings.npy"]
