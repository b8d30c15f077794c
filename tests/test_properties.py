"""Property-based tests: the corpus reader and the tokenizer on random bytes and text."""

import gzip
import re
import unicodedata

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embcli.corpus import TextStream
from embcli.errors import CorpusError, EncodingError
from embcli.tokenize import Tokenizer

# Function-scoped fixtures (tmp_path) are safe here: each example writes its own file.
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text of one line: any code point but surrogates and the two line-end characters.
line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                    max_size=40)


def read_lines(path, encoding="utf-8", errors="strict", chunk_bytes=8):
    """Return the lines of `path` as TextStream yields them, pieces joined."""
    lines, current = [], []
    for piece, ends_line in TextStream([str(path)], encoding, errors, chunk_bytes=chunk_bytes):
        current.append(piece)
        if ends_line:
            lines.append("".join(current))
            current = []
    assert not current
    return lines


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=300), chunk=st.integers(1, 64))
def test_random_bytes_strict_raise_only_encoding_error(tmp_path, data, chunk):
    path = tmp_path / "random.txt"
    path.write_bytes(data)
    try:
        lines = read_lines(path, chunk_bytes=chunk)
    except EncodingError as error:
        assert 1 <= error.line
        assert 0 <= error.offset < len(data)
    except CorpusError as error:
        message = str(error)
        if data.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")):
            # Bytes that start like a gzip, bzip2 or xz stream are read as one.
            assert "damaged or truncated" in message
        else:
            # UTF-16 or UTF-32: a byte-order mark, or NUL in every other byte.
            assert "byte-order mark" in message
    else:
        text = data.decode("utf-8").removeprefix("\ufeff")
        assert "".join(lines) == text.replace("\r", "").replace("\n", "")


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=300), chunk=st.integers(1, 64))
def test_random_bytes_replace_never_raise(tmp_path, data, chunk):
    path = tmp_path / "random.txt"
    path.write_bytes(b"x" + data)  # never a compression magic number
    lines = read_lines(path, errors="replace", chunk_bytes=chunk)
    for line in lines:
        assert "\r" not in line
        assert "\n" not in line


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=200))
def test_random_gzip_bytes_raise_only_corpus_errors(tmp_path, data):
    path = tmp_path / "random.gz"
    path.write_bytes(b"\x1f\x8b" + data)
    try:
        read_lines(path, errors="replace")
    except CorpusError as error:
        assert "random.gz" in str(error)


def expected_lines(text):
    """The lines a reader should return for decoded `text`: one leading BOM dropped,
    CRLF, CR and LF as line ends, and no empty line after a final line end."""
    text = text.removeprefix("\ufeff")
    lines = re.split("\r\n|\r|\n", text)
    if lines[-1] == "":
        lines.pop()
    return lines


@PROPERTY_SETTINGS
@given(
    lines=st.lists(line_text, max_size=8),
    ending=st.sampled_from(["\n", "\r\n", "\r"]),
    bom=st.booleans(),
    final_newline=st.booleans(),
    compress=st.booleans(),
    chunk=st.integers(1, 64),
)
def test_valid_text_round_trips(tmp_path, lines, ending, bom, final_newline, compress, chunk):
    text = ending.join(lines) + (ending if final_newline else "")
    data = ("\ufeff" if bom else "").encode() + text.encode("utf-8")
    path = tmp_path / ("valid.txt.gz" if compress else "valid.txt")
    path.write_bytes(gzip.compress(data) if compress else data)
    assert read_lines(path, chunk_bytes=chunk) == expected_lines(data.decode("utf-8"))
    if not bom and not text.startswith("\ufeff"):
        assert read_lines(path, chunk_bytes=chunk) == expected_lines(text)


@PROPERTY_SETTINGS
@given(lines=st.lists(line_text, min_size=1, max_size=5),
       encoding=st.sampled_from(["utf-16", "utf-16-le", "utf-32", "utf-8-sig", "cp1252", "latin-1"]))
def test_valid_text_round_trips_other_encodings(tmp_path, lines, encoding):
    text = "\n".join(lines)
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        return  # a character this encoding cannot write
    path = tmp_path / "encoded.txt"
    path.write_bytes(data)
    assert read_lines(path, encoding=encoding) == expected_lines(data.decode(encoding))


TOKENIZERS = [Tokenizer("default"), Tokenizer("default", lowercase=False), Tokenizer("whitespace")]
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


def forbidden_in_token(ch):
    category = unicodedata.category(ch)
    return ch.isspace() or category in ("Cc", "Cf", "Zs", "Zl", "Zp")


@settings(max_examples=300, deadline=None)
@given(text=any_text, which=st.integers(0, len(TOKENIZERS) - 1))
def test_tokens_have_no_separators_and_are_stable(text, which):
    tokenizer = TOKENIZERS[which]
    tokens = tokenizer.tokenize(text)
    for token in tokens:
        assert token
        assert not any(forbidden_in_token(ch) for ch in token), repr(token)
        assert "\t" not in token
        assert "\n" not in token
    # Tokenizing the tokens again, space-separated, gives them back unchanged.
    assert tokenizer.tokenize(" ".join(tokens)) == tokens


@settings(max_examples=200, deadline=None)
@given(words=st.lists(st.text(st.characters(categories=("Ll", "Lo", "Nd")), min_size=1,
                              max_size=8), max_size=6),
       separator=st.sampled_from([" ", "\t", "\u00a0", "\u2009", "\u3000", "\u2028", "  ", ", "]))
def test_default_tokenizer_splits_on_any_separator(words, separator):
    tokenizer = Tokenizer("default", lowercase=False)
    expected = tokenizer.tokenize(" ".join(words))
    assert tokenizer.tokenize(separator.join(words)) == expected


@settings(max_examples=200, deadline=None)
@given(text=any_text)
def test_query_token_is_a_token(text):
    tokenizer = Tokenizer()
    tokens = tokenizer.tokenize(text)
    if len(tokens) == 1:
        assert tokenizer.query_token(text) == tokens[0]


# -- model directories ---------------------------------------------------------------

MODEL_FILES = ["vocab.tsv", "meta.json", "embeddings.npy"]


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(MODEL_FILES),
    cut=st.one_of(st.none(), st.integers(0, 2000)),
    flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4),
    record=st.booleans(),
)
def test_damaged_model_file_gives_model_error(trained_model, tmp_path_factory, name, cut, flips,
                                              record):
    """A truncated or altered model file gives an EmbcliError, or loads and returns results.

    With `record`, meta.json gets the damaged file's fingerprint, so the damage reaches
    the parsers behind the fingerprint check.
    """
    import json
    import os
    import shutil

    from embcli import store
    from embcli.errors import EmbcliError
    from embcli.model import Model

    model_dir = str(tmp_path_factory.mktemp("damaged") / "model")
    shutil.copytree(trained_model, model_dir)
    path = os.path.join(model_dir, name)
    data = bytearray(open(path, "rb").read())
    if cut is not None:
        del data[cut:]
    for position, value in flips:
        if position < len(data):
            data[position] = value
    open(path, "wb").write(bytes(data))
    if record and name != "meta.json":
        meta_path = os.path.join(model_dir, "meta.json")
        meta = json.load(open(meta_path, encoding="utf-8"))
        meta["files"][name] = store.fingerprint(path)
        json.dump(meta, open(meta_path, "w", encoding="utf-8"))
    try:
        model = Model.open(model_dir)
        word = model.words[0]
        model.neighbors(word, 3)
        assert model.vector(word).shape == (model.dim,)
    except EmbcliError:
        pass


def test_plain_text_named_gz_read_as_text(tmp_path):
    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(b"plain text\nnot compressed\n")
    assert read_lines(path) == ["plain text", "not compressed"]
