"""Vector file readers and writers: the bad-input cases, fuzzing and exact round trips."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from embcli.cli import app
from embcli.errors import EmbcliError, VectorFileError
from embcli.formats import READ_FORMATS, WRITE_FORMATS, detect_format, read_vectors, write_vectors

from conftest import DATA

CASES = DATA / "cases"
runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, list(args), input=input)


def case(name):
    return str(next(CASES.glob(f"{name}-*")))


def test_binary_word_cut_mid_character_names_entry():
    path = os.path.join(case("03"), "vectors.bin")
    with pytest.raises(VectorFileError) as error:
        read_vectors(path)
    message = str(error.value)
    assert "vectors.bin" in message
    assert "entry 2 of 3" in message
    assert "byte offset 22" in message
    assert "not valid UTF-8" in message


def test_binary_lenient_replaces_bad_bytes():
    vectors = read_vectors(os.path.join(case("03"), "vectors.bin"), lenient=True)
    assert vectors.words == ["ok", "ab\ufffd", "fine"]
    np.testing.assert_array_equal(vectors.matrix[0], np.float32([0.1, 0.2, 0.3]))
    np.testing.assert_array_equal(vectors.matrix[2], np.float32([0.7, 0.8, 0.9]))
    assert vectors.warning_count == 1


def test_crlf_vector_file_reads_clean_values():
    vectors = read_vectors(os.path.join(case("05"), "vectors.txt"))
    assert vectors.words == ["red", "apple"]
    np.testing.assert_array_equal(vectors.matrix[1], np.float32([0.4, 0.5, 0.6]))


def test_written_files_use_lf_only(tmp_path):
    vectors = read_vectors(os.path.join(case("05"), "vectors.txt"))
    out = tmp_path / "out.txt"
    write_vectors(str(out), vectors.words, vectors.matrix, "word2vec")
    assert b"\r" not in out.read_bytes()
    again = read_vectors(str(out))
    assert again.words == vectors.words
    np.testing.assert_array_equal(again.matrix, vectors.matrix)


def test_word_with_tab_keeps_every_row():
    vectors = read_vectors(os.path.join(case("08"), "vectors.txt"))
    assert vectors.words == ["the", "a\tb", "cat"]
    np.testing.assert_array_equal(vectors.matrix[2], np.float32([0.3, 0.2, 0.1]))


def test_word_with_spaces_is_read_whole(tmp_path):
    path = tmp_path / "spaces.txt"
    path.write_text("2 2\n. . . 0.5 0.25\nnext 1 2\n", encoding="utf-8")
    vectors = read_vectors(str(path))
    assert vectors.words == [". . .", "next"]


@pytest.mark.parametrize("name", ["too_many_declared.txt", "too_many_declared.bin"])
def test_header_declares_more_rows_than_present(name):
    with pytest.raises(VectorFileError) as error:
        read_vectors(os.path.join(case("09"), name))
    message = str(error.value)
    assert name in message
    assert "declares 3 vectors" in message
    assert "contains 2" in message


def test_header_declares_fewer_rows_than_present():
    path = os.path.join(case("09"), "too_few_declared.txt")
    with pytest.raises(VectorFileError) as error:
        read_vectors(path)
    assert "declares 1 vector but more rows follow at line 3" in str(error.value)
    vectors = read_vectors(path, lenient=True)
    assert vectors.words == ["red", "blue"]
    assert vectors.warning_count == 1


def test_lenient_keeps_rows_of_short_file():
    vectors = read_vectors(os.path.join(case("09"), "too_many_declared.bin"), lenient=True)
    assert vectors.words == ["red", "blue"]
    np.testing.assert_array_equal(vectors.matrix[1], np.float32([0.5, 0.6, 0.7, 0.8]))


def test_glove_is_detected_without_header():
    path = os.path.join(case("10"), "glove.txt")
    assert detect_format(path) == "glove"
    vectors = read_vectors(path)
    assert vectors.words == ["the", "of", "cat"]
    assert vectors.matrix.shape == (3, 3)


def test_glove_read_as_word2vec_names_option():
    with pytest.raises(VectorFileError) as error:
        read_vectors(os.path.join(case("10"), "glove.txt"), format="word2vec")
    message = str(error.value)
    assert "line 1" in message
    assert "'the 0.1 0.2 0.3'" in message
    assert "glove" in message


@pytest.mark.parametrize("name, line, found", [("vectors.txt", 3, 2), ("glove.txt", 2, 4)])
def test_ragged_row_names_line_and_word(name, line, found):
    with pytest.raises(VectorFileError) as error:
        read_vectors(os.path.join(case("12"), name))
    assert f"{name}: line {line}: 'dog' has {found} values, expected 3;" in str(error.value)


def test_ragged_import_writes_nothing(tmp_path):
    model = tmp_path / "model"
    result = invoke("import", os.path.join(case("12"), "vectors.txt"), "-m", str(model))
    assert result.exit_code == 1
    assert "'dog' has 2 values, expected 3" in result.stderr
    assert not model.exists()


@pytest.mark.parametrize("name, end", [("vectors.bin", 60), ("vectors_cut_in_word.bin", 48)])
def test_truncated_binary_reports_entries(name, end):
    with pytest.raises(VectorFileError) as error:
        read_vectors(os.path.join(case("14"), name))
    message = str(error.value)
    assert "truncated" in message
    assert "2 of 3 entries are complete" in message
    assert f"byte offset {end}" in message
    assert "entry 3" in message


def test_truncated_import_leaves_no_model(tmp_path):
    model = tmp_path / "model"
    result = invoke("import", os.path.join(case("14"), "vectors.bin"), "-m", str(model))
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    assert not model.exists()


def test_duplicate_word_is_an_error(tmp_path):
    path = tmp_path / "dup.txt"
    path.write_text("3 2\nred 1 2\nblue 3 4\nred 5 6\n", encoding="utf-8")
    with pytest.raises(VectorFileError) as error:
        read_vectors(str(path))
    assert "line 4: duplicate word 'red' (first seen on line 2)" in str(error.value)
    vectors = read_vectors(str(path), lenient=True)
    assert vectors.words == ["red", "blue"]
    np.testing.assert_array_equal(vectors.matrix[0], np.float32([1, 2]))


def test_non_finite_value_is_an_error(tmp_path):
    path = tmp_path / "nan.txt"
    path.write_text("2 2\nred nan 2\nblue 3 4\n", encoding="utf-8")
    with pytest.raises(VectorFileError) as error:
        read_vectors(str(path))
    assert "line 2: 'red' has a NaN or infinite value" in str(error.value)


def test_invalid_number_names_value(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("2 2\nred 1 2\nblue 3 x4\n", encoding="utf-8")
    with pytest.raises(VectorFileError) as error:
        read_vectors(str(path))
    assert "line 3: 'blue' has an invalid value 'x4'" in str(error.value)


@pytest.mark.parametrize("name", ["vectors_payload.npy", "vocab_object_array.npy"])
def test_object_npy_is_rejected_unloaded(name, capfd):
    directory = case("30")
    result = invoke("import", os.path.join(directory, name), "--words", os.path.join(directory, "vocab.txt"))
    assert result.exit_code == 1
    assert "object (pickled) array" in result.stderr
    assert "2-D float array" in result.stderr
    captured = capfd.readouterr()
    for text in (result.stdout, result.stderr, captured.out, captured.err):
        assert "PICKLE-PAYLOAD-EXECUTED" not in text


def test_npy_with_word_list_imports():
    directory = case("30")
    result = invoke("import", os.path.join(directory, "vectors_ok.npy"), "--words", os.path.join(directory, "vocab.txt"))
    assert result.exit_code == 0, result.stderr
    result = invoke("lookup", "cat")
    assert result.stdout == "cat\t0.3\t0.2\t0.1\n"
    matrix = np.load("embcli-model/embeddings.npy")
    assert matrix.dtype == np.float32 and matrix.shape == (3, 3)


def test_npy_row_count_must_match_words(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("the\ncat\ndog\nextra\n", encoding="utf-8")
    with pytest.raises(VectorFileError) as error:
        read_vectors(os.path.join(case("30"), "vectors_ok.npy"), words_path=str(words))
    assert "has 3 rows but" in str(error.value)
    assert "has 4 words" in str(error.value)


def test_import_refuses_existing_model_without_force():
    path = os.path.join(case("10"), "glove.txt")
    assert invoke("import", path).exit_code == 0
    result = invoke("import", path)
    assert result.exit_code == 1
    assert "--force" in result.stderr
    assert invoke("import", path, "--force").exit_code == 0


@pytest.mark.parametrize("name", ["vectors.txt", "glove.txt"])
def test_imported_model_answers_every_query(name):
    path = os.path.join(case("21" if name == "vectors.txt" else "10"), name)
    assert invoke("import", path, "-q").exit_code == 0
    words = read_vectors(path).words
    first, second, third = words[:3]
    # With 3 words and the inputs left out, an analogy has no answer left to print.
    analogy = ("analogy", first, second, third, "-k", "1", *(["--include-inputs"] if len(words) == 3 else []))
    for args in (("lookup", first), ("neighbors", first, "-k", "2"), ("similarity", first, second),
                 analogy, ("info",)):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.stderr)
        assert result.stdout


@pytest.mark.parametrize("format", WRITE_FORMATS)
def test_export_then_import_is_identical(format, tmp_path):
    source = os.path.join(case("21"), "vectors.txt")
    assert invoke("import", source, "-q").exit_code == 0
    out = tmp_path / ("out" if format == "projector" else f"out.{format}")
    assert invoke("export", str(out), "--format", format, "-q").exit_code == 0
    original = read_vectors(source)
    if format == "projector":
        matrix = np.loadtxt(out / "vectors.tsv", delimiter="\t", dtype=np.float32)
        words = (out / "metadata.tsv").read_text(encoding="utf-8").splitlines()
        assert words == original.words
        np.testing.assert_array_equal(matrix, original.matrix)
        return
    if format == "npy":
        assert sorted(os.listdir(tmp_path)) == ["embcli-model", "out.npy", "out.words.txt"]
        again = read_vectors(str(out), words_path=str(tmp_path / "out.words.txt"))
    else:
        again = read_vectors(str(out))
    # A .vec file is word2vec text, and detection cannot tell them apart.
    assert again.format == ("word2vec" if format == "fasttext" else format)
    assert again.words == original.words
    np.testing.assert_array_equal(again.matrix, original.matrix)


def test_export_rejects_word_with_space(tmp_path):
    words = ["ok", "two words"]
    with pytest.raises(VectorFileError) as error:
        write_vectors(str(tmp_path / "x.txt"), words, np.ones((2, 2), np.float32), "word2vec")
    assert "'two words' contains ' '" in str(error.value)
    assert "export with --format npy or projector" in str(error.value)
    assert not (tmp_path / "x.txt").exists()
    written = write_vectors(str(tmp_path / "x.npy"), words, np.ones((2, 2), np.float32), "npy")
    assert (tmp_path / "x.words.txt").read_text(encoding="utf-8").splitlines() == words
    assert written == [str(tmp_path / "x.npy"), str(tmp_path / "x.words.txt")]


# Property tests.

WORD_ALPHABET = st.characters(
    blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc", "Cf"),
)
WORDS = st.lists(st.text(WORD_ALPHABET, min_size=1, max_size=8), min_size=1, max_size=12, unique=True)
FLOATS = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def word_vectors(draw):
    words = draw(WORDS)
    dim = draw(st.integers(1, 5))
    values = draw(st.lists(FLOATS, min_size=len(words) * dim, max_size=len(words) * dim))
    return words, np.array(values, dtype=np.float32).reshape(len(words), dim)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=word_vectors(), format=st.sampled_from(["word2vec", "word2vec-binary", "glove"]))
def test_random_files_round_trip_exactly(tmp_path, data, format):
    words, matrix = data
    path = tmp_path / "vectors"
    write_vectors(str(path), words, matrix, format)
    vectors = read_vectors(str(path), format=format)
    assert vectors.words == words
    assert vectors.matrix.tobytes() == matrix.tobytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), format=st.sampled_from([None, *READ_FORMATS]),
       prefix=st.sampled_from([b"", b"2 3\n", b"1 1\n", b"\x93NUMPY"]))
def test_random_bytes_raise_only_embcli_errors(tmp_path, data, format, prefix):
    path = tmp_path / "random.vec"
    path.write_bytes(prefix + data)
    words = tmp_path / "words.txt"
    words.write_text("a\nb\n", encoding="utf-8")
    for lenient in (False, True):
        try:
            vectors = read_vectors(str(path), format=format, lenient=lenient, words_path=str(words))
        except EmbcliError:
            continue
        assert len(vectors.words) == vectors.matrix.shape[0]
        assert vectors.matrix.dtype == np.float32
        assert np.isfinite(vectors.matrix).all()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=word_vectors(), format=st.sampled_from(["word2vec", "word2vec-binary", "glove"]),
       cut=st.integers(0, 10_000), position=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_damaged_files_raise_only_embcli_errors(tmp_path, data, format, cut, position, byte):
    words, matrix = data
    path = tmp_path / "vectors"
    write_vectors(str(path), words, matrix, format)
    content = bytearray(path.read_bytes())
    content[position % len(content)] = byte
    path.write_bytes(bytes(content[: max(1, cut % (len(content) + 1))]))
    for read_format in (None, format):
        try:
            vectors = read_vectors(str(path), format=read_format)
        except EmbcliError:
            continue
        assert len(vectors.words) == vectors.matrix.shape[0]
        assert np.isfinite(vectors.matrix).all()


def test_negative_header_rejected(tmp_path):
    path = tmp_path / "negative.txt"
    path.write_text("2 -3\na 1 2 3\nb 1 2 3\n", encoding="utf-8")
    with pytest.raises(VectorFileError, match="line 1 is a 'count dim' header with a negative number"):
        read_vectors(str(path))


@pytest.mark.parametrize("compress", [False, True])
def test_text_import_reports_progress(tmp_path, compress):
    # The CLI passes a progress callback for files of 32 MiB or more.
    import gzip

    text = "3 2\nking 1 0\nqueen 0 1\nman 1 1\n".encode()
    path = tmp_path / ("v.vec.gz" if compress else "v.vec")
    path.write_bytes(gzip.compress(text) if compress else text)
    seen = []
    vectors = read_vectors(str(path), progress=seen.append)
    assert vectors.words == ["king", "queen", "man"]
    assert seen and seen[-1] == os.path.getsize(path)


def test_only_ascii_decimal_values_are_numbers(tmp_path):
    # Python's float() reads "1_0" and Arabic-Indic digits; a vector file never means them.
    path = tmp_path / "odd.vec"
    path.write_text("4 2\na 1_0 2\nb 1 2\nc 1,5 2\nd \u0661 2\n", encoding="utf-8")
    with pytest.raises(VectorFileError, match="line 2: 'a' has an invalid value '1_0'"):
        read_vectors(str(path))
    vectors = read_vectors(str(path), lenient=True)
    assert vectors.words == ["b"]
    # One warning per bad line: an invalid value is not reported again as NaN.
    assert vectors.warning_count == 3
    assert len(vectors.warnings) == 3


def test_tab_separated_rows_get_a_hint(tmp_path):
    path = tmp_path / "tabs.txt"
    path.write_text("2 2\nking\t1\t0\nqueen\t0\t1\n", encoding="utf-8")
    with pytest.raises(VectorFileError, match="this line has tabs"):
        read_vectors(str(path))


def test_npy_import_finds_the_exported_word_list(tmp_path):
    words = ["king", "queen", "man"]
    matrix = np.arange(6, dtype=np.float32).reshape(3, 2)
    write_vectors(str(tmp_path / "v.npy"), words, matrix, "npy")
    vectors = read_vectors(str(tmp_path / "v.npy"))
    assert vectors.words == words
    np.testing.assert_array_equal(vectors.matrix, matrix)
    (tmp_path / "v.words.txt").unlink()
    with pytest.raises(EmbcliError, match="needs a word list"):
        read_vectors(str(tmp_path / "v.npy"))
