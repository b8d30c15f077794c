"""word2vec binary import, which copies the vectors block by block into embeddings.npy."""

import errno
import json
import os
import struct

import numpy as np
import pytest

from embcli import store
from embcli.errors import EmbcliError, VectorFileError
from embcli.formats import import_file, read_vectors, write_vectors
from embcli.search import row_norms

# More entries than one block of the reader (4,096), so problems can sit in any block.
ROWS = 10_000
DIM = 3


def write_binary(path, words, matrix, newline=True):
    """Write a word2vec binary file; without `newline`, entries are not separated (as gensim writes)."""
    parts = [f"{len(words)} {matrix.shape[1]}\n".encode()]
    for word, row in zip(words, matrix):
        parts.append(word.encode("utf-8") + b" " + np.asarray(row, dtype="<f4").tobytes())
        if newline:
            parts.append(b"\n")
    path.write_bytes(b"".join(parts))
    return str(path)


def sample(seed=0):
    # Words of 2 to 5 bytes put the vectors at every byte offset modulo 4.
    words = [f"w{i}" for i in range(ROWS)]
    matrix = np.random.default_rng(seed).standard_normal((ROWS, DIM)).astype(np.float32)
    return words, matrix


def saved(model):
    meta = store.read_meta(model)
    words, _ = store.read_vocab(model, meta)
    matrix = store.load_matrix(os.path.join(model, store.EMBEDDINGS), len(words), mmap=False)
    norms = store.load_norms(model, meta, len(words))
    return meta, words, matrix, norms


@pytest.mark.parametrize("newline", [True, False])
def test_import_equals_file(tmp_path, newline):
    words, matrix = sample()
    path = write_binary(tmp_path / "v.bin", words, matrix, newline)
    model = str(tmp_path / "model")
    vectors = import_file(model, path)
    meta, saved_words, saved_matrix, norms = saved(model)
    assert saved_words == words
    np.testing.assert_array_equal(saved_matrix, matrix)
    np.testing.assert_array_equal(norms, row_norms(matrix).astype(np.float32))
    assert meta["imported"]["format"] == "word2vec-binary"
    assert vectors.words == words
    assert vectors.matrix.shape == (ROWS, DIM)
    assert sorted(os.listdir(model)) == [".lock", "embeddings.npy", "meta.json", "norms.npy", "vocab.tsv"]


def test_lenient_import_drops_bad_entries(tmp_path):
    words, matrix = sample(1)
    words[5000] = "w7"  # a duplicate in another block than its first entry
    words[4100] = "w4099"  # a duplicate in the same block
    matrix[4096, 1] = np.nan
    matrix[9000, 0] = np.inf
    matrix[20] = 3e38  # finite values whose squared norm overflows float32
    path = write_binary(tmp_path / "v.bin", words, matrix)
    with pytest.raises(VectorFileError) as error:
        import_file(str(tmp_path / "strict"), path)
    assert "entry 4101, byte offset" in str(error.value)
    assert "duplicate word 'w4099' (first seen in entry 4100)" in str(error.value)
    assert not (tmp_path / "strict").exists()

    model = str(tmp_path / "model")
    vectors = import_file(model, path, lenient=True)
    keep = np.ones(ROWS, dtype=bool)
    keep[[5000, 4100, 4096, 9000]] = False
    expected_words = [word for word, ok in zip(words, keep) if ok]
    meta, saved_words, saved_matrix, _ = saved(model)
    assert saved_words == expected_words
    np.testing.assert_array_equal(saved_matrix, matrix[keep])
    assert vectors.warning_count == 4
    assert meta["imported"]["warnings"] == 4
    messages = "\n".join(vectors.warnings)
    assert "entry 5001, byte offset" in messages
    assert "duplicate word 'w7' (first seen in entry 8)" in messages
    assert "entry 4097: 'w4096' has a NaN or infinite value" in messages
    assert "entry 9001: 'w9000' has a NaN or infinite value" in messages
    # The reader that returns the matrix in memory agrees with the import.
    read = read_vectors(path, lenient=True)
    assert read.words == expected_words
    np.testing.assert_array_equal(read.matrix, matrix[keep])


def test_truncated_lenient_import_header_count(tmp_path):
    words, matrix = sample(2)
    path = tmp_path / "v.bin"
    write_binary(path, words, matrix)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])  # cut inside the last vector
    model = str(tmp_path / "model")
    vectors = import_file(model, str(path), lenient=True)
    assert "truncated: 9,999 of 10,000 entries are complete" in vectors.warnings[0]
    with open(os.path.join(model, store.EMBEDDINGS), "rb") as handle:
        assert np.lib.format.read_magic(handle) == (1, 0)
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
        assert (shape, fortran_order, dtype) == ((ROWS - 1, DIM), False, np.dtype(np.float32))
        assert handle.tell() % 64 == 0
    _, saved_words, saved_matrix, _ = saved(model)
    assert saved_words == words[:-1]
    np.testing.assert_array_equal(saved_matrix, matrix[:-1])
    with pytest.raises(VectorFileError) as error:
        import_file(str(tmp_path / "strict"), str(path))
    assert "byte offset" in str(error.value)


def test_import_keeps_existing_model_on_error(tmp_path):
    words, matrix = sample(3)
    good = write_binary(tmp_path / "good.bin", words, matrix)
    model = str(tmp_path / "model")
    import_file(model, good)
    before = json.loads((tmp_path / "model" / "meta.json").read_text())
    words[-1] = words[0]
    bad = write_binary(tmp_path / "bad.bin", words, matrix * 2)
    with pytest.raises(VectorFileError):
        import_file(model, bad, replace=True)
    with pytest.raises(VectorFileError) as error:
        import_file(model, good)
    assert "already contains a model" in str(error.value)
    meta, saved_words, saved_matrix, _ = saved(model)
    assert meta["model_id"] == before["model_id"]
    np.testing.assert_array_equal(saved_matrix, matrix)
    assert not [name for name in os.listdir(model) if name.startswith(store.TMP_PREFIX)]


def test_import_matches_exported_file(tmp_path):
    words, matrix = sample(4)
    path = str(tmp_path / "v.bin")
    write_vectors(path, words, matrix, "word2vec-binary")
    model = str(tmp_path / "model")
    import_file(model, path)
    _, saved_words, saved_matrix, _ = saved(model)
    assert saved_words == words
    np.testing.assert_array_equal(saved_matrix, matrix)


def test_npy_row_writer_header_padding(tmp_path):
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    with store.NpyRowWriter(str(tmp_path), "m.npy", 3, max_rows=10**12) as writer:
        writer.append(rows[:3])
        writer.append(rows[3:])
        path = writer.finish()
    np.testing.assert_array_equal(np.load(path), rows)
    with open(path, "rb") as handle:
        np.lib.format.read_magic(handle)
        length = struct.unpack("<H", handle.read(2))[0]
    assert (10 + length) % 64 == 0


def test_npy_row_writer_removes_file_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with store.NpyRowWriter(str(tmp_path), "m.npy", 3, max_rows=10) as writer:
            writer.append(np.zeros((2, 3), dtype=np.float32))
            raise RuntimeError("stop")
    assert os.listdir(tmp_path) == []


def test_duplicate_within_first_block(tmp_path):
    words, matrix = sample(5)
    words[30] = "w12"
    path = write_binary(tmp_path / "v.bin", words, matrix)
    with pytest.raises(VectorFileError) as error:
        read_vectors(path)
    assert "entry 31, byte offset" in str(error.value)
    assert "duplicate word 'w12' (first seen in entry 13)" in str(error.value)
    vectors = read_vectors(path, lenient=True)
    assert vectors.words == words[:30] + words[31:]
    np.testing.assert_array_equal(vectors.matrix, np.delete(matrix, 30, axis=0))


def test_entries_after_irregular_ones(tmp_path):
    # Blank lines between entries and an empty word interrupt the runs of regular
    # entries that are parsed together. The entries after them are read as before.
    words, matrix = sample(6)
    path = write_binary(tmp_path / "v.bin", words, matrix)
    data = open(path, "rb").read()
    for word in ("w6000", "w2500", "w7"):  # from the end, so earlier offsets stay valid
        at = data.index(b"\n" + word.encode() + b" ")
        data = data[:at] + b"\n\n" + data[at:]
    at = data.index(b"\nw9000 ")
    empty = b"\n " + np.ones(DIM, dtype="<f4").tobytes()
    data = data[:at] + empty + data[at:]
    path = tmp_path / "irregular.bin"
    path.write_bytes(data.replace(f"{ROWS} {DIM}".encode(), f"{ROWS + 1} {DIM}".encode(), 1))
    vectors = read_vectors(str(path), lenient=True)
    assert vectors.warning_count == 1
    assert "empty word" in vectors.warnings[0]
    assert vectors.words == words
    np.testing.assert_array_equal(vectors.matrix, matrix)
    model = str(tmp_path / "model")
    import_file(model, str(path), lenient=True)
    _, saved_words, saved_matrix, _ = saved(model)
    assert saved_words == words
    np.testing.assert_array_equal(saved_matrix, matrix)
    with pytest.raises(VectorFileError, match="empty word"):
        read_vectors(str(path))


class SmallChunks(store.NpyRowWriter):
    CHUNK_BYTES = 2 * store.NpyRowWriter.ALIGN


@pytest.mark.parametrize("direct", [True, False])
def test_npy_row_writer_across_buffers(tmp_path, monkeypatch, direct):
    # Rows of 7 floats (28 bytes) straddle every buffer boundary; without O_DIRECT the
    # writer falls back to write() through the page cache.
    if not direct:
        monkeypatch.delattr(os, "O_DIRECT", raising=False)
    matrix = np.random.default_rng(7).standard_normal((1000, 7)).astype(np.float32)
    with SmallChunks(str(tmp_path), "m.npy", 7, max_rows=5000) as writer:
        if not direct:
            assert not writer._direct
        for start in range(0, 1000, 37):
            writer.append(matrix[start : start + 37])
        path = writer.finish()
    np.testing.assert_array_equal(np.load(path), matrix)
    assert os.path.getsize(path) == writer.header_bytes + matrix.nbytes


def test_npy_row_writer_direct_write_fallback(tmp_path, monkeypatch):
    # A file system may accept O_DIRECT when opening and then reject the writes (EINVAL).
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    matrix = np.random.default_rng(9).standard_normal((1000, 7)).astype(np.float32)
    with SmallChunks(str(tmp_path), "m.npy", 7, max_rows=5000) as writer:
        for start in range(0, 1000, 100):
            writer.append(matrix[start : start + 100])
        path = writer.finish()
    np.testing.assert_array_equal(np.load(path), matrix)


def test_word_with_line_break_rejected(tmp_path):
    # vocab.tsv contains one word per line, so such a word would misalign every later row.
    words, matrix = sample(10)
    words[5000] = "ze\nro"
    path = write_binary(tmp_path / "v.bin", words, matrix)
    with pytest.raises(VectorFileError, match="entry 5001, byte offset .*contains a line break"):
        import_file(str(tmp_path / "strict"), path)
    model = str(tmp_path / "model")
    vectors = import_file(model, path, lenient=True)
    assert vectors.warning_count == 1
    _, saved_words, saved_matrix, _ = saved(model)
    assert saved_words == words[:5000] + words[5001:]
    np.testing.assert_array_equal(saved_matrix, np.delete(matrix, 5000, axis=0))


def test_vocabulary_with_line_break_never_saved(tmp_path):
    with pytest.raises(EmbcliError, match="contains a line break"):
        store.save_vocab_temp(str(tmp_path), ["a", "b\nc"], [0, 0])
    assert os.listdir(tmp_path) == []


def test_overlong_word_stops_even_lenient_import(tmp_path):
    # After a word longer than the limit no later entry can be found: an error, not a short model.
    words, matrix = sample(11)
    words[7] = "x" * 5000
    path = write_binary(tmp_path / "v.bin", words, matrix)
    for lenient in (False, True):
        with pytest.raises(VectorFileError, match=r"entry 8, .*cannot be found \(7 of 10,000 read\)"):
            import_file(str(tmp_path / f"model-{lenient}"), path, lenient=lenient)
        assert not os.path.exists(os.path.join(tmp_path, f"model-{lenient}", "meta.json"))
