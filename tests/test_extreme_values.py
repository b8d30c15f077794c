"""Vector values near the float32 limits: norms, unit queries and import checks."""

import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

import embcli
from embcli.cli import app

runner = CliRunner()

ROWS = (
    "a 1e-25 1e-25 0\n"
    "b 1e-25 2e-25 0\n"
    "c 1 0 0\n"
    "e 0 1 0\n"
    "d 1e20 1e20 0\n"
    "f 3e38 3e38 3e38\n"
)


def invoke(*args, input=None):
    # Any numpy RuntimeWarning becomes an exception, so it cannot pass unnoticed.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return runner.invoke(app, list(args), input=input)


@pytest.fixture
def extreme_model(tmp_path):
    source = tmp_path / "extreme.glove"
    source.write_text(ROWS)
    model = str(tmp_path / "extreme")
    result = invoke("import", str(source), "-m", model, "-q")
    assert result.exit_code == 0, result.stderr
    return model


def scores(stdout):
    return {line.split("\t")[0]: float(line.split("\t")[1]) for line in stdout.splitlines()}


def test_tiny_rows_keep_their_direction(extreme_model):
    result = invoke("neighbors", "-m", extreme_model, "a")
    assert result.exit_code == 0, result.stderr
    found = scores(result.stdout)
    assert found["b"] == pytest.approx(0.9487, abs=1e-4)
    assert found["c"] == pytest.approx(0.7071, abs=1e-4)
    result = invoke("neighbors", "-m", extreme_model, "c")
    found = scores(result.stdout)
    assert found["a"] == pytest.approx(0.7071, abs=1e-4)
    assert found["b"] == pytest.approx(0.4472, abs=1e-4)


def test_huge_rows_query_and_score(extreme_model):
    result = invoke("neighbors", "-m", extreme_model, "d", "-k", "2")
    assert result.exit_code == 0, result.stderr
    assert scores(result.stdout) == {"a": 1.0, "b": 0.9487}
    result = invoke("neighbors", "-m", extreme_model, "f", "-k", "2")
    assert result.exit_code == 0, result.stderr
    assert scores(result.stdout) == {"a": 0.8165, "d": 0.8165}
    model = embcli.load(extreme_model)
    assert model.similarity("d", "a") == pytest.approx(1.0)


@pytest.mark.parametrize("scale", ["1e20", "1e-30", "1.401298464324817e-45", "1e38"])
def test_scaled_query_vector_same_neighbors(extreme_model, scale):
    expected = invoke("neighbors", "-m", extreme_model, "--vector", "2 2 1")
    assert expected.exit_code == 0
    # 1.4e-45 is the smallest float32 subnormal, so its multiples 2, 2, 1 are exact.
    values = " ".join(str(float(scale) * v) for v in (2, 2, 1))
    result = invoke("neighbors", "-m", extreme_model, "--vector", values)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == expected.stdout


def test_vector_batch_keeps_extreme_lines(extreme_model):
    result = invoke("neighbors", "-m", extreme_model, "--vector", "-", "-k", "1",
                    input="1 1 0\n1e20 1e20 0\n2e-40 2e-40 0\n")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3


def test_vector_beyond_float32_is_an_error(extreme_model):
    result = invoke("neighbors", "-m", extreme_model, "--vector", "1e39 1 0")
    assert result.exit_code == 1
    assert "1e39 is outside the float32 range" in result.stderr


def test_import_value_beyond_float32(tmp_path):
    source = tmp_path / "big.glove"
    source.write_text("a 1 2 3\nhuge 1 1e39 0\nc 3 2 1\n")
    result = invoke("import", str(source), "-m", str(tmp_path / "m"))
    assert result.exit_code == 1
    assert "big.glove: line 2: 'huge' has the value 1e39, outside the float32 range" in result.stderr
    assert "NaN" not in result.stderr
    result = invoke("import", str(source), "-m", str(tmp_path / "m"), "--lenient")
    assert result.exit_code == 0, result.stderr
    assert "outside the float32 range" in result.stderr
    assert embcli.load(str(tmp_path / "m")).words == ["a", "c"]


def test_npy_value_beyond_float32(tmp_path):
    np.save(tmp_path / "big.npy", np.array([[1.0, 2.0], [1e39, 0.0]]))
    (tmp_path / "words.txt").write_text("a\nhuge\n")
    result = invoke("import", str(tmp_path / "big.npy"), "--words", str(tmp_path / "words.txt"),
                    "-m", str(tmp_path / "m"))
    assert result.exit_code == 1
    assert "row 2: 'huge' has a value outside the float32 range" in result.stderr


def test_vector_rounding_to_zero_is_an_error(extreme_model):
    result = invoke("neighbors", "-m", extreme_model, "--vector", "1e-46 1e-46 0")
    assert result.exit_code == 1
    assert "all zeros in float32" in result.stderr


def test_stored_norm_check_skips_extreme_rows(tmp_path):
    # 1/norm of these rows does not fit float32; the check of stored norms must skip them.
    source = tmp_path / "ext.glove"
    source.write_text("a 3e38 3e38 0\nb 1 1 0\nc 1 0 0\nd 1e-40 2e-40 0\ne 0 1 0\n")
    model = str(tmp_path / "ext")
    assert invoke("import", str(source), "-m", model, "-q").exit_code == 0
    for word, best, score in (("a", "b", 1.0), ("d", "a", 0.9487)):
        result = invoke("neighbors", "-m", model, word, "-k", "1")
        assert result.exit_code == 0, result.stderr
        assert scores(result.stdout) == {best: pytest.approx(score, abs=1e-4)}


def test_vector_messages_for_nan_and_separators(extreme_model):
    nan = invoke("neighbors", "-m", extreme_model, "--vector", "nan nan nan")
    assert nan.exit_code == 1
    assert "the vector contains NaN or infinity" in nan.stderr
    separated = invoke("neighbors", "-m", extreme_model, "--vector", "1_0 1 1")
    assert separated.exit_code == 1
    assert "'1_0' is not a number" in separated.stderr
