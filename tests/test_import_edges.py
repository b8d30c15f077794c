"""import on awkward inputs: truncated compressed files, projector TSV, spaced words, UTF-16, cut .npy."""

import gzip
import lzma
import os
import zlib

import numpy as np
from typer.testing import CliRunner

from embcli.cli import app
from embcli.formats import read_vectors, write_vectors

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


def glove_text(rows=3000, dim=20, seed=0):
    generator = np.random.default_rng(seed)
    lines = [f"w{i} " + " ".join(f"{x:.6f}" for x in generator.standard_normal(dim)) for i in range(rows)]
    return ("\n".join(lines) + "\n").encode("ascii")


def assert_failed_without_model(result, model_dir):
    assert result.exit_code == 1, result.stderr
    assert not os.path.exists(model_dir)
    assert "Traceback" not in result.stderr


# Truncated compressed files.


def test_truncated_gzip_names_bytes_and_line(tmp_path):
    text = glove_text()
    data = gzip.compress(text)
    path = tmp_path / "trunc.gz"
    path.write_bytes(data[: len(data) // 2])
    # What gzip -dc writes before it stops: every byte that the partial stream decompresses to.
    available = zlib.decompressobj(wbits=31).decompress(data[: len(data) // 2])
    assert len(available) > 0
    result = invoke("import", str(path), "-m", str(tmp_path / "model"))
    assert_failed_without_model(result, tmp_path / "model")
    assert f"after {len(available):,} uncompressed bytes" in result.stderr
    line = available.count(b"\n") + 1
    assert f"in line {line:,}" in result.stderr
    assert "gzip -dc" in result.stderr
    assert "--lenient" in result.stderr


def test_truncated_xz_names_bytes(tmp_path):
    text = glove_text()
    data = lzma.compress(text)
    path = tmp_path / "trunc.xz"
    path.write_bytes(data[: len(data) // 2])
    available = lzma.LZMADecompressor().decompress(data[: len(data) // 2])
    assert len(available) > 0
    result = invoke("import", str(path), "-m", str(tmp_path / "model"))
    assert_failed_without_model(result, tmp_path / "model")
    assert f"after {len(available):,} uncompressed bytes" in result.stderr
    assert "xz -dc" in result.stderr


def test_truncated_gzip_binary_names_bytes(tmp_path):
    words = [f"w{i}" for i in range(2000)]
    matrix = np.random.default_rng(1).standard_normal((2000, 16)).astype(np.float32)
    binary = tmp_path / "v.bin"
    write_vectors(str(binary), words, matrix, "word2vec-binary")
    data = gzip.compress(binary.read_bytes())
    path = tmp_path / "v.bin.gz"
    path.write_bytes(data[: len(data) // 2])
    available = zlib.decompressobj(wbits=31).decompress(data[: len(data) // 2])
    result = invoke("import", str(path), "-m", str(tmp_path / "model"))
    assert_failed_without_model(result, tmp_path / "model")
    assert f"after {len(available):,} uncompressed bytes" in result.stderr


# Projector vectors.tsv and metadata.tsv.


def test_projector_round_trip_identical(tmp_path):
    generator = np.random.default_rng(2)
    words = ["the", "Cat", "naïve", "a b", "猫", "x"]
    matrix = generator.standard_normal((len(words), 7)).astype(np.float32)
    matrix[0, 0] = np.float32(1e-38)
    matrix[1, 1] = np.float32(-3.4e38)
    out = tmp_path / "out"
    write_vectors(str(out), words, matrix, "projector")
    for format in (None, "projector"):
        vectors = read_vectors(str(out / "vectors.tsv"), format=format)
        assert vectors.format == "projector"
        assert vectors.words == words
        assert vectors.matrix.tobytes() == matrix.tobytes()


def test_projector_round_trip_through_cli(tmp_path):
    source = tmp_path / "source.txt"
    source.write_bytes(glove_text(rows=50, dim=5))
    assert invoke("import", str(source), "-m", str(tmp_path / "m1")).exit_code == 0
    exported = invoke("export", str(tmp_path / "out"), "-m", str(tmp_path / "m1"), "--format", "projector")
    assert exported.exit_code == 0, exported.stderr
    imported = invoke("import", str(tmp_path / "out" / "vectors.tsv"), "-m", str(tmp_path / "m2"))
    assert imported.exit_code == 0, imported.stderr
    assert "(projector)" in imported.stderr
    assert (tmp_path / "m1" / "vocab.tsv").read_bytes() == (tmp_path / "m2" / "vocab.tsv").read_bytes()
    first = np.load(tmp_path / "m1" / "embeddings.npy")
    second = np.load(tmp_path / "m2" / "embeddings.npy")
    assert first.tobytes() == second.tobytes()


def test_projector_without_metadata_names_it(tmp_path):
    path = tmp_path / "vectors.tsv"
    path.write_text("0.1\t0.2\n0.3\t0.4\n", encoding="utf-8")
    result = invoke("import", str(path), "-m", str(tmp_path / "model"))
    assert_failed_without_model(result, tmp_path / "model")
    assert "has no words" in result.stderr
    assert str(tmp_path / "metadata.tsv") in result.stderr
    assert "--words" in result.stderr
    assert "tr '" not in result.stderr


def test_projector_metadata_named_with_words(tmp_path):
    path = tmp_path / "vectors.tsv"
    path.write_text("0.1\t0.2\n0.3\t0.4\n", encoding="utf-8")
    labels = tmp_path / "labels.tsv"
    labels.write_text("cat\ndog\n", encoding="utf-8")
    result = invoke("import", str(path), "--format", "projector", "--words", str(labels), "-m", "model")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "model" / "vocab.tsv").read_text(encoding="utf-8") == "cat\t0\ndog\t0\n"


def test_projector_from_stdin_needs_words(tmp_path):
    result = runner.invoke(app, ["import", "-", "-m", str(tmp_path / "model")], input="0.1\t0.2\n0.3\t0.4\n")
    assert_failed_without_model(result, tmp_path / "model")
    assert "has no words" in result.stderr
    assert "--words" in result.stderr


def test_projector_metadata_with_header(tmp_path):
    (tmp_path / "vectors.tsv").write_text("1\t2\n3\t4\n", encoding="utf-8")
    (tmp_path / "metadata.tsv").write_text("word\tcount\ncat\t5\ndog\t3\n", encoding="utf-8")
    vectors = read_vectors(str(tmp_path / "vectors.tsv"))
    assert vectors.words == ["cat", "dog"]
    assert vectors.matrix.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_projector_count_mismatch(tmp_path):
    (tmp_path / "vectors.tsv").write_text("1\t2\n3\t4\n", encoding="utf-8")
    (tmp_path / "metadata.tsv").write_text("cat\ndog\nfox\n", encoding="utf-8")
    result = invoke("import", str(tmp_path / "vectors.tsv"), "-m", str(tmp_path / "model"))
    assert_failed_without_model(result, tmp_path / "model")
    assert "has 2 rows but" in result.stderr
    assert "has 3 words" in result.stderr


def test_projector_ragged_row_names_line(tmp_path):
    (tmp_path / "vectors.tsv").write_text("1\t2\n3\t4\t5\n", encoding="utf-8")
    (tmp_path / "metadata.tsv").write_text("cat\ndog\n", encoding="utf-8")
    result = invoke("import", str(tmp_path / "vectors.tsv"), "-m", str(tmp_path / "model"))
    assert_failed_without_model(result, tmp_path / "model")
    assert "line 2: 'dog' has 3 values, expected 2" in result.stderr
    lenient = invoke("import", str(tmp_path / "vectors.tsv"), "-m", str(tmp_path / "model"), "--lenient")
    assert lenient.exit_code == 0, lenient.stderr
    assert (tmp_path / "model" / "vocab.tsv").read_text(encoding="utf-8") == "cat\t0\n"


def test_tab_numbers_as_glove_suggest_projector(tmp_path):
    path = tmp_path / "vectors.tsv"
    path.write_text("0.1\t0.2\n0.3\t0.4\n", encoding="utf-8")
    result = invoke("import", str(path), "--format", "glove", "-m", str(tmp_path / "model"))
    assert_failed_without_model(result, tmp_path / "model")
    assert "projector" in result.stderr
    assert "tr '" not in result.stderr


# Words that start or end with a space.


def test_spaced_words_warn_once(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"b 1 2\na  1 2\n c 1 2\nd  3 4\n")
    result = invoke("import", str(path), "-m", "model")
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "with a space" in line]
    assert len(warnings) == 1
    assert "3 words start or end with a space, the first on line 2: 'a '" in warnings[0]


def test_one_spaced_word_agrees(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"a  1 2\nb 1 2\n")
    result = invoke("import", str(path), "-m", "model")
    assert result.exit_code == 0, result.stderr
    assert "1 word starts or ends with a space, the first on line 1: 'a '" in result.stderr


def test_inner_space_kept_without_warning(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"2 2\nNew York 1 2\nb 1 2\n")
    result = invoke("import", str(path), "-m", "model")
    assert result.exit_code == 0, result.stderr
    assert "with a space" not in result.stderr
    assert (tmp_path / "model" / "vocab.tsv").read_text(encoding="utf-8") == "New York\t0\nb\t0\n"


# UTF-16 and UTF-32 files.


def test_utf16_vector_file_names_iconv(tmp_path):
    path = tmp_path / "u.txt"
    path.write_bytes("2 3\na 1 2 3\nb 1 2 3\n".encode("utf-16"))
    for extra in ([], ["--lenient"]):
        result = invoke("import", str(path), "-m", str(tmp_path / "model"), *extra)
        assert_failed_without_model(result, tmp_path / "model")
        assert "UTF-16 byte-order mark" in result.stderr
        assert "iconv -f UTF-16 -t UTF-8" in result.stderr


def test_utf32_and_bomless_utf16(tmp_path):
    cases = {"utf-32": "iconv -f UTF-32 -t UTF-8", "utf-16-le": "iconv -f UTF-16LE -t UTF-8"}
    for encoding, command in cases.items():
        path = tmp_path / f"{encoding}.txt"
        path.write_bytes("a 1 2 3\nb 1 2 3\nc 4 5 6\n".encode(encoding))
        result = invoke("import", str(path), "-m", str(tmp_path / "model"))
        assert_failed_without_model(result, tmp_path / "model")
        assert command in result.stderr


def test_utf16_word_list_names_iconv(tmp_path):
    np.save(tmp_path / "v.npy", np.ones((2, 3), dtype=np.float32))
    (tmp_path / "words.txt").write_bytes("a\nb\n".encode("utf-16"))
    result = invoke("import", str(tmp_path / "v.npy"), "--words", str(tmp_path / "words.txt"),
                    "-m", str(tmp_path / "model"))
    assert_failed_without_model(result, tmp_path / "model")
    assert "iconv -f UTF-16 -t UTF-8" in result.stderr


# Truncated .npy.


def test_truncated_npy_names_sizes(tmp_path):
    np.save(tmp_path / "v.npy", np.ones((1000, 50), dtype=np.float32))
    whole = (tmp_path / "v.npy").read_bytes()
    (tmp_path / "tr2.npy").write_bytes(whole[:100_000])
    (tmp_path / "tr2.words.txt").write_text("".join(f"w{i}\n" for i in range(1000)), encoding="utf-8")
    result = invoke("import", str(tmp_path / "tr2.npy"), "-m", str(tmp_path / "model"))
    assert_failed_without_model(result, tmp_path / "model")
    assert "truncated" in result.stderr
    assert f"{len(whole):,} bytes" in result.stderr
    assert "100,000" in result.stderr
    assert "mmap" not in result.stderr


# Wording.


def test_one_value_is_singular(tmp_path):
    path = tmp_path / "r.txt"
    path.write_bytes(b"a 1 2\nb 1\n")
    result = invoke("import", str(path), "-m", str(tmp_path / "model"))
    assert_failed_without_model(result, tmp_path / "model")
    assert "'b' has 1 value, expected 2" in result.stderr


def test_one_skipped_problem_is_singular(tmp_path):
    path = tmp_path / "nan.txt"
    path.write_bytes(b"a nan 1\n")
    result = invoke("import", str(path), "-m", str(tmp_path / "model"), "--lenient")
    assert_failed_without_model(result, tmp_path / "model")
    assert "once 1 problem is skipped" in result.stderr


def test_projector_export_onto_file(tmp_path):
    source = tmp_path / "source.txt"
    source.write_bytes(glove_text(rows=5, dim=3))
    assert invoke("import", str(source), "-m", str(tmp_path / "model")).exit_code == 0
    target = tmp_path / "v.word2vec"
    target.write_text("old\n", encoding="utf-8")
    result = invoke("export", str(target), "--format", "projector", "-m", str(tmp_path / "model"))
    assert result.exit_code == 1
    assert f"{target}: is a file, not a directory" in result.stderr
    assert "give a directory name" in result.stderr
    assert target.read_text(encoding="utf-8") == "old\n"
