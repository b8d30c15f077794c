"""Cosine similarity search over a matrix of word vectors, with numpy only.

Scores are matrix products of a block of queries with a block of rows, so memory stays
at one (QUERY_BLOCK x ROW_BLOCK) block of scores however large the vocabulary is, and
each row's norm is computed once per search, from the block already in memory. A row
with zero norm has cosine 0 with every vector, never NaN.
"""

import numpy as np

ROW_BLOCK = 16384
QUERY_BLOCK = 512
_NEVER = np.float32(-np.inf)


# Rows whose norm lies outside [SMALL_NORM, LARGE_NORM] are scaled to unit length in
# float64 before their products, because a float32 product of such a row could
# underflow to a subnormal or overflow, and 1/norm itself may not fit in float32.
SMALL_NORM = 1e-30
LARGE_NORM = 1e30


def row_norms(matrix, block=ROW_BLOCK):
    """Return the L2 norm of each row as float64, reading `matrix` one block at a time.

    Rows whose float32 sum of squares overflows, or is so small that it lost precision,
    are summed again in float64, so the norm of any finite float32 row is finite and is
    0 only for a zero row. Converting every row to float64 instead made a 1M x 300
    import 0.3 s slower.
    """
    norms = np.empty(matrix.shape[0], dtype=np.float64)
    for start in range(0, matrix.shape[0], block):
        rows = np.asarray(matrix[start : start + block], dtype=np.float32)
        with np.errstate(over="ignore", under="ignore"):
            fast = np.sqrt(np.einsum("ij,ij->i", rows, rows))
        norms[start : start + len(rows)] = fast
        again = np.flatnonzero(~(np.isfinite(fast) & (fast >= _EXACT_NORM_FLOAT32)))
        if len(again):
            exact = rows[again].astype(np.float64)
            norms[start + again] = np.sqrt(np.einsum("ij,ij->i", exact, exact))
    return norms


# Below this float32 norm, squares of the values (under 1e-38) may have lost digits.
_EXACT_NORM_FLOAT32 = 1e-18


def safe_inverse(norms):
    """Return 1/norm as float32, with 0 where the norm is 0 (so zero rows score 0, not NaN).

    The inverse of a norm below about 3e-39 does not fit in float32 and becomes
    infinity, so `_search` scales such rows with `unit_rows` instead.
    """
    norms = np.asarray(norms, dtype=np.float64)
    inverse = np.zeros(norms.shape, dtype=np.float64)
    np.divide(1.0, norms, out=inverse, where=norms > 0)
    with np.errstate(over="ignore"):
        return inverse.astype(np.float32)


def unit_rows(vectors):
    """Return `vectors` (Q, D) scaled to unit length as float32; zero rows stay zero.

    The scaling runs in float64, so any finite row that is not zero gets a unit vector,
    from subnormal values up to the float32 maximum.
    """
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    units = np.zeros(vectors.shape, dtype=np.float64)
    np.divide(vectors, norms[:, None], out=units, where=norms[:, None] > 0)
    return units.astype(np.float32)


def has_extreme_norms(inverse):
    """Return True if some row's 1/norm marks a norm outside [SMALL_NORM, LARGE_NORM]."""
    return bool(np.any(inverse > 1 / SMALL_NORM) or np.any((inverse > 0) & (inverse < 1 / LARGE_NORM)))


def cosine(a, b):
    """Return the cosine similarity of two vectors as a float; 0.0 if either is zero."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if norms == 0:
        return 0.0
    return float(np.clip(np.dot(a, b) / norms, -1.0, 1.0))


class NotFiniteRow(ValueError):
    """A row of the searched matrix contains NaN or infinity, so it has no cosine with anything."""

    def __init__(self, row):
        super().__init__(f"row {row} contains NaN or infinite values")
        self.row = row


def top_k(matrix, queries, k, exclude=None, limit=None, inverse_norms=None, skip_zero_rows=False):
    """Return [(indices, scores)] for each query: the k rows most cosine-similar to it.

    `queries` is (Q, D) and need not be normalized; a zero query, or one with NaN or
    infinity, gets no results. `exclude` is a list of Q collections of row indices to
    leave out. `limit` searches only the first `limit` rows (the most frequent words).
    Results are sorted by score, highest first, ties by row. Fewer than k come back
    when fewer rows qualify.
    `inverse_norms` (V,) are 1/norm of each row, computed from the matrix when None.
    A zero row scores 0, or is left out with `skip_zero_rows` (gensim's NaN score for
    it never ranks). Raises NotFiniteRow for a searched row that contains NaN or infinity.
    """
    units, unusable = _finite_units(queries)

    def score(cosines, rows):
        return cosines(units[rows])

    results = _search(matrix, len(units), k, score, exclude, limit, inverse_norms, skip_zero_rows, reuse=True)
    unusable |= ~units.any(axis=1)
    return _without_results(results, unusable)


def top_k_cosmul(matrix, a, b, c, k, exclude=None, limit=None, epsilon=1e-6, inverse_norms=None,
                 skip_zero_rows=False):
    """Return [(indices, scores)] ranked by 3CosMul for the analogies a : b :: c : ?.

    3CosMul (Levy and Goldberg, 2014) scores row d as cos'(d, b) cos'(d, c) /
    (cos'(d, a) + epsilon), with each cosine shifted to [0, 1] by cos' = (1 + cos) / 2,
    as gensim's most_similar_cosmul does. `a`, `b`, `c` are (Q, D). A query with NaN or
    infinity in `a`, `b` or `c` gets no results.
    """
    (unit_a, unusable_a), (unit_b, unusable_b), (unit_c, unusable_c) = (_finite_units(v) for v in (a, b, c))

    def score(cosines, rows):
        shifted = [(cosines(u[rows]) + 1.0) / 2.0 for u in (unit_a, unit_b, unit_c)]
        return shifted[1] * shifted[2] / (shifted[0] + np.float32(epsilon))

    results = _search(matrix, len(unit_a), k, score, exclude, limit, inverse_norms, skip_zero_rows)
    return _without_results(results, unusable_a | unusable_b | unusable_c)


def _finite_units(vectors):
    """Return `vectors` scaled to unit length, with rows holding NaN or infinity set to 0,
    and a boolean array marking those rows.

    The top-k selection needs finite scores, and a NaN query has no cosine anyway.
    """
    vectors = np.atleast_2d(np.asarray(vectors))
    with np.errstate(invalid="ignore"):
        units = unit_rows(vectors)
    # unit_rows leaves a row with NaN at 0 and turns infinity into NaN.
    not_finite = ~(np.isfinite(vectors).all(axis=1) & np.isfinite(units).all(axis=1))
    units[not_finite] = 0
    return units, not_finite


def _without_results(results, unusable):
    """Return `results` with the result of each query marked in `unusable` emptied."""
    empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
    return [empty if unusable[q] else result for q, result in enumerate(results)]


def _search(matrix, n_queries, k, score, exclude, limit, inverse_norms=None, skip_zero_rows=False, reuse=False):
    """Run `score(cosines, query_slice)` over all blocks; keep the top k.

    `cosines(unit_queries)` returns the (Qb, B) cosines of unit queries with the rows of
    the current block. With `reuse`, it writes them into the same memory every time,
    so `score` must not keep an earlier result. (A fresh 32 MiB block of scores for
    each product cost a third as much as the product, in page faults.)

    After the first block, only scores above a query's current k-th best can enter its
    top k, and there are few of them, so later blocks cost a comparison per score
    instead of a partial sort.
    """
    rows_total = matrix.shape[0] if limit is None else min(limit, matrix.shape[0])
    k = max(0, min(k, rows_total))
    best_index = np.zeros((n_queries, 0), dtype=np.int64)
    best_score = np.zeros((n_queries, 0), dtype=np.float32)
    pairs = _exclusion_pairs(exclude, n_queries)
    if k == 0 or n_queries == 0:
        return [(best_index[q], best_score[q]) for q in range(n_queries)]
    scratch = _Scratch(min(n_queries, QUERY_BLOCK) * min(rows_total, ROW_BLOCK))
    for start in range(0, rows_total, ROW_BLOCK):
        stop = min(start + ROW_BLOCK, rows_total)
        part = np.asarray(matrix[start:stop], dtype=np.float32)  # (B, D), a view of the mmap
        if inverse_norms is None:
            inverse = safe_inverse(row_norms(part))
        else:
            inverse = inverse_norms[start:stop]
        zero_rows = np.flatnonzero(inverse == 0) if skip_zero_rows else np.zeros(0, dtype=np.int64)
        extreme = has_extreme_norms(inverse)
        if n_queries >= part.shape[1] or extreme:
            # Many queries: scale the (B, D) block once rather than each (Qb, B) product.
            # Rows with extreme norms are scaled in float64 (see SMALL_NORM).
            part_units = unit_rows(part) if extreme else part * inverse[:, None]

            def cosines(queries, part_units=part_units):
                out = scratch.scores(len(queries), part_units.shape[0]) if reuse else None
                return np.matmul(queries, part_units.T, out=out)
        else:

            def cosines(queries, part=part, inverse=inverse):
                out = scratch.scores(len(queries), part.shape[0]) if reuse else None
                products = np.matmul(queries, part.T, out=out)
                products *= inverse
                return products

        in_block = (pairs[1] >= start) & (pairs[1] < stop)
        block_pairs = (pairs[0][in_block], pairs[1][in_block] - start)
        full = best_index.shape[1] == k
        new_index = np.empty((n_queries, k if full else min(k, stop - start)), dtype=np.int64)
        new_score = np.empty(new_index.shape, dtype=np.float32)
        for q_start in range(0, n_queries, QUERY_BLOCK):
            q_stop = min(q_start + QUERY_BLOCK, n_queries)
            # A row with NaN or infinity makes invalid values here; the check below names it.
            with np.errstate(invalid="ignore", over="ignore"):
                scores = score(cosines, slice(q_start, q_stop))  # (Qb, B)
            if q_start == 0:
                _check_finite_scores(scores[0], start)
            scores[:, zero_rows] = _NEVER
            mine = (block_pairs[0] >= q_start) & (block_pairs[0] < q_stop)
            scores[block_pairs[0][mine] - q_start, block_pairs[1][mine]] = _NEVER
            if full:
                merged = _merge_above(best_index[q_start:q_stop], best_score[q_start:q_stop], scores, start, scratch)
                new_index[q_start:q_stop], new_score[q_start:q_stop] = merged
            else:
                take = new_index.shape[1]
                threshold = _sampled_threshold(scores, take)
                merged = _top_at_or_above(scores, threshold, take, start, scratch)
                new_index[q_start:q_stop], new_score[q_start:q_stop] = merged
        if full:
            best_index, best_score = new_index, new_score
            continue
        best_index = np.concatenate([best_index, new_index], axis=1)
        best_score = np.concatenate([best_score, new_score], axis=1)
        if best_index.shape[1] > k:
            keep = _top_columns(best_score, k)
            best_index = np.take_along_axis(best_index, keep, axis=1)
            best_score = np.take_along_axis(best_score, keep, axis=1)
    order = np.lexsort((best_index, -best_score), axis=1)
    best_index = np.take_along_axis(best_index, order, axis=1)
    best_score = np.take_along_axis(best_score, order, axis=1)
    results = []
    for q in range(n_queries):
        valid = np.isfinite(best_score[q])
        results.append((best_index[q][valid], best_score[q][valid]))
    return results


def _check_finite_scores(scores, start):
    """Raise NotFiniteRow for the first non-finite value of one query's `scores` of a block.

    A row with NaN or infinity gives NaN or infinity with every query, a zero query
    too, so one query's scores find every such row of the block. Finite rows always
    score finite values: rows whose norm could overflow are scaled in float64 first.
    """
    if not np.isfinite(scores).all():
        raise NotFiniteRow(start + int(np.flatnonzero(~np.isfinite(scores))[0]))


def _top_columns(scores, take):
    """Return the column indices of the `take` largest scores of each row, unordered."""
    if take >= scores.shape[1]:
        return np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    return np.argpartition(scores, scores.shape[1] - take, axis=1)[:, scores.shape[1] - take :]


# The first block's top k is chosen among the columns that reach a threshold taken from
# samples of at least this many columns (see _sampled_threshold).
SAMPLE_COLUMNS = 1024


def _sampled_threshold(scores, take):
    """Return for each row of `scores` a value that at least `take` of its columns reach.

    The value is the larger of two take-th best scores. One is taken among the first
    columns, which hold the neighbours of frequent words. The other is taken among
    columns spread evenly over the block, because the neighbours of a rare word in a
    weakly trained model are rare words too. With the first columns alone, nearly every
    later column passed for rare words: 1,000 rare words of a 5,278-word model trained
    for one epoch took 0.79 s instead of 0.08 s (best of 7 runs on 2 CPU cores).
    """
    width = scores.shape[1]
    sample = max(4 * take, SAMPLE_COLUMNS)
    if sample >= width:
        return _kth_largest(scores, take)
    step = width // sample
    return np.maximum(_kth_largest(scores[:, :sample], take), _kth_largest(scores[:, ::step], take))


def _kth_largest(scores, k):
    """Return the k-th largest value of each row of `scores`."""
    position = scores.shape[1] - k
    return np.partition(scores, position, axis=1)[:, position]


def _top_at_or_above(scores, threshold, take, start, scratch=None):
    """Return the `take` best columns of each row of `scores` (as rows start + column) and their scores.

    Each row must have at least `take` scores at or above its `threshold`, and only
    those are sorted. Equal scores go to the lower row, the more frequent word.
    """
    mask = None if scratch is None else scratch.mask(*scores.shape)
    # flatnonzero on a sparse mask is about 10 times faster than 2-D nonzero.
    flat = np.flatnonzero(np.greater_equal(scores, threshold[:, None], out=mask))
    query, column = np.divmod(flat, scores.shape[1])
    return _best_per_query(query, column + start, scores[query, column], scores.shape[0], take)


def _merge_above(best_index, best_score, scores, start, scratch=None):
    """Return the k best of (best_index, best_score) and the block `scores`, (Qb, k) each.

    A score must exceed the query's current k-th best to enter, so an equal score in a
    later row never displaces an earlier row: ties go to the more frequent word.
    """
    count, k = best_index.shape
    threshold = best_score.min(axis=1)
    above = None if scratch is None else scratch.mask(*scores.shape)
    # flatnonzero on a sparse mask is about 10 times faster than 2-D nonzero.
    flat = np.flatnonzero(np.greater(scores, threshold[:, None], out=above))
    query, column = np.divmod(flat, scores.shape[1])
    if query.size == 0:
        return best_index, best_score
    candidate_query = np.concatenate([np.repeat(np.arange(count), k), query])
    candidate_index = np.concatenate([best_index.ravel(), column + start])
    candidate_score = np.concatenate([best_score.ravel(), scores[query, column]])
    # Each query keeps exactly k: it had k before.
    return _best_per_query(candidate_query, candidate_index, candidate_score, count, k)


def _best_per_query(query, index, score, count, k):
    """Return the k best (index, score) candidates of each of `count` queries, as (count, k) arrays.

    Each query must have at least k candidates. Equal scores go to the lower index.
    """
    order = np.lexsort((index, -score, query))
    sorted_query = query[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_query, sorted_query)
    chosen = order[rank < k]
    return index[chosen].reshape(count, k), score[chosen].reshape(count, k)


class _Scratch:
    """Memory for one block of scores and one block of comparisons, reused by every block.

    A view of `rows` x `columns` is taken from the front of a flat buffer, so it is
    contiguous whatever its shape, and matmul writes into it with BLAS.
    """

    def __init__(self, size):
        self.size = size
        self._scores = None
        self._mask = None

    def scores(self, rows, columns):
        if self._scores is None:
            self._scores = np.empty(self.size, dtype=np.float32)
        return self._scores[: rows * columns].reshape(rows, columns)

    def mask(self, rows, columns):
        if self._mask is None:
            self._mask = np.empty(self.size, dtype=bool)
        return self._mask[: rows * columns].reshape(rows, columns)


def _exclusion_pairs(exclude, n_queries):
    """Return (query numbers, row indices) arrays of the rows to leave out per query."""
    if not exclude:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    queries = [q for q in range(n_queries) for _ in exclude[q]]
    rows = [row for q in range(n_queries) for row in exclude[q]]
    return np.asarray(queries, dtype=np.int64), np.asarray(rows, dtype=np.int64)
