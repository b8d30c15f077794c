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
        self._subwords = None

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

    @property
    def has_subwords(self):
        """True when the model stores n-gram vectors for words outside the vocabulary."""
        return "subwords" in self.meta

    @property
    def subwords(self):
        """The model's SubwordVectors (n-gram bucket rows, memory-mapped)."""
        if self._subwords is None:
            from embcli.subwords import SubwordVectors

            settings = self.meta["subwords"]
            name = settings.get("file", "subwords.npy")
            store.check_fingerprint(self.path, self.meta, name)
            matrix = store.load_matrix(os.path.join(self.path, name), expected_rows=int(settings["buckets"]))
            if matrix.shape[1] != self.dim:
                raise ModelCorrupt(f"{self.path}/{name} has {matrix.shape[1]} columns but the "
                                   f"embeddings have {self.dim}; retrain the model")
            self._subwords = SubwordVectors(matrix, settings)
        return self._subwords

    def resolve(self, word, subwords=True):
        """Return (row, vector, n-gram count) for `word`.

        A vocabulary word gets its row, its vector and 0. A word outside the vocabulary
        gets row None and a vector built from its character n-grams, when `subwords` is
        true and the model has them; otherwise UnknownWord is raised.
        """
        try:
            row = self.row(word)
        except UnknownWord:
            if not (subwords and self.has_subwords):
                raise
            token = self.tokenizer.query_token(word, self.index)
            vector, count = self.subwords.vector(token)
            if vector is None:
                raise
            return None, vector, count
        vector = np.array(self.matrix[row], dtype=np.float32)
        if not np.isfinite(vector).all():
            self._raise_not_finite(row, 1)
        return row, vector, 0

    def vector(self, word, subwords=True):
        """Return the vector of `word` as a float32 array of shape (dim,).

        Outside the vocabulary, the vector comes from the word's n-grams when the model
        has them and `subwords` is true.
        """
        return self.resolve(word, subwords)[1]

    def neighbors(self, word, k=10, restrict=None, subwords=True):
        """Return [(word, cosine)] of the k words nearest to `word`, leaving `word` out."""
        return self.neighbors_batch([word], k, restrict, subwords)[0]

    def neighbors_batch(self, words, k=10, restrict=None, subwords=True):
        resolved = [self.resolve(word, subwords) for word in words]
        queries = np.stack([vector for _, vector, _ in resolved]) if resolved else np.zeros((0, self.dim))
        for word, query in zip(words, queries):
            if not np.any(query):
                raise QueryError(f"{word}: its vector is all zeros, so cosine similarity is undefined")
        exclude = [set() if row is None else {row} for row, _, _ in resolved]
        results = search.top_k(self.matrix, self.inverse_norms, queries, k, exclude=exclude, limit=restrict)
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
