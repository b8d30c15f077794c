"""Read fastText's binary models (.bin) into an embcli model directory.

A .bin contains everything fastText needs to give a vector to any word: its settings, its
dictionary, the input matrix (one row per vocabulary word, then one row per n-gram
bucket) and the output matrix. The import writes:
- embeddings.npy: each vocabulary word's vector as fastText's get_word_vector returns it,
  the mean of the word's own row and its n-gram rows (the end-of-line word "</s>" has no
  n-grams in fastText and keeps its own row);
- subwords.npy: every bucket row, so that a word outside the vocabulary gets the mean of
  its n-gram rows, as fastText gives it. Unlike a model trained by embcli, all buckets
  are stored: fastText adds a bucket's row even when no training word used it.

The file layout is little-endian throughout. It starts with the int32 magic number
793712314 and an int32 version. Twelve int32 settings follow (dim, ws, epoch, minCount,
neg, wordNgrams, loss, model, bucket, minn, maxn, lrUpdateRate), then a float64 t.
The dictionary comes next: int32 counts of entries, words and labels, an int64 token
count and an int64 pruned-index size. Each entry is its bytes ended by NUL, an int64
count and an int8 type (0 word, 1 label). The pruned index follows as pairs of int32.
Then come a one-byte flag for a quantized input matrix and the input matrix: int64 rows,
int64 columns and float32 values in row order. The output matrix follows in the same
form; the import only checks that it is whole.
"""

import contextlib
import os
import struct
from dataclasses import dataclass

import numpy as np

from embcli import store, subwords
from embcli.errors import VectorFileError

MAGIC = 793712314
# The format versions that fastText's own loader reads.
VERSIONS = (11, 12)
EOS = b"</s>"
_SETTINGS = struct.Struct("<12id")
_SETTING_NAMES = ("dim", "ws", "epoch", "min_count", "neg", "word_ngrams", "loss", "model", "bucket", "minn", "maxn",
                  "lr_update_rate")
_MODELS = {1: "cbow", 2: "skipgram", 3: "supervised"}
_DICTIONARY = struct.Struct("<3i2q")
_ENTRY_TAIL = struct.Struct("<qb")
_MATRIX = struct.Struct("<2q")
# Vocabulary words whose vectors are computed together; with dim 300 and about 25 rows
# per word, one block gathers about 60 MB of rows.
WORD_BLOCK = 2048
# Bucket rows copied together into subwords.npy.
BUCKET_BLOCK = 65536


@dataclass
class FastTextBin:
    """The settings and words of a fastText .bin, and the position of its input matrix."""

    path: str
    version: int
    settings: dict
    words: list  # bytes, in row order
    counts: np.ndarray  # int64
    labels: int
    matrix_offset: int  # byte offset of the input matrix's first float32
    rows: int
    word_offsets: np.ndarray  # int64, the byte offset of each word in the file

    @property
    def dim(self):
        return self.settings["dim"]

    @property
    def has_subwords(self):
        """True when vocabulary words have n-gram rows (a positive maxn and buckets)."""
        return self.settings["maxn"] > 0 and self.settings["bucket"] > 0

    def describe(self):
        """Return the settings recorded in meta.json's "imported" section."""
        keep = ("dim", "ws", "epoch", "min_count", "neg", "word_ngrams", "bucket", "minn", "maxn")
        record = {name: self.settings[name] for name in keep}
        record["model"] = _MODELS.get(self.settings["model"], self.settings["model"])
        record["version"] = self.version
        record["labels"] = self.labels
        return record


def is_fasttext_bin(start):
    """Return True when the bytes `start` begin with fastText's magic number."""
    return start[:4] == MAGIC.to_bytes(4, "little")


def read_header(path, report=None):
    """Parse the settings and dictionary of the .bin at `path`; return a FastTextBin.

    Raises VectorFileError naming what does not fit: a version embcli does not read, a
    quantized (.ftz) model, a truncated file, or a dictionary that contradicts itself.
    A damaged output matrix, which the import does not need, goes to `report`
    (formats._Warnings), which raises unless lenient; without `report` it raises.
    """
    with open(path, "rb") as handle:
        data = handle.read(8 + _SETTINGS.size + _DICTIONARY.size)
        if len(data) < 8 + _SETTINGS.size + _DICTIONARY.size:
            raise VectorFileError(f"{path}: the fastText model is truncated: it ends inside its settings")
        magic, version = struct.unpack_from("<2i", data)
        if magic != MAGIC:
            raise VectorFileError(f"{path}: not a fastText .bin model (it does not start with fastText's magic number)")
        if version not in VERSIONS:
            raise VectorFileError(f"{path}: fastText model format version {version}; embcli reads versions "
                                  f"{' and '.join(map(str, VERSIONS))}; import the .vec file that fastText writes "
                                  "beside it instead")
        values = _SETTINGS.unpack_from(data, 8)
        settings = dict(zip(_SETTING_NAMES, values[:12]))
        settings["t"] = values[12]
        if version == 11 and settings["model"] == 3:
            # fastText's loader gives version 11 supervised models no character n-grams.
            settings["maxn"] = 0
        _check_settings(path, settings)
        size, words, labels, _, pruned = _DICTIONARY.unpack_from(data, 8 + _SETTINGS.size)
        if size < 0 or words < 0 or labels < 0 or size != words + labels:
            raise VectorFileError(f"{path}: the fastText dictionary is damaged: {size:,} entries but {words:,} words "
                                  f"and {labels:,} labels")
        handle.seek(len(data))
        names, counts, word_offsets = _read_entries(handle, path, size, words)
        quantized = handle.read(1)
        matrix = handle.read(_MATRIX.size)
        offset = handle.tell()
        actual = os.fstat(handle.fileno()).st_size
        if len(matrix) == _MATRIX.size:
            # The output matrix's flag and shape, read now that the file is open.
            rows, columns = _MATRIX.unpack(matrix)
            handle.seek(offset + max(rows * columns, 0) * 4)
            output_header = handle.read(1 + _MATRIX.size)
    if len(quantized) < 1 or len(matrix) < _MATRIX.size:
        raise VectorFileError(f"{path}: the fastText model is truncated: it ends after its dictionary")
    if quantized != b"\0":
        raise VectorFileError(f"{path}: is a quantized fastText model (.ftz), whose vectors are compressed by "
                              "product quantization, which embcli does not read; import the .bin it was quantized "
                              "from, or the .vec file")
    if pruned >= 0:
        # fastText itself rejects a model that is pruned but not quantized.
        raise VectorFileError(f"{path}: the fastText dictionary is marked as pruned ({pruned:,} entries) but the "
                              "vectors are not quantized; fastText rejects such a file too, so it is damaged")
    rows, columns = _MATRIX.unpack(matrix)
    if columns != settings["dim"] or rows != words + settings["bucket"]:
        raise VectorFileError(f"{path}: the fastText input matrix is {rows:,} x {columns:,}, but the settings give "
                              f"{words:,} words + {settings['bucket']:,} buckets by dim {settings['dim']}; the file "
                              "is damaged")
    needed = offset + rows * columns * 4
    if actual < needed:
        raise VectorFileError(f"{path}: the fastText model is truncated: its input matrix needs {needed:,} bytes "
                              f"but the file has {actual:,}")
    _check_output_matrix(path, output_header, needed, actual, settings["dim"], report)
    return FastTextBin(path, version, settings, names, counts, labels, offset, rows, word_offsets)


def _check_output_matrix(path, header, start, size, dim, report):
    """Check that the output matrix, whose flag and shape `header` contains, is whole.

    It starts at byte `start` of the file of `size` bytes. The import does not read it,
    but a file cut there is an incomplete download, which fastText itself would load
    without a word. `report` (formats._Warnings) raises or, when lenient, warns; None raises.
    """
    problem = None
    if len(header) < 1 + _MATRIX.size:
        problem = "the file ends before its output matrix"
    elif header[:1] == b"\0":
        rows, columns = _MATRIX.unpack_from(header, 1)
        needed = start + len(header) + rows * columns * 4
        if columns != dim or rows < 0:
            problem = f"its output matrix is {rows:,} x {columns:,}, not by dim {dim}"
        elif size != needed:
            problem = f"its output matrix needs {needed - start - len(header):,} bytes, but {size - start - len(header):,} follow"
    if problem is None:
        return
    message = (f"the fastText model is truncated or damaged after its input matrix: {problem}; the word vectors "
               "before it are whole")
    if report is None:
        raise VectorFileError(f"{path}: {message}")
    report.problem(message)


def _check_settings(path, settings):
    dim, bucket, minn, maxn = (settings[name] for name in ("dim", "bucket", "minn", "maxn"))
    if dim < 1 or bucket < 0 or minn < 0 or maxn < 0:
        raise VectorFileError(f"{path}: the fastText settings are damaged (dim {dim}, bucket {bucket}, "
                              f"n-grams {minn}-{maxn})")
    if maxn > 0 and minn == 0:
        settings["minn"] = 1  # fastText's n-gram loop starts at length 1 either way
    if maxn > 0 and minn > maxn:
        settings["maxn"] = 0  # no length fits, so fastText gives words no n-grams


def _read_entries(handle, path, size, words):
    """Read `size` dictionary entries; return (the words' bytes, their counts, their byte
    offsets in the file) for the first `words`."""
    names = []
    counts = np.zeros(words, dtype=np.int64)
    offsets = np.zeros(words, dtype=np.int64)
    buffer = b""
    base = handle.tell()  # the file offset of buffer[0]
    position = 0

    for entry in range(size):
        end = buffer.find(b"\0", position)
        while end < 0 or end + 1 + _ENTRY_TAIL.size > len(buffer):
            more = handle.read(1 << 20)
            if not more:
                raise VectorFileError(f"{path}: the fastText model is truncated: it ends in dictionary entry "
                                      f"{entry + 1:,} of {size:,}")
            base += position
            buffer = buffer[position:] + more
            position = 0
            end = buffer.find(b"\0", position)

        count, kind = _ENTRY_TAIL.unpack_from(buffer, end + 1)
        if (kind == 0) != (entry < words) or kind not in (0, 1) or count < 0:
            raise VectorFileError(f"{path}: the fastText dictionary is damaged at entry {entry + 1:,} (type {kind}, "
                                  f"count {count}); words should come first, then labels")
        if entry < words:
            names.append(buffer[position:end])
            counts[entry] = count
            offsets[entry] = base + position
        position = end + 1 + _ENTRY_TAIL.size
    # The reads went past the dictionary, so the file position goes back to its end.
    handle.seek(position - len(buffer), os.SEEK_CUR)
    return names, counts, offsets


def input_matrix(model):
    """Return the input matrix of `model` (a FastTextBin), memory-mapped read-only."""
    return np.memmap(model.path, dtype="<f4", mode="r", offset=model.matrix_offset, shape=(model.rows, model.dim))


def word_vectors(model, matrix, first, stop):
    """Return fastText's vectors (float32) of vocabulary words first..stop-1.

    Each is the mean of the word's row and its n-gram rows, summed in row order and then
    multiplied by the float32 reciprocal of their count, as fastText computes it.
    """
    words = model.words[first:stop]
    nwords = len(model.words)
    own = np.arange(first, stop, dtype=np.int64)
    if not model.has_subwords:
        return np.array(matrix[own], dtype=np.float32)
    settings = model.settings
    # fastText gives the end-of-line word no n-grams.
    has_ngrams = np.array([word != EOS for word in words], dtype=bool)
    offsets, hashes = subwords.ngram_hashes([word for word in words if word != EOS], settings["minn"],
                                            settings["maxn"])
    ngram_counts = np.zeros(len(words), dtype=np.int64)
    ngram_counts[has_ngrams] = np.diff(offsets)
    counts = ngram_counts + 1
    starts = np.zeros(len(words), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    rows = np.empty(int(counts.sum()), dtype=np.int64)
    rows[starts] = own
    is_ngram = np.ones(len(rows), dtype=bool)
    is_ngram[starts] = False
    rows[is_ngram] = nwords + (hashes % np.uint32(settings["bucket"])).astype(np.int64)
    gathered = np.asarray(matrix[rows], dtype=np.float32)
    # Add each word's rows one after another, in fastText's order, so the float32 sums
    # round as fastText's do (np.add.reduceat adds in another order). Words sorted by
    # their row count, longest first: the words with a k-th row are then a prefix.
    order = np.argsort(-counts, kind="stable")
    by_length = -counts[order]
    first_rows = starts[order]
    sums = np.zeros((len(words), model.dim), dtype=np.float32)
    for k in range(int(counts.max())):
        active = int(np.searchsorted(by_length, -k, side="left"))
        sums[:active] += gathered[first_rows[:active] + k]
    result = np.empty_like(sums)
    result[order] = sums
    result *= (1.0 / counts).astype(np.float32)[:, None]
    return result


def decode_words(model, report):
    """Return the vocabulary as str, in row order; None for an entry skipped in lenient mode.

    `report` (formats._Warnings) raises on a word that is not UTF-8 or repeats, or
    records it and, when lenient, decodes it with U+FFFD (a repeat is skipped).
    """
    try:
        text = b"\0".join(model.words).decode("utf-8").split("\0")
    except UnicodeDecodeError:
        text = None
    if text is not None and len(text) == len(model.words) and len(set(text)) == len(text) and all(text):
        return text
    valid = set()
    for raw in model.words:
        with contextlib.suppress(UnicodeDecodeError):
            valid.add(raw.decode("utf-8"))
    result, seen = [], {}
    for entry, raw in enumerate(model.words, 1):
        try:
            word = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            report.problem(f"dictionary entry {entry:,}, byte offset {int(model.word_offsets[entry - 1]) + error.start:,}: "
                           f"the word {raw[:60]!r} is not valid UTF-8")
            word = raw.decode("utf-8", errors="replace")
            if word in valid:
                # The word the file spells that way keeps the name.
                report.problem(f"dictionary entry {entry:,}: {raw[:60]!r} with U+FFFD is {word!r}, another word "
                               "of the dictionary; it is left out")
                result.append(None)
                continue
        if not word:
            report.problem(f"dictionary entry {entry:,}: empty word")
            result.append(None)
            continue
        if word in seen:
            report.problem(f"dictionary entry {entry:,}: duplicate word {word!r} (first seen in entry {seen[word]:,})")
            result.append(None)
            continue
        seen[word] = entry
        result.append(word)
    return result


def write_model_files(model_dir, model, report, progress=None):
    """Write embeddings.npy and, for a model with n-grams, subwords.npy under temporary names.

    Returns (words, counts, {final name: temporary path}, norms of the written rows,
    meta["subwords"] or None). Words skipped in lenient mode are left out: those that are
    not UTF-8 or repeat, and those whose vector is not finite.
    """
    from embcli.search import row_norms

    words = decode_words(model, report)
    matrix = input_matrix(model)
    done = 0
    temps, norms, kept_words, kept_counts = {}, [], [], []
    try:
        named = sum(word is not None for word in words)
        with store.NpyRowWriter(model_dir, store.EMBEDDINGS, model.dim, named) as writer:
            for first in range(0, len(words), WORD_BLOCK):
                stop = min(first + WORD_BLOCK, len(words))
                block = word_vectors(model, matrix, first, stop)
                block_words = words[first:stop]
                keep = np.array([word is not None for word in block_words], dtype=bool)
                finite = np.isfinite(block).all(axis=1)
                for index in np.flatnonzero(keep & ~finite):
                    report.problem(f"dictionary entry {first + index + 1:,}: the vector of {block_words[index]!r} "
                                   "contains NaN or infinite values")
                keep &= finite
                writer.append(block[keep])
                kept_words.extend(word for word, kept in zip(block_words, keep) if kept)
                kept_counts.append(model.counts[first:stop][keep])
                norms.append(row_norms(block[keep]))
                done += stop - first
                if progress is not None:
                    progress(model.matrix_offset + done * model.dim * 4)
            temps[store.EMBEDDINGS] = writer.finish()
        settings = None
        if model.has_subwords:
            nwords, bucket = len(model.words), model.settings["bucket"]
            with store.NpyRowWriter(model_dir, subwords.SUBWORDS, model.dim, bucket) as writer:
                for first in range(0, bucket, BUCKET_BLOCK):
                    stop = min(first + BUCKET_BLOCK, bucket)
                    block = np.array(matrix[nwords + first : nwords + stop], dtype=np.float32)
                    bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
                    for row in bad:
                        # A bucket cannot be left out, so when lenient its row becomes zeros.
                        report.problem(f"n-gram bucket {first + row:,} contains NaN or infinite values")
                    block[bad] = 0.0
                    writer.append(block)
                    done += stop - first
                    if progress is not None:
                        progress(model.matrix_offset + done * model.dim * 4)
                temps[subwords.SUBWORDS] = writer.finish()
            settings = subwords.subword_meta(model.settings["minn"], model.settings["maxn"], bucket, "mean")
    except BaseException:
        for path in temps.values():
            with contextlib.suppress(OSError):
                os.remove(path)
        raise
    del matrix
    counts = np.concatenate(kept_counts) if kept_counts else np.zeros(0, np.int64)
    return kept_words, counts, temps, np.concatenate(norms) if norms else np.zeros(0, np.float64), settings
