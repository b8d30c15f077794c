"""Approximate nearest neighbours with an HNSW graph (hnswlib), stored next to the model.

`build_index` writes two files into the model directory through `embcli.store`:
- `ann-hnsw.bin`: hnswlib's index over the rows of `embeddings.npy` scaled to unit
  length, in inner-product space, so 1 - distance is the cosine similarity;
- `ann.json`: the build parameters, and the model id and `embeddings.npy` fingerprint it
  was built from. `open_index` raises IndexStale when they no longer match, for example
  after `embcli train` replaced the embeddings.

hnswlib (Malkov and Yashunin 2018, "Efficient and robust approximate nearest neighbor
search using Hierarchical Navigable Small World graphs") is the optional extra `ann`:
`pip install 'embcli[ann]'`. Queries stay exact unless the caller asks for this index.

NOTE: hnswlib 0.8 reads the whole index file into memory on load and has no
memory-mapped mode. An index of V words of dimension D with graph degree M takes about
V * (4 * D + 8 * M + 16) bytes of RAM, on top of the memory-mapped embeddings.
"""

import json
import os
import time

import numpy as np

from embcli import search, store
from embcli.errors import EmbcliError, ModelNotFound, QueryError

INDEX = "ann-hnsw.bin"
INDEX_META = "ann.json"
INDEX_FORMAT = 1
ADD_BLOCK_ROWS = 1 << 16

# With these build settings and ef 256 at query time, recall@10 reached 0.95 on a
# 100,000 x 300 synthetic model in bench/ann.py; the default ef of 64 reached 0.84 there.
# docs/benchmarks.md (section Scale) has the table.
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 100
DEFAULT_EF_SEARCH = 64


def _unit_rows(rows):
    """Return `rows` scaled to unit length as float32; zero rows stay zero (cosine 0)."""
    rows = np.asarray(rows, dtype=np.float32)
    return rows * search.safe_inverse(search.row_norms(rows))[:, None]


class IndexStale(EmbcliError):
    """The approximate index was built from other embeddings than the model's."""


def _import_hnswlib():
    try:
        import hnswlib
    except ImportError:
        raise EmbcliError(
            "approximate search needs the hnswlib package; install it with "
            "pip install 'embcli[ann]'"
        ) from None
    return hnswlib


def _library_version():
    from importlib import metadata

    try:
        return metadata.version("hnswlib")
    except metadata.PackageNotFoundError:
        return None


def build_index(model, m=DEFAULT_M, ef_construction=DEFAULT_EF_CONSTRUCTION, threads=0, progress=None):
    """Build the HNSW index of `model` (an embcli.model.Model) and commit it to its directory.

    Rows are added in blocks read from the memory-mapped matrix. `progress(rows_done,
    rows)` is called after each block. Returns the index description stored in ann.json.
    """
    hnswlib = _import_hnswlib()
    if m < 2:
        raise EmbcliError(f"the graph degree M must be at least 2, not {m}")
    if ef_construction < 1:
        raise EmbcliError(f"ef_construction must be at least 1, not {ef_construction}")
    rows, dim = model.matrix.shape
    started = time.time()
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=rows, M=m, ef_construction=ef_construction, random_seed=1)
    index.set_num_threads(threads or os.cpu_count() or 1)
    for begin in range(0, rows, ADD_BLOCK_ROWS):
        block = _unit_rows(model.matrix[begin : begin + ADD_BLOCK_ROWS])
        index.add_items(block, np.arange(begin, begin + len(block)))
        if progress is not None:
            progress(begin + len(block), rows)

    directory = model.path
    index_tmp = store.temp_path(directory, INDEX)
    try:
        index.save_index(index_tmp)
        store.fsync_file(index_tmp)
        description = {
            "format_version": INDEX_FORMAT,
            "library": "hnswlib",
            "library_version": _library_version(),
            "space": "ip",
            "rows": rows,
            "dim": dim,
            "M": m,
            "ef_construction": ef_construction,
            "build_seconds": round(time.time() - started, 3),
            "model_id": model.meta.get("model_id"),
            "embeddings": model.meta.get("files", {}).get(store.EMBEDDINGS),
            "index": store.fingerprint(index_tmp),
        }
        meta_tmp = store.temp_path(directory, INDEX_META)
        store.write_bytes_synced(meta_tmp, (json.dumps(description, indent=2) + "\n").encode())
        store.commit(directory, {INDEX: index_tmp, INDEX_META: meta_tmp})
    finally:
        for path in (index_tmp,):
            if os.path.exists(path):
                os.remove(path)
    return description


class ApproximateIndex:
    """An opened HNSW index whose rows are the rows of the model's matrix."""

    def __init__(self, model, index, description):
        self.model = model
        self.index = index
        self.description = description

    def neighbors_batch(self, words, k=10, ef=DEFAULT_EF_SEARCH):
        """Return, for each word, [(word, cosine)] of about the k nearest other words."""
        rows = [self.model.row(word) for word in words]
        if k <= 0 or not rows:
            return [[] for _ in rows]
        queries = _unit_rows(self.model.matrix[rows])
        for word, query in zip(words, queries):
            if not np.any(query):
                raise QueryError(f"{word}: its vector is all zeros, so cosine similarity is undefined")
        want = min(k + 1, self.index.get_current_count())
        self.index.set_ef(max(ef, want))
        labels, distances = self.index.knn_query(queries, k=want)
        results = []
        for row, found, distance in zip(rows, labels, distances):
            pairs = [(int(i), 1.0 - float(d)) for i, d in zip(found, distance) if int(i) != row]
            results.append([(self.model.words[i], score) for i, score in pairs[:k]])
        return results


def open_index(model):
    """Open the approximate index next to `model`, checking that it belongs to its embeddings."""
    hnswlib = _import_hnswlib()
    directory = model.path
    meta_path = os.path.join(directory, INDEX_META)
    index_path = os.path.join(directory, INDEX)
    try:
        with open(meta_path, "rb") as handle:
            description = json.loads(handle.read())
    except FileNotFoundError:
        raise ModelNotFound(
            f"{directory} has no approximate index; build it with 'embcli index -m {directory}'"
        ) from None
    except ValueError as error:
        raise IndexStale(f"{meta_path}: not valid JSON ({error}); rebuild it with 'embcli index'") from None
    if not isinstance(description, dict) or description.get("format_version") != INDEX_FORMAT:
        raise IndexStale(f"{meta_path}: unknown index format; rebuild it with 'embcli index'")
    current = model.meta.get("files", {}).get(store.EMBEDDINGS)
    if description.get("embeddings") != current or description.get("model_id") != model.meta.get("model_id"):
        raise IndexStale(
            f"{index_path} was built from other embeddings than the ones in {directory} "
            "(the model was retrained or replaced); rebuild it with 'embcli index'"
        )
    if not os.path.exists(index_path):
        raise ModelNotFound(f"{index_path} is missing; rebuild it with 'embcli index'")
    if store.fingerprint(index_path) != description.get("index"):
        raise IndexStale(f"{index_path} does not match {INDEX_META}; rebuild it with 'embcli index'")
    index = hnswlib.Index(space="ip", dim=int(description["dim"]))
    try:
        index.load_index(index_path, max_elements=int(description["rows"]))
    except RuntimeError as error:
        raise IndexStale(f"{index_path}: cannot be read ({error}); rebuild it with 'embcli index'") from None
    return ApproximateIndex(model, index, description)
