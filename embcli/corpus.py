"""Read corpus files as a stream of text pieces, with errors that name file, line and byte.

Memory stays bounded by the chunk size, not by the length of a line: a line longer than
`CHUNK_BYTES` is handed on in pieces cut at whitespace (or, if a piece has none, at a
character boundary), and each piece says whether it ends its line.

Rules applied to every file:
- gzip, bzip2 and xz files are decompressed on the fly, recognised by their magic
  bytes (or a `.gz` name); `-` is standard input.
- A UTF-8 byte-order mark at byte 0 is dropped.
- CRLF, lone CR and LF all end a line. Line numbers count those line ends.
- Bytes are decoded with `encoding` (UTF-8 by default). With `errors="strict"`, an
  invalid byte raises EncodingError naming the file, line and absolute byte offset
  (in the decompressed data for a compressed file). With `errors="replace"`, it
  becomes U+FFFD.
- An encoding in which ASCII characters are not single bytes (UTF-16, UTF-32) is first
  transcoded to UTF-8 with an incremental decoder, so lines are still found by bytes.
"""

import bz2
import codecs
import gzip
import lzma
import os
import sys
import time
import zlib
from dataclasses import dataclass

from embcli.errors import CorpusError, EncodingError

CHUNK_BYTES = 1 << 20
_BOM = codecs.BOM_UTF8
_ASCII_SPACE = b" \t\x0b\x0c"


@dataclass
class SourceInfo:
    """The path, size and modification time of one corpus input, as build-vocab records them."""

    path: str
    size: int | None
    mtime_ns: int | None

    def to_json(self):
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}


def describe_source(path):
    """Return a SourceInfo with the absolute path, size and modification time of `path`."""
    if path == "-":
        return SourceInfo("-", None, None)
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except OSError as error:
        raise CorpusError(f"{path}: cannot read ({error.strerror})") from None
    if os.path.isdir(path):
        raise CorpusError(f"{path}: is a directory, not a text file")
    if not os.path.isfile(path):
        # A pipe or device, such as bash's <(zcat corpus.gz): readable once, no size.
        return SourceInfo(os.path.abspath(path), None, None)
    return SourceInfo(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


def corpus_change(recorded):
    """Return how a recorded corpus file changed since it was read, or None if it did not.

    Training reads the token cache that build-vocab made, not the corpus, so a change
    is worth a warning: the model learns from the text as it was then.
    """
    path = recorded["path"]
    if path == "-" or recorded.get("size") is None:
        return None  # standard input or a pipe: nothing left to compare
    try:
        stat = os.stat(path)
    except OSError:
        return f"{path}, the corpus the vocabulary was built from, is gone"
    if stat.st_size != recorded["size"]:
        return f"{path} changed since the vocabulary was built ({recorded['size']:,} bytes then, {stat.st_size:,} now)"
    if stat.st_mtime_ns != recorded["mtime_ns"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stat.st_mtime_ns / 1e9))
        return f"{path} was modified at {when}, after the vocabulary was built (its size is the same)"
    return None


_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
# Errors that a damaged or truncated compressed stream raises while it is read.
_DAMAGED = (EOFError, OSError, zlib.error, lzma.LZMAError)


def _open_binary(path):
    """Return (reader, raw file or None, owned): the reader yields decompressed bytes."""
    if path == "-":
        handle = sys.stdin.buffer
        owned = False
    else:
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            raise CorpusError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise CorpusError(f"{path}: is a directory, not a text file") from None
        except OSError as error:
            raise CorpusError(f"{path}: cannot read ({error.strerror})") from None
        owned = True
    magic = handle.peek(6)[:6] if hasattr(handle, "peek") else b""
    # The first bytes decide, not the name: a plain text file named .gz is read as text.
    if magic.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=handle), handle, owned
    if magic.startswith(_BZIP2_MAGIC) and len(magic) >= 4 and magic[3:4].isdigit():
        return bz2.BZ2File(handle), handle, owned
    if magic.startswith(_XZ_MAGIC):
        return lzma.LZMAFile(handle), handle, owned
    return handle, None, owned


def is_ascii_compatible(encoding):
    """Return True if `encoding` writes ASCII text, line ends included, as ASCII bytes."""
    sample = "\n\r\t az09"
    try:
        return sample.encode(encoding) == sample.encode("ascii")
    except (UnicodeError, LookupError):
        return False


def check_encoding(encoding):
    """Raise CorpusError unless `encoding` names a text codec in Python's registry."""
    try:
        codecs.lookup(encoding)
        b"a".decode(encoding)  # raises LookupError for bytes-to-bytes codecs (zlib, hex)
    except UnicodeError:
        pass  # a text codec that cannot decode this one byte (utf-16)
    except LookupError:
        raise CorpusError(
            f"unknown text encoding {encoding!r}; use a Python codec name such as "
            "utf-8, latin-1, cp1252 or utf-16",
            options=("encoding",),
        ) from None


class _Transcoder:
    """A binary reader that decodes `encoding` incrementally and yields UTF-8 bytes."""

    def __init__(self, handle, encoding, errors, name):
        self.handle = handle
        self.encoding = encoding
        self.decoder = codecs.getincrementaldecoder(encoding)(errors)
        self.name = name
        self.consumed = 0  # bytes of the original file passed to the decoder
        self.line_ends = 0  # line ends in the text decoded so far
        self.done = False

    def read(self, size):
        while not self.done:
            block = self.handle.read(size)
            final = not block
            pending = len(self.decoder.getstate()[0])
            try:
                text = self.decoder.decode(block, final)
            except UnicodeDecodeError as error:
                offset = self.consumed - pending + error.start
                line = self.line_ends + 1
                cut_short = final and error.reason == "unexpected end of data"
                raise EncodingError(self.name, line, offset, _display_name(self.encoding),
                                    cut_short=cut_short) from None
            self.consumed += len(block)
            self.done = final
            if text:
                data = text.encode("utf-8")
                self.line_ends += _count_line_ends(data)
                return data
        return b""


class TextStream:
    """Iterate over (text, ends_line) pieces of one or more corpus inputs.

    `bytes_read` counts raw (compressed, for .gz) bytes consumed so far, for progress.
    """

    def __init__(self, paths, encoding="utf-8", errors="strict", chunk_bytes=CHUNK_BYTES):
        check_encoding(encoding)
        if errors not in ("strict", "replace"):
            raise ValueError(f"errors must be 'strict' or 'replace', not {errors!r}")
        self.paths = list(paths)
        self.encoding = encoding
        self.errors = errors
        self.chunk_bytes = chunk_bytes
        self.bytes_read = 0
        self.lines_read = 0
        # Cuts inside a run of text without ASCII whitespace: how many, and the (file
        # name, line) of the last. A word across such a cut reaches the tokenizer in two parts.
        self.cuts = 0
        self.last_cut = None

    def __iter__(self):
        for path in self.paths:
            yield from self._read_file(path)

    def _read_file(self, path):
        handle, raw, owned = _open_binary(path)
        name = "<stdin>" if path == "-" else path
        encoding = self.encoding
        reader = handle
        if not is_ascii_compatible(encoding):
            reader = _Transcoder(handle, encoding, self.errors, name)
            encoding = "utf-8"
        try:
            yield from self._read_handle(name, reader, raw, encoding)
        except _DAMAGED as error:
            if isinstance(error, OSError) and error.errno is not None and not raw:
                # A read of the file itself failed (a closed stdin, an I/O error), not a decompression.
                raise CorpusError(f"{name}: cannot read ({error.strerror})") from None
            raise CorpusError(f"{name}: damaged or truncated file ({error})") from None
        finally:
            if raw is not None:
                handle.close()
            if owned:
                (raw or handle).close()

    def _read_handle(self, name, handle, raw, encoding):
        carry = b""
        line_number = 1
        offset = 0  # absolute byte offset (decompressed) of carry[0]
        first = True
        open_line = False  # a piece of the current line was handed on without its end
        last_position = 0
        while True:
            block = handle.read(self.chunk_bytes)
            while first and block and len(block) < len(_BOM) and _BOM.startswith(block):
                more = handle.read(self.chunk_bytes)  # a BOM cut by a tiny read
                if not more:
                    break
                block += more
            if raw is not None and raw.seekable():
                position = raw.tell()
                self.bytes_read += position - last_position
                last_position = position
            else:
                # Plain text, or compressed data from a pipe, whose position cannot be read:
                # count the bytes after decompression.
                self.bytes_read += len(block)
            at_end = not block
            if first:
                first = False
                _check_not_utf16(block, name, encoding)
                if block.startswith(_BOM):
                    block = block[len(_BOM) :]
                    offset = len(_BOM)
                    if not block:
                        continue  # the read returned only the BOM, so read on to find the end
            data = carry + block
            if not data:
                if open_line:
                    yield "", True
                    self.lines_read += 1
                break
            # A CR at the very end may be the first half of a CRLF: wait for more.
            if not at_end and data.endswith(b"\r"):
                cut = len(data) - 1
            else:
                cut = len(data)
            last_newline = max(data.rfind(b"\n", 0, cut), data.rfind(b"\r", 0, cut))
            if at_end:
                complete, carry = data, b""
            elif last_newline >= 0:
                complete, carry = data[: last_newline + 1], data[last_newline + 1 :]
            elif len(data) >= self.chunk_bytes:
                # One long line: hand on a piece that ends at whitespace or a character.
                split = _safe_split(data[:cut], encoding)
                if split == 0:
                    carry = data  # only a CR that may start a CRLF: read on
                    continue
                piece, carry = data[:split], data[split:]
                if piece[-1:] not in _ASCII_SPACE:
                    self.cuts += 1
                    self.last_cut = (name, line_number)
                text = self._decode(piece, name, line_number, offset, encoding)
                offset += len(piece)
                open_line = True
                yield text, False
                continue
            else:
                carry = data
                continue

            text = self._decode(complete, name, line_number, offset, encoding, at_end)
            offset += len(complete)
            lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
            ends_with_newline = complete.endswith((b"\n", b"\r"))
            if ends_with_newline:
                lines.pop()
            for index, line in enumerate(lines):
                last = index == len(lines) - 1
                ends = ends_with_newline or not last or at_end
                open_line = not ends
                yield line, ends
            newlines = len(lines) if ends_with_newline else len(lines) - 1
            line_number += newlines
            self.lines_read += newlines
            if at_end:
                if not ends_with_newline:
                    self.lines_read += 1
                break

    def _decode(self, data, name, line_number, offset, encoding, at_end=False):
        try:
            return data.decode(encoding, self.errors)
        except UnicodeDecodeError as error:
            before = data[: error.start]
            line = line_number + _count_line_ends(before)
            detail = f"byte 0x{data[error.start]:02x}"
            cut_short = at_end and error.reason == "unexpected end of data" and error.end == len(data)
            raise EncodingError(name, line, offset + error.start, _display_name(encoding), detail,
                                cut_short=cut_short, east_asian=_reads_as_chinese(data, error.start)) from None


def _reads_as_chinese(data, position):
    """Return True if the line of `data` around byte `position` decodes as GB18030 text with
    Chinese characters and no control characters."""
    start = data.rfind(b"\n", 0, position) + 1
    end = data.find(b"\n", position)
    line = data[start : end if end >= 0 else len(data)]
    try:
        text = line.decode("gb18030")
    except UnicodeDecodeError:
        return False
    has_han = any("\u4e00" <= char <= "\u9fff" for char in text)
    return has_han and not any(ord(char) < 32 and char not in "\t\r" for char in text)


def _check_not_utf16(block, name, encoding):
    """Raise CorpusError if `block`, read as UTF-8, is UTF-16 or UTF-32 text (see wide_encoding)."""
    if codecs.lookup(encoding).name != "utf-8":
        return
    found = wide_encoding(block)
    if found is not None:
        variant, finding = found
        raise CorpusError(f"{name}: {finding}; read it with encoding {variant}", options=("encoding",))


def wide_encoding(block):
    """Return (codec name, what shows it) if `block`, the start of a file, is UTF-16 or
    UTF-32 text, else None.

    UTF-16 text of Latin letters is valid UTF-8 with a NUL byte after (or before) every
    letter, so read as UTF-8 it would silently become one-letter tokens.
    """
    if block.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        variant = "utf-32" if block.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")) else "utf-16"
        return variant, f"starts with a {variant.upper()} byte-order mark, so it is not UTF-8"
    if len(block) < 16:
        return None
    sample = block[:4096]
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    half = len(sample) // 2
    if max(even, odd) < 0.4 * half or min(even, odd) > 0.1 * half:
        return None
    variant = "utf-16-le" if odd > even else "utf-16-be"
    return variant, (f"looks like {variant.upper()} text without a byte-order mark "
                     f"({max(even, odd) * 100 // half}% of the {'odd' if odd > even else 'even'} bytes "
                     f"at the start are NUL)")


def _display_name(encoding):
    name = codecs.lookup(encoding).name
    return name.upper() if name.startswith("utf") else name


def _count_line_ends(data):
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


def _safe_split(data, encoding):
    """Return an index near the end of `data` to cut at: after whitespace if possible.

    Returns 0 when `data` is one UTF-8 character still incomplete, so the caller reads on.
    """
    window = data[-65536:]
    best = max(window.rfind(bytes([c])) for c in _ASCII_SPACE)
    if best >= 0:
        return len(data) - len(window) + best + 1
    # No ASCII whitespace: cut before the lead byte of the last UTF-8 character, which
    # may be incomplete. More than 3 continuation bytes are invalid anyway: cut anywhere.
    # NOTE: for other multi-byte encodings (Shift JIS, GBK) such a cut can split a
    # character, which then fails to decode. It takes a line longer than CHUNK_BYTES
    # with no ASCII whitespace in its last 64 KiB.
    cut = len(data)
    if encoding.replace("-", "").replace("_", "").lower() in ("utf8", "utf8sig"):
        back = 0
        while back < 3 and back < cut and (data[cut - back - 1] & 0xC0) == 0x80:
            back += 1
        if back < cut and data[cut - back - 1] >= 0xC0:
            cut -= back + 1
    return cut


def open_text_lines(path, encoding="utf-8", errors="strict"):
    """Return an iterator over the lines (str, no line end) of a small text file."""
    stream = TextStream([path], encoding, errors)
    line = []
    for piece, ends_line in stream:
        line.append(piece)
        if ends_line:
            yield "".join(line)
            line = []
    if line:
        yield "".join(line)
