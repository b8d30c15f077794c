"""A trained or imported model opened for queries: vocabulary, memory-mapped matrix, tokenizer.

This module and everything it imports use numpy only, so queries start fast. The
vocabulary is kept as the bytes of vocab.tsv and parsed only as far as a query needs:
one word is found with a byte search, and the full word list and index are built on
first use.
"""

import os
import types

import numpy as np

from embcli import search, store
from embcli.errors import EmbcliError, ModelCorrupt, ModelNotFound, QueryError, UnknownWord, plural

ANALOGY_METHODS = ("3cosadd", "3cosmul")
# The largest finite float32, and the magnitude at or below which a float64 rounds to
# 0 in float32 (half the smallest float32 subnormal, 1.4e-45). `embcli neighbors
# --vector` rejects query vectors with the same limits.
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_ROUNDS_TO_ZERO = 7.006492321624085e-46
# Above this many lookups in one call, building the word -> row dict beats byte searches.
_INDEX_THRESHOLD = 32


class Vocabulary:
    """The words of vocab.tsv in row order, parsed lazily from the file's bytes."""

    def __init__(self, path, data):
        self.path = path
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        if data and not data.endswith(b"\n"):
            data += b"\n"
        self._data = data
        self._ends = None
        self._words = None
        self._counts = None
        self._index = None
        self._search_data = None

    @classmethod
    def read(cls, path):
        try:
            with open(path, "rb") as handle:
                return cls(path, handle.read())
        except FileNotFoundError:
            raise ModelNotFound(f"{path} is missing; run 'embcli build-vocab CORPUS' first") from None

    def __len__(self):
        if self._ends is None:
            # Counting took 0.2 ms and locating every line 0.9 ms at 100k words; a
            # query locates lines only to print its results.
            return self._data.count(b"\n")
        return len(self._ends)

    @property
    def ends(self):
        """Byte offset of each line's newline, as an int64 array."""
        if self._ends is None:
            if b"\r" in self._data or b"\n\n" in self._data or self._data.startswith(b"\n"):
                self._parse()  # unusual layout: validate it the slow way
            self._ends = np.flatnonzero(np.frombuffer(self._data, dtype=np.uint8) == 10)
        return self._ends

    def _parse(self):
        path = os.path.dirname(self.path)
        words, counts = store.read_vocab(path)
        self._words, self._counts = words, counts
        self._data = "".join(f"{w}\t{int(c)}\n" for w, c in zip(words, counts)).encode("utf-8")
        self._search_data = None

    @property
    def words(self):
        if self._words is None:
            text = self._data.decode("utf-8", errors="replace")
            self._words = [line.rpartition("\t")[0] for line in text.split("\n")[:-1]]
        return self._words

    @property
    def counts(self):
        if self._counts is None:
            text = self._data.decode("utf-8", errors="replace")
            self._counts = np.array([int(line.rpartition("\t")[2] or 0) for line in text.split("\n")[:-1]],
                                    dtype=np.int64)
        return self._counts

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
                raise ModelCorrupt(f"{self.path}: word {word!r} is on line {first[word] + 1} and again on line {row + 1}")
            first[word] = row

    def __contains__(self, word):
        return self.find(word) is not None

    def find(self, word):
        """Return the row of `word`, or None if it is not in the vocabulary."""
        if self._index is not None:
            return self._index.get(word)
        if self._search_data is None:
            self._search_data = b"\n" + self._data
        data = self._search_data
        key = b"\n" + word.encode("utf-8", errors="surrogatepass") + b"\t"
        row = None
        position = 0
        while True:
            found = data.find(key, position)
            if found < 0:
                return row
            position = found + 1
            # The word itself may contain a tab: the match counts only if a count follows.
            count = data[found + len(key) : data.find(b"\n", found + 1)]
            if not count.lstrip(b"-").isdigit():
                continue
            if row is not None:
                # Checking the whole file for duplicates would cost more than the query,
                # so each query checks its own word, and building the index checks all.
                again = data.count(b"\n", 0, found) + 1
                raise ModelCorrupt(f"{self.path}: word {word!r} is on line {row + 1} and again on line {again}")
            row = data.count(b"\n", 0, found)

    def word(self, row):
        ends = self.ends
        start = 0 if row == 0 else int(ends[row - 1]) + 1
        line = self._data[start : int(ends[row])]
        return line.rpartition(b"\t")[0].decode("utf-8", errors="replace")

    def build_index(self):
        self.index  # noqa: B018 - builds the dict


class Model:
    """Word vectors with the vocabulary and tokenizer they were trained or imported with."""

    def __init__(self, path, meta, vocabulary, matrix):
        self.path = path
        self.meta = meta
        self.vocabulary = vocabulary
        self.matrix = matrix  # (V, D) float32, memory-mapped
        self._tokenizer = None
        self._inverse_norms = None
        self._norms_from_file = False
        self._subwords = None
        self._index_view = None
        # fastText looks words up and hashes their n-grams exactly as given, so a model
        # imported from a fastText .bin does too, to give fastText's vectors.
        self.exact_queries = meta.get("imported", {}).get("format") == "fasttext-bin"

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
        store.check_fingerprint(path, meta, store.VOCAB)
        vocabulary = Vocabulary.read(os.path.join(path, store.VOCAB))
        embeddings = os.path.join(path, store.EMBEDDINGS)
        if not os.path.exists(embeddings):
            if store.EMBEDDINGS in meta.get("files", {}):
                raise ModelCorrupt(f"{embeddings} is missing, but {store.META} lists it; restore the file, "
                                   "or train or import the model again")
            raise ModelNotFound(f"{path} has a vocabulary but no embeddings; run 'embcli train' first")
        store.check_fingerprint(path, meta, store.EMBEDDINGS)
        matrix = store.load_matrix(embeddings, expected_rows=len(vocabulary))
        if "dim" in meta and meta["dim"] != matrix.shape[1]:
            raise ModelCorrupt(
                f"{embeddings} has {matrix.shape[1]} dimensions but {store.META} says "
                f"{meta['dim']}; the files do not belong together"
            )
        opened = cls(path, meta, vocabulary, matrix)
        norms = store.load_norms(path, meta, matrix.shape[0])
        if norms is not None:
            opened._set_norms(norms)
            opened._norms_from_file = True
        return opened

    @property
    def tokenizer(self):
        """The corpus's Tokenizer, imported on first use: a query found as written needs none."""
        if self._tokenizer is None:
            from embcli.tokenize import Tokenizer

            self._tokenizer = Tokenizer.from_config(self.meta.get("tokenizer", {}))
        return self._tokenizer

    @property
    def dim(self):
        return self.matrix.shape[1]

    @property
    def words(self):
        """All words in row order (most frequent first for trained models)."""
        return self.vocabulary.words

    @property
    def counts(self):
        return self.vocabulary.counts

    @property
    def index(self):
        """A read-only mapping of each word to its matrix row."""
        if self._index_view is None:
            self._index_view = types.MappingProxyType(self.vocabulary.index)
        return self._index_view

    @property
    def inverse_norms(self):
        """1/norm of each row (0 for a zero row), computed once; raises on NaN or infinity."""
        if self._inverse_norms is None:
            self._set_norms(search.row_norms(self.matrix))
        return self._inverse_norms

    def _set_norms(self, norms):
        bad = np.flatnonzero(~np.isfinite(norms))
        if len(bad):
            # norms.npy is float32, so a row of finite values near the float32 maximum
            # may have an infinite stored norm: recompute those norms in float64.
            norms = np.array(norms, dtype=np.float64)
            norms[bad] = search.row_norms(self.matrix[bad])
            bad = np.flatnonzero(~np.isfinite(norms))
        if len(bad):
            self._raise_not_finite(int(bad[0]), len(bad))
        self._inverse_norms = search.safe_inverse(norms)

    def _raise_not_finite(self, row, count=None):
        """Raise ModelCorrupt for `row`, the first of `count` rows (if known) with NaN or infinity."""
        path = os.path.join(self.path, store.EMBEDDINGS)
        if count is None or count == 1:
            where = f"row {row} ({self.word(row)!r}) contains NaN or infinite values"
        else:
            where = f"{plural(count, 'row')} contain NaN or infinite values, the first is row {row} ({self.word(row)!r})"
        raise ModelCorrupt(f"{path}: {where}; retrain the model")

    def check_finite_rows(self, rows):
        """Raise ModelCorrupt if any of `rows` contains NaN or infinity."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows):
            finite = np.isfinite(np.asarray(self.matrix[rows])).all(axis=1)
            if not finite.all():
                self._raise_not_finite(int(rows[np.flatnonzero(~finite)[0]]))

    def _top_k(self, search_function, *args, **options):
        """Run a search.top_k function on the matrix; name a searched row with NaN or infinity."""
        try:
            return search_function(self.matrix, *args, inverse_norms=self.inverse_norms, **options)
        except search.NotFiniteRow as failure:
            self._raise_not_finite(failure.row)

    def __len__(self):
        return self.matrix.shape[0]

    def __getitem__(self, word):
        """model["king"] is model.vector("king"), as in gensim's KeyedVectors."""
        return self.vector(word)

    def __iter__(self):
        """Iterate over the vocabulary words in row order, as a dict iterates its keys.

        With subwords, `word in model` is also true for words outside the vocabulary,
        which the iteration does not yield.
        """
        return iter(self.words)

    def __contains__(self, word):
        """True when model[word] has a vector: a vocabulary word, or with subwords, any
        word with at least one character n-gram, as in gensim's FastText.

        Anything but a str is not in the model, as with a dict of str keys.
        """
        if not isinstance(word, str):
            return False
        try:
            self.resolve(word)
        except (UnknownWord, QueryError):
            return False
        return True

    def row(self, word):
        """Return the matrix row of `word`, normalized and split as the corpus was.

        A query in another Unicode normal form or width finds the word, and so does
        one in another case unless the model keeps case. Raises QueryError when the
        query splits into several tokens, and UnknownWord when its token is not in the
        vocabulary.
        """
        if not isinstance(word, str):
            raise TypeError(f"a query word must be a str, not {type(word).__name__}; "
                            "pass a list of words to the *_batch methods")
        if not word.isascii():
            _check_no_surrogate(word)
        row = self.vocabulary.find(word)
        if row is not None:
            return row
        if self.exact_queries:
            raise UnknownWord(word, self.path, len(self), token=word)
        token = self.tokenizer.query_token(word, self.vocabulary)
        row = self.vocabulary.find(token)
        if row is None and not (token.isascii() and word.isascii()):
            # Imported words keep the file's spelling, which may be in another normal
            # form than the query: decomposed accents (NFD) where the query is NFC.
            import unicodedata

            for form in (unicodedata.normalize("NFD", token), unicodedata.normalize("NFC", word)):
                if form not in (token, word):
                    row = self.vocabulary.find(form)
                    if row is not None:
                        break
        if row is None:
            raise UnknownWord(word, self.path, len(self), token=token)
        return row

    def rows(self, words):
        """Return the rows of `words`; raise on the first unknown one."""
        if len(words) > _INDEX_THRESHOLD:
            self.vocabulary.build_index()
        return [self.row(word) for word in words]

    def word(self, row):
        """Return the word of matrix row `row` (an int from 0 to len(model) - 1)."""
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)):
            raise TypeError(f"a row must be an int, not {type(row).__name__}; use model.row(word) "
                            "to find the row of a word")
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} is outside 0..{len(self) - 1}, the rows of this model")
        return self.vocabulary.word(int(row))

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
            ids_name = settings.get("bucket_ids_file") if settings.get("rows") == "used" else None
            try:
                stored_buckets = None
                if ids_name is not None:
                    store.check_fingerprint(self.path, self.meta, ids_name)
                    stored_buckets = _load_bucket_ids(os.path.join(self.path, ids_name), int(settings["buckets"]))
                store.check_fingerprint(self.path, self.meta, name)
                matrix = store.load_matrix(os.path.join(self.path, name))
            except (ModelCorrupt, ModelNotFound):
                self._raise_if_replaced()
                raise
            rows = int(settings["buckets"]) if stored_buckets is None else len(stored_buckets)
            if matrix.shape[0] != rows:
                counted = "buckets" if stored_buckets is None else f"bucket ids in {ids_name}"
                raise ModelCorrupt(f"{self.path}/{name} has {matrix.shape[0]:,} rows but there are {rows:,} "
                                   f"{counted}; the files do not belong together, retrain the model")
            if matrix.shape[1] != self.dim:
                raise ModelCorrupt(f"{self.path}/{name} has {matrix.shape[1]} columns but the "
                                   f"embeddings have {self.dim}; retrain the model")
            self._subwords = SubwordVectors(matrix, settings, stored_buckets, os.path.join(self.path, name))
        return self._subwords

    def resolve(self, word, subwords=True):
        """Return (row, vector, n-gram count) for `word`.

        A vocabulary word gets its row, its vector and 0. A word outside the vocabulary
        gets row None and a vector built from its character n-grams, when `subwords` is
        true and the model has them; otherwise UnknownWord is raised.
        """
        if not isinstance(word, str):
            raise TypeError(f"a query word must be a str, not {type(word).__name__}; "
                            "pass a list of words to the *_batch methods")
        try:
            row = self.row(word)
        except UnknownWord:
            if not (subwords and self.has_subwords):
                raise
            token = word if self.exact_queries else self.tokenizer.query_token(word, self.vocabulary)
            vector, count = self.subwords.vector(token)
            if vector is None:
                raise
            return None, vector, count
        return row, self._row_vector(row), 0

    def _raise_if_replaced(self):
        """Raise ModelCorrupt saying that this object is stale if the directory now
        contains another consistent model; return if it does not.

        A file that this object reads after opening (subwords.npy) no longer matches
        its meta, which is expected when the model was trained or imported again
        since then, and a fault of the directory otherwise.
        """
        try:
            current = store.read_meta(self.path)
        except EmbcliError:
            return
        if current == self.meta:
            return
        try:
            for name in current.get("files", {}):
                store.check_fingerprint(self.path, current, name)
        except (ModelCorrupt, ModelNotFound, OSError):
            return
        raise ModelCorrupt(
            f"{self.path} was changed on disk after this object opened it (its {store.META} is "
            "different now), so this object's files no longer match; open it again with embcli.load"
        ) from None

    def _row_vector(self, row):
        vector = np.array(self.matrix[row], dtype=np.float32)
        if not np.isfinite(vector).all():
            self._raise_not_finite(row, 1)
        return vector

    def check_nonzero(self, word, row):
        """Raise QueryError if the vector of `word`, at `row`, is all zeros (ModelCorrupt if it
        contains NaN or infinity)."""
        vector = self.matrix[row]
        if not np.isfinite(vector).all():
            self._raise_not_finite(row)
        if not vector.any():
            raise QueryError(f"{word}: its vector is all zeros, so cosine similarity is undefined")

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
        """Return one neighbour list per word in `words`; raise on the first bad word.

        A word outside the vocabulary is answered from its n-grams when the model has
        them and `subwords` is true; nothing is left out of its results.
        """
        _check_counts(k, restrict)
        words = _word_list(words, "neighbors")
        if not (subwords and self.has_subwords):
            rows = self.rows(words)
            for word, row in zip(words, rows):
                self.check_nonzero(word, row)
            return self.neighbors_of_rows(rows, k, restrict)
        resolved = [self.resolve(word, subwords) for word in words]
        queries = np.stack([vector for _, vector, _ in resolved]) if resolved else np.zeros((0, self.dim))
        for word, query in zip(words, queries):
            if not np.any(query):
                raise QueryError(f"{word}: its vector is all zeros, so cosine similarity is undefined")
        exclude = [() if row is None else (row,) for row, _, _ in resolved]
        results = self._top_k(search.top_k, queries, k, exclude=exclude, limit=restrict)
        return [self._named(result) for result in results]

    def neighbors_of_rows(self, rows, k=10, restrict=None):
        _check_counts(k, restrict)
        queries = np.asarray(self.matrix[rows], dtype=np.float32)
        results = self._top_k(search.top_k, queries, k, exclude=[(row,) for row in rows], limit=restrict)
        return [self._named(result) for result in results]

    def neighbors_of_vector(self, vector, k=10, restrict=None):
        """Return [(word, cosine)] of the k words nearest to `vector`; nothing is left out.

        Raises QueryError when the vector has no cosine similarity: it contains NaN or
        infinity, a value outside the float32 range, or only zeros in float32.
        """
        return self._neighbors_of_vectors(np.asarray(vector)[None, :], k, restrict, single=True)[0]

    def neighbors_of_vectors(self, vectors, k=10, restrict=None):
        """Return one neighbour list per row of `vectors` (Q, dim).

        Raises QueryError for the first row that has no cosine similarity, as
        `neighbors_of_vector` does.
        """
        return self._neighbors_of_vectors(vectors, k, restrict, single=False)

    def _neighbors_of_vectors(self, vectors, k, restrict, single):
        _check_counts(k, restrict)
        # Checked in float64 first: a float32 cast would turn 1e39 into infinity.
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        if vectors.shape[1] != self.dim:
            raise QueryError(f"a query vector has {vectors.shape[1]} values, but the model has {self.dim} dimensions")
        check_query_vectors(vectors, "vector" if single else "vectors row {}")
        vectors = vectors.astype(np.float32)
        results = self._top_k(search.top_k, vectors, k, limit=restrict)
        return [self._named(result) for result in results]

    def analogy(self, a, b, c, k=10, method="3cosadd", exclude_inputs=True, restrict=None, subwords=True):
        """Return [(word, score)] answering "a is to b as c is to ?".

        3cosadd ranks words by cosine with b - a + c (each normalized first); 3cosmul
        uses Levy and Goldberg's multiplicative objective. The inputs found in the
        vocabulary are left out of the results unless `exclude_inputs` is False. An
        input outside the vocabulary is built from its n-grams when the model has them
        and `subwords` is true.
        """
        return self.analogy_batch([(a, b, c)], k, method, exclude_inputs, restrict, subwords)[0]

    def analogy_batch(self, triples, k=10, method="3cosadd", exclude_inputs=True, restrict=None, subwords=True):
        """Return one `analogy` result per (a, b, c) in the iterable `triples`."""
        _check_counts(k, restrict)
        if method not in ANALOGY_METHODS:
            raise QueryError(f"unknown analogy method {method!r}; choose one of {', '.join(ANALOGY_METHODS)}")
        triples = _triple_list(triples)
        words = [word for triple in triples for word in triple]
        if not (subwords and self.has_subwords):
            inputs = np.asarray(self.rows(words), dtype=np.int64).reshape(len(triples), 3)
            results = self.analogy_of_rows(inputs, k, method, exclude_inputs, restrict)
        else:
            flat = [self.query_input(word) for word in words]
            inputs = [flat[i : i + 3] for i in range(0, len(flat), 3)]
            results = self.analogy_of_inputs(inputs, k, method, exclude_inputs, restrict)
        # An empty result can mean that B - A + C cancelled, so only those triples are checked.
        for triple, triple_inputs, result in zip(triples, inputs, results):
            if k and not result:
                self.check_analogy(triple, triple_inputs, method)
        return results

    def check_analogy(self, words, inputs, method="3cosadd"):
        """Raise QueryError if the analogy `words` (a, b, c) has no direction to search.

        `inputs` are their rows or vectors, as query_input returns them. With 3cosadd,
        b - a + c of the unit vectors can cancel to all zeros. A zero vector has no cosine
        with any word, so the search would return nothing.
        """
        if method != "3cosadd":
            return
        a, b, c = search.unit_rows(np.stack([self._input_vector(item) for item in inputs]))
        if not np.any(b - a + c):
            raise QueryError(f"{' '.join(words)}: B - A + C is all zeros, so cosine similarity is undefined")

    def query_input(self, word, subwords=True):
        """Return the row of `word`, or for a word built from n-grams its vector (a float32 array)."""
        row, vector, _ = self.resolve(word, subwords)
        return vector if row is None else row

    def analogy_of_rows(self, rows, k=10, method="3cosadd", exclude_inputs=True, restrict=None,
                        skip_zero_rows=False):
        """Return answers for an (n, 3) array of rows (a, b, c); zero rows score 0 unless skipped."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        self.check_finite_rows(rows)
        vectors = [self.matrix[rows[:, i]] for i in range(3)]
        exclude = [tuple(int(r) for r in triple) for triple in rows] if exclude_inputs else None
        return self._analogy(vectors, exclude, k, method, restrict, skip_zero_rows)

    def analogy_of_inputs(self, triples, k=10, method="3cosadd", exclude_inputs=True, restrict=None):
        """Return results for triples (a, b, c) whose items are rows or vectors, as `query_input` returns.

        Only the items that are rows can be left out of the results.
        """
        self.check_finite_rows([int(item) for triple in triples for item in triple
                                 if not isinstance(item, np.ndarray)])
        vectors = [np.stack([self._input_vector(item) for item in column]) for column in zip(*triples)]
        exclude = None
        if exclude_inputs:
            exclude = [tuple(int(item) for item in triple if not isinstance(item, np.ndarray)) for triple in triples]
        return self._analogy(vectors, exclude, k, method, restrict)

    def _input_vector(self, item):
        return item if isinstance(item, np.ndarray) else np.asarray(self.matrix[int(item)], dtype=np.float32)

    def _analogy(self, vectors, exclude, k, method, restrict, skip_zero_rows=False):
        a, b, c = (search.unit_rows(v) for v in vectors)
        if method == "3cosadd":
            results = self._top_k(search.top_k, b - a + c, k, exclude=exclude, limit=restrict,
                                  skip_zero_rows=skip_zero_rows)
        else:
            results = self._top_k(search.top_k_cosmul, a, b, c, k, exclude=exclude, limit=restrict,
                                  skip_zero_rows=skip_zero_rows)
        return [self._named(result) for result in results]

    def similarity(self, word1, word2, subwords=True):
        """Return the cosine similarity of two words; 0.0 when either vector is all zeros.

        A word outside the vocabulary is built from its n-grams when the model has them
        and `subwords` is true.
        """
        return search.cosine(self.vector(word1, subwords), self.vector(word2, subwords))

    def similarity_of_rows(self, rows1, rows2, damaged="raise"):
        """Return the cosine similarity of each pair of rows as a float64 array.

        A pair with a row that contains NaN or infinity raises ModelCorrupt, or with
        `damaged="nan"` scores NaN, so that a caller can report each such pair.
        """
        rows1, rows2 = np.asarray(rows1, dtype=np.int64), np.asarray(rows2, dtype=np.int64)
        scores = similarity_of_vectors(self.matrix[rows1], self.matrix[rows2])
        if damaged == "raise" and np.isnan(scores).any():
            bad = np.isnan(scores)
            self.check_finite_rows(np.concatenate([rows1[bad], rows2[bad]]))
        return scores

    def similarity_of_inputs(self, inputs1, inputs2, damaged="raise"):
        """Return the cosine similarity of each pair of rows or vectors, as `query_input`
        returns them; `damaged` as in similarity_of_rows."""
        inputs1, inputs2 = list(inputs1), list(inputs2)
        left = np.stack([self._input_vector(item) for item in inputs1])
        right = np.stack([self._input_vector(item) for item in inputs2])
        scores = similarity_of_vectors(left, right)
        if damaged == "raise" and np.isnan(scores).any():
            pairs = [pair for pair, score in zip(zip(inputs1, inputs2), scores) if np.isnan(score)]
            self.check_finite_rows([int(item) for pair in pairs for item in pair if not isinstance(item, np.ndarray)])
            raise ModelCorrupt(f"{self.path}: the n-gram rows of a query word contain NaN or infinite "
                               "values; retrain the model")
        return scores

    def _named(self, result):
        index, score = result
        if self._norms_from_file and len(index):
            self._check_stored_norms(index)
        return [(self.vocabulary.word(int(i)), float(s)) for i, s in zip(index, score)]

    def _check_stored_norms(self, rows):
        """Raise ModelCorrupt if norms.npy disagrees with the embeddings at `rows`.

        The fingerprints cover only the start and end of each file, so an edit in the
        middle of embeddings.npy would otherwise give cosines far above 1. The rows of
        the results are checked, which costs k rows per query.
        """
        vectors = np.asarray(self.matrix[np.asarray(rows)], dtype=np.float64)
        actual = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
        stored = self._inverse_norms[np.asarray(rows)].astype(np.float64)
        # 1/norm of a row outside this range is not exact in float32, and the search
        # scales such rows itself (search.unit_rows), so only the others are compared.
        ordinary = (actual >= search.SMALL_NORM) & (actual <= search.LARGE_NORM)
        wrong = np.flatnonzero(ordinary & (np.abs(stored * actual - 1.0) > 1e-3))
        if len(wrong):
            row = int(rows[wrong[0]])
            raise ModelCorrupt(
                f"{os.path.join(self.path, store.NORMS)} does not match {store.EMBEDDINGS} at row {row} "
                f"({self.word(row)!r}): the embeddings changed after the norms were saved; delete "
                f"{store.NORMS}, and queries compute the norms from the embeddings"
            )

    def to_torch(self, freeze=False):
        """Return a torch.nn.Embedding initialised from the matrix (imports torch)."""
        import torch

        weights = torch.from_numpy(np.array(self.matrix, dtype=np.float32))
        return torch.nn.Embedding.from_pretrained(weights, freeze=freeze)


def similarity_of_vectors(left, right):
    """Return the cosine similarity of each pair of rows of two (n, dim) arrays, as float64.

    A pair with a zero vector scores 0, and a pair with NaN or infinity scores NaN.
    """
    left = np.asarray(left, dtype=np.float64)
    right = np.asarray(right, dtype=np.float64)
    # Infinity makes invalid values here; those pairs become NaN below.
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
        dots = np.einsum("ij,ij->i", left, right)
        scores = np.zeros(len(dots))
        np.divide(dots, norms, out=scores, where=norms > 0)
    scores = np.clip(scores, -1.0, 1.0)
    scores[~(np.isfinite(left).all(axis=1) & np.isfinite(right).all(axis=1))] = np.nan
    return scores


def check_query_vectors(vectors, where):
    """Raise QueryError for the first row of `vectors` (Q, dim) that has no cosine similarity.

    A row fails if it contains NaN or infinity, if all its values round to 0 in
    float32, or if a value is outside the float32 range. The message starts with
    `where`, formatted with the row number.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    magnitudes = np.abs(vectors)
    not_finite = ~np.isfinite(vectors).all(axis=1)
    zero = ~(magnitudes > FLOAT32_ROUNDS_TO_ZERO).any(axis=1)
    too_large = (magnitudes > FLOAT32_MAX).any(axis=1)
    failed = np.flatnonzero(not_finite | zero | too_large)
    if not len(failed):
        return
    row = int(failed[0])
    name = where.format(row)
    if not_finite[row]:
        raise QueryError(f"{name}: the vector contains NaN or infinity")
    if zero[row]:
        raise QueryError(f"{name}: the vector is all zeros in float32, so cosine similarity is undefined")
    value = float(vectors[row][np.argmax(magnitudes[row] > FLOAT32_MAX)])
    raise QueryError(f"{name}: the value {value!r} is outside the float32 range (about -3.4e38 to 3.4e38)")


def _word_list(words, single_method):
    """Return the iterable `words` as a list; a str raises TypeError instead of giving its letters."""
    if isinstance(words, str):
        raise TypeError(f"pass a list of words, not a str; for one word, call {single_method}({words!r})")
    return list(words)


def _triple_list(triples):
    """Return the iterable `triples` as a list of (a, b, c) tuples of 3 items each."""
    if isinstance(triples, str):
        raise TypeError("pass a list of (a, b, c) triples, not a str")
    checked = []
    for triple in triples:
        items = () if isinstance(triple, str) else tuple(triple)
        if len(items) != 3:
            raise TypeError(f"an analogy is a triple of words (a, b, c), not {triple!r}")
        checked.append(items)
    return checked


def _check_counts(k, restrict):
    """Raise QueryError unless `k` is an integer of 0 or more and `restrict` None or a positive integer.

    k=0 returns empty lists, as the CLI's -k 0 prints nothing.
    """
    for name, value, least in (("k", k, 0), ("restrict", restrict, 1)):
        if value is None and name == "restrict":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            kind = "a positive whole number" if least else "a whole number, 0 or more"
            raise QueryError(f"{name} must be {kind}, not {value!r}")


# The export format of each file name extension, as `embcli export --format auto` picks it.
# Any other extension gets word2vec.
EXPORT_EXTENSIONS = {".bin": "word2vec-binary", ".npy": "npy", ".vec": "fasttext"}


def export_format(output):
    """Return the export format for the file name `output`, from its extension (any case)."""
    return EXPORT_EXTENSIONS.get(os.path.splitext(output)[1].lower(), "word2vec")


def _load_bucket_ids(path, buckets):
    """Return the sorted bucket ids (int64) of the rows of subwords.npy, or raise ModelCorrupt."""
    try:
        ids = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ModelCorrupt(f"{path} is missing; the model directory is incomplete, retrain the model") from None
    except (ValueError, OSError, EOFError) as error:
        raise ModelCorrupt(f"{path}: not a valid .npy file ({error}); retrain the model") from None
    if ids.ndim != 1 or ids.dtype.kind not in "ui":
        raise ModelCorrupt(f"{path}: expected a 1-D integer array, found {ids.dtype} {ids.shape}; retrain the model")
    ids = ids.astype(np.int64)
    if len(ids) and (ids[0] < 0 or ids[-1] >= buckets or np.any(ids[1:] <= ids[:-1])):
        raise ModelCorrupt(f"{path}: the bucket ids are not increasing within 0..{buckets - 1:,}; retrain the model")
    return ids


def check_export_target(model_dir, output, format):
    """Raise EmbcliError if exporting to `output` would replace a file of the model directory."""
    from embcli.ann import INDEX_FILES, INDEX_META
    from embcli.subwords import SUBWORD_BUCKETS, SUBWORDS

    reserved = {store.META, store.VOCAB, store.EMBEDDINGS, store.TOKENS, store.NORMS, store.JOURNAL,
                store.LOCK, *store.CHECKPOINT_FILES, SUBWORDS, SUBWORD_BUCKETS, INDEX_META, *INDEX_FILES.values()}
    if format == "projector":
        targets = [os.path.join(output, "vectors.tsv"), os.path.join(output, "metadata.tsv")]
    elif format == "npy" and output.endswith(".npy"):
        from embcli.formats import npy_words_path

        targets = [output, npy_words_path(output)]
    else:
        targets = [output]
    model_dir = os.path.realpath(model_dir)
    for target in targets:
        resolved = os.path.realpath(target)
        if os.path.dirname(resolved) == model_dir and os.path.basename(resolved) in reserved:
            raise EmbcliError(f"{target} is the model's own {os.path.basename(resolved)}, which the export "
                              "would replace; write the export outside the model directory or under another name")


def _check_no_surrogate(word):
    """Raise QueryError if `word` contains a lone surrogate, which is not text.

    Python decodes bytes that are not UTF-8 (in file names or os.fsdecode) to the
    surrogates U+DC80 to U+DCFF; such a word cannot be hashed or written as UTF-8.
    """
    for char in word:
        if "\ud800" <= char <= "\udfff":
            raise QueryError(f"{word!r} contains U+{ord(char):04X}, a lone surrogate, which is not text "
                             "(Python keeps bytes that are not UTF-8 that way); query words must be valid Unicode")
