"""Messages for misread word2vec binary files and for words that an export format cannot hold."""

import numpy as np
import pytest
from gensim.models import KeyedVectors
from typer.testing import CliRunner

from embcli.cli import app
from embcli.errors import VectorFileError
from embcli.formats import read_vectors, write_vectors

runner = CliRunner()
DIM = 4
WORDS = ["the", "cat", "dog", "tree", "new york", "city", "tab\there"] + [f"w{i}" for i in range(11)]


def matrix_for(words, dim=DIM, seed=1):
    return np.random.default_rng(seed).standard_normal((len(words), dim)).astype(np.float32)


def gensim_file(path, words, matrix, **options):
    vectors = KeyedVectors(matrix.shape[1])
    vectors.add_vectors(words, matrix)
    vectors.save_word2vec_format(str(path), **options)
    return str(path)


def binary_file(path, words, matrix, newline=False, dtype="<f4"):
    """Write a word2vec binary file; `newline` ends each entry with one, as word2vec.c does."""
    parts = [f"{len(words)} {matrix.shape[1]}\n".encode()]
    for word, row in zip(words, matrix):
        parts.append(word.encode("utf-8") + b" " + np.asarray(row, dtype=dtype).tobytes())
        if newline:
            parts.append(b"\n")
    path.write_bytes(b"".join(parts))
    return str(path)


def assert_printable(message):
    assert message.isascii(), message
    assert all(ch.isprintable() for ch in message), message


# A word with a space in a binary file.


def test_binary_space_names_entry_before(tmp_path):
    path = gensim_file(tmp_path / "v.bin", WORDS, matrix_for(WORDS), binary=True)
    with pytest.raises(VectorFileError) as error:
        read_vectors(path)
    message = str(error.value)
    assert "entry 5 of 18" in message
    assert "'new york' contains a space" in message
    assert "'new'" in message
    assert "not valid UTF-8" not in message


@pytest.mark.parametrize("newline", [False, True])
def test_binary_space_lenient_skips_entry(tmp_path, newline):
    matrix = matrix_for(WORDS)
    path = binary_file(tmp_path / "v.bin", WORDS, matrix, newline)
    vectors = read_vectors(path, lenient=True)
    expected = [word for word in WORDS if word != "new york"]
    assert vectors.words == expected
    assert vectors.warning_count == 1
    assert "'new york' contains a space" in vectors.warnings[0]
    keep = [i for i, word in enumerate(WORDS) if word != "new york"]
    np.testing.assert_array_equal(vectors.matrix, matrix[keep])


def test_binary_space_in_last_entry(tmp_path):
    words = ["a", "b", "c", "new york city"]
    path = binary_file(tmp_path / "v.bin", words, matrix_for(words))
    with pytest.raises(VectorFileError, match="entry 4 of 4.*'new york city' contains a space"):
        read_vectors(path)
    vectors = read_vectors(path, lenient=True)
    assert vectors.words == ["a", "b", "c"]
    assert vectors.warning_count == 1


def test_binary_space_across_blocks(tmp_path):
    # The reader parses 4,096 entries per block, so the word with a space ends a block.
    words = [f"w{i}" for i in range(5000)]
    words[4095] = "new york"
    matrix = matrix_for(words, dim=3)
    path = binary_file(tmp_path / "v.bin", words, matrix)
    with pytest.raises(VectorFileError, match="entry 4096 of 5,000.*'new york' contains a space"):
        read_vectors(path)
    vectors = read_vectors(path, lenient=True)
    assert vectors.words == words[:4095] + words[4096:]
    np.testing.assert_array_equal(vectors.matrix, np.delete(matrix, 4095, axis=0))


def test_binary_space_lenient_summary_count(tmp_path):
    path = gensim_file(tmp_path / "v.bin", WORDS, matrix_for(WORDS), binary=True)
    result = runner.invoke(app, ["import", path, "-m", str(tmp_path / "model"), "--lenient"])
    assert result.exit_code == 0, result.stderr
    assert "imported 17 words" in result.stderr


@pytest.mark.parametrize("newline", [False, True])
def test_binary_ordinary_words_still_read(tmp_path, newline):
    words = [f"word{i}" for i in range(3000)] + ["tab\there", "ünïcode", "日本"]
    matrix = matrix_for(words, dim=7)
    path = binary_file(tmp_path / "v.bin", words, matrix, newline)
    vectors = read_vectors(path)
    assert vectors.words == words
    np.testing.assert_array_equal(vectors.matrix, matrix)


def test_gensim_binary_ordinary_words_still_read(tmp_path):
    words = [word for word in WORDS if " " not in word]
    matrix = matrix_for(words)
    vectors = read_vectors(gensim_file(tmp_path / "v.bin", words, matrix, binary=True))
    assert vectors.words == words
    np.testing.assert_array_equal(vectors.matrix, matrix)


def test_binary_invalid_word_start_hints_misread(tmp_path):
    # Neither a space nor float64 values explain this Latin-1 word, so the message only suggests them.
    matrix = matrix_for(["ok", "elan", "fine"], dim=3)
    data = b"3 3\n" + b"".join(word + b" " + row.tobytes() for word, row in zip([b"ok", b"\xe9lan", b"fine"], matrix))
    (tmp_path / "v.bin").write_bytes(data)
    with pytest.raises(VectorFileError) as error:
        read_vectors(str(tmp_path / "v.bin"))
    message = str(error.value)
    assert "entry 2 of 3" in message
    assert "not valid UTF-8" in message
    assert "entry 1 ('ok') may be misread" in message


# Values of another size than float32.


def test_binary_float64_named(tmp_path):
    words = [f"w{i}" for i in range(4)]
    path = binary_file(tmp_path / "v.bin", words, matrix_for(words, dim=3), dtype="<f8")
    with pytest.raises(VectorFileError) as error:
        read_vectors(path)
    message = str(error.value)
    assert "4 bytes (float32)" in message
    assert "float64" in message
    assert "not valid UTF-8" not in message
    assert_printable(message)


def test_binary_float64_stops_lenient_read(tmp_path):
    words = [f"w{i}" for i in range(4)]
    path = binary_file(tmp_path / "v.bin", words, matrix_for(words, dim=3), dtype="<f8")
    with pytest.raises(VectorFileError, match="float64"):
        read_vectors(path, lenient=True)


def test_binary_float16_named(tmp_path):
    words = [f"word{i}" for i in range(50)]
    path = binary_file(tmp_path / "v.bin", words, matrix_for(words, dim=8), dtype="<f2")
    with pytest.raises(VectorFileError, match="float16"):
        read_vectors(path, lenient=True)


# Binary files without the "count dim" header.


@pytest.mark.parametrize("format", [None, "word2vec-binary", "glove"])
def test_headerless_binary_names_missing_header(tmp_path, format):
    words = [word for word in WORDS if " " not in word]
    path = gensim_file(tmp_path / "v.bin", words, matrix_for(words), binary=True, write_header=False)
    with pytest.raises(VectorFileError) as error:
        read_vectors(path, format=format)
    message = str(error.value)
    assert "'count dim' first line" in message
    assert "4 values per word" in message
    assert "echo '17 4'" in message
    assert "invalid UTF-8" not in message
    assert_printable(message)


def test_headerless_binary_message_has_no_raw_bytes(tmp_path):
    words = [word for word in WORDS if " " not in word]
    path = gensim_file(tmp_path / "v.bin", words, matrix_for(words), binary=True, write_header=False)
    result = runner.invoke(app, ["import", path, "-m", str(tmp_path / "model"), "--format", "word2vec-binary"])
    assert result.exit_code == 1
    assert_printable(result.stderr.strip())


def test_binary_format_on_text_shows_excerpt(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("ab 1 2\ncd 3 4\n", encoding="utf-8")
    with pytest.raises(VectorFileError) as error:
        read_vectors(str(path), format="word2vec-binary")
    message = str(error.value)
    assert "starts with b'ab 1 2\\n'" in message
    assert "needs that first line" in message


def test_glove_text_with_latin1_not_binary(tmp_path):
    # Invalid UTF-8 without control bytes is a text problem, not a headerless binary file.
    path = tmp_path / "v.txt"
    path.write_bytes(b"caf\xe9 1 2\ncd 3 4\n")
    with pytest.raises(VectorFileError, match="invalid UTF-8"):
        read_vectors(str(path))


# Words that an export format cannot hold.


def export_error(tmp_path, words, format):
    matrix = np.ones((len(words), 2), dtype=np.float32)
    target = tmp_path / ("out" if format == "projector" else f"out.{'npy' if format == 'npy' else 'txt'}")
    with pytest.raises(VectorFileError) as error:
        write_vectors(str(target), words, matrix, format)
    return str(error.value)


def test_export_space_names_fitting_formats(tmp_path):
    message = export_error(tmp_path, ["a", "new york"], "word2vec")
    assert "word 2 'new york' contains ' '" in message
    assert "export with --format npy or projector" in message


def test_export_tab_names_fitting_formats(tmp_path):
    message = export_error(tmp_path, ["a", "tab\there"], "npy")
    assert "word 2 'tab\\there' contains '\\t'" in message
    assert "export with --format word2vec, word2vec-binary, glove or fasttext" in message


@pytest.mark.parametrize("format", ["word2vec", "npy", "projector", "word2vec-binary"])
def test_export_space_and_tab_no_format(tmp_path, format):
    message = export_error(tmp_path, ["a", "new york", "tab\there"], format)
    assert message.startswith("no export format can hold every word of the model, because of 2 words")
    assert "'new york' contains ' '" in message
    assert "'tab\\there' contains '\\t'" in message
    assert "--format" not in message


def test_export_line_break_no_format(tmp_path):
    message = export_error(tmp_path, ["a", "b\nc"], "npy")
    assert message.startswith("no export format can hold every word of the model, because of 1 word")
    assert "contains '\\n'" in message


def test_export_lists_first_words_and_count(tmp_path):
    words = [f"a b{i}" for i in range(12)] + ["c\td"]
    message = export_error(tmp_path, words, "glove")
    assert "because of 13 words" in message
    assert "word 5 'a b4'" in message
    assert "'a b5'" not in message
    assert "and 8 more" in message


def test_export_binary_rejects_carriage_return(tmp_path):
    # The binary reader rejects a word with CR as a line break, so the writer must too.
    message = export_error(tmp_path, ["a", "b\rc"], "word2vec-binary")
    assert "contains '\\r'" in message


def test_export_cli_names_only_fitting_formats(tmp_path):
    source = gensim_file(tmp_path / "v.txt", WORDS, matrix_for(WORDS), binary=False)
    model = str(tmp_path / "model")
    assert runner.invoke(app, ["import", source, "-m", model, "-q"]).exit_code == 0
    for format in ("word2vec", "npy"):
        result = runner.invoke(app, ["export", "-m", model, str(tmp_path / f"out.{format}"), "--format", format])
        assert result.exit_code == 1
        assert "no export format can hold every word" in result.stderr
        assert "--format" not in result.stderr
