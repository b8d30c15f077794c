"""Cosine similarity search over a matrix of word vectors, with numpy only.

Scores are computed as matrix products over blocks of rows, so memory stays at one
block of scores however large the vocabulary is. A row with zero norm has cosine 0 with
every query, never NaN.
"""

import numpy as np

ROW_BLOCK = 1 << 16


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


def top_k(matrix, inverse_norms, queries, k, exclude=None, limit=None, block=ROW_BLOCK):
    """Return (indices, scores), each (Q, k'), of the rows most cosine-similar to each query.

    `queries` is (Q, D) and need not be normalized; a zero query gets no results.
    `exclude` is a list of Q collections of row indices to leave out. `limit` searches
    only the first `limit` rows (the most frequent words). k' = min(k, rows searched).
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    rows = matrix.shape[0] if limit is None else min(limit, matrix.shape[0])
    query_norms = np.linalg.norm(queries, axis=1)
    units = queries * safe_inverse(query_norms)[:, None]
    extra = max((len(e) for e in exclude), default=0) if exclude else 0
    want = min(k + extra, rows)
    best_index = np.zeros((len(queries), 0), dtype=np.int64)
    best_score = np.zeros((len(queries), 0), dtype=np.float32)
    for start in range(0, rows, block):
        stop = min(start + block, rows)
        part = np.asarray(matrix[start:stop], dtype=np.float32)
        scores = (units @ part.T) * inverse_norms[start:stop][None, :]  # (Q, block)
        take = min(want, stop - start)
        if take < stop - start:
            picked = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        else:
            picked = np.broadcast_to(np.arange(stop - start), (len(queries), stop - start))
        picked_scores = np.take_along_axis(scores, picked, axis=1)
        best_index = np.concatenate([best_index, picked + start], axis=1)
        best_score = np.concatenate([best_score, picked_scores], axis=1)
        if best_index.shape[1] > want:
            keep = np.argpartition(-best_score, want - 1, axis=1)[:, :want]
            best_index = np.take_along_axis(best_index, keep, axis=1)
            best_score = np.take_along_axis(best_score, keep, axis=1)
    # Sort by score, highest first; ties by row (more frequent word first).
    order = np.lexsort((best_index, -best_score), axis=1) if best_index.size else best_index
    best_index = np.take_along_axis(best_index, order, axis=1)
    best_score = np.take_along_axis(best_score, order, axis=1)
    results = []
    for q in range(len(queries)):
        if query_norms[q] == 0:
            results.append((np.zeros(0, np.int64), np.zeros(0, np.float32)))
            continue
        index, score = best_index[q], best_score[q]
        if exclude and exclude[q]:
            keep = ~np.isin(index, np.fromiter(exclude[q], dtype=np.int64))
            index, score = index[keep], score[keep]
        results.append((index[:k], score[:k]))
    return results
