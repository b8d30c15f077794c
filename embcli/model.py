"""A trained model opened for queries: vocabulary, memory-mapped matrix, tokenizer.

This module and everything it imports use numpy only, so queries start fast.
"""

import os

import numpy as np

from embcli import search, store
from embcli.errors import ModelCorrupt, ModelNotFound, QueryError, UnknownWord
from embcli.tokenize import Tokenizer


class Model:
    """Word vectors with the vocabulary and tokenizer they were trained with."""

    def __init__(self, path, meta, words, counts, matrix):
        self.path = path
        self.meta = meta
        self.words = words
        self.counts = counts
        self.matrix = matrix  # (V, D) float32, memory-mapped
        self.tokenizer = Tokenizer.from_config(meta.get("tokenizer", {}))
        self._index = None
        self._inverse_norms = None

    @classmethod
    def open(cls, path=None):
        """Open the model directory `path` (default: $EMBCLI_MODEL or ./embcli-model)."""
        path = store.resolve_model_path(path)
        try:
            return cls._open_files(path)
        except ModelCorrupt:
            # A save by another process may have replaced files between two reads
            # here; its commit is complete by now, so read once more.
            return cls._open_files(path)

    @classmethod
    def _open_files(cls, path):
        meta = store.read_meta(path)
        words, counts = store.read_vocab(path, meta)
        embeddings = os.path.join(path, store.EMBEDDINGS)
        if not os.path.exists(embeddings):
            raise ModelNotFound(f"{path} has a vocabulary but no embeddings; run 'embcli train' first")
        store.check_fingerprint(path, meta, store.EMBEDDINGS)
        matrix = store.load_matrix(embeddings, expected_rows=len(words))
        if "dim" in meta and meta["dim"] != matrix.shape[1]:
            raise ModelCorrupt(
                f"{embeddings} has {matrix.shape[1]} dimensions but {store.META} says "
                f"{meta['dim']}; the files do not belong together"
            )
        return cls(path, meta, words, counts, matrix)

    @property
    def dim(self):
        return self.matrix.shape[1]

    @property
    def index(self):
        if self._index is None:
            index = {word: i for i, word in enumerate(self.words)}
            if len(index) != len(self.words):
                self._raise_duplicate()
            self._index = index
        return self._index

    def _raise_duplicate(self):
        first = {}
        for row, word in enumerate(self.words):
            if word in first:
                raise ModelCorrupt(
                    f"{os.path.join(self.path, store.VOCAB)}: word {word!r} is on line "
                    f"{first[word] + 1} and again on line {row + 1}"
                )
            first[word] = row

    @property
    def inverse_norms(self):
        if self._inverse_norms is None:
            norms = search.row_norms(self.matrix)
            bad = np.flatnonzero(~np.isfinite(norms))
            if len(bad):
                self._raise_not_finite(int(bad[0]), len(bad))
            self._inverse_norms = search.safe_inverse(norms)
        return self._inverse_norms

    def _raise_not_finite(self, row, count):
        raise ModelCorrupt(
            f"{os.path.join(self.path, store.EMBEDDINGS)}: {count:,} rows hold NaN or "
            f"infinite values, the first is row {row} ({self.words[row]!r}); retrain the model"
        )

    def row(self, word):
        """Return the matrix row of `word`, normalized and split as the corpus was.

        A query in another Unicode normal form or width finds the word, and so does
        one in another case unless the model keeps case. Raises QueryError when the
        query splits into several tokens, and UnknownWord when its token is not in the
        vocabulary.
        """
        row = self.index.get(word)
        if row is not None:
            return row
        token = self.tokenizer.query_token(word, self.index)
        row = self.index.get(token)
        if row is None:
            raise UnknownWord(word, self.path, len(self.words), token=token)
        return row

    def vector(self, word):
        """Return the vector of `word` as a float32 array of shape (dim,)."""
        row = self.row(word)
        vector = np.array(self.matrix[row], dtype=np.float32)
        if not np.isfinite(vector).all():
            self._raise_not_finite(row, 1)
        return vector

    def neighbors(self, word, k=10, restrict=None):
        """Return [(word, cosine)] of the k words nearest to `word`, leaving `word` out."""
        return self.neighbors_batch([word], k, restrict)[0]

    def neighbors_batch(self, words, k=10, restrict=None):
        rows = [self.row(word) for word in words]
        queries = np.asarray(self.matrix[rows], dtype=np.float32)
        for word, row, query in zip(words, rows, queries):
            if not np.any(query):
                raise QueryError(f"{word}: its vector is all zeros, so cosine similarity is undefined")
        results = search.top_k(self.matrix, self.inverse_norms, queries, k,
                               exclude=[{row} for row in rows], limit=restrict)
        return [[(self.words[i], float(s)) for i, s in zip(index, score)] for index, score in results]

    def neighbors_of_vector(self, vector, k=10, restrict=None):
        """Return [(word, cosine)] of the k words nearest to `vector`; nothing is left out."""
        results = search.top_k(self.matrix, self.inverse_norms, np.asarray(vector)[None, :], k, limit=restrict)
        index, score = results[0]
        return [(self.words[i], float(s)) for i, s in zip(index, score)]

    def to_torch(self):
        """Return a torch.nn.Embedding initialised from the matrix (imports torch)."""
        import torch

        return torch.nn.Embedding.from_pretrained(torch.from_numpy(np.array(self.matrix)), freeze=False)
