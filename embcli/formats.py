"""Read and write word vectors in the field's file formats.

Readers:
- `word2vec`: text, a `count dim` header line, then `word v1 ... vD` per line. fastText's
  `.vec` files are this format (their trailing space is allowed).
- `word2vec-binary`: the header line, then per entry the UTF-8 word, one space and D
  little-endian float32 values. word2vec.c ends each entry with a newline and gensim
  does not; both are read.
- `glove`: text without a header; D is the number of values on the first line.
- `npy`: a 2-D float `.npy` matrix plus a word list (one word per line, or
  `word<TAB>count` lines as in a model's vocab.tsv), never unpickled.
- `fasttext-bin`: a fastText binary model (embcli.fasttext_bin). Imported, it keeps its
  n-gram rows, so words outside its vocabulary get fastText's vectors.
- `projector`: the TensorFlow Embedding Projector's `vectors.tsv` (tab-separated values,
  no words) with the `metadata.tsv` beside it, which holds the words (see
  read_projector_metadata).

In text files, fields are separated by ASCII spaces only, as word2vec.c writes them, so
a word may contain a tab. A word may also contain spaces: the last D fields are the
values and the text before them is the word, unless the field just before them is a
number too, which makes the row ragged (too many values) instead.

Readers validate as they go and raise VectorFileError naming the file, the line (text)
or entry and byte offset (binary), and the word: a header count that disagrees with the
rows, ragged rows, duplicate words, non-finite values, truncation, invalid UTF-8. With
`lenient=True` they record a warning instead and go on: a bad row is skipped, a
duplicate keeps its first vector (as gensim does), a word with invalid UTF-8 gets U+FFFD
in place of the bad bytes, and the rows present are kept whatever count the header declares.

Writers produce files that gensim's `load_word2vec_format` reads (word2vec text and
binary, and GloVe with `no_header=True`) and the TensorFlow Embedding Projector's
`vectors.tsv` plus `metadata.tsv`. Text values are written with 9 significant digits,
enough for every float32 to read back bit for bit.
"""

import bz2
import contextlib
import functools
import gzip
import json
import lzma
import math
import mmap
import os
import re
import shlex
import shutil
import stat
import sys
import uuid
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np

from embcli import fasttext_bin
from embcli.errors import DiskFull, VectorFileError, decode_utf8, is_disk_full, plural

READ_FORMATS = ("word2vec", "word2vec-binary", "glove", "fasttext", "fasttext-bin", "npy", "projector")
WRITE_FORMATS = ("word2vec", "word2vec-binary", "glove", "fasttext", "npy", "projector")
NPY_MAGIC = b"\x93NUMPY"
UTF8_BOM = b"\xef\xbb\xbf"
GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"
# The errors that a damaged or truncated compressed stream raises while it is read.
_DAMAGED_STREAM = (EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError, OSError)
MAX_WARNINGS = 20
_HEADER = re.compile(rb"^\s*(\d+)[ \t]+(\d+)\s*$")
# Appended to a row error when the line has tabs, which word2vec and GloVe files do not use.
_TAB_HINT = " (values are separated by spaces, and this line has tabs; replace them, for example with tr '\\t' ' ')"
# Appended instead when the line is only numbers separated by tabs.
_PROJECTOR_HINT = (" (the line is only numbers separated by tabs, as in the vectors.tsv of a TensorFlow Embedding "
                   "Projector export, which has no words; read it in the projector format with its metadata.tsv)")
PROJECTOR_METADATA = "metadata.tsv"
_SPACE_NOT_TAB = re.compile(r"[^\S\t]")
# Lines of a file's start that must all be tab-separated numbers for it to be detected as projector vectors.
_PROJECTOR_CHECK_LINES = 100
# Two integers, one of them negative: a broken header, not a GloVe row of one value.
_NEGATIVE_HEADER = re.compile(rb"^\s*(-\d+[ \t]+-?\d+|\d+[ \t]+-\d+)\s*$")
_TEXT_BLOCK_LINES = 8192
_BINARY_CHUNK = 16 << 20
# Entries of a word2vec binary file parsed and copied together.
_BINARY_BLOCK_ENTRIES = 4096
# A longer word means the file is not word2vec binary or is damaged.
_MAX_WORD_BYTES = 4096
_VALUE_FORMAT = "%.9g"


@dataclass
class Vectors:
    """Words and their (V, D) float32 matrix as read from one file."""

    words: list
    matrix: np.ndarray
    format: str
    counts: object = None  # int64 array when the word list carries counts, else None
    warnings: list = field(default_factory=list)
    warning_count: int = 0


class _Warnings:
    """Collect lenient-mode warnings, keeping the first MAX_WARNINGS messages."""

    def __init__(self, lenient, path):
        self.lenient = lenient
        self.path = path
        self.messages = []
        self.count = 0

    def problem(self, message):
        """Raise VectorFileError for `message`, or record it when lenient."""
        if not self.lenient:
            raise VectorFileError(f"{self.path}: {message}; to skip such problems with a warning, "
                                  "read the file leniently", options=("lenient",))
        self.count += 1
        if len(self.messages) < MAX_WARNINGS:
            self.messages.append(f"{self.path}: {message}")

    def warn(self, message):
        """Record `message` even in strict mode and past MAX_WARNINGS, for a warning given once per file."""
        self.count += 1
        self.messages.append(f"{self.path}: {message}")


def detect_format(path):
    """Return the format of the vector file at `path`: one of READ_FORMATS other than fasttext."""
    try:
        with _open_maybe_compressed(path) as (handle, _):
            start, error = _read_available(handle, 1 << 16)
    except OSError as error:
        # Opening failed, or the gzip header is invalid.
        if error.strerror:
            raise VectorFileError(f"{path}: cannot read ({error.strerror})") from None
        raise VectorFileError(f"{path}: the {compression(path)} data is damaged ({error})") from None
    if error is not None and not start:
        raise _read_failure(path, error, 0)
    # With an error after some bytes, the format is detected from them, and the reader
    # reports the error with the line where the data stops.
    whole = error is None and len(start) < 1 << 16
    if start.startswith(NPY_MAGIC):
        return "npy"
    if fasttext_bin.is_fasttext_bin(start):
        return "fasttext-bin"
    if not start.strip():
        raise VectorFileError(f"{path}: the file is empty")
    _reject_other_kinds(path, start)
    # Text editors on Windows often begin a UTF-8 file with a byte-order mark.
    text = start.removeprefix(UTF8_BOM)
    if _is_projector_vectors(text, whole):
        return "projector"
    first, newline, rest = text.partition(b"\n")
    header = _HEADER.match(first)
    if not header:
        if _NEGATIVE_HEADER.match(first):
            raise VectorFileError(f"{path}: line 1 is a 'count dim' header with a negative number: "
                                  f"{first.strip().decode('ascii')!r}")
        _reject_headerless_binary(path, text, whole)
        # After the binary check: float32 bytes can contain as many NULs as UTF-16 text.
        _reject_utf16(path, text)
        return "glove"
    dim = int(header.group(2))
    if not newline or not rest:
        return "word2vec"
    # A text entry is a line whose last D space-separated fields are numbers; binary
    # float32 bytes after the word almost never form such a line.
    line = rest.split(b"\n", 1)[0].rstrip(b" \t\r")
    fields = line.split(b" ")
    if len(fields) > dim and _all_numbers(fields[len(fields) - dim :]):
        return "word2vec"
    # A damaged text row is still text: readable UTF-8 without control bytes.
    sample = rest[:4096]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as error:
        text = sample[: error.start].decode("utf-8") if error.start > len(sample) - 4 else None
    if text is not None and not any(ord(ch) < 32 and ch not in "\t\r\n" for ch in text):
        return "word2vec"
    return "word2vec-binary"


def _reject_headerless_binary(path, start, whole):
    """Raise VectorFileError if `start`, the first bytes of a file without a header, is word2vec binary data.

    gensim writes such files with write_header=False. They are recognized by entries
    of a text word, a space and float32 bytes that follow each other for some
    dimension. `whole` is True when `start` is the whole file.
    """
    if not _NON_TEXT_BYTES.search(start):
        return  # float32 bytes almost always contain control bytes, which text files do not
    for dim in range(1, len(start) // 8 + 1):
        entries, end = _walk_entries(start, 0, 4 * dim, 3)
        if entries == 3 or (entries and whole and not start[end:].strip(b"\n")):
            break
    else:
        return
    if whole:
        count, _ = _walk_entries(start, 0, 4 * dim, len(start))
        fix = f"(echo '{count} {dim}'; cat {shlex.quote(path)}) > NEW_FILE"
    else:
        fix = f"(echo 'COUNT {dim}'; cat {shlex.quote(path)}) > NEW_FILE, where COUNT is the number of words"
    raise VectorFileError(
        f"{path}: has no 'count dim' first line, but it looks like word2vec binary data (a word, a space and "
        f"float32 bytes, {_plural(dim, 'value')} per word). A word2vec binary file needs that first line; "
        f"add it, for example with {fix}"
    )


def _is_projector_vectors(start, whole):
    """True if the first lines of `start` are only numbers separated by tabs, at least two on the first line.

    That is the layout of the Embedding Projector's vectors.tsv. Later lines may have
    another count, which the reader reports as a ragged row. A word2vec header of two
    integers alone on the only line is not taken for it. `whole` is True when `start`
    is the whole file, so its last line is complete.
    """
    lines = start.split(b"\n")
    if not whole:
        lines.pop()  # it may be cut
    lines = [line.rstrip(b"\r") for line in lines[:_PROJECTOR_CHECK_LINES] if line.strip()]
    if not lines or (len(lines) == 1 and _HEADER.match(lines[0])):
        return False
    if b"\t" not in lines[0]:
        return False
    for line in lines:
        if not all(_is_number(field.decode("ascii", "replace")) for field in line.split(b"\t")):
            return False
    return True


def _reject_utf16(path, start):
    """Raise VectorFileError if `start`, the first bytes of a text file, is UTF-16 or UTF-32 text.

    The test is the one that corpora get (embcli.corpus). Vector files are read as UTF-8
    only, so the message gives the iconv command that converts the file.
    """
    from embcli.corpus import wide_encoding

    found = wide_encoding(start[:4096])
    if found is not None:
        variant, finding = found
        source = variant.upper().replace("-LE", "LE").replace("-BE", "BE")
        raise VectorFileError(
            f"{path}: {finding}. embcli reads vector files and word lists as UTF-8, so convert this one first, "
            f"for example with iconv -f {source} -t UTF-8 {shlex.quote(path)} > NEW_FILE, and use NEW_FILE"
        )


# A pickle starts with the PROTO opcode and its version.
_PICKLE_START = re.compile(rb"\A\x80[\x02-\x05]")


def _reject_other_kinds(path, start):
    """Raise VectorFileError for model files of other tools that hold vectors, with how to convert them."""
    if _PICKLE_START.match(start):
        raise VectorFileError(
            f"{path}: is a Python pickle (a gensim .model or .kv file, for example), which embcli never "
            "loads because unpickling can run code; save the vectors from gensim with "
            "model.wv.save_word2vec_format(PATH, binary=True) and import that file"
        )


def compression(path):
    """Return "gzip", "bzip2" or "xz" for a file that starts with their magic bytes, else None.

    The bytes decide, not the name, as for corpora.
    """
    with open(path, "rb") as handle:
        return _compression(handle.read(6))


def _compression(magic):
    if magic.startswith(GZIP_MAGIC):
        return "gzip"
    if magic.startswith(BZIP2_MAGIC) and magic[3:4].isdigit():
        return "bzip2"
    if magic.startswith(XZ_MAGIC):
        return "xz"
    return None


@contextlib.contextmanager
def _open_maybe_compressed(path):
    """Yield (stream of the file's bytes, decompressed if gzip, bzip2 or xz; the raw file)."""
    with open(path, "rb") as raw:
        kind = _compression(raw.peek(6)[:6])
        if kind is None:
            yield raw, raw
            return
        opener = {"gzip": lambda: gzip.GzipFile(fileobj=raw), "bzip2": lambda: bz2.BZ2File(raw),
                  "xz": lambda: lzma.LZMAFile(raw)}[kind]
        with opener() as handle:
            yield handle, raw


_plural = plural


def _is_pickle_error(error):
    message = str(error)
    return "pickle" in message or "Object arrays" in message or "Python objects" in message


def _all_numbers(fields):
    try:
        for value in fields:
            float(value)
    except ValueError:
        return False
    return True


def _is_number(text):
    """True for a decimal number as C and numpy read it: ASCII, no digit separators.

    Python's float() also takes "1_0" and digits of other scripts, which no vector file
    means as numbers.
    """
    if not text.isascii() or "_" in text:
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_vectors(path, format=None, lenient=False, words_path=None, progress=None):
    """Read the vector file `path` and return a Vectors.

    `format` is one of READ_FORMATS or None to detect it. `words_path` names the word
    list of an `.npy` matrix, or the metadata.tsv of projector vectors; by default they
    are read from beside `path`, where export writes them. `progress(bytes_read)` is
    called now and then.
    """
    path = str(path)
    format, detected = _resolve_format(path, format)
    report = _Warnings(lenient, path)
    if format == "npy":
        if detected != "npy":
            raise VectorFileError(f"{path}: not a .npy file (it does not start with the .npy magic bytes)")
        vectors = _read_npy(path, words_path, report)
    elif format == "word2vec-binary":
        vectors = _read_binary(path, report, progress)
    elif format == "fasttext-bin":
        vectors = _read_fasttext_bin(path, detected, report)
    else:
        if detected == "npy":
            raise VectorFileError(f"{path}: is a .npy file, not {format} text; read it as npy with a word list")
        if format == "projector":
            vectors = _read_projector(path, words_path, report, progress)
        else:
            vectors = _read_text(path, format, report, progress)
    vectors.warnings = report.messages
    vectors.warning_count = report.count
    if not vectors.words:
        if report.count:
            # --lenient skipped every row; without the first problem the message gives no cause.
            first = report.messages[0].removeprefix(f"{path}: ")
            verb = "is" if report.count == 1 else "are"
            raise VectorFileError(f"{path}: contains no vectors once {_plural(report.count, 'problem')} "
                                  f"{verb} skipped; the first: {first}")
        raise VectorFileError(f"{path}: contains no vectors")
    return vectors


def _resolve_format(path, format):
    """Return (the format to read `path` in, its detected format); `format` is None to detect it."""
    if not os.path.exists(path):
        raise VectorFileError(f"{path}: file not found")
    if os.path.isdir(path):
        raise VectorFileError(f"{path}: is a directory, not a vector file")
    detected = detect_format(path)
    if format is None:
        format = detected
    elif format == "fasttext":
        format = "word2vec"
    elif format not in READ_FORMATS:
        raise VectorFileError(f"unknown vector format {format!r}; choose one of {', '.join(READ_FORMATS)}")
    if detected == "fasttext-bin" and format != detected:
        raise VectorFileError(f"{path}: is a fastText .bin model, not {format} data; read it as fasttext-bin, "
                              "which format detection picks", options=("format",))
    kind = compression(path) if format in _MAPPED_FORMATS else None
    if kind:
        # Both are read through a memory map, which needs the uncompressed bytes on disk.
        tool = {"gzip": "gunzip", "bzip2": "bunzip2", "xz": "unxz"}[kind]
        raise VectorFileError(
            f"{path}: is {kind}-compressed {format} data, which embcli reads only uncompressed; "
            f"decompress it first ({tool} -k {path}) and import the result"
        )
    return format, detected


# Formats read through a memory map, which needs their uncompressed bytes in a file.
_MAPPED_FORMATS = ("word2vec-binary", "npy", "fasttext-bin")


def _read_fasttext_bin(path, detected, report):
    """Read the vocabulary words' vectors of a fastText .bin (in memory, without n-gram rows)."""
    if detected != "fasttext-bin":
        raise VectorFileError(f"{path}: not a fastText .bin model (it does not start with fastText's magic number)")
    model = fasttext_bin.read_header(path, report)
    words = fasttext_bin.decode_words(model, report)
    keep = np.array([word is not None for word in words], dtype=bool)
    matrix = fasttext_bin.input_matrix(model)
    blocks = [fasttext_bin.word_vectors(model, matrix, first, min(first + fasttext_bin.WORD_BLOCK, len(words)))
              for first in range(0, len(words), fasttext_bin.WORD_BLOCK)]
    vectors = np.concatenate(blocks) if blocks else np.zeros((0, model.dim), np.float32)
    return Vectors([word for word in words if word is not None], vectors[keep], "fasttext-bin",
                   counts=model.counts[keep])


# Text formats: word2vec (with header) and GloVe (without).


def _text_lines(path, report, progress):
    """Yield (line number, byte offset, decoded line without its line ending)."""
    size = os.path.getsize(path)
    number = 0
    offset = 0
    carry = b""
    with _open_maybe_compressed(path) as (handle, raw):
        # Progress counts the bytes of the file read, compressed or not.
        while True:
            # `carry` is the start of line number + 1, without its line end.
            chunk = _read_chunk(handle, path, offset + len(carry), number + 1)
            data = carry + chunk
            if not chunk:
                if data:
                    number += 1
                    yield number, offset, _decode_line(data, number, offset, report)
                break
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            block = data[:cut]
            try:
                text = block.decode("utf-8")
                decoded = text.split("\n")[:-1]
            except UnicodeDecodeError:
                decoded = None
            raw_lines = block.split(b"\n")[:-1]
            for index, line_bytes in enumerate(raw_lines):
                number += 1
                if decoded is not None:
                    line = decoded[index]
                else:
                    line = _decode_line(line_bytes, number, offset, report)
                yield number, offset, line
                offset += len(line_bytes) + 1
            if progress is not None:
                progress(min(raw.tell(), size))


def _read_available(handle, size):
    """Read up to `size` bytes from `handle`; return (the bytes, None) or (the bytes read before an error, the error).

    A decompressing stream's read(n) drops what it decompressed in the call that fails,
    so the bytes are read with read1(), one decompressed block at a time. On a truncated
    gzip or xz file, the bytes returned are then those that gzip -dc or xz -dc write
    before they stop.
    """
    pieces = []
    total = 0
    while total < size:
        try:
            piece = handle.read1(size - total)
        except _DAMAGED_STREAM as error:
            return b"".join(pieces), error
        if not piece:
            break
        pieces.append(piece)
        total += len(piece)
    return b"".join(pieces) if len(pieces) != 1 else pieces[0], None


def _read_chunk(handle, path, offset, line):
    """Read the next chunk of a text file whose bytes before it end at `offset`, inside line `line`."""
    data, error = _read_available(handle, _BINARY_CHUNK)
    if error is not None:
        raise _read_failure(path, error, offset + len(data), line + data.count(b"\n"))
    return data


def _read_failure(path, error, offset, line=None):
    """Return the VectorFileError for `error`, raised after `offset` uncompressed bytes of `path`.

    `line` is the line that the data stops in, or None where the reader does not count lines.
    """
    if isinstance(error, OSError) and error.strerror and not isinstance(error, gzip.BadGzipFile):
        return VectorFileError(f"{path}: cannot read ({error.strerror})")
    kind = compression(path)
    where = f"after {offset:,} uncompressed bytes" + (f", in line {line:,}" if line is not None else "")
    message = f"{path}: the {kind} data is damaged or truncated {where} ({error}); get a complete copy of the file"
    if offset:
        # gzip, bzip2 and xz all take -dc, and write the data before the error.
        message += (f". To import what comes before that point, decompress it with {kind} -dc "
                    f"{shlex.quote(path)} > NEW_FILE, then import NEW_FILE leniently, which skips the incomplete "
                    "last row or entry")
        return VectorFileError(message, options=("lenient",))
    return VectorFileError(message)


def _decode_line(raw, number, offset, report):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        word = raw.split(b" ", 1)[0]
        report.problem(
            f"line {number}, byte offset {offset + error.start}: invalid UTF-8 "
            f"in {word[:60]!r}"
        )
        return raw.decode("utf-8", errors="replace")


def _split_row(line, dim):
    """Return (word, values text, value count) of one text row with `dim` values.

    The value count differs from `dim` when the row is ragged.
    """
    parts = line.rsplit(" ", dim)
    if len(parts) <= dim:
        return parts[0], None, len(parts) - 1
    word = parts[0]
    if " " in word:
        head = word.split(" ")
        extra = 0
        while extra < len(head) - 1 and _is_number(head[len(head) - 1 - extra]):
            extra += 1
        if extra:
            return " ".join(head[: len(head) - extra]), None, dim + extra
    return word, line[len(word) + 1 :], dim


def _tab_hint(line):
    """Return the hint for a row error on a text line with tabs, or "" if it has none."""
    if "\t" not in line:
        return ""
    if all(_is_number(field) for field in line.split("\t")):
        return _PROJECTOR_HINT
    return _TAB_HINT


class _SpacedWords:
    """Count the words of a text file that start or end with a space, keeping the first.

    The last D fields of a row are its values and the text before them is the word, so
    a second space before the values, or spaces at the start of the line, become part
    of the word.
    """

    def __init__(self):
        self.count = 0
        self.first = None  # (line number, word)

    def add(self, words, lines):
        """Check `words`, read on the line numbers `lines`."""
        joined = "\n" + "\n".join(words) + "\n"
        if " \n" not in joined and "\n " not in joined:
            return  # one search in C for the usual block without such words
        for word, line in zip(words, lines):
            if word.startswith(" ") or word.endswith(" "):
                self.count += 1
                if self.first is None:
                    self.first = (line, word)

    def warn(self, report):
        """Record one warning for the file in `report` (a _Warnings) if any word was found."""
        if not self.count:
            return
        line, word = self.first
        verb = "starts or ends" if self.count == 1 else "start or end"
        report.warn(
            f"{_plural(self.count, 'word')} {verb} with a space, the first on line {line}: {word!r}. Such a word "
            "keeps its spaces, and a query finds it only with them. If the spaces are separators (two spaces "
            "before a value, or spaces at the start of a line), replace each run of spaces with one space, "
            "remove spaces at line starts, and import the file again"
        )


def _glove_dim(line):
    """Return the number of values on the first line of a headerless file."""
    fields = line.split(" ")
    count = 0
    while count < len(fields) - 1 and _is_number(fields[len(fields) - 1 - count]):
        count += 1
    return count


def _read_text(path, format, report, progress):
    declared = None
    dim = None
    words = []
    index = {}
    blocks = []
    pending_words = []
    pending_lines = []
    pending_values = []
    rows_seen = 0
    first_line_header = None
    first_line_numbers = None
    wrong_count = 0
    spaced = _SpacedWords()

    def flush():
        if not pending_words:
            return
        matrix, invalid = _parse_values(pending_values, pending_words, pending_lines, dim, report)
        keep = ~invalid
        finite = np.isfinite(matrix).all(axis=1)
        for i in np.flatnonzero(~finite & ~invalid):
            report.problem(f"line {pending_lines[i]}: {pending_words[i]!r} {_not_finite_reason(pending_values[i])}")
            keep[i] = False
        for i, word in enumerate(pending_words):
            if not keep[i]:
                continue
            if word in index:
                report.problem(f"line {pending_lines[i]}: duplicate word {word!r} (first seen on line {index[word]})")
                keep[i] = False
                continue
            index[word] = pending_lines[i]
            words.append(word)
        if keep.all():
            spaced.add(pending_words, pending_lines)
        else:
            kept = np.flatnonzero(keep)
            spaced.add([pending_words[i] for i in kept], [pending_lines[i] for i in kept])
        blocks.append(matrix[keep] if not keep.all() else matrix)
        pending_words.clear()
        pending_lines.clear()
        pending_values.clear()

    for number, offset, line in _text_lines(path, report, progress):
        if number == 1 and line.startswith("\ufeff"):
            line = line[1:]
        line = line.rstrip(" \r")
        if number == 1 and format == "word2vec":
            header = _HEADER.match(line.encode("utf-8", errors="replace"))
            if not header:
                raise VectorFileError(
                    f"{path}: line 1 is not a word2vec 'count dim' header: {line[:80]!r}; "
                    "if the file has no header, read it in the glove format",
                    options=("format_glove",),
                )
            declared, dim = int(header.group(1)), int(header.group(2))
            if dim < 1:
                raise VectorFileError(f"{path}: line 1: the header declares {dim} dimensions")
            continue
        if not line.strip():
            continue
        if dim is None:
            dim = _glove_dim(line)
            if _HEADER.match(line.encode("utf-8", errors="replace")):
                first_line_header = line
            elif len(line.split()) >= 2 and all(_is_number(field) for field in line.split()):
                first_line_numbers = line
            if dim < 1:
                raise VectorFileError(f"{path}: line {number}: no values after the word: {line[:80]!r}"
                                      + _tab_hint(line))
        if declared is not None and rows_seen == declared:
            report.problem(
                f"the header declares {_plural(declared, 'vector')} but more rows follow at line {number}"
            )
        rows_seen += 1
        word, values, count = _split_row(line, dim)
        if values is None or not word:
            if first_line_header and number == 2:
                raise VectorFileError(
                    f"{path}: line 1 looks like a word2vec 'count dim' header ({first_line_header!r}); "
                    "read the file in the word2vec format",
                    options=("format_word2vec",),
                )
            if first_line_numbers and number == 2:
                raise VectorFileError(
                    f"{path}: line 1 ({first_line_numbers[:80]!r}) is not a valid header: it contains only "
                    "numbers, and another count of fields than line 2. A word2vec header is two "
                    "integers, 'count dim'. Fix line 1, or remove it if the file has no header"
                )
            wrong_count += 1
            if not word:
                report.problem(f"line {number}: the row has no word before its values")
            else:
                report.problem(f"line {number}: {word!r} has {_plural(count, 'value')}, expected {dim}"
                               + _tab_hint(line))
            continue
        if "\r" in word:
            # A carriage return inside a line; vocab.tsv, one word per line, cannot hold it.
            report.problem(f"line {number}: the word {word[:60]!r} contains a carriage return")
            continue
        pending_words.append(word)
        pending_lines.append(number)
        pending_values.append(values)
        if len(pending_words) >= _TEXT_BLOCK_LINES:
            flush()
    flush()
    if wrong_count > rows_seen // 2 and dim is not None and declared is None:
        # --lenient would keep the few rows shaped like the first one and drop the rest.
        raise VectorFileError(
            f"{path}: {_plural(wrong_count, 'row')} of {rows_seen:,} do not have {dim} values, the count on "
            "line 1, so line 1 is likely the damaged one; fix or remove it"
        )
    if declared is not None and rows_seen < declared:
        report.problem(f"the header declares {_plural(declared, 'vector')} but the file contains {_plural(rows_seen, 'row')}")
    if dim is None:
        raise VectorFileError(f"{path}: contains no vectors")
    spaced.warn(report)
    matrix = np.concatenate(blocks) if blocks else np.zeros((0, dim), dtype=np.float32)
    return Vectors(words, matrix, format)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _not_finite_reason(text):
    """Return why the value texts `text` of a row give a non-finite float32 value."""
    for value in text.split(" "):
        try:
            number = float(value)
        except ValueError:
            continue
        if math.isfinite(number) and abs(number) > _FLOAT32_MAX:
            return f"has the value {value[:40]}, outside the float32 range (about -3.4e38 to 3.4e38)"
    return "has a NaN or infinite value"


def _parse_values(values, words, lines, dim, report):
    """Return the (n, dim) float32 matrix of the value texts of n rows, and the rows reported invalid.

    An invalid row is NaN in the matrix, so it is dropped with the non-finite ones, and
    the mask keeps it from being reported a second time.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # older numpy warns instead of raising
            flat = np.fromstring(" ".join(values), dtype=np.float32, sep=" ")
    except ValueError:
        flat = np.zeros(0, dtype=np.float32)
    invalid = np.zeros(len(values), dtype=bool)
    if flat.size == len(values) * dim:
        return flat.reshape(len(values), dim), invalid
    # Some value is not a number: parse row by row to name it.
    matrix = np.zeros((len(values), dim), dtype=np.float32)
    for i, text in enumerate(values):
        fields = text.split(" ")
        bad = next((value for value in fields if not _is_number(value)), None)
        if bad is None:
            with np.errstate(over="ignore"):  # out-of-range values become infinity, reported later
                matrix[i] = [float(value) for value in fields]
            continue
        report.problem(f"line {lines[i]}: {words[i]!r} has an invalid value {bad[:40]!r}")
        matrix[i] = np.nan
        invalid[i] = True
    return matrix, invalid


# word2vec binary.


@dataclass
class _BinaryFile:
    """A word2vec binary file mapped into memory, with its header read."""

    path: str
    data: object  # the read-only mmap of the whole file
    start: int  # byte offset of the first entry, after the header line
    declared: int
    dim: int


def _open_binary(path):
    """Read the header of the word2vec binary file `path` and map the file.

    Returns None when the header declares no vectors and nothing follows it.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        first = handle.readline(256)
        header = _HEADER.match(first)
        if not header or not first.endswith(b"\n"):
            raise VectorFileError(
                f"{path}: line 1 is not a word2vec 'count dim' header (it starts with {_excerpt(first)}); a "
                "word2vec binary file needs that first line: the number of words and of dimensions, "
                "separated by a space"
            )
        declared, dim = int(header.group(1)), int(header.group(2))
        if dim < 1:
            raise VectorFileError(f"{path}: line 1: the header declares {dim} dimensions")
        start = len(first)
        width = 4 * dim
        if width + 2 > size - start:
            if declared > 0:
                raise VectorFileError(
                    f"{path}: the header declares {dim:,} dimensions, so one entry takes "
                    f"{width + 2:,} bytes, but only {size - start:,} bytes follow the header"
                )
            return None
        # The map stays open while numpy views of it live; it closes when they are freed.
        data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    _reject_text_values(path, data, start, width)
    return _BinaryFile(path, data, start, declared, dim)


_TEXT_NUMBER_BYTES = frozenset(b"0123456789.-+eE \t\r\n")


def _reject_text_values(path, data, start, width):
    """Raise VectorFileError when the first entry's "float32 bytes" are numbers written as text.

    Read as binary, a word2vec text file gives vectors of tiny numbers (the codes of its
    digits and spaces) without any error. float32 bytes of a real vector almost never
    consist of these 17 characters only.
    """
    position = start
    while position < len(data) and data[position] == 0x0A:
        position += 1
    space = data.find(b" ", position, position + _MAX_WORD_BYTES + 1)
    if space < 0:
        return
    values = data[space + 1 : space + 1 + width]
    if len(values) == width and width >= 8 and set(values) <= _TEXT_NUMBER_BYTES:
        word = data[position:space].decode("utf-8", errors="replace")
        raise VectorFileError(
            f"{path}: the values after the first word {word!r} are text "
            f"({values[:40].decode('ascii')!r}), not float32 bytes; this looks like a word2vec text "
            "file, so read it in the word2vec format",
            options=("format_word2vec",),
        )


def _max_binary_entries(binary):
    """Return an upper bound on the entries of `binary`: each takes at least 4 * dim + 1 bytes."""
    return (len(binary.data) - binary.start) // (4 * binary.dim + 1)


def _read_binary(path, report, progress):
    binary = _open_binary(path)
    if binary is None:
        return Vectors([], np.zeros((0, 0), dtype=np.float32), "word2vec-binary")
    # np.empty reserves the upper bound without touching it: only the rows written use memory.
    matrix = np.empty((_max_binary_entries(binary), binary.dim), dtype=np.float32)
    words = []
    for block_words, rows, _ in _binary_blocks(binary, report, progress):
        matrix[len(words) : len(words) + len(rows)] = rows
        words.extend(block_words)
    return Vectors(words, matrix[: len(words)], "word2vec-binary")


def _binary_blocks(binary, report, progress, block=_BINARY_BLOCK_ENTRIES):
    """Parse the entries of `binary` in file order and yield (words, rows, norms) per block.

    `rows` is a (n, dim) float32 array and `norms` are its rows' L2 norms. Entries that
    lenient mode skips are left out of all three.

    An entry's word runs from its start to the next space, since a word cannot contain
    one. The vector's bytes may contain spaces, so entries are found by following the
    chain from the first word: the next entry starts after the vector (and after the
    newline that word2vec.c writes), and its word ends at the first space from there.
    The vectors of a block are gathered in one step from a float32 view of the file
    (see _vector_view). When a word is not text, _MisreadCheck looks for the cause in
    the entry before it.
    """
    data, declared, dim = binary.data, binary.declared, binary.dim
    size = len(data)
    width = 4 * dim
    vectors = _vector_view(data, dim)
    find = data.find
    position = binary.start
    while position < size and data[position] == 0x0A:
        position += 1
    seen = _SeenWords()
    entries = 0  # entries read so far, kept or skipped
    released = 0  # the map before this offset is dropped from this process's memory
    last_space = size - 1 - width  # the last offset where a word's space leaves room for its vector
    run_pattern, entry_pattern = _binary_patterns(width, block)
    check = _MisreadCheck(binary)
    # Each block is yielded once the first entry of the next one is read, because a next
    # word that is not text can show that the last entry of the block was misread.
    pending = None  # (ends, words, first entry number) of the block read last
    while True:
        run = run_pattern.match(data, position)
        if run:
            # Well-formed entries, found by the regular expression engine in C; the
            # loop below, one Python step per entry, takes over where they stop.
            raw_words = entry_pattern.findall(data, position, run.end())
            lengths = np.fromiter(map(len, raw_words), dtype=np.int64, count=len(raw_words))
            starts = np.cumsum(lengths + (1 + width)) - (1 + width) - lengths + position
            ends = starts + lengths
            position = run.end()
        else:
            raw_words, ends = [], []
            add_word, add_end = raw_words.append, ends.append  # bound once: this loop runs once per entry
            for _ in range(block):
                end = find(b" ", position, position + _MAX_WORD_BYTES + 1)
                if end < 0 or end > last_space:
                    break
                add_word(data[position:end])
                add_end(end)
                position = end + 1 + width
                if position < size and data[position] == 0x0A:
                    position += 1
        if len(ends):
            words = _binary_words(raw_words, ends, entries + 1, declared, seen, report, check)
            if pending is not None:
                if check.drop_previous:
                    pending[1][-1] = None
                yield _block_vectors(vectors, *pending, report)
            check.drop_previous = False
            pending = (ends, words, entries + 1)
            entries += len(ends)
            if hasattr(data, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                # The pages stay in the page cache: this only keeps the mapped input from
                # counting as this process's memory. Offsets must be page-aligned.
                done = (position // mmap.PAGESIZE) * mmap.PAGESIZE
                if done > released:
                    data.madvise(mmap.MADV_DONTNEED, released, done - released)
                    released = done
        if progress is not None:
            progress(position)
        if not run and len(ends) < block:
            break
    if _check_binary_end(binary, position, entries, report, check):
        pending[1][-1] = None
    if pending is not None:
        yield _block_vectors(vectors, *pending, report)


@functools.lru_cache(maxsize=8)
def _binary_patterns(width, block):
    """Return (run, entry) regular expressions for entries whose vectors take `width` bytes.

    `run` matches up to `block` consecutive well-formed entries: an optional newline
    (after the previous vector), a word of 1 to _MAX_WORD_BYTES bytes without space or
    newline, a space, and `width` bytes of any value. `entry` captures the newline and
    word of each entry of such a run. A word decides where its entry ends, so the
    entries of a run follow each other without gaps.
    """
    entry = rb"(\n?[^ \n]{1,%d}) .{%d}" % (_MAX_WORD_BYTES, width)
    # Possessive quantifiers (no backtracking) match the same and took 15-30 % less time.
    run = rb"(?:\n?+[^ \n]{1,%d}+ .{%d}){1,%d}+" % (_MAX_WORD_BYTES, width, block)
    return re.compile(run, re.DOTALL), re.compile(entry, re.DOTALL)


def _block_vectors(vectors, ends, words, first_entry, report):
    """Return (words, rows, norms) of the entries of one block that are kept.

    `vectors` is the file's _vector_view. `ends` are the offsets of the spaces after the
    words, `words` holds None for an entry already skipped, and `first_entry` is the
    1-based number of the block's first entry.
    Entries with a NaN or infinite value are reported, then skipped in lenient mode.
    """
    from embcli.search import row_norms

    starts = np.asarray(ends, dtype=np.int64) + 1
    if None in words:
        kept = [i for i, word in enumerate(words) if word is not None]
        starts = starts[kept]
        words = [words[i] for i in kept]
    else:
        kept = range(len(words))
    rows = vectors[starts]
    norms = row_norms(rows)  # float64: finite for every row of finite float32 values
    finite = np.isfinite(norms)
    if finite.all():
        return words, rows, norms
    for i in np.flatnonzero(~finite):
        report.problem(f"entry {first_entry + kept[i]}: {words[i]!r} has a NaN or infinite value")
    return [word for word, ok in zip(words, finite) if ok], rows[finite], norms[finite]


def _check_binary_end(binary, position, entries, report, check):
    """Report what follows the last complete entry, which ends at `position`.

    Returns True when that entry was misread and must be skipped (see _MisreadCheck).
    """
    data, declared, width = binary.data, binary.declared, 4 * binary.dim
    size = len(data)
    if position >= size or not data[position:].strip(b"\n"):
        if entries < declared:
            check.raise_if_other_value_size()
            report.problem(f"the header declares {_plural(declared, 'vector')} but the file contains {entries:,} "
                           + ("entry" if entries == 1 else "entries"))
        return False
    check.raise_if_other_value_size()
    if check.previous is not None:
        split = check.find_word_with_space(*check.previous[1:3], None)
        if split is not None:
            report.problem(check.word_with_space_message(check.previous, split[0], None))
            return True
    end = data.find(b" ", position)
    if end >= 0 and end + 1 + width <= size:
        # A complete entry follows, so its word must be too long. The entries after it
        # cannot be found, so this stops even a lenient import instead of dropping them.
        raise VectorFileError(
            f"{binary.path}: entry {entries + 1}, byte offset {position}: no space after the word within "
            f"{_MAX_WORD_BYTES:,} bytes, so the entries after it cannot be found ({entries:,} of "
            f"{declared:,} read); the file is not word2vec binary or is damaged"
        )
    tail = data[position : position + 60].split(b" ")[0].lstrip(b"\n")
    if entries >= declared:
        report.problem(
            f"the header declares {_plural(declared, 'vector')} but {size - position:,} "
            f"more bytes follow at byte offset {position}, too few for an entry"
        )
    else:
        report.problem(
            f"truncated: {entries:,} of {declared:,} entries are complete; the file ends at "
            f"byte offset {size} inside entry {entries + 1} (starting at byte offset {position}, "
            f"word {tail.decode('utf-8', 'replace')!r})"
        )
    return False


# C0 control characters other than tab, and DEL. Words of vector files do not contain
# them, but float32 bytes that a misread entry takes for the start of a word often do.
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# The same without tab and line breaks, which text files contain.
_NON_TEXT_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The same without NUL and the line breaks, for the words of a block joined by NUL.
_JOINED_CONTROL_BYTES = re.compile(rb"[\x01-\x08\x0b-\x1f\x7f]")
# Entries checked when testing whether a file's values take other than 4 bytes.
_VALUE_SIZE_CHECK_ENTRIES = 10_000
_VALUE_TYPES = {8: "float64", 2: "float16"}


def _is_text_word(raw):
    """True if the bytes `raw` can be a word: non-empty UTF-8 without control characters other than tab."""
    if not raw or _CONTROL_BYTES.search(raw):
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _starts_with_non_text(raw):
    """True if the bytes `raw` start with a control character or with bytes that are not UTF-8."""
    if _CONTROL_BYTES.match(raw):
        return True
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start == 0
    return False


def _excerpt(raw, limit=24):
    """Return the start of the bytes `raw` as an escaped literal, for a message."""
    text = repr(bytes(raw[:limit]))
    return text + f" ... ({len(raw):,} bytes)" if len(raw) > limit else text


class _MisreadCheck:
    """Find the cause when a word2vec binary entry's word is not text.

    Entries are found by following a chain (see _binary_blocks), so one misread entry
    shifts the next. Two causes are checked, and each is confirmed by reading the bytes
    again under it:
    - a word that contains a space. Its word is read up to that space, its vector takes
      the rest of the word and fewer vector bytes, and the next "word" starts with the
      vector bytes left over.
    - values of another size than 4 bytes (float64 or float16). Then every vector is
      read at the wrong length.
    """

    def __init__(self, binary):
        self.binary = binary
        # (entry number, word start, offset of the space after the word, word or None if
        # skipped) of the last entry of the block decoded last.
        self.previous = None
        self.drop_previous = False  # set when the last entry of the block before was misread
        self._value_size = None
        self._value_size_checked = False

    def raise_if_other_value_size(self):
        """Raise VectorFileError if the entries fit values of 8 or 2 bytes instead of 4.

        All vectors would be wrong, so this stops a lenient read too.
        """
        size = self._other_value_size()
        if size is None:
            return
        binary = self.binary
        raise VectorFileError(
            f"{binary.path}: the entries do not fit {_plural(binary.dim, 'value')} of 4 bytes (float32) each, "
            f"the size that word2vec binary files use: read that way, the words after the first one start "
            f"with vector bytes. They fit {_plural(binary.dim, 'value')} of {size} bytes each, so the file "
            f"seems to contain {_VALUE_TYPES[size]} values; write it again with float32 values, for example "
            "after numpy's astype('float32')"
        )

    def _other_value_size(self):
        """Return 8 or 2 if every entry checked has a text word when values take that many bytes."""
        if self._value_size_checked:
            return self._value_size
        self._value_size_checked = True
        binary = self.binary
        for size in _VALUE_TYPES:
            entries, end = _walk_entries(binary.data, binary.start, size * binary.dim, _VALUE_SIZE_CHECK_ENTRIES)
            at_end = not binary.data[end:].strip(b"\n")
            if entries == _VALUE_SIZE_CHECK_ENTRIES or (entries and at_end and entries == binary.declared):
                self._value_size = size
                break
        return self._value_size

    def find_word_with_space(self, word_start, space, next_space):
        """Return (word, start of the next word) if the word at `word_start` continues past `space`.

        The word goes on to a later space when the bytes up to it are text and, after
        that space and a vector, the next entry's word is text and ends at `next_space`,
        the space that the chain found. With `next_space` None the vector must end the file.
        NOTE: only the entry just before is checked, so a word whose text after its first
        space is longer than a vector (4 * dim bytes) is reported as the later entries' problem.
        """
        data = self.binary.data
        width = 4 * self.binary.dim
        limit = len(data) if next_space is None else next_space
        candidate = space
        while True:
            candidate = data.find(b" ", candidate + 1, min(limit, word_start + _MAX_WORD_BYTES + 1))
            if candidate < 0 or not _is_text_word(data[word_start:candidate]):
                # A word that is not text up to this space is not text up to a later one either.
                return None
            next_start = candidate + 1 + width
            if next_start < len(data) and data[next_start] == 0x0A:
                next_start += 1
            if next_space is None:
                if next_start <= len(data) and not data[next_start:].strip(b"\n"):
                    return data[word_start:candidate].decode("utf-8"), len(data)
            elif next_start < next_space and _is_text_word(data[next_start:next_space]):
                return data[word_start:candidate].decode("utf-8"), next_start

    def word_with_space_message(self, previous, word, next_entry):
        """Return the problem report for the entry `previous` whose whole word `word` contains a space."""
        entry, word_start, space, _ = previous
        data, width = self.binary.data, 4 * self.binary.dim
        short = data[word_start:space].decode("utf-8", "replace")
        rest = len(word.encode("utf-8")) - len(short.encode("utf-8"))
        after = (f"so entry {next_entry} starts inside that vector" if next_entry is not None
                 else "so bytes of the vector are left over at the end of the file")
        return (
            f"entry {entry} of {self.binary.declared:,}, byte offset {word_start}: the word {word!r} contains a "
            f"space, which word2vec binary files cannot hold: it reads as the word {short!r} with a vector "
            f"of the next {width:,} bytes, {rest:,} of them the rest of the word, {after}. Replace the spaces "
            "in such words, for example with _, where the file was written"
        )

    def misread_hint(self, previous):
        """Return the clause for a word that starts with bytes that are not text: the entry before may be misread."""
        if previous is None:
            return ""
        entry, word_start, space, _ = previous
        word = self.binary.data[word_start:space].decode("utf-8", "replace")
        return (f"; the word starts with bytes that are not text, so entry {entry} ({word!r}) may be misread: "
                "its word may contain a space, or the file's values may not be 4-byte float32")


def _walk_entries(data, start, width, limit):
    """Follow the chain of entries with `width` vector bytes from `start` while their words are text.

    Returns (entries read, offset after the last of them), at most `limit` entries.
    """
    size = len(data)
    position = start
    while position < size and data[position] == 0x0A:
        position += 1
    entries = 0
    while entries < limit and position < size:
        space = data.find(b" ", position, position + _MAX_WORD_BYTES + 1)
        if space < 0 or space + 1 + width > size or not _is_text_word(data[position:space]):
            break
        entries += 1
        position = space + 1 + width
        if position < size and data[position] == 0x0A:
            position += 1
    return entries, position


def _vector_view(data, dim):
    """Return a read-only (len(data) - 4 dim + 1, dim) float32 view of `data` whose row i starts at byte i.

    A vector of a word2vec binary file may start at any byte offset, so row i is the
    vector at byte offset i. Numpy reads these unaligned rows correctly, and gathering
    rows from this view was 2-3 times faster than from four views at 4-byte shifts.
    """
    return np.ndarray(shape=(len(data) - 4 * dim + 1, dim), dtype="<f4", buffer=data, offset=0, strides=(1, 4))


class _SeenWords:
    """The words of the entries read so far, for duplicate checks.

    While no block needs a closer look, a set is enough and cheaper than a dict. The
    entry number of each word, which only an error message needs, is indexed from the
    recorded blocks the first time it is asked for, and kept up to date from then on.
    """

    def __init__(self):
        self._words = set()
        self._blocks = []  # (first entry number, words) of each block added while only the set is kept
        self._entry_of = None  # word -> entry number, once built

    def add_if_new(self, words, first_entry):
        """Add the block `words` if no word in it was seen before or repeats; return whether it was added.

        After False, the caller must go on with entry_numbers().
        """
        if self._entry_of is not None:
            numbered = dict(zip(words, range(first_entry, first_entry + len(words))))
            if len(numbered) < len(words) or not self._entry_of.keys().isdisjoint(numbered):
                return False
            self._entry_of.update(numbered)
            return True
        size = len(self._words)
        self._words.update(words)
        if len(self._words) == size + len(words):
            self._blocks.append((first_entry, words))
            return True
        # A word of the block was seen before or repeats in it. The set now holds some of
        # the block's words, and entry_numbers() rebuilds from the recorded blocks instead.
        self._words = None
        return False

    def entry_numbers(self):
        """Return the dict word -> entry number of the first entry with that word; callers may add to it."""
        if self._entry_of is None:
            self._entry_of = {}
            for first_entry, words in self._blocks:
                self._entry_of.update(zip(words, range(first_entry, first_entry + len(words))))
            self._words = self._blocks = None
        return self._entry_of


def _binary_words(raw, ends, first_entry, declared, seen, report, check):
    """Decode the words `raw` (bytes) of one block of entries; None marks one skipped in lenient mode.

    `ends` are the byte offsets of the spaces after the words. `first_entry` is the
    1-based number of the block's first entry. `seen` (a _SeenWords) contains the
    words of the earlier blocks, and the block's words are added to it. `check` (a
    _MisreadCheck) finds the cause of a word that is not text, and may set
    check.drop_previous to skip the last entry of the block before.
    """
    last_entry = first_entry + len(raw) - 1
    joined = b"\0".join(raw)
    if b"\n" in joined:
        # Words of a run keep the newline that ends the previous vector.
        joined = joined.replace(b"\0\n", b"\0").removeprefix(b"\n")
    if last_entry <= declared and b"\n" not in joined and not _JOINED_CONTROL_BYTES.search(joined):
        try:
            words = joined.decode("utf-8").split("\0")
        except UnicodeDecodeError:
            words = None
        if words is not None and len(words) == len(raw) and all(words) and seen.add_if_new(words, first_entry):
            last_end = int(ends[-1])
            check.previous = (last_entry, last_end - len(raw[-1].lstrip(b"\n")), last_end, words[-1])
            return words
    # Something needs a closer look: check entry by entry, in file order.
    seen = seen.entry_numbers()
    result = []
    previous = check.previous
    for entry, (chunk, end) in enumerate(zip(raw, ends), first_entry):
        end = int(end)
        offset = end - len(chunk)
        if entry == declared + 1:
            check.raise_if_other_value_size()
            report.problem(
                f"the header declares {_plural(declared, 'vector')} but more data follows at "
                f"byte offset {offset} (entry {entry})"
            )
        stripped = chunk.lstrip(b"\n")
        offset += len(chunk) - len(stripped)
        hint = ""
        if previous is not None and not _is_text_word(stripped):
            check.raise_if_other_value_size()
            split = check.find_word_with_space(previous[1], previous[2], end)
            if split is not None:
                report.problem(check.word_with_space_message(previous, split[0], entry))
                _skip_previous(previous, result, seen, check)
                # The chain still finds this entry's vector: it follows the space at `end`.
                offset = split[1]
                stripped = check.binary.data[offset:end]
            elif _starts_with_non_text(stripped):
                hint = check.misread_hint(previous)
        previous = (entry, offset, end, None)
        try:
            word = stripped.decode("utf-8")
        except UnicodeDecodeError as error:
            report.problem(
                f"entry {entry} of {declared:,}, byte offset {offset + error.start}: "
                f"the word {_excerpt(stripped, 60)} is not valid UTF-8{hint}"
            )
            word = stripped.decode("utf-8", errors="replace")
        if not word:
            report.problem(f"entry {entry}, byte offset {offset}: empty word")
            result.append(None)
            continue
        if "\n" in word or "\r" in word:
            report.problem(f"entry {entry}, byte offset {offset}: the word {word[:60]!r} contains a line break{hint}")
            result.append(None)
            continue
        if word in seen:
            report.problem(
                f"entry {entry}, byte offset {offset}: duplicate word {word!r} (first seen in entry {seen[word]})"
            )
            result.append(None)
            continue
        seen[word] = entry
        result.append(word)
        previous = (entry, offset, end, word)
    check.previous = previous
    return result


def _skip_previous(previous, result, seen, check):
    """Skip the entry `previous`, found misread, whether it is in this block (`result`) or the one before."""
    entry, _, _, word = previous
    if result:
        result[-1] = None
    else:
        check.drop_previous = True
    if word is not None and seen.get(word) == entry:
        del seen[word]


# .npy matrix with a word list.


def _npy_truncation(path):
    """Return the VectorFileError for a .npy file shorter than its header declares, or None.

    None also when the header cannot be read, which np.load reports instead.
    """
    from embcli import store

    try:
        with open(path, "rb") as handle:
            header = store.read_npy_header(handle)
            if header is None:
                return None  # NOTE: version 3.0 headers (UTF-8 field names) are not checked here
            shape, dtype = header
            data_start = handle.tell()
    except (OSError, ValueError, SyntaxError):
        return None
    if dtype.hasobject:
        return None
    expected = data_start + dtype.itemsize * math.prod(shape)
    actual = os.path.getsize(path)
    if actual >= expected:
        return None
    described = " x ".join(f"{n:,}" for n in shape)
    return VectorFileError(
        f"{path}: truncated: its header declares a {described} {dtype} array, so the file should have "
        f"{expected:,} bytes, but it has {actual:,}; copy or export the file again"
    )


def _read_npy(path, words_path, report):
    finish_interrupted_export(path)
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        if _is_pickle_error(error):
            raise VectorFileError(
                f"{path}: contains an object (pickled) array, which embcli rejects because "
                "unpickling can run code; expected a 2-D float array"
            ) from None
        truncated = _npy_truncation(path)
        if truncated is not None:
            raise truncated from None
        raise VectorFileError(f"{path}: not a valid .npy file ({error})") from None
    except Exception as error:  # numpy raises many kinds on a damaged header
        raise VectorFileError(f"{path}: not a valid .npy file ({type(error).__name__}: {error})") from None
    if not isinstance(matrix, np.ndarray) or matrix.dtype.hasobject:
        raise VectorFileError(f"{path}: expected a 2-D float array")
    if matrix.ndim != 2:
        raise VectorFileError(f"{path}: expected a 2-D matrix, found shape {matrix.shape}")
    if matrix.dtype.kind != "f":
        raise VectorFileError(f"{path}: expected float values, found {matrix.dtype}")
    if matrix.shape[1] < 1:
        raise VectorFileError(f"{path}: the matrix has no columns")
    if words_path is None and str(path).endswith(".npy") and os.path.isfile(npy_words_path(path)):
        words_path = npy_words_path(path)  # the list that `export --format npy` writes beside it
    if words_path is None:
        raise VectorFileError(f"{path}: a .npy matrix needs a word list, one word per line, in row order",
                              options=("words",))
    words, counts = read_word_list(words_path, report)
    if len(words) != matrix.shape[0]:
        raise VectorFileError(
            f"{path} has {matrix.shape[0]:,} rows but {words_path} has {len(words):,} words; "
            "they must match row for row"
        )
    with np.errstate(over="ignore"):  # float64 values beyond float32 become infinity
        values = np.array(matrix, dtype=np.float32)
    finite = np.isfinite(values).all(axis=1)
    keep = finite.copy()
    for i in np.flatnonzero(~finite):
        reason = "has a NaN or infinite value"
        if np.isfinite(matrix[i]).all():
            reason = "has a value outside the float32 range (about -3.4e38 to 3.4e38)"
        report.problem(f"row {i + 1}: {words[i]!r} {reason}")
    _drop_repeated_words(words, range(1, len(words) + 1), keep, words_path, report)
    if not keep.all():
        values = values[keep]
        words = [w for w, ok in zip(words, keep) if ok]
        counts = counts[keep] if counts is not None else None
    return Vectors(words, values, "npy", counts=counts)


def read_word_list(path, report=None):
    """Return (words, counts or None) from a word list: one word per line, or word<TAB>count.

    With a lenient `report` (_Warnings), invalid UTF-8 becomes U+FFFD with a warning.
    """
    path = str(path)
    if path.endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as error:
            if _is_pickle_error(error):
                raise VectorFileError(
                    f"{path}: contains an object (pickled) array, which embcli rejects because "
                    "unpickling can run code; expected a 1-D array of strings"
                ) from None
            truncated = _npy_truncation(path)
            if truncated is not None:
                raise truncated from None
            raise VectorFileError(f"{path}: not a valid .npy file ({error})") from None
        except Exception as error:
            raise VectorFileError(f"{path}: not a valid .npy file ({type(error).__name__}: {error})") from None
        if array.ndim != 1 or array.dtype.kind != "U":
            raise VectorFileError(f"{path}: expected a 1-D array of strings, found {array.dtype} {array.shape}")
        return [str(word) for word in array], None
    lines = _read_lines(path, report)
    for number, line in enumerate(lines, 1):
        if not line:
            raise VectorFileError(f"{path}: line {number} is empty; each line must hold one word")
    # vocab.tsv layout: every line ends in <TAB> and an integer count.
    split = [line.rpartition("\t") for line in lines]
    counted = [bool(tab and word and count.isdigit()) for word, tab, count in split]
    if lines and all(counted):
        return [word for word, _, _ in split], np.array([int(c) for _, _, c in split], dtype=np.int64)
    if any(counted):
        with_count = counted.index(True) + 1
        without = counted.index(False) + 1
        raise VectorFileError(
            f"{path}: line {with_count} is word<TAB>count but line {without} ({lines[without - 1][:80]!r}) "
            "is not; use one layout for every line: word<TAB>count, or one word per line"
        )
    return lines, None


def _read_lines(path, report):
    """Return the lines of the UTF-8 text file `path` (a word list), without line ends.

    With a lenient `report` (_Warnings), invalid UTF-8 becomes U+FFFD with a warning.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise VectorFileError(f"{path}: cannot read the word list ({error.strerror or error})") from None
    _reject_utf16(path, data)
    try:
        text = decode_utf8(data, path, VectorFileError)
    except VectorFileError as error:
        if report is None or not report.lenient:
            raise
        report.problem(f"{str(error).removeprefix(path + ': ')} (replaced with U+FFFD)")
        text = data.decode("utf-8", "replace").removeprefix("\ufeff")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


# The TensorFlow Embedding Projector's vectors.tsv with its metadata.tsv.


def read_projector_metadata(path, report=None):
    """Return (words, the line number of the first word) from an Embedding Projector metadata.tsv.

    As the projector reads it: with one column, each line is a label (here a word) and
    there is no header. When the first line contains a tab, it is a header of column
    names and the words are the first column of the lines after it. Unlike the
    projector, which drops blank lines, a blank line before the last word is an error,
    since it would pair each later word with the vector of the row after its own.
    """
    path = str(path)
    lines = _read_lines(path, report)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise VectorFileError(f"{path}: contains no words")
    first_line = 1
    if "\t" in lines[0]:
        first_line = 2
        lines = [line.split("\t", 1)[0] for line in lines[1:]]
    for number, word in enumerate(lines, first_line):
        if word:
            continue
        if first_line == 1:
            raise VectorFileError(f"{path}: line {number} is empty; each line must hold one word")
        raise VectorFileError(f"{path}: line {number} has an empty first column; line 1 is a header of column "
                              "names, and each line after it must start with a word")
    return lines, first_line


def projector_metadata_path(vectors_path):
    """Return the metadata.tsv beside the projector vectors.tsv `vectors_path`, where export writes it."""
    return os.path.join(os.path.dirname(str(vectors_path)), PROJECTOR_METADATA)


def _missing_metadata(path, expected):
    """Return the VectorFileError for projector vectors `path` whose metadata.tsv at `expected` (or None) is missing."""
    if expected is None:
        where = (f"in the {PROJECTOR_METADATA} written with it, one per line in row order; name that file as "
                 "the word list")
    else:
        where = (f"in the {PROJECTOR_METADATA} written beside it, one per line in row order, but {expected} does not "
                 f"exist; put the {PROJECTOR_METADATA} there, or name it as the word list")
    return VectorFileError(
        f"{path}: contains only numbers separated by tabs, like the vectors.tsv of a TensorFlow Embedding Projector "
        f"export, so it has no words. Its words are {where}",
        options=("words",),
    )


def _read_projector(path, words_path, report, progress):
    """Read projector vectors.tsv rows: values separated by tabs, paired in order with the metadata's words."""
    if words_path is None:
        words_path = projector_metadata_path(path)
        if not os.path.isfile(words_path):
            raise _missing_metadata(path, words_path)
    words, first_line = read_projector_metadata(words_path, report)
    dim = None
    texts, rows, row_lines = [], [], []  # value texts, 0-based row numbers and line numbers of a block
    kept_rows, blocks = [], []
    row = 0

    def flush():
        if not texts:
            return
        labels = [words[i] if i < len(words) else "" for i in rows]
        matrix, invalid = _parse_values(texts, labels, row_lines, dim, report)
        finite = np.isfinite(matrix).all(axis=1)
        for i in np.flatnonzero(~finite & ~invalid):
            report.problem(f"line {row_lines[i]}: {labels[i]!r} {_not_finite_reason(texts[i])}")
        blocks.append(matrix[finite])
        kept_rows.extend(np.asarray(rows)[finite].tolist())
        texts.clear()
        rows.clear()
        row_lines.clear()

    for number, _, line in _text_lines(path, report, progress):
        if number == 1:
            line = line.removeprefix("\ufeff")
        line = line.rstrip("\r")
        if not line.strip():
            continue  # the projector skips blank lines too
        fields = line.split("\t")
        if dim is None:
            dim = len(fields)
        word = repr(words[row]) if row < len(words) else f"row {row + 1}"
        if len(fields) != dim:
            report.problem(f"line {number}: {word} has {_plural(len(fields), 'value')}, expected {dim}")
        elif "" in fields or _SPACE_NOT_TAB.search(line):
            # Values are joined with spaces for parsing, so a field must be one token.
            bad = next(field for field in fields if not field or _SPACE_NOT_TAB.search(field))
            report.problem(f"line {number}: {word} has an invalid value {bad[:40]!r}")
        else:
            texts.append(" ".join(fields))
            rows.append(row)
            row_lines.append(number)
        row += 1
        if len(texts) >= _TEXT_BLOCK_LINES:
            flush()
    flush()
    if row != len(words):
        raise VectorFileError(
            f"{path} has {_plural(row, 'row')} but {words_path} has {_plural(len(words), 'word')}; they must match "
            "row for row"
        )
    if dim is None:
        raise VectorFileError(f"{path}: contains no vectors")
    matrix = np.concatenate(blocks) if blocks else np.zeros((0, dim), dtype=np.float32)
    kept_words = [words[kept_row] for kept_row in kept_rows]
    keep = np.ones(len(kept_rows), dtype=bool)
    _drop_repeated_words(kept_words, [kept_row + first_line for kept_row in kept_rows], keep, words_path, report)
    if not keep.all():
        kept_words = [word for word, kept in zip(kept_words, keep) if kept]
        matrix = matrix[keep]
    return Vectors(kept_words, matrix, "projector")


def _drop_repeated_words(words, lines, keep, words_path, report):
    """Clear `keep` for each word already kept earlier in `words`, and report it with its
    line in `words_path` (`lines` gives each word's line)."""
    seen = {}  # word -> its line
    for i, (word, line) in enumerate(zip(words, lines)):
        if not keep[i]:
            continue
        if word in seen:
            report.problem(f"{words_path}: line {line}: duplicate word {word!r} (first seen on line {seen[word]})")
            keep[i] = False
        else:
            seen[word] = line


# Writers.


# The characters that each format cannot hold in a word: text rows and vocab.tsv end at
# a line break, word2vec and GloVe fields are separated by spaces, and word lists of npy
# and projector exports are read as word<TAB>count or tab-separated metadata.
_FORBIDDEN_IN_WORDS = {
    "word2vec": " \n\r",
    "word2vec-binary": " \n\r",
    "glove": " \n\r",
    "fasttext": " \n\r",
    "npy": "\t\n\r",
    "projector": "\t\n\r",
}
# Words quoted in an export error; the message gives the count of the others.
_QUOTED_WORDS = 5


def check_words(words, format):
    """Raise VectorFileError if a word cannot be written in `format` and read back.

    All words are checked against all formats first, so the message names only the
    formats that can write every word, or states that none can.
    """
    problems = _word_problems(words)
    if not problems:
        return
    unwritable = _unwritable_words(problems, format)
    if not unwritable:
        return
    fitting = [other for other in WRITE_FORMATS if not _unwritable_words(problems, other)]
    if fitting:
        listed = _describe_words(words, unwritable, problems)
        count = "a word" if len(unwritable) == 1 else f"{len(unwritable):,} words"
        raise VectorFileError(
            f"the {format} format cannot hold {count} of the model: {listed}; export with --format "
            f"{_join_or(fitting)}, which can hold every word of the model"
        )
    every = sorted(set().union(*problems.values()))
    reasons = []
    for character in sorted(problems, key=lambda key: min(problems[key])):
        rejecting = [name for name in WRITE_FORMATS if character == "" or character in _FORBIDDEN_IN_WORDS[name]]
        kind = "an empty word" if character == "" else f"a word that contains {character!r}"
        reasons.append(f"{_join_and(rejecting)} cannot hold {kind}")
    raise VectorFileError(
        f"no export format can hold every word of the model, because of {_plural(len(every), 'word')}: "
        f"{_describe_words(words, every, problems)}. In short, {'; '.join(reasons)}. Change these words in "
        "the file the model came from, then import or train it again"
    )


def _word_problems(words):
    """Return {character: word numbers (1-based) of the words that contain it}, with "" for empty words.

    Only space, tab, LF and CR are looked for, the characters that some format cannot hold.
    """
    # One search of all words joined: most models have no such word, and this is fast.
    joined = "\0".join(words)
    characters = [character for character in " \t\n\r" if character in joined]
    empty = not all(words)
    if not characters and not empty:
        return {}
    problems = {}
    for number, word in enumerate(words, 1):
        if not word:
            problems.setdefault("", []).append(number)
        for character in characters:
            if character in word:
                problems.setdefault(character, []).append(number)
    return problems


def _unwritable_words(problems, format):
    """Return the sorted numbers of the words that `format` cannot hold."""
    forbidden = _FORBIDDEN_IN_WORDS[format]
    numbers = set()
    for character, found in problems.items():
        if character == "" or character in forbidden:
            numbers.update(found)
    return sorted(numbers)


def _describe_words(words, numbers, problems):
    """Return the first _QUOTED_WORDS words of `numbers` and what each contains, with the count of the rest."""
    parts = []
    for number in numbers[:_QUOTED_WORDS]:
        word = words[number - 1]
        found = [character for character in " \t\n\r" if character in word]
        problem = f"contains {' and '.join(map(repr, found))}" if found else "is empty"
        parts.append(f"word {number} {word[:80]!r} {problem}")
    text = ", ".join(parts)
    if len(numbers) > _QUOTED_WORDS:
        text += f" and {len(numbers) - _QUOTED_WORDS:,} more"
    return text


def _join_or(names):
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _join_and(names):
    if len(names) == 1:
        return f"the {names[0]} format"
    return f"the {', '.join(names[:-1])} and {names[-1]} formats"


def write_vectors(path, words, matrix, format, progress=None):
    """Write `words` and their (V, D) `matrix` to `path` in `format` (see WRITE_FORMATS).

    `path` is a file name or a binary stream such as sys.stdout.buffer. For
    `projector`, it is a directory that receives vectors.tsv and metadata.tsv. For `npy`,
    it is a name ending in .npy: the float32 matrix goes there and the words, one per
    line, beside it (npy_words_path). `fasttext` is fastText's .vec text format, which is
    word2vec's text format. A regular
    file (or the target of a symbolic link) is written under a temporary name and
    renamed, so a failed export leaves no partial file. A FIFO, a device or another file
    that is not regular is written in place. Returns the list of paths written.
    """
    if format not in WRITE_FORMATS:
        raise VectorFileError(f"unknown export format {format!r}; choose one of {', '.join(WRITE_FORMATS)}")
    words = list(words)
    if len(words) != matrix.shape[0]:
        raise ValueError(f"{len(words)} words for {matrix.shape[0]} rows")
    check_words(words, format)
    if format == "projector":
        if hasattr(path, "write"):
            raise VectorFileError("the projector format writes two files, so it needs a directory, not a stream")
        vectors_path = os.path.join(path, "vectors.tsv")
        metadata_path = os.path.join(path, PROJECTOR_METADATA)
        created = not os.path.isdir(path)
        _make_projector_directory(path)
        try:
            _write_pair([(vectors_path, _text_rows(None, matrix, "\t", progress, words, with_words=False)),
                         (metadata_path, ("".join(w + "\n" for w in words[i : i + 65536]).encode("utf-8")
                                          for i in range(0, len(words), 65536)))])
        except BaseException:
            if created and not os.listdir(path):
                os.rmdir(path)  # leave no empty directory behind a failed export
            raise
        return [vectors_path, metadata_path]
    if format == "npy":
        if hasattr(path, "write"):
            raise VectorFileError("the npy format writes two files (the matrix and its words), so it needs "
                                  "a file name, not a stream")
        words_path = npy_words_path(path)
        for target in (path, words_path):
            if os.path.isdir(target):  # checked first, so a failure replaces neither file
                raise VectorFileError(f"{target}: is a directory; give a file name")
        _write_pair([(path, _npy_rows(matrix, progress, words)),
                     (words_path, ("".join(w + "\n" for w in words[i : i + 65536]).encode("utf-8")
                                   for i in range(0, len(words), 65536)))])
        return [path, words_path]
    header = f"{len(words)} {matrix.shape[1]}\n".encode("ascii")
    if format == "word2vec-binary":
        chunks = _binary_rows(header, words, matrix, progress)
    elif format in ("word2vec", "fasttext"):
        chunks = _text_rows(header, matrix, " ", progress, words)
    else:
        chunks = _text_rows(b"", matrix, " ", progress, words)
    if hasattr(path, "write"):
        for chunk in chunks:
            _write_whole(path, chunk)
        path.flush()
        return [getattr(path, "name", "<stream>")]
    _write_output(path, chunks)
    return [path]


def _make_projector_directory(path):
    """Create the projector export directory `path` if needed; raise VectorFileError if it cannot hold the files."""
    if os.path.exists(path) and not os.path.isdir(path):
        kind = "is a file, not a directory" if os.path.isfile(path) else "is not a directory"
        raise VectorFileError(f"{path}: {kind}; the projector format writes vectors.tsv and metadata.tsv into a "
                              "directory, so give a directory name")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise VectorFileError(f"{path}: cannot create the directory ({error.strerror or error})") from None
    for name in ("vectors.tsv", PROJECTOR_METADATA):
        target = os.path.join(path, name)
        if os.path.isdir(target):  # checked first, so a failure replaces neither file
            raise VectorFileError(f"{target}: is a directory, where the projector format writes a file; "
                                  "remove it or give another directory")


def _write_whole(stream, data):
    """Write all of `data` to the binary `stream`.

    A buffered stream's write() may return a short count when a large write to a pipe
    is cut short, for example when the reader exits. Writing the rest then raises
    BrokenPipeError, so no part of the data is dropped silently.
    """
    view = memoryview(data)
    while len(view):
        written = stream.write(view)
        if written is None:  # a non-blocking raw stream that could not take any of it
            continue
        view = view[written:]


def _write_output(path, chunks):
    """Write `chunks` to `path`: atomically for a regular file, in place for a FIFO or a device."""
    try:
        status = os.stat(path)  # follows symbolic links
    except FileNotFoundError:
        status = None
    except OSError as error:
        raise VectorFileError(f"{path}: cannot write ({error.strerror or error})") from None
    if status is not None and stat.S_ISDIR(status.st_mode):
        raise VectorFileError(f"{path}: is a directory; give a file name")
    target = os.path.realpath(path)
    # /dev/stdout and /dev/fd/N resolve to /proc/self/fd links, which only open() follows.
    if (status is not None and not stat.S_ISREG(status.st_mode)) or target.startswith("/proc/"):
        _write_in_place(path, chunks)
    else:
        _write_atomic(target, chunks)


def _write_pair(outputs):
    """Write two files that belong together, such as a .npy matrix and its word list.

    Each is written under a temporary name first. A journal beside the first then lists
    the renames, which finish_interrupted_export completes if the process is killed
    between them, so a reader never pairs a new matrix with an old word list. A target
    that is not a regular file (a FIFO) is written in place, without a journal.
    """
    if not all(_is_regular_target(path) for path, _ in outputs):
        for path, chunks in outputs:
            _write_output(path, chunks)
        return
    first = os.path.realpath(outputs[0][0])
    finish_interrupted_export(first)
    renames = []
    try:
        for path, chunks in outputs:
            target = os.path.realpath(path)
            renames.append((_write_temporary(target, chunks), target))
        journal = _export_journal(first)
        with open(journal, "w", encoding="utf-8") as handle:
            json.dump({"renames": renames}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        for temporary, target in renames:
            os.replace(temporary, target)
        os.remove(journal)
    except OSError as error:
        raise VectorFileError(f"{error.filename or outputs[0][0]}: cannot write ({error.strerror or error})") from None
    finally:
        for temporary, _ in renames:
            if os.path.exists(temporary) and not os.path.exists(_export_journal(first)):
                os.remove(temporary)


def _export_journal(path):
    return os.path.join(os.path.dirname(path), f".export-journal-{os.path.basename(path)}.json")


def finish_interrupted_export(path):
    """Complete the renames of a two-file export to `path` that was killed between them."""
    journal = _export_journal(os.path.realpath(path))
    try:
        with open(journal, encoding="utf-8") as handle:
            renames = json.load(handle)["renames"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    for temporary, target in renames:
        if os.path.exists(temporary):
            os.replace(temporary, target)
    with contextlib.suppress(OSError):
        os.remove(journal)


def _is_regular_target(path):
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return stat.S_ISREG(status.st_mode) and not os.path.realpath(path).startswith("/proc/")


def _write_temporary(path, chunks):
    """Write `chunks` under a temporary name beside `path`, synced; return that name."""
    directory = os.path.dirname(path)
    name = os.path.basename(path)
    _remove_orphaned_temporaries(directory, name)
    temporary = os.path.join(directory, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}")
    try:
        with open(temporary, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    return temporary


def _write_in_place(path, chunks):
    try:
        with open(path, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
    except OSError as error:
        raise VectorFileError(f"{path}: cannot write ({error.strerror or error})") from None


def _write_atomic(path, chunks):
    temporary = None
    try:
        temporary = _write_temporary(os.path.abspath(path), chunks)
        os.replace(temporary, path)
    except OSError as error:
        raise VectorFileError(f"{path}: cannot write ({error.strerror or error})") from None
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)


def _remove_orphaned_temporaries(directory, name):
    """Remove temporary files for `name` left by an earlier export that was killed.

    A temporary name contains its writer's process id, so files of a writer that is still
    running are kept.
    """
    pattern = re.compile(r"\.tmp-(\d+)-[0-9a-f]{8}-" + re.escape(name) + r"\Z")
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry)
        if match is None or _process_exists(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.remove(os.path.join(directory, entry))


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def npy_words_path(path):
    """Return the word list written beside the .npy matrix `path`: vectors.npy -> vectors.words.txt."""
    if not str(path).endswith(".npy"):
        raise VectorFileError(f"{path}: the npy format needs a file name ending in .npy")
    return str(path)[: -len(".npy")] + ".words.txt"


def _finite_block(matrix, start, stop, words):
    """Return rows `start` to `stop` of `matrix` as float32; raise VectorFileError for one with NaN or infinity.

    Every reader, embcli's import too, rejects such a value, so no file is written with one.
    """
    rows = np.asarray(matrix[start:stop], dtype="<f4")
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        row = start + int(np.flatnonzero(~finite)[0])
        raise VectorFileError(f"row {row} ({words[row]!r}) contains NaN or infinite values, which no vector file "
                              "can hold; retrain the model, or import its vectors again")
    return rows


def _npy_rows(matrix, progress, words, block=65536):
    """Yield a float32 .npy file of `matrix`: the header, then the rows block by block."""
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": tuple(int(n) for n in matrix.shape)})
    yield header.getvalue()
    for start in range(0, matrix.shape[0], block):
        yield np.ascontiguousarray(_finite_block(matrix, start, start + block, words)).tobytes()
        if progress is not None:
            progress(min(start + block, matrix.shape[0]))


def _text_rows(header, matrix, separator, progress, words, with_words=True, block=4096):
    if header:
        yield header
    row_format = separator.join([_VALUE_FORMAT] * matrix.shape[1])
    for start in range(0, matrix.shape[0], block):
        rows = _finite_block(matrix, start, start + block, words).tolist()
        if not with_words:
            lines = [row_format % tuple(row) for row in rows]
        else:
            lines = [f"{word} {row_format % tuple(row)}" for word, row in zip(words[start : start + block], rows)]
        yield ("\n".join(lines) + "\n").encode("utf-8")
        if progress is not None:
            progress(min(start + block, matrix.shape[0]))


def _binary_rows(header, words, matrix, progress, block=65536):
    yield header
    for start in range(0, matrix.shape[0], block):
        rows = _finite_block(matrix, start, start + block, words)
        parts = []
        for word, row in zip(words[start : start + block], rows):
            parts.append(word.encode("utf-8") + b" ")
            parts.append(row.tobytes())
            parts.append(b"\n")
        yield b"".join(parts)
        if progress is not None:
            progress(min(start + block, matrix.shape[0]))


# Model directories.


def import_file(model_dir, path, format=None, lenient=False, words_path=None, progress=None, replace=False):
    """Read the vector file `path` into the model directory `model_dir`; return the Vectors read.

    Takes the arguments of read_vectors and import_model. A word2vec binary file is
    copied block by block into the model's embeddings.npy, so its matrix is never held
    in memory whole: the returned Vectors' matrix is the saved embeddings.npy,
    memory-mapped read-only. Other formats are read whole with read_vectors first.
    `path` may be - (standard input), a pipe or a FIFO: detecting the format and reading
    need the file twice, so such a stream is first copied to a temporary file in
    `model_dir`, and messages still name `path`. A compressed word2vec binary or .npy
    file is decompressed into such a file too.
    """
    path = str(path)
    stream = _is_stream(path)
    packed = not stream and _is_compressed_matrix(path, format)
    if not stream and not packed:
        return _import_file(model_dir, path, format, lenient, words_path, progress, replace, path)
    from embcli import store

    created = not os.path.exists(model_dir)
    store.ensure_directory(model_dir)
    # Not a store temporary name: the import's own write removes those when it starts.
    # NOTE: a process killed during the import leaves this copy behind.
    copy = os.path.join(model_dir, f".import-input-{uuid.uuid4().hex[:8]}")
    imported = False
    try:
        if packed:
            # Binary and .npy files are read through a memory map, which needs their
            # uncompressed bytes in a file: such a .bin.gz is decompressed next to the model.
            _decompress(path, copy)
        else:
            source = sys.stdin.buffer if path == "-" else open(path, "rb")
            try:
                with open(copy, "wb") as handle:
                    shutil.copyfileobj(source, handle, 1 << 20)
            except OSError as error:
                if is_disk_full(error):
                    raise DiskFull(f"{model_dir}, copying {'standard input' if path == '-' else path} there") from None
                raise
            finally:
                if source is not sys.stdin.buffer:
                    source.close()
        try:
            if _is_compressed_matrix(copy, format):
                # A compressed binary file from a pipe: its copy is decompressed in turn.
                _decompress(copy, copy + "-data")
                os.replace(copy + "-data", copy)
            vectors = _import_file(model_dir, copy, format, lenient, words_path, progress, replace, path)
        except VectorFileError as error:
            raise VectorFileError(str(error).replace(copy, path), options=error.options) from None
        vectors.warnings = [message.replace(copy, path) for message in vectors.warnings]
        imported = True
        return vectors
    finally:
        for name in (copy, copy + "-data"):
            with contextlib.suppress(OSError):
                os.remove(name)
        if created and not imported:
            store.remove_if_unused(model_dir)


def _is_compressed_matrix(path, format):
    """Return True for a gzip, bzip2 or xz file that contains word2vec binary or .npy data."""
    if not os.path.isfile(path) or compression(path) is None:
        return False
    if format is None:
        format = detect_format(path)
    return format in _MAPPED_FORMATS


def _decompress(path, target):
    """Write the decompressed bytes of `path` to `target`."""
    written = 0
    with _open_maybe_compressed(path) as (source, _), open(target, "wb") as handle:
        while True:
            block, error = _read_available(source, 1 << 20)
            if error is not None:
                raise _read_failure(path, error, written + len(block))
            if not block:
                return
            handle.write(block)
            written += len(block)


def _is_stream(path):
    """True for - (standard input) and for a path that is not a regular file (a pipe or FIFO)."""
    if path == "-":
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False  # reported as not found by the reader
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _import_file(model_dir, path, format, lenient, words_path, progress, replace, source_name):
    from embcli import store

    format, detected = _resolve_format(path, format)
    if format == "fasttext-bin" and detected == "fasttext-bin":
        return _import_fasttext_bin(model_dir, path, lenient, progress, replace, source_name)
    if format == "projector" and words_path is None and path != source_name:
        # `path` is a copy of a stream in the model directory: metadata.tsv is beside the stream's name.
        if source_name == "-":
            raise _missing_metadata(source_name, None)
        words_path = projector_metadata_path(source_name)
        if not os.path.isfile(words_path):
            raise _missing_metadata(source_name, words_path)
    if format != "word2vec-binary":
        # The lock is held while the file is read, so a second writer is turned away at once.
        with store.writer_lock(model_dir):
            _check_no_model(model_dir, replace)
            vectors = read_vectors(path, format, lenient, words_path, progress)
            _write_imported(model_dir, vectors, path, lenient, source_name)
        return vectors
    report = _Warnings(lenient, path)
    with store.writer_lock(model_dir):
        _check_no_model(model_dir, replace)
        binary = _open_binary(path)
        if binary is None:
            raise VectorFileError(f"{path}: contains no vectors")
        words, norms = [], []
        with store.NpyRowWriter(model_dir, store.EMBEDDINGS, binary.dim, _max_binary_entries(binary)) as writer:
            for block_words, rows, block_norms in _binary_blocks(binary, report, progress):
                writer.append(rows)
                words.extend(block_words)
                norms.append(block_norms)
            if not words:
                raise VectorFileError(f"{path}: contains no vectors")
            embeddings_tmp = writer.finish()
            vectors = Vectors(words, None, "word2vec-binary", warnings=report.messages, warning_count=report.count)
            _commit_import(model_dir, vectors, binary.dim, embeddings_tmp, np.concatenate(norms), path, lenient,
                           source_name)
    vectors.matrix = store.load_matrix(os.path.join(model_dir, store.EMBEDDINGS), len(words))
    return vectors


def _import_fasttext_bin(model_dir, path, lenient, progress, replace, source_name):
    """Import a fastText .bin: word vectors into embeddings.npy, n-gram bucket rows into subwords.npy."""
    from embcli import store

    report = _Warnings(lenient, path)
    with store.writer_lock(model_dir):
        _check_no_model(model_dir, replace)
        model = fasttext_bin.read_header(path, report)
        if not model.words:
            raise VectorFileError(f"{path}: the fastText model has no words")
        words, counts, temps, norms, settings = fasttext_bin.write_model_files(model_dir, model, report, progress)
        if not words:
            raise VectorFileError(f"{path}: contains no vectors")
        vectors = Vectors(words, None, "fasttext-bin", counts=counts, warnings=report.messages,
                          warning_count=report.count)
        embeddings_tmp = temps.pop(store.EMBEDDINGS)
        extra = {"fasttext": model.describe()}
        if settings is not None:
            extra["subwords"] = settings
        _commit_import(model_dir, vectors, model.dim, embeddings_tmp, norms, path, lenient, source_name,
                       files=temps, meta_extra=extra)
    vectors.matrix = store.load_matrix(os.path.join(model_dir, store.EMBEDDINGS), len(words))
    return vectors


def import_model(model_dir, vectors, source_path, lenient=False, replace=False, source_name=None):
    """Write `vectors` as the model directory `model_dir` (vocab.tsv, embeddings.npy, meta.json).

    Imported models are queried with the whitespace tokenizer and case kept, so a query
    matches the file's words as they are. Counts are those of the word list, if it had
    them, else 0 (unknown); row order is the file's. Raises VectorFileError if
    `model_dir` already contains a model and `replace` is False.
    """
    from embcli import store

    with store.writer_lock(model_dir):
        _check_no_model(model_dir, replace)
        return _write_imported(model_dir, vectors, source_path, lenient, source_name)


def _write_imported(model_dir, vectors, source_path, lenient, source_name):
    """import_model's writing, for a caller that holds the directory's lock."""
    from embcli import store

    embeddings_tmp = store.save_npy_temp(model_dir, store.EMBEDDINGS, vectors.matrix.astype(np.float32, copy=False))
    return _commit_import(model_dir, vectors, vectors.matrix.shape[1], embeddings_tmp, None, source_path, lenient,
                          source_name)


def _check_no_model(model_dir, replace):
    from embcli import store

    if os.path.exists(os.path.join(model_dir, store.META)) and not replace:
        raise VectorFileError(f"{model_dir} already contains a model; choose another model directory, or replace it",
                              options=("force",))


def _commit_import(model_dir, vectors, dim, embeddings_tmp, norms, source_path, lenient, source_name=None,
                   files=None, meta_extra=None):
    """Write vocab.tsv, norms.npy and meta.json beside `embeddings_tmp` and commit them; return meta.

    `norms` are the row norms of the matrix, or None to compute them from vectors.matrix.
    `files` maps more final names to their written temporary files, and `meta_extra`
    holds more sections of meta.json ("subwords") or of its "imported" record ("fasttext").
    """
    from embcli import store

    counts = vectors.counts if vectors.counts is not None else np.zeros(len(vectors.words), dtype=np.int64)
    vocab_tmp = store.save_vocab_temp(model_dir, vectors.words, counts)
    meta = store.new_meta({"name": "whitespace", "lowercase": False})
    meta["vocab"] = {
        "size": len(vectors.words),
        "min_count": None,
        "order": "as in the imported file",
        "counts": _counts_origin(vectors),
    }
    meta["dim"] = int(dim)
    meta["imported"] = {
        "path": "<stdin>" if source_name == "-" else os.path.abspath(source_name or source_path),
        "format": vectors.format,
        "bytes": os.path.getsize(source_path),
        "lenient": lenient,
        "warnings": vectors.warning_count,
    }
    files = dict(files or {})
    meta_extra = dict(meta_extra or {})
    if "fasttext" in meta_extra:
        meta["imported"]["fasttext"] = meta_extra.pop("fasttext")
    meta.update(meta_extra)
    meta["files"] = {store.VOCAB: store.fingerprint(vocab_tmp), store.EMBEDDINGS: store.fingerprint(embeddings_tmp)}
    meta["files"].update({name: store.fingerprint(path) for name, path in files.items()})
    norms_tmp = store.save_norms_temp(model_dir, vectors.matrix, meta, norms)
    meta_tmp = store.meta_temp(model_dir, meta)
    from embcli.ann import INDEX_FILES, INDEX_META

    # A replaced model's token cache, checkpoint, n-gram rows and approximate index
    # belong to its old rows.
    old = (store.TOKENS, *store.CHECKPOINT_FILES, "subwords.npy", "subword-buckets.npy", INDEX_META,
           *INDEX_FILES.values())
    stale = [name for name in old if name not in files and os.path.exists(os.path.join(model_dir, name))]
    store.commit(model_dir, {store.VOCAB: vocab_tmp, store.EMBEDDINGS: embeddings_tmp, store.NORMS: norms_tmp,
                             store.META: meta_tmp, **files}, remove=stale)
    return meta


def _counts_origin(vectors):
    if vectors.counts is None:
        return "unknown (0)"
    return "from the fastText model" if vectors.format == "fasttext-bin" else "from the word list"
