"""Import of fastText .bin models, checked against vectors that fastText itself computed.

The fixtures in tests/data/fasttext were written by make_fixtures.py there with the
fastText package: a skip-gram model with n-grams 3-6, a CBOW model without n-grams and
a supervised model with labels and n-grams 2-3. Each .json contains fastText's
get_word_vector for words inside and outside the vocabulary.
"""

import gzip
import json
import os
import shutil
import struct

import numpy as np
import pytest
from typer.testing import CliRunner

import embcli
from embcli import fasttext_bin
from embcli.cli import app

runner = CliRunner()
FIXTURES = os.path.join(os.path.dirname(__file__), "data", "fasttext")
NAMES = ("skipgram-3-6", "cbow-words", "supervised-2-3")


def invoke(*args, **kwargs):
    return runner.invoke(app, list(args), **kwargs)


def fixture(name):
    return os.path.join(FIXTURES, name + ".bin")


def reference(name):
    with open(os.path.join(FIXTURES, name + ".json"), encoding="utf-8") as handle:
        return json.load(handle)


def copy_of(tmp_path, name):
    path = tmp_path / (name + ".bin")
    shutil.copy(fixture(name), path)
    return path


@pytest.mark.parametrize("name", NAMES)
def test_vectors_equal_fasttext_bit_for_bit(tmp_path, name):
    expected = reference(name)
    model = embcli.import_vectors(fixture(name), model=str(tmp_path / "m"))
    assert len(model) == expected["words"]
    outside = 0
    for word, values in expected["vectors"].items():
        outside += word not in model.index
        assert model.vector(word).tobytes() == np.array(values, dtype=np.float32).tobytes(), word
    if name == "skipgram-3-6":
        # make_fixtures.py's misspellings, inflections, other scripts and other Unicode
        # forms, all but "begat".
        assert outside == 13


def test_meta_records_subwords_and_fasttext_settings(tmp_path):
    result = invoke("import", fixture("skipgram-3-6"), "-m", str(tmp_path / "m"))
    assert result.exit_code == 0, result.stderr
    assert "1,524 words x 10 dimensions (fasttext-bin)" in result.stderr
    with open(tmp_path / "m" / "meta.json", encoding="utf-8") as handle:
        meta = json.load(handle)
    assert meta["subwords"]["buckets"] == 3000
    assert (meta["subwords"]["min_n"], meta["subwords"]["max_n"], meta["subwords"]["combination"]) == (3, 6, "mean")
    assert "rows" not in meta["subwords"]  # every bucket is stored
    assert np.load(tmp_path / "m" / "subwords.npy").shape == (3000, 10)
    assert meta["imported"]["fasttext"]["model"] == "skipgram"
    assert meta["vocab"]["counts"] == "from the fastText model"
    counts = [int(line.split("\t")[1]) for line in (tmp_path / "m" / "vocab.tsv").read_text("utf-8").splitlines()]
    assert counts[0] > counts[-1] >= 5  # fastText's min count
    info = invoke("info", "-m", str(tmp_path / "m")).stdout
    assert "subwords\tn-grams 3-6, 3,000 buckets (every bucket's row), mean of a word's rows\n" in info
    assert "fastText\tskipgram model, 2 epochs, window 5, min count 5\n" in info


def test_lookup_unseen_word(tmp_path):
    invoke("import", fixture("skipgram-3-6"), "-m", str(tmp_path / "m"))
    result = invoke("lookup", "-m", str(tmp_path / "m"), "Jerusalemm")
    assert result.exit_code == 0, result.stderr
    assert "Jerusalemm: not in vocabulary" in result.stderr
    printed = np.array(result.stdout.split("\t")[1:], dtype=np.float32)
    expected = np.array(reference("skipgram-3-6")["vectors"]["Jerusalemm"], dtype=np.float32)
    assert printed.tobytes() == expected.tobytes()


def test_model_without_ngrams_has_no_subwords(tmp_path):
    model = embcli.import_vectors(fixture("cbow-words"), model=str(tmp_path / "m"))
    assert not model.has_subwords
    assert not (tmp_path / "m" / "subwords.npy").exists()
    result = invoke("lookup", "-m", str(tmp_path / "m"), "Jerusalemm")
    assert result.exit_code == 1
    assert "not in the vocabulary" in result.stderr or "not in vocabulary" in result.stderr


def test_supervised_model_leaves_out_labels(tmp_path):
    model = embcli.import_vectors(fixture("supervised-2-3"), model=str(tmp_path / "m"))
    assert not any(word.startswith("__label__") for word in model.words)
    assert model.meta["imported"]["fasttext"]["labels"] == 3


def test_round_trip_through_vec_export(tmp_path):
    first = embcli.import_vectors(fixture("skipgram-3-6"), model=str(tmp_path / "a"))
    result = invoke("export", str(tmp_path / "v.vec"), "-m", str(tmp_path / "a"))
    assert result.exit_code == 0, result.stderr
    second = embcli.import_vectors(str(tmp_path / "v.vec"), model=str(tmp_path / "b"))
    assert second.words == first.words
    assert np.array_equal(np.asarray(second.matrix), np.asarray(first.matrix))


def test_stdin_and_gzip(tmp_path):
    data = open(fixture("skipgram-3-6"), "rb").read()
    result = invoke("import", "-", "-m", str(tmp_path / "a"), input=data)
    assert result.exit_code == 0, result.stderr
    (tmp_path / "m.bin.gz").write_bytes(gzip.compress(data))
    result = invoke("import", str(tmp_path / "m.bin.gz"), "-m", str(tmp_path / "b"))
    assert result.exit_code == 0, result.stderr
    a = np.load(tmp_path / "a" / "subwords.npy")
    assert a.tobytes() == np.load(tmp_path / "b" / "subwords.npy").tobytes()
    assert [p for p in os.listdir(tmp_path / "b") if p.startswith(".import")] == []


@pytest.mark.parametrize("where", ["settings", "dictionary", "matrix", "buckets"])
def test_truncated_model_is_named_and_writes_nothing(tmp_path, where):
    header = fasttext_bin.read_header(fixture("skipgram-3-6"))
    cut = {"settings": 30, "dictionary": header.matrix_offset - 200, "matrix": header.matrix_offset + 4000,
           "buckets": header.matrix_offset + (header.rows - 10) * 40}[where]
    path = tmp_path / "cut.bin"
    path.write_bytes(open(fixture("skipgram-3-6"), "rb").read()[:cut])
    result = invoke("import", str(path), "-m", str(tmp_path / "m"))
    assert result.exit_code == 1
    assert f"{path}: the fastText model is truncated" in result.stderr
    assert "Traceback" not in result.stderr
    left = os.listdir(tmp_path / "m") if (tmp_path / "m").exists() else []
    assert [name for name in left if name != ".lock"] == []


def test_quantized_and_unknown_version_are_rejected(tmp_path):
    header = fasttext_bin.read_header(fixture("skipgram-3-6"))
    data = bytearray(open(fixture("skipgram-3-6"), "rb").read())
    flag = header.matrix_offset - 17  # the quantized-input flag precedes the matrix's two int64
    assert data[flag] == 0
    data[flag] = 1
    (tmp_path / "q.ftz").write_bytes(bytes(data))
    result = invoke("import", str(tmp_path / "q.ftz"), "-m", str(tmp_path / "q"))
    assert result.exit_code == 1
    assert "quantized fastText model (.ftz)" in result.stderr
    data[flag] = 0
    data[4:8] = struct.pack("<i", 13)
    (tmp_path / "v13.bin").write_bytes(bytes(data))
    result = invoke("import", str(tmp_path / "v13.bin"), "-m", str(tmp_path / "v"))
    assert result.exit_code == 1
    assert "format version 13" in result.stderr


def test_word_that_is_not_utf8(tmp_path):
    data = open(fixture("skipgram-3-6"), "rb").read()
    # "unto" is a dictionary entry; its last byte becomes one that UTF-8 never uses.
    at = data.index(b"\0unto\0") + 4
    path = tmp_path / "bad.bin"
    path.write_bytes(data[:at] + b"\xff" + data[at + 1 :])
    result = invoke("import", str(path), "-m", str(tmp_path / "strict"))
    assert result.exit_code == 1
    assert "is not valid UTF-8" in result.stderr
    assert f"dictionary entry 8, byte offset {at}:" in result.stderr
    result = invoke("import", str(path), "-m", str(tmp_path / "lenient"), "--lenient")
    assert result.exit_code == 0, result.stderr
    model = embcli.load(str(tmp_path / "lenient"))
    assert "unt\ufffd" in model.index
    assert "unto" not in model.index


def test_read_vectors_gives_the_vocabulary_vectors(tmp_path):
    from embcli.formats import read_vectors

    vectors = read_vectors(fixture("supervised-2-3"))
    expected = reference("supervised-2-3")["vectors"]
    row = vectors.words.index("Aaron")
    assert vectors.matrix[row].tobytes() == np.array(expected["Aaron"], dtype=np.float32).tobytes()


def test_other_format_named_for_fasttext_bin(tmp_path):
    result = invoke("import", fixture("cbow-words"), "--format", "word2vec-binary", "-m", str(tmp_path / "m"))
    assert result.exit_code == 1
    assert "is a fastText .bin model, not word2vec-binary data" in result.stderr


def test_python_query_with_lone_surrogate(tmp_path):
    model = embcli.import_vectors(fixture("skipgram-3-6"), model=str(tmp_path / "m"))
    with pytest.raises(embcli.QueryError, match="lone surrogate"):
        model.vector("lord\udce9")
    assert "lord\udce9" not in model


def test_gzip_on_stdin(tmp_path):
    data = gzip.compress(open(fixture("cbow-words"), "rb").read())
    result = invoke("import", "-", "-m", str(tmp_path / "m"), input=data)
    assert result.exit_code == 0, result.stderr
    assert "1,524 words x 10 dimensions (fasttext-bin) from <stdin>" in result.stderr
    assert sorted(os.listdir(tmp_path / "m")) == [".lock", "embeddings.npy", "meta.json", "norms.npy", "vocab.tsv"]


def test_cut_output_matrix_needs_lenient(tmp_path):
    data = open(fixture("skipgram-3-6"), "rb").read()
    path = tmp_path / "cut.bin"
    path.write_bytes(data[:-40])
    result = invoke("import", str(path), "-m", str(tmp_path / "strict"))
    assert result.exit_code == 1
    assert "truncated or damaged after its input matrix" in result.stderr
    assert not (tmp_path / "strict").exists()
    result = invoke("import", str(path), "-m", str(tmp_path / "lenient"), "--lenient")
    assert result.exit_code == 0, result.stderr
    assert "warning:" in result.stderr
    word = "Jerusalemm"
    expected = np.array(reference("skipgram-3-6")["vectors"][word], dtype=np.float32)
    assert embcli.load(str(tmp_path / "lenient")).vector(word).tobytes() == expected.tobytes()


def test_lenient_drops_nan_word(tmp_path):
    header = fasttext_bin.read_header(fixture("cbow-words"))
    data = bytearray(open(fixture("cbow-words"), "rb").read())
    row = header.words.index(b"unto")
    at = header.matrix_offset + row * header.dim * 4
    data[at : at + 4] = struct.pack("<f", float("nan"))
    path = tmp_path / "nan.bin"
    path.write_bytes(bytes(data))
    result = invoke("import", str(path), "-m", str(tmp_path / "strict"))
    assert result.exit_code == 1
    assert "the vector of 'unto' contains NaN" in result.stderr
    result = invoke("import", str(path), "-m", str(tmp_path / "lenient"), "--lenient")
    assert result.exit_code == 0, result.stderr
    model = embcli.load(str(tmp_path / "lenient"))
    assert "unto" not in model.index
    assert len(model) == len(header.words) - 1
    assert np.isfinite(np.asarray(model.matrix)).all()


def test_min_above_max_has_no_ngrams(tmp_path):
    data = bytearray(open(fixture("skipgram-3-6"), "rb").read())
    data[8 + 9 * 4 : 8 + 10 * 4] = struct.pack("<i", 7)  # minn 7 with maxn 6, which fastText trains
    path = tmp_path / "m7.bin"
    path.write_bytes(bytes(data))
    model = embcli.import_vectors(str(path), model=str(tmp_path / "m"))
    assert not model.has_subwords
    header = fasttext_bin.read_header(str(path))
    own_row = np.array(fasttext_bin.input_matrix(header)[0])
    assert model.vector(model.words[0]).tobytes() == own_row.tobytes()


def test_valid_word_wins_over_replaced_one(tmp_path):
    data = open(fixture("cbow-words"), "rb").read()
    header = fasttext_bin.read_header(fixture("cbow-words"))
    heaven = header.words.index(b"heaven")
    # "unto" becomes invalid UTF-8 and "heaven" the valid word it reads as with U+FFFD.
    data = data.replace(b"\0unto\0", b"\0unt\xff\0", 1).replace(b"\0heaven\0", b"\0unt\xef\xbf\xbd\0", 1)
    path = tmp_path / "clash.bin"
    path.write_bytes(data)
    model = embcli.import_vectors(str(path), model=str(tmp_path / "m"), lenient=True)
    assert len(model) == len(header.words) - 1
    row = model.index["unt\ufffd"]
    expected = np.array(fasttext_bin.input_matrix(header)[heaven])
    assert np.asarray(model.matrix[row]).tobytes() == expected.tobytes()
