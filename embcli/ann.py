"""Approximate nearest neighbours, stored next to the model: an IVF index or an HNSW graph.

`build_index` writes two files into the model directory through `embcli.store`:
- the index over the rows of `embeddings.npy` scaled to unit length, in inner-product
  space, so the inner product is the cosine similarity:
  - kind `ivf`, `ann-ivf.faiss`: a faiss IndexIVFPQFastScan. k-means splits the rows
    into `nlist` lists, and a query scans only the `nprobe` lists whose centroids are
    nearest to it (Jegou, Douze and Schmid 2011, "Product quantization for nearest
    neighbor search"). The lists store product-quantization codes of 4 bits per 2
    dimensions (per dimension up to 64 dimensions), scanned with faiss's SIMD
    fast-scan kernels, so the scan reads about 1/16 of the bytes of the float32 rows.
    When the rows vary along at most a quarter of the dimensions, the lists code only
    those directions, one 4-bit code each (principal_projection; `projected_dim` in
    ann.json). A refine stage (faiss IndexRefine) holds
    every row again as 8-bit codes, one byte per dimension: the `rerank` best
    candidates by 4-bit code score are re-scored against them, and the best of those
    (see EXACT_SHARE_OF_RERANK) exactly against the memory-mapped `embeddings.npy`,
    so the returned scores are exact cosines;
  - kind `hnsw`, `ann-hnsw.bin`: an hnswlib graph (Malkov and Yashunin 2018, "Efficient
    and robust approximate nearest neighbor search using Hierarchical Navigable Small
    World graphs");
- `ann.json`: the kind, the build parameters, and the model id and `embeddings.npy`
  fingerprint it was built from. `open_index` raises IndexStale when they no longer
  match, for example after `embcli train` replaced the embeddings.

faiss (PyPI faiss-cpu) and hnswlib are the optional extra `ann`:
`pip install 'embcli[ann]'`. Queries stay exact unless the caller asks for this index.

The IVF index takes about 9 * dim / 8 + 8 bytes per word, plus nlist x dim floats of
centroids. faiss maps the 8-bit codes (IO_FLAG_MMAP_IFC) and reads the rest whole: faiss
1.15's IO_FLAG_MMAP maps only flat lists, not the fast-scan lists. An IVF index with
flat lists (IndexIVFFlat, which can be mapped) was measured too slow: on the synthetic
data of bench/ann.py, recall 0.92 took longer than exact search (docs/benchmarks.md,
section Scale).
NOTE: hnswlib 0.8 reads the whole index file into memory on load and has no
memory-mapped mode. An HNSW index of V words of dimension D with graph degree M takes
about V * (4 * D + 8 * M + 16) bytes of RAM, on top of the memory-mapped embeddings.
"""

import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time

import numpy as np

from embcli import search, store
from embcli.errors import EmbcliError, ModelNotFound, QueryError

KINDS = ("ivf", "hnsw")
DEFAULT_KIND = "ivf"
INDEX_FILES = {"ivf": "ann-ivf.faiss", "hnsw": "ann-hnsw.bin"}
INDEX_META = "ann.json"
# Format 1 had no "kind" field and was always HNSW.
INDEX_FORMAT = 2
ADD_BLOCK_ROWS = 1 << 16

# With these build settings and ef 256 at query time, recall@10 reached 0.95 on a
# 100,000 x 300 synthetic model in bench/ann.py; the default ef of 64 reached 0.84 there.
# docs/benchmarks.md (section Scale) has the table.
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 100
DEFAULT_EF_SEARCH = 64

# faiss's k-means warns below 39 training rows per centroid, so nlist is capped at
# rows / 39, and training uses at most this many rows per centroid.
MIN_TRAINING_ROWS_PER_LIST = 39
TRAINING_ROWS_PER_LIST = 40
# Rows are zero-padded to a multiple of this many dimensions.
PAD_TO = 4
# Dimensions per product-quantizer code of 4 bits, when the rows keep all their
# dimensions (see unprojected_codes). With every list scanned, the best 200 candidates
# by code score contained 82-94 % of the exact top 10 on trained text8 models
# (31,642 x 100) with 4 dimensions per code. On a small model whose rows point one way
# (1,698 x 32, mean pairwise cosine 0.88) they contained 59 %. With 2 per code: 99-100 %
# and 69 %. With 1 per code: 100 % and 96 %.
DIMENSIONS_PER_CODE = 2
# Up to this width, each dimension gets its own code: such rows are cheap to scan.
ONE_CODE_EACH_UP_TO = 64
# On the synthetic 1,000,000 x 300 model of bench/ann.py (nlist 1000), nprobe 256 with
# 400 re-scored candidates reached recall@10 0.95 at 11-13x the speed of exact search,
# and 200 candidates only 0.92. docs/benchmarks.md (section Scale) has the table.
DEFAULT_RERANK = 400
# Codes of one projected direction each order the candidates well enough that 200 of them
# found as much of the exact top 10 as 400 (0.961 and 0.963 at nprobe 256, 1M model).
PROJECTED_RERANK = 200
# A share of the lists, not a count, because on that data recall depends mainly on the
# share of the rows scanned.
DEFAULT_NPROBE_SHARE = 0.3
# With a refine stage, the exact re-scoring reads this many rows per requested
# neighbour, and at least 1 / EXACT_SHARE_OF_RERANK of the --rerank candidates. 8-bit codes cannot
# order the rows of a model whose vectors all point one way: on a small trained model
# with a mean pairwise cosine of 0.94, re-scoring only 2 x k exactly found 84 % of the
# exact top 10 even with every list scanned and --rerank past the vocabulary size.
REFINED_PER_ANSWER = 2
EXACT_SHARE_OF_RERANK = 8
# When the rows vary along few directions, the lists code only those, one direction per
# 4-bit code (see principal_projection). On the synthetic model of bench/ann.py (a rank-64
# mix plus noise) this found the 64 mixed directions. It reached recall@10 0.958 at
# nprobe 256 with 200 candidates. Four dimensions per code scanned 75 codes per row
# instead of 64 and needed 400 candidates for 0.950 (docs/benchmarks.md, section Scale).
NOISE_FLOOR_FACTOR = 2.0
# A direction holding less than this share of the rows' variance counts as none.
NUMERICAL_ZERO = 1e-6
PROJECTED_VARIANCE = 0.9


def default_nlist(rows):
    """Return the default number of IVF lists: about sqrt(rows), at most rows / 39."""
    return max(1, min(int(round(math.sqrt(rows))), rows // MIN_TRAINING_ROWS_PER_LIST))


def default_nprobe(nlist):
    return max(1, int(round(nlist * DEFAULT_NPROBE_SHARE)))


def _padded(rows, width):
    """Return `rows` with zero columns appended up to `width` (inner products unchanged)."""
    if rows.shape[1] == width:
        return np.ascontiguousarray(rows)
    out = np.zeros((rows.shape[0], width), dtype=np.float32)
    out[:, : rows.shape[1]] = rows
    return out


@contextlib.contextmanager
def _library_stderr(lines):
    """Collect into `lines` what native code writes on file descriptor 2 meanwhile.

    faiss prints its warnings from C++ straight to the process's stderr, past --quiet.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # stderr closed: nothing to keep the messages from
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                lines.extend(sink.read().decode("utf-8", "replace").splitlines())
    finally:
        os.close(saved)


_FEW_POINTS = re.compile(r"WARNING clustering (\d+) points to (\d+) centroids: please provide at least (\d+)")


def _training_warnings(lines, training_rows):
    """Turn faiss's training messages into embcli warnings, one per kind."""
    messages = []
    few = [match for match in map(_FEW_POINTS.search, lines) if match]
    if few:
        required = max(int(match.group(3)) for match in few)
        messages.append(
            f"{training_rows:,} rows are few to train the index's 4-bit codes (faiss asks for at "
            f"least {required:,}), so its candidates are rougher and --approx may need a larger "
            "--rerank; exact 'neighbors' is fast at this size"
        )
    others = [line.strip() for line in lines if line.strip() and not _FEW_POINTS.search(line)]
    messages.extend(f"faiss: {line}" for line in dict.fromkeys(others))
    return messages


def unprojected_codes(width):
    """Return the number of 4-bit codes per row of `width` (padded) dimensions."""
    return width if width <= ONE_CODE_EACH_UP_TO else width // DIMENSIONS_PER_CODE


def principal_projection(rows, max_directions):
    """Return a (width, d) matrix onto the principal directions of `rows` (n, width), or None.

    The directions are those whose variance across the rows is above the noise floor
    (NOISE_FLOOR_FACTOR times the median direction's, and at least NUMERICAL_ZERO of
    the whole variance). The projection is used only when there are at most
    `max_directions` of them, each with its own 4-bit code, and when they hold at least
    PROJECTED_VARIANCE of the variance. Otherwise None: the rows keep all their
    dimensions.

    The variance is taken about the mean: a direction that all rows share does not
    order them. The projection itself has no offset. In inner products that shared
    part is then a constant, which leaves the order unchanged.
    """
    if len(rows) < 2:
        return None
    centered = rows.astype(np.float64) - rows.mean(0, dtype=np.float64)
    values, vectors = np.linalg.eigh(centered.T @ centered / len(rows))
    values, vectors = values[::-1], vectors[:, ::-1]
    total = float(values.sum())
    if total <= 1e-9:
        return None  # the rows are all the same
    # Rows of exactly low rank have only rounding noise in their other directions, and
    # a median of it is no floor.
    floor = max(NOISE_FLOOR_FACTOR * float(np.median(values)), NUMERICAL_ZERO * total)
    directions = int(np.count_nonzero(values > floor))
    directions = -(-directions // PAD_TO) * PAD_TO
    if directions == 0 or directions > max_directions:
        return None
    if values[:directions].sum() < PROJECTED_VARIANCE * values.sum():
        return None
    return np.ascontiguousarray(vectors[:, :directions], dtype=np.float32)


def _unit_rows(rows):
    """Return `rows` scaled to unit length as float32; zero rows stay zero (cosine 0)."""
    return search.unit_rows(rows)


class IndexStale(EmbcliError):
    """The approximate index was built from other embeddings than the model's."""


def _import_library(kind):
    module = "faiss" if kind == "ivf" else "hnswlib"
    try:
        return __import__(module)
    except ImportError:
        package = "faiss-cpu" if kind == "ivf" else "hnswlib"
        raise EmbcliError(
            f"the {kind} index needs the {package} package; install it with "
            "pip install 'embcli[ann]'"
        ) from None


def _library_version(package):
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def build_index(model, kind=DEFAULT_KIND, nlist=None, m=DEFAULT_M, ef_construction=DEFAULT_EF_CONSTRUCTION,
                threads=0, progress=None, warn=None):
    """Build an index of `kind` for `model` (an embcli.model.Model) and commit it to its directory.

    `nlist` applies to kind ivf (None: `default_nlist`), `m` and `ef_construction` to
    kind hnsw. Rows are added in blocks read from the memory-mapped matrix, and
    `progress(rows_done, rows)` is called after each block. The index of the other kind,
    if any, is removed in the same commit. Returns the description stored in ann.json.
    """
    if kind not in KINDS:
        raise EmbcliError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    library = _import_library(kind)
    rows, dim = model.matrix.shape
    if rows == 0:
        raise EmbcliError(f"{model.path} has no words to index")
    started = time.time()
    if kind == "ivf":
        write, parameters = _build_ivf(library, model, nlist, threads, progress, warn)
    else:
        write, parameters = _build_hnsw(library, model, m, ef_construction, threads, progress)

    directory = model.path
    name = INDEX_FILES[kind]
    with store.writer_lock(directory):
        index_tmp = store.temp_path(directory, name)
        try:
            write(index_tmp)
            store.fsync_file(index_tmp)
            description = {
                "format_version": INDEX_FORMAT,
                "kind": kind,
                **parameters,
                "space": "ip",
                "rows": rows,
                "dim": dim,
                "build_seconds": round(time.time() - started, 3),
                "model_id": model.meta.get("model_id"),
                "embeddings": model.meta.get("files", {}).get(store.EMBEDDINGS),
                "index": store.fingerprint(index_tmp),
            }
            meta_tmp = store.temp_path(directory, INDEX_META)
            store.write_bytes_synced(meta_tmp, (json.dumps(description, indent=2) + "\n").encode())
            others = [INDEX_FILES[other] for other in KINDS if other != kind]
            store.commit(directory, {name: index_tmp, INDEX_META: meta_tmp}, remove=others)
        finally:
            if os.path.exists(index_tmp):
                os.remove(index_tmp)
    return description


def _build_ivf(faiss, model, nlist, threads, progress, warn=None):
    rows, dim = model.matrix.shape
    if rows < MIN_TRAINING_ROWS_PER_LIST:
        raise EmbcliError(
            f"{model.path} has {rows} words, too few to train an ivf index (at least "
            f"{MIN_TRAINING_ROWS_PER_LIST}); 'embcli neighbors' without --approx searches them exactly"
        )
    if nlist is None:
        nlist = default_nlist(rows)
    if nlist < 1:
        raise EmbcliError(f"nlist must be at least 1, not {nlist}")
    largest = rows // MIN_TRAINING_ROWS_PER_LIST
    if nlist > largest:
        raise EmbcliError(
            f"nlist {nlist} is too large for {rows:,} words: k-means needs at least "
            f"{MIN_TRAINING_ROWS_PER_LIST} rows per list, so use --nlist {largest} or less"
        )
    if threads:
        faiss.omp_set_num_threads(threads)

    # k-means trains on a random sample of rows, read in row order from the memory map.
    sample_size = min(rows, nlist * TRAINING_ROWS_PER_LIST)
    sample = np.sort(np.random.default_rng(1).choice(rows, size=sample_size, replace=False))
    padded = -(-dim // PAD_TO) * PAD_TO
    training = _padded(_unit_rows(model.matrix[sample]), padded)
    projection = principal_projection(training, padded // 4)
    coded = padded if projection is None else projection.shape[1]
    codes = unprojected_codes(padded) if projection is None else coded
    factory = f"IVF{nlist},PQ{codes}x4fs,Refine(SQ8)"
    if projection is None:
        index = faiss.index_factory(padded, factory, faiss.METRIC_INNER_PRODUCT)
    else:
        # The lists hold codes of the projected rows; the 8-bit refine stage keeps the full rows.
        transform = faiss.LinearTransform(padded, coded, False)
        faiss.copy_array_to_vector(np.ascontiguousarray(projection.T).ravel(), transform.A)
        transform.is_trained = True
        lists = faiss.index_factory(coded, f"IVF{nlist},PQ{codes}x4fs", faiss.METRIC_INNER_PRODUCT)
        refine = faiss.IndexScalarQuantizer(padded, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        projected = faiss.IndexPreTransform(transform, lists)
        index = faiss.IndexRefine(projected, refine)
        # The Python objects own the C++ ones; keep them alive as long as the index.
        index.referenced_objects = [transform, lists, projected, refine]
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = 1
    library_lines = []
    with _library_stderr(library_lines):
        index.train(training)
    for message in _training_warnings(library_lines, len(training)):
        if warn is not None:
            warn(message)

    for begin in range(0, rows, ADD_BLOCK_ROWS):
        block = _unit_rows(model.matrix[begin : begin + ADD_BLOCK_ROWS])
        index.add(_padded(block, padded))
        if progress is not None:
            progress(begin + len(block), rows)
    parameters = {
        "library": "faiss-cpu",
        "library_version": _library_version("faiss-cpu"),
        "index_factory": factory,
        "padded_dim": padded,
        "projected_dim": None if projection is None else coded,
        "nlist": nlist,
        "training_rows": sample_size,
    }
    return (lambda path: faiss.write_index(index, path)), parameters


def _build_hnsw(hnswlib, model, m, ef_construction, threads, progress):
    if m < 2:
        raise EmbcliError(f"the graph degree M must be at least 2, not {m}")
    if ef_construction < 1:
        raise EmbcliError(f"ef_construction must be at least 1, not {ef_construction}")
    rows, dim = model.matrix.shape
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=rows, M=m, ef_construction=ef_construction, random_seed=1)
    index.set_num_threads(threads or os.cpu_count() or 1)
    for begin in range(0, rows, ADD_BLOCK_ROWS):
        block = _unit_rows(model.matrix[begin : begin + ADD_BLOCK_ROWS])
        index.add_items(block, np.arange(begin, begin + len(block)))
        if progress is not None:
            progress(begin + len(block), rows)
    parameters = {
        "library": "hnswlib",
        "library_version": _library_version("hnswlib"),
        "M": m,
        "ef_construction": ef_construction,
    }
    return index.save_index, parameters


class ApproximateIndex:
    """An opened index whose ids are the rows of the model's matrix.

    `kind` is "ivf" or "hnsw". `effort` in `neighbors_batch` is nprobe (lists scanned)
    for ivf and ef (candidates kept) for hnsw: more is slower and finds more true
    neighbours. `rerank` (ivf only) is how many candidates are re-scored exactly.
    """

    def __init__(self, model, index, description, library=None):
        self.model = model
        self.index = index
        self.description = description
        self.kind = description["kind"]
        self.library = library  # the faiss or hnswlib module

    @property
    def default_effort(self):
        if self.kind == "ivf":
            return default_nprobe(int(self.description["nlist"]))
        return DEFAULT_EF_SEARCH

    @property
    def default_rerank(self):
        return PROJECTED_RERANK if self.description.get("projected_dim") else DEFAULT_RERANK

    def neighbors_batch(self, words, k=10, effort=None, rerank=None):
        """Return, for each word, [(word, cosine)] of about the k nearest other words."""
        rows = self.model.rows(words)
        for word, row in zip(words, rows):
            self.check_query(word, row)
        return self.neighbors_of_rows(rows, k, effort, rerank)

    def check_query(self, word, row):
        """Raise QueryError if the vector of `word` (at `row`) cannot be searched."""
        if not np.any(self.model.matrix[row]):
            raise QueryError(f"{word}: its vector is all zeros, so cosine similarity is undefined")

    def neighbors_of_rows(self, rows, k=10, effort=None, rerank=None):
        """Return neighbors_batch's result for matrix rows whose vectors passed check_query."""
        if k <= 0 or not rows:
            return [[] for _ in rows]
        queries = _unit_rows(self.model.matrix[rows])
        effort = self.default_effort if effort is None else effort
        rerank = self.default_rerank if rerank is None else rerank
        if effort < 1:
            raise QueryError(f"{'nprobe' if self.kind == 'ivf' else 'ef'} must be at least 1, not {effort}")
        want = min(k + 1, int(self.description["rows"]))
        if self.kind == "ivf":
            labels, similarities = self._search_ivf(queries, want, effort, max(rerank, want))
        else:
            self.index.set_ef(max(effort, want))
            labels, distances = self.index.knn_query(queries, k=want)
            similarities = 1.0 - distances
        results = []
        for row, found, similarity in zip(rows, labels, similarities):
            # Id -1 pads the result when the scanned lists hold fewer rows than asked for.
            pairs = [(int(i), float(s)) for i, s in zip(found, similarity) if int(i) != row and i >= 0]
            results.append([(self.model.words[i], score) for i, score in pairs[:k]])
        return results

    def _search_ivf(self, queries, want, nprobe, candidates):
        """Return (ids, cosines), each (Q, want): the best `candidates` by code score, re-scored exactly.

        With a refine stage (indexes built with "Refine(SQ8)"), faiss re-scores the
        `candidates` against 8-bit codes of the rows, in its own threads. Only the best
        of them are read from the memory-mapped embeddings.npy: REFINED_PER_ANSWER *
        want, or candidates / EXACT_SHARE_OF_RERANK if more. Older indexes re-score
        all `candidates` from it.
        """
        faiss = self.library
        ivf = faiss.extract_index_ivf(self.index)
        nprobe = min(nprobe, ivf.nlist)
        padded = _padded(queries, int(self.description["padded_dim"]))
        if isinstance(self.index, faiss.IndexRefine):
            keep = min(candidates, max(REFINED_PER_ANSWER * want, candidates // EXACT_SHARE_OF_RERANK))
            lists = faiss.SearchParametersIVF(nprobe=nprobe)
            if isinstance(faiss.downcast_index(self.index.base_index), faiss.IndexPreTransform):
                lists = faiss.SearchParametersPreTransform(index_params=lists)
            params = faiss.IndexRefineSearchParameters(k_factor=candidates / keep, base_index_params=lists)
            _, found = self.index.search(padded, keep, params=params)
            return self._rescore_batch(queries, found, want)
        ivf.nprobe = nprobe
        _, found = self.index.search(padded, candidates)
        inverse_norms = self.model.inverse_norms
        ids = np.full((len(queries), want), -1, dtype=np.int64)
        scores = np.full((len(queries), want), -np.inf, dtype=np.float32)
        for q, (query, row_ids) in enumerate(zip(queries, found)):
            # Sorted ids read the memory-mapped matrix in file order.
            row_ids = np.unique(row_ids[row_ids >= 0])
            if search.has_extreme_norms(inverse_norms[row_ids]):
                exact = search.unit_rows(self.model.matrix[row_ids]) @ query
            else:
                exact = (self.model.matrix[row_ids] @ query) * inverse_norms[row_ids]
            best = np.argsort(-exact, kind="stable")[:want]
            ids[q, : len(best)] = row_ids[best]
            scores[q, : len(best)] = exact[best]
        return ids, scores

    def _rescore_batch(self, queries, found, want, block=1024):
        """Re-score the candidate ids `found` (Q, n; -1 for none) exactly, `block` queries
        at a time: each block reads its distinct rows once, in file order."""
        inverse_norms = self.model.inverse_norms
        ids = np.full((len(queries), want), -1, dtype=np.int64)
        scores = np.full((len(queries), want), -np.inf, dtype=np.float32)
        for begin in range(0, len(queries), block):
            part = found[begin : begin + block]
            distinct, where = np.unique(np.maximum(part, 0), return_inverse=True)
            rows = np.asarray(self.model.matrix[distinct], dtype=np.float32)
            if search.has_extreme_norms(inverse_norms[distinct]):
                rows = search.unit_rows(rows)
            else:
                rows *= inverse_norms[distinct][:, None]
            exact = np.einsum("qkd,qd->qk", rows[where.reshape(part.shape)], queries[begin : begin + block])
            exact[part < 0] = -np.inf
            best = np.argsort(-exact, axis=1, kind="stable")[:, :want]
            ids[begin : begin + block] = np.take_along_axis(part, best, 1)
            scores[begin : begin + block] = np.take_along_axis(exact, best, 1)
        return ids, scores


def read_description(directory):
    """Return the parsed ann.json of `directory`, raising ModelNotFound or IndexStale."""
    meta_path = os.path.join(directory, INDEX_META)
    try:
        with open(meta_path, "rb") as handle:
            description = json.loads(handle.read())
    except FileNotFoundError:
        raise ModelNotFound(
            f"{directory} has no approximate index; build it with 'embcli index -m {directory}'"
        ) from None
    except ValueError as error:
        raise IndexStale(f"{meta_path}: not valid JSON ({error}); rebuild it with 'embcli index'") from None
    if not isinstance(description, dict) or description.get("format_version") not in (1, INDEX_FORMAT):
        raise IndexStale(f"{meta_path}: unknown index format; rebuild it with 'embcli index'")
    if description["format_version"] == 1:
        description["kind"] = "hnsw"
    if description.get("kind") not in KINDS:
        raise IndexStale(f"{meta_path}: unknown index kind {description.get('kind')!r}; rebuild it with 'embcli index'")
    return description


def open_index(model):
    """Open the approximate index next to `model`, checking that it belongs to its embeddings."""
    directory = model.path
    description = read_description(directory)
    kind = description["kind"]
    library = _import_library(kind)
    index_path = os.path.join(directory, INDEX_FILES[kind])
    current = model.meta.get("files", {}).get(store.EMBEDDINGS)
    if description.get("embeddings") != current or description.get("model_id") != model.meta.get("model_id"):
        raise IndexStale(
            f"{index_path} was built from other embeddings than the ones in {directory} "
            "(the model was retrained or replaced); rebuild it with 'embcli index'"
        )
    if not os.path.exists(index_path):
        raise ModelNotFound(f"{index_path} is missing; rebuild it with 'embcli index'")
    if not store.fingerprint_matches(index_path, description.get("index") or ""):
        raise IndexStale(f"{index_path} does not match {INDEX_META}; rebuild it with 'embcli index'")
    if kind == "ivf":
        index = _read_ivf(library, index_path)
    else:
        index = library.Index(space="ip", dim=int(description["dim"]))
        try:
            index.load_index(index_path, max_elements=int(description["rows"]))
        except RuntimeError as error:
            raise IndexStale(f"{index_path}: cannot be read ({error}); rebuild it with 'embcli index'") from None
    return ApproximateIndex(model, index, description, library)


def _read_ivf(faiss, index_path):
    try:
        # IO_FLAG_MMAP_IFC maps the refine stage's 8-bit codes instead of reading them.
        index = faiss.read_index(index_path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as error:
        message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise IndexStale(f"{index_path}: cannot be read ({message}); rebuild it with 'embcli index'") from None
    # read_index returns the concrete class. With IO_FLAG_MMAP its lists are an
    # OnDiskInvertedLists over the mapped file.
    base = faiss.downcast_index(index.base_index) if isinstance(index, faiss.IndexRefine) else index
    if isinstance(base, faiss.IndexPreTransform):
        base = faiss.downcast_index(base.index)
    if not isinstance(base, faiss.IndexIVF):
        raise IndexStale(f"{index_path}: not an IVF index; rebuild it with 'embcli index'")
    return index
