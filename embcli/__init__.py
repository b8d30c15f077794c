"""embcli: build, train and query word embeddings from the command line or Python.

`import embcli` is cheap: it loads neither numpy nor torch until a function needs them.
Each function here is a thin wrapper over the module that the matching command uses,
with the same options under the same names (`--min-count` is `min_count`):

    import embcli
    embcli.build_vocab(["corpus.txt"], model="my-model", min_count=3)
    embcli.train_vectors(model="my-model", dim=100, epochs=5)
    model = embcli.load("my-model")
    model.neighbors("king", k=5)
"""

__version__ = "0.1.0"

# `train_vectors` and `evaluate_vectors` are not called `train` and `evaluate`: importing
# the submodules embcli.train and embcli.evaluate would replace such attributes.
__all__ = ["__version__", "load", "build_vocab", "train_vectors", "import_vectors", "export_vectors",
           "evaluate_vectors"]


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
                                                else (int(subwords[0]), int(subwords[1])))
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"train_vectors() got unknown settings {', '.join(unknown)}; "
                        f"use subwords or any of {', '.join(sorted(known))}")
    config = TrainConfig(**settings)
    return train_model(resolve_model_path(model), config, corpus or None, encoding, decode_errors,
                       resume=resume, progress=progress)


def import_vectors(path, model=None, format=None, words=None, lenient=False, force=False):
    """Read the vector file `path` into the model directory `model`; return the opened Model.

    `format` is None to detect it, or word2vec, word2vec-binary, glove, fasttext or npy;
    `words` is the word list of an `.npy` matrix. Lenient warnings are in the model's
    meta["imported"]["warnings"] count.
    """
    from embcli.formats import import_file
    from embcli.store import resolve_model_path

    model_dir = resolve_model_path(model)
    import_file(model_dir, path, format, lenient, words, replace=force)
    return load(model_dir)


def export_vectors(path, model=None, format="word2vec"):
    """Write the model's vectors to `path` in `format`; return the paths written."""
    from embcli.formats import write_vectors
    from embcli.model import check_export_target

    opened = load(model)
    if not hasattr(path, "write"):
        check_export_target(opened.path, str(path), format)
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
