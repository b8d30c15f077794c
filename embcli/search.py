"""Cosine similarity search over a matrix of word vectors, with numpy only.

Scores are matrix products of a block of queries with a block of rows, so memory stays
at one (QUERY_BLOCK x ROW_BLOCK) block of scores however large the vocabulary is, and
each row's norm is computed once per search, from the block already in memory. A row
with zero norm has cosine 0 with every vector, never NaN, and is never returned as a
neighbour: it has no direction.
"""

import numpy as np

ROW_BLOCK = 16384
QUERY_BLOCK = 512
_NEVER = np.float32(-np.inf)


def row_norms(matrix, block=ROW_BLOCK):
    """Return the L2 norm of each row as float32, reading `matrix` one block at a time."""
    norms = np.empty(matrix.shape[0], dtype=np.float32)
    for start in range(0, matrix.shape[0], block):
        rows = np.asarray(matrix[start : start + block], dtype=np.float32)
        norms[start : start + block] = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    return norms


def safe_inverse(norms):
    """Return 1/norm, with 0 where the norm is 0 (so zero rows score 0, not NaN)."""
    inverse = np.zeros_like(norms, dtype=np.float32)
    np.divide(1.0, norms, out=inverse, where=norms > 0)
    return inverse


def unit_rows(vectors):
    """Return `vectors` (Q, D) scaled to unit length as float32; zero rows stay zero."""
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    return vectors * safe_inverse(np.sqrt(np.einsum("ij,ij->i", vectors, vectors)))[:, None]


def cosine(a, b):
    """Return the cosine similarity of two vectors as a float; 0.0 if either is zero."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if norms == 0:
        return 0.0
    return float(np.clip(np.dot(a, b) / norms, -1.0, 1.0))


def top_k(matrix, queries, k, exclude=None, limit=None, inverse_norms=None):
    """Return [(indices, scores)] for each query: the k rows most cosine-similar to it.

    `queries` is (Q, D) and need not be normalized; a zero query gets no results.
    `exclude` is a list of Q collections of row indices to leave out. `limit` searches
    only the first `limit` rows (the most frequent words). Results are sorted by score,
    highest first, ties by row. Fewer than k come back when fewer rows qualify.
    `inverse_norms` (V,) are 1/norm of each row, computed from the matrix when None.
    """
    units = unit_rows(queries)

    def score(part, inverse, rows):
        return (units[rows] @ part.T) * inverse

    results = _search(matrix, len(units), k, score, exclude, limit, inverse_norms)
    zero = ~units.any(axis=1)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
    return [empty if zero[q] else result for q, result in enumerate(results)]


def top_k_cosmul(matrix, a, b, c, k, exclude=None, limit=None, epsilon=1e-6, inverse_norms=None):
    """Return [(indices, scores)] ranked by 3CosMul for the analogies a : b :: c : ?.

    3CosMul (Levy and Goldberg, 2014) scores row d as cos'(d, b) cos'(d, c) /
    (cos'(d, a) + epsilon), with each cosine shifted to [0, 1] by cos' = (1 + cos) / 2,
    as gensim's most_similar_cosmul does. `a`, `b`, `c` are (Q, D).
    """
    unit_a, unit_b, unit_c = unit_rows(a), unit_rows(b), unit_rows(c)

    def score(part, inverse, rows):
        shifted = [((u[rows] @ part.T) * inverse + 1.0) / 2.0 for u in (unit_a, unit_b, unit_c)]
        return shifted[1] * shifted[2] / (shifted[0] + np.float32(epsilon))

    return _search(matrix, len(unit_a), k, score, exclude, limit, inverse_norms)


def _search(matrix, n_queries, k, score, exclude, limit, inverse_norms=None):
    """Run `score(part, inverse_norms, query_slice)` over all blocks; keep the top k."""
    rows_total = matrix.shape[0] if limit is None else min(limit, matrix.shape[0])
    k = max(0, min(k, rows_total))
    best_index = np.zeros((n_queries, 0), dtype=np.int64)
    best_score = np.zeros((n_queries, 0), dtype=np.float32)
    pairs = _exclusion_pairs(exclude, n_queries)
    if k == 0 or n_queries == 0:
        return [(best_index[q], best_score[q]) for q in range(n_queries)]
    for start in range(0, rows_total, ROW_BLOCK):
        stop = min(start + ROW_BLOCK, rows_total)
        part = np.asarray(matrix[start:stop], dtype=np.float32)  # (B, D), a view of the mmap
        if inverse_norms is None:
            inverse = safe_inverse(np.sqrt(np.einsum("ij,ij->i", part, part)))
        else:
            inverse = inverse_norms[start:stop]
        zero_rows = np.flatnonzero(inverse == 0)
        in_block = (pairs[1] >= start) & (pairs[1] < stop)
        block_pairs = (pairs[0][in_block], pairs[1][in_block] - start)
        new_index = np.empty((n_queries, min(k, stop - start)), dtype=np.int64)
        new_score = np.empty(new_index.shape, dtype=np.float32)
        for q_start in range(0, n_queries, QUERY_BLOCK):
            q_stop = min(q_start + QUERY_BLOCK, n_queries)
            scores = score(part, inverse, slice(q_start, q_stop))  # (Qb, B)
            scores[:, zero_rows] = _NEVER
            mine = (block_pairs[0] >= q_start) & (block_pairs[0] < q_stop)
            scores[block_pairs[0][mine] - q_start, block_pairs[1][mine]] = _NEVER
            take = new_index.shape[1]
            if take < stop - start:
                picked = np.argpartition(-scores, take - 1, axis=1)[:, :take]
            else:
                picked = np.broadcast_to(np.arange(stop - start), (q_stop - q_start, stop - start))
            new_index[q_start:q_stop] = picked + start
            new_score[q_start:q_stop] = np.take_along_axis(scores, picked, axis=1)
        best_index = np.concatenate([best_index, new_index], axis=1)
        best_score = np.concatenate([best_score, new_score], axis=1)
        if best_index.shape[1] > k:
            keep = np.argpartition(-best_score, k - 1, axis=1)[:, :k]
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


def _exclusion_pairs(exclude, n_queries):
    """Return (query numbers, row indices) arrays of the rows to leave out per query."""
    if not exclude:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    queries = [q for q in range(n_queries) for _ in exclude[q]]
    rows = [row for q in range(n_queries) for row in exclude[q]]
    return np.asarray(queries, dtype=np.int64), np.asarray(rows, dtype=np.int64)
