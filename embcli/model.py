"""A trained model opened for queries: vocabulary, memory-mapped matrix, tokenizer.

This module and everything it imports use numpy only, so queries start fast.
"""

import os

import numpy as np

from embcli import search, store
from embcli.errors import QueryError, UnknownWord
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
        meta = store.read_meta(path)
        words, counts = store.read_vocab(path, meta)
        embeddings = os.path.join(path, store.EMBEDDINGS)
        if not os.path.exists(embeddings):
            from embcli.errors import ModelNotFound

            raise ModelNotFound(f"{path} has a vocabulary but no embeddings; run 'embcli train' first")
        store.check_fingerprint(path, meta, store.EMBEDDINGS)
        matrix = store.load_matrix(embeddings, expected_rows=len(words))
        return cls(path, meta, words, counts, matrix)

    @property
    def dim(self):
        return self.matrix.shape[1]

    @property
    def index(self):
        if self._index is None:
            self._index = {word: i for i, word in enumerate(self.words)}
        return self._index

    @property
    def inverse_norms(self):
        if self._inverse_norms is None:
            self._inverse_norms = search.safe_inverse(search.row_norms(self.matrix))
        return self._inverse_norms

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
        return np.array(self.matrix[self.row(word)], dtype=np.float32)

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
