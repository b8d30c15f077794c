"""embcli: build, train and query word embeddings from the command line or Python.

`import embcli` is cheap: it loads neither numpy nor torch until a function needs them.
Each function here is a thin wrapper over the module that the matching command uses,
with the same options under the same names (`--min-count` is `min_count`):

    import embcli
    embcli.build_vocab(["corpus.txt"], model="my-model", min_count=3)
    embcli.train_vectors(model="my-model", dim=100, epochs=5)
    model = embcli.load("my-model")
    model.neighbors("king", k=5)

Failures caused by the input or the environment raise subclasses of `EmbcliError`,
exported here from `embcli.errors`.
"""

__version__ = "0.1.0"

# embcli.errors imports only errno, so exporting its classes keeps `import embcli` cheap.
from embcli.errors import (  # noqa: E402
    CorpusError,
    DiskFull,
    EmbcliError,
    EmptyCorpus,
    EncodingError,
    EvaluationError,
    ModelBusy,
    ModelCorrupt,
    ModelNotFound,
    QueryError,
    TrainingDiverged,
    TrainingError,
    TrainingInterrupted,
    UnknownWord,
    VectorFileError,
)

# `train_vectors` and `evaluate_vectors` are not called `train` and `evaluate`: importing
# the submodules embcli.train and embcli.evaluate would replace such attributes.
__all__ = ["__version__", "load", "build_vocab", "train_vectors", "import_vectors", "export_vectors",
           "evaluate_vectors", "EmbcliError", "CorpusError", "EncodingError", "EmptyCorpus", "ModelNotFound",
           "ModelCorrupt", "DiskFull", "ModelBusy", "UnknownWord", "QueryError", "VectorFileError",
           "TrainingError", "TrainingDiverged", "TrainingInterrupted", "EvaluationError"]


def load(path=None):
    """Return the `embcli.model.Model` stored in the model directory `path`.

    The model has `vector`, `neighbors`, `analogy`, `similarity` and `to_torch`; only
    `to_torch` imports torch.
    """
    from embcli.model import Model

    return Model.open(path)


def build_vocab(corpus, model=None, min_count=5, max_size=None, tokenizer="default", keep_case=False,
                encoding="utf-8", decode_errors="strict", force=False, progress=None):
    """Count the words of the `corpus` files and write the model's vocabulary and token cache.

    Returns the summary (tokens, distinct words, words kept, coverage) as a VocabSummary.
    """
    from embcli.store import resolve_model_path
    from embcli.tokenize import Tokenizer
    from embcli.vocab import build_vocab as run

    if isinstance(corpus, str):
        corpus = [corpus]
    return run(resolve_model_path(model), list(corpus), Tokenizer(tokenizer, lowercase=not keep_case),
               min_count, max_size, encoding, decode_errors, progress=progress, replace_embeddings=force)


def train_vectors(corpus=None, model=None, encoding="utf-8", decode_errors="strict", resume=False, progress=None,
                  subwords=None, **settings):
    """Train word vectors for the model's vocabulary and save them; return the run's TrainStats.

    `subwords` is an n-gram range as `embcli train --subwords` takes it ("3-6", or "off")
    or a (min, max) pair. `settings` are the other options of `embcli train`: method,
    dim, window, negative, sample, epochs, lr, ns_exponent, negatives, seed, threads,
    device, buckets, combination, chunk_order. This imports torch.
    """
    import dataclasses

    from embcli.store import resolve_model_path
    from embcli.subwords import parse_range
    from embcli.train import TrainConfig, train_model

    if isinstance(corpus, str):
        corpus = [corpus]
    if subwords is not None:
        settings["min_n"], settings["max_n"] = (parse_range(subwords) if isinstance(subwords, str)
                                                else _subword_range(subwords))
    fields = dataclasses.fields(TrainConfig)
    known = {field.name for field in fields}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"train_vectors() got unknown settings {', '.join(unknown)}; "
                        f"use subwords or any of {', '.join(sorted(known))}")
    for field in fields:
        if field.name in settings:
            settings[field.name] = _checked_setting(field.name, field.type, settings[field.name])
    config = TrainConfig(**settings)
    return train_model(resolve_model_path(model), config, corpus or None, encoding, decode_errors,
                       resume=resume, progress=progress)


def _subword_range(pair):
    """Return the (min, max) n-gram lengths of a pair of ints, raising TypeError for others."""
    values = tuple(pair)
    if len(values) != 2 or not all(_is_int(value) for value in values):
        raise TypeError(f"subwords must be a range such as \"3-6\", \"off\" or a pair of ints, not {pair!r}")
    return int(values[0]), int(values[1])


def _is_int(value):
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _checked_setting(name, annotation, value):
    """Return the training setting `value`, or raise TypeError if it does not fit `annotation`.

    `annotation` is the TrainConfig field's type: int, float, str or `float | None`.
    An int fits a float field, a bool fits no number, and numpy numbers become
    Python ones.
    """
    import numbers
    import typing

    allowed = typing.get_args(annotation) or (annotation,)
    if value is None and type(None) in allowed:
        return value
    if float in allowed:
        if _is_int(value):
            return int(value)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        kind = "a number or None" if type(None) in allowed else "a number"
    elif int in allowed:
        if _is_int(value):
            return int(value)
        kind = "an int"
    elif str in allowed:
        if isinstance(value, str):
            return value
        kind = "a str"
    else:
        return value
    raise TypeError(f"{name} must be {kind}, not {type(value).__name__} {value!r}")


def import_vectors(path, model=None, format=None, words=None, lenient=False, force=False):
    """Read the vector file `path` into the model directory `model`; return the opened Model.

    `format` is None to detect it, or word2vec, word2vec-binary, glove, fasttext, npy or
    projector; `words` is the word list of an `.npy` matrix or a projector vectors.tsv.
    Lenient warnings are in the model's meta["imported"]["warnings"] count. A directory that already contains a model
    raises VectorFileError unless `force` is true.
    """
    from embcli.formats import import_file
    from embcli.store import resolve_model_path

    model_dir = resolve_model_path(model)
    import_file(model_dir, path, format, lenient, words, replace=force)
    return load(model_dir)


def export_vectors(path, model=None, format=None):
    """Write the model's vectors to `path` in `format`; return the paths written.

    `format` None (or "auto") picks it from the file name as `embcli export` does:
    .bin word2vec-binary, .npy npy, .vec fasttext, any other name or an open file
    word2vec. Otherwise it is one of embcli.formats.WRITE_FORMATS.
    """
    import os

    from embcli.formats import write_vectors
    from embcli.model import check_export_target, export_format

    is_file = hasattr(path, "write")
    if format in (None, "auto"):
        format = "word2vec" if is_file else export_format(os.fspath(path))
    opened = load(model)
    if not is_file:
        check_export_target(opened.path, os.fspath(path), format)
    return write_vectors(path, opened.words, opened.matrix, format)


def evaluate_vectors(model=None, analogies=(), similarity=(), restrict=300_000, case_sensitive=False, method="3cosadd"):
    """Score a model on analogy and word-pair files; return (analogy results, pair results)."""
    from embcli import evaluate as evaluation

    opened = load(model)
    if isinstance(analogies, str):
        analogies = [analogies]
    if isinstance(similarity, str):
        similarity = [similarity]
    return ([evaluation.evaluate_analogies(opened, path, restrict, case_sensitive, method) for path in analogies],
            [evaluation.evaluate_pairs(opened, path, restrict, case_sensitive) for path in similarity])
