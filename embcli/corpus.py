"""Read corpus files as a stream of text pieces, with errors that name file, line and byte.

Memory stays bounded by the chunk size, not by the length of a line: a line longer than
`CHUNK_BYTES` is handed on in pieces cut at whitespace (or, if a piece has none, at a
character boundary), and each piece says whether it ends its line.

Rules applied to every file:
- `.gz` files are decompressed on the fly; `-` is standard input.
- A UTF-8 byte-order mark at byte 0 is dropped.
- CRLF, lone CR and LF all end a line. Line numbers count those line ends.
- Bytes are decoded with `encoding` (UTF-8 by default). With `errors="strict"`, an
  invalid byte raises EncodingError naming the file, line and absolute byte offset.
  With `errors="replace"`, it becomes U+FFFD.
"""

import codecs
import gzip
import io
import os
import sys
from dataclasses import dataclass

from embcli.errors import CorpusError, EncodingError

CHUNK_BYTES = 1 << 20
_BOM = codecs.BOM_UTF8
_ASCII_SPACE = b" \t\x0b\x0c"


@dataclass
class SourceInfo:
    """What build-vocab records about one corpus input."""

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
    if not os.path.isfile(path):
        raise CorpusError(f"{path}: not a regular file")
    return SourceInfo(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


def check_unchanged(recorded):
    """Raise CorpusChanged if a recorded corpus file changed since it was read."""
    from embcli.errors import CorpusChanged

    path = recorded["path"]
    if path == "-":
        return
    try:
        stat = os.stat(path)
    except OSError:
        raise CorpusChanged(f"{path}: the corpus the vocabulary was built from is gone")
    if stat.st_size != recorded["size"] or stat.st_mtime_ns != recorded["mtime_ns"]:
        raise CorpusChanged(
            f"{path} changed since the vocabulary was built "
            f"(size {recorded['size']:,} -> {stat.st_size:,} bytes); "
            "rebuild the vocabulary"
        )


def _open_binary(path):
    if path == "-":
        return sys.stdin.buffer, False
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CorpusError(f"{path}: is a directory, not a text file") from None
    except OSError as error:
        raise CorpusError(f"{path}: cannot read ({error.strerror})") from None
    magic = handle.peek(2)[:2] if hasattr(handle, "peek") else b""
    if magic == b"\x1f\x8b" or path.endswith(".gz"):
        return gzip.GzipFile(fileobj=handle), True
    return handle, True


class TextStream:
    """Iterate over (text, ends_line) pieces of one or more corpus inputs.

    `bytes_read` counts raw (compressed, for .gz) bytes consumed so far, for progress.
    """

    def __init__(self, paths, encoding="utf-8", errors="strict", chunk_bytes=CHUNK_BYTES):
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise CorpusError(f"unknown text encoding {encoding!r}") from None
        if errors not in ("strict", "replace"):
            raise ValueError(f"errors must be 'strict' or 'replace', not {errors!r}")
        self.paths = list(paths)
        self.encoding = encoding
        self.errors = errors
        self.chunk_bytes = chunk_bytes
        self.bytes_read = 0
        self.lines_read = 0

    def __iter__(self):
        for path in self.paths:
            yield from self._read_file(path)

    def _read_file(self, path):
        handle, owned = _open_binary(path)
        raw = getattr(handle, "fileobj", None)
        try:
            yield from self._read_handle(path, handle, raw)
        except (EOFError, gzip.BadGzipFile, OSError) as error:
            if isinstance(error, EncodingError):
                raise
            raise CorpusError(f"{path}: damaged or truncated file ({error})") from None
        finally:
            if owned:
                handle.close()
                if raw is not None:
                    raw.close()

    def _read_handle(self, path, handle, raw):
        name = "<stdin>" if path == "-" else path
        carry = b""
        line_number = 1
        offset = 0  # absolute byte offset (decompressed) of carry[0]
        first = True
        last_position = 0
        while True:
            block = handle.read(self.chunk_bytes)
            if raw is not None:
                position = raw.tell()
                self.bytes_read += position - last_position
                last_position = position
            else:
                self.bytes_read += len(block)
            if first:
                first = False
                if block.startswith(_BOM):
                    block = block[len(_BOM) :]
                    offset = len(_BOM)
            at_end = not block
            data = carry + block
            if not data:
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
                split = _safe_split(data, self.encoding)
                piece, carry = data[:split], data[split:]
                text = self._decode(piece, name, line_number, offset)
                offset += len(piece)
                yield text, False
                continue
            else:
                carry = data
                continue

            text = self._decode(complete, name, line_number, offset)
            offset += len(complete)
            lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
            ends_with_newline = complete.endswith((b"\n", b"\r"))
            if ends_with_newline:
                lines.pop()
            for index, line in enumerate(lines):
                last = index == len(lines) - 1
                yield line, (ends_with_newline or not last or at_end)
            newlines = len(lines) if ends_with_newline else len(lines) - 1
            line_number += newlines
            self.lines_read += newlines
            if at_end:
                if not ends_with_newline:
                    self.lines_read += 1
                break

    def _decode(self, data, name, line_number, offset):
        try:
            return data.decode(self.encoding, self.errors)
        except UnicodeDecodeError as error:
            before = data[: error.start]
            line = line_number + _count_line_ends(before)
            raise EncodingError(
                name,
                line,
                offset + error.start,
                f"byte 0x{data[error.start]:02x}; decode it with --encoding latin-1 "
                "or cp1252, or replace bad bytes with --decode-errors replace",
            ) from None


def _count_line_ends(data):
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


def _safe_split(data, encoding):
    """Return an index near the end of `data` to cut at: after whitespace if possible."""
    window = data[-65536:]
    best = max(window.rfind(bytes([c])) for c in _ASCII_SPACE)
    if best >= 0:
        return len(data) - len(window) + best + 1
    # No ASCII whitespace: cut before a UTF-8 lead byte, never inside a character.
    cut = len(data)
    if encoding.replace("-", "").replace("_", "").lower() in ("utf8", "utf8sig"):
        while cut > 0 and (data[cut - 1] & 0xC0) == 0x80:
            cut -= 1
        if cut > 0 and data[cut - 1] >= 0xC0:
            cut -= 1
    return cut or len(data)


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
