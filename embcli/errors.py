"""Exceptions whose messages are shown to the user as they are.

The core raises these; `embcli.cli` prints "embcli: error: <message>" on stderr and
exits with `exit_code`. Messages name the file, line, word or value at fault and the
next step, but never a command-line flag: the CLI adds those.
"""


class EmbcliError(Exception):
    """A failure caused by the input or the environment, not by a bug in embcli."""

    exit_code = 1


class CorpusError(EmbcliError):
    """The corpus cannot be read or holds nothing to learn from."""


class EncodingError(CorpusError):
    """A text file holds bytes that are not valid in the chosen encoding."""

    def __init__(self, path, line, offset, detail=""):
        self.path = str(path)
        self.line = line
        self.offset = offset
        message = (
            f"{self.path}: line {line}, byte offset {offset}: invalid UTF-8"
            + (f" ({detail})" if detail else "")
        )
        super().__init__(message)


class EmptyCorpus(CorpusError):
    """The corpus has no tokens, or none that pass the vocabulary threshold."""


class CorpusChanged(CorpusError):
    """A corpus file differs from the one the vocabulary was built from."""


class ModelNotFound(EmbcliError):
    """The model directory, or a file it needs, does not exist."""


class ModelCorrupt(EmbcliError):
    """A model directory exists but its files are damaged or disagree."""


class UnknownWord(EmbcliError):
    """A query word is not in the model's vocabulary."""

    def __init__(self, word, model_path=None, vocab_size=None, token=None):
        self.word = word
        self.token = token
        details = []
        if token is not None and token != word:
            details.append(f"looked up as {token}")
        if model_path is not None:
            size = f"{vocab_size:,} words in " if vocab_size is not None else ""
            details.append(f"{size}{model_path}")
        where = f" ({'; '.join(details)})" if details else ""
        super().__init__(f"{word}: not in vocabulary{where}")


class QueryError(EmbcliError):
    """A query cannot be answered as written, for example it splits into several tokens."""


class VectorFileError(EmbcliError):
    """A vector file (word2vec, GloVe, fastText, .npy) is malformed."""


class TrainingError(EmbcliError):
    """Training cannot go on, for example because it diverged."""


class TrainingInterrupted(EmbcliError):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code
