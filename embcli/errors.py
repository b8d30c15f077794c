"""Exceptions whose messages are shown to the user as they are.

The core raises these; `embcli.cli` prints "embcli: error: <message>" on stderr and
exits with `exit_code`. Messages name the file, line, word or value at fault and the
next step, but never a command-line flag. An error whose fix is a setting lists the
setting names in `options` (for example `("min_count",)`), and the CLI appends the
matching flags.
"""


import errno


QUOTE_CHARS = 80


def plural(count, noun, plural_noun=None):
    """Return `count` and `noun`, in the plural unless `count` is 1: "1 line", "2,048 lines".

    The plural is `plural_noun`, by default `noun` with an "s" appended.
    """
    return f"{count:,} {noun if count == 1 else plural_noun or noun + 's'}"


def shorten(text, limit=QUOTE_CHARS):
    """Return `text` for quoting in a message: whole if short, else its start and its length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


class EmbcliError(Exception):
    """A failure caused by the input or the environment, not by a bug in embcli."""

    exit_code = 1

    def __init__(self, message, options=()):
        super().__init__(message)
        self.options = tuple(options)


class CorpusError(EmbcliError):
    """The corpus cannot be read or contains nothing to learn from."""


class EncodingError(CorpusError):
    """A text file holds bytes that are not valid in the chosen encoding."""

    def __init__(self, path, line, offset, encoding="utf-8", detail="", cut_short=False, east_asian=False):
        self.path = str(path)
        self.line = line
        self.offset = offset
        if cut_short:
            # Another encoding would not help: the text is valid up to its last character.
            message = (f"{self.path}: line {line}, byte offset {offset}: the file ends inside a {encoding} "
                       "character, so it was cut short; replace the incomplete character with U+FFFD")
            super().__init__(message, options=("decode_errors",))
            return
        message = f"{self.path}: line {line}, byte offset {offset}: invalid {encoding}"
        if detail:
            message += f" ({detail})"
        # `east_asian`: the line reads as Chinese in GB18030, so a double-byte encoding is
        # likelier than latin-1, which would turn each character into two letters.
        examples = ("gb18030 (Chinese), shift_jis (Japanese) or euc-kr (Korean)" if east_asian
                    else "latin-1 or cp1252")
        message += f"; read it with the encoding it was written in, such as {examples}, or replace invalid bytes with U+FFFD"
        super().__init__(message, options=("encoding", "decode_errors"))


class EmptyCorpus(CorpusError):
    """The corpus has no tokens, or none that pass the vocabulary threshold."""


class ModelNotFound(EmbcliError):
    """The model directory, or a file it needs, does not exist."""


class ModelCorrupt(EmbcliError):
    """A model directory exists but its files are damaged or disagree."""


class DiskFull(EmbcliError):
    """A write failed because the file system is full or the disk quota is used up."""

    def __init__(self, path):
        self.path = str(path)
        super().__init__(
            f"no space left on device while writing {self.path}; free some space or choose "
            "another model directory",
            options=("model",),
        )


class ModelBusy(EmbcliError):
    """Another embcli process is writing the same model directory."""


class UnknownWord(EmbcliError, KeyError):
    """A query word is not in the model's vocabulary.

    It is also a KeyError, so code written for gensim's KeyedVectors
    (`except KeyError`) catches it.
    """

    def __init__(self, word, model_path=None, vocab_size=None, token=None):
        self.word = word
        self.token = token
        details = []
        if token is not None and token != word:
            details.append(f"looked up as {shorten(token)}")
        if model_path is not None:
            size = f"{vocab_size:,} words in " if vocab_size is not None else ""
            details.append(f"{size}{model_path}")
        where = f" ({'; '.join(details)})" if details else ""
        super().__init__(f"{shorten(word)}: not in vocabulary{where}")

    def __str__(self):
        # KeyError's str() would quote the message as a repr.
        return str(self.args[0])


class QueryError(EmbcliError):
    """A query cannot be answered as written, for example it splits into several tokens."""


class VectorFileError(EmbcliError):
    """A vector file (word2vec, GloVe, fastText, .npy) is malformed."""


class TrainingError(EmbcliError):
    """Training cannot go on, for example because it diverged."""


class TrainingDiverged(TrainingError):
    """The loss or the vectors became NaN or infinite; a lower learning rate helps."""

    def __init__(self, message):
        super().__init__(message, options=("lr",))


class EvaluationError(EmbcliError):
    """A test set cannot be read or has nothing to evaluate."""


class TrainingInterrupted(EmbcliError):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint."""

    def __init__(self, message, exit_code, checkpoint=None):
        super().__init__(message)
        self.exit_code = exit_code
        self.checkpoint = checkpoint


def is_disk_full(error):
    """Return True if the OSError `error` means that the file system or the quota is full."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # numpy's tofile() reports a short write as "N requested and M written", without errno.
    return error.errno is None and "requested and" in str(error)


def decode_utf8(data, path, error_class):
    """Return `data` decoded as UTF-8 without a leading byte-order mark.

    Raises `error_class` naming `path` and the line and byte offset of the first invalid byte.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise error_class(f"{path}: line {line}, byte offset {error.start}: invalid UTF-8") from None
    return text.removeprefix("\ufeff")

