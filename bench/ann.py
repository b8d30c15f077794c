"""Benchmark approximate neighbours (embcli index, neighbors --approx) against exact search.

    .venv/bin/python bench/ann.py                              # IVF, synthetic 1,000,000 x 300 model
    .venv/bin/python bench/ann.py --rows 100000                # a quicker run
    .venv/bin/python bench/ann.py --kind hnsw --rows 100000    # the HNSW graph instead

The synthetic model is a low-rank matrix plus noise. Each row is a random mix of 64
random directions in 300 dimensions (each coordinate has variance 1), plus Gaussian
noise with standard deviation 0.3. Its neighbour structure thus has fewer dimensions
than the matrix, as we assume trained embeddings have; this is not measured on real data.
The queries are 1,000 random rows, answered in one batch, leaving the query row out.
Recall@10 is the share of the exact top 10 (embcli's numpy search) that the index
returns. Times are wall-clock seconds per query for the whole batch, measured in this
process after a warm-up query. Each round times the exact search and then the index at
every setting back to back, so the speed-up compares times taken under the same load;
`--rounds` repeats that to show the spread. The index searches with `--search-threads`
threads (1 by default); the exact search uses as many threads as numpy's BLAS library
starts (2 on the benchmark machine).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from embcli.ann import INDEX_FILES
from scale_common import EMBCLI, run


def write_model(directory, rows, dim, seed=1):
    """Write a model directory with a synthetic (rows, dim) matrix, block by block."""
    from embcli import store

    os.makedirs(directory)
    generator = np.random.default_rng(seed)
    basis = generator.standard_normal((64, dim)).astype(np.float32) / np.sqrt(64)
    path = os.path.join(directory, store.EMBEDDINGS)
    matrix = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    for begin in range(0, rows, 100_000):
        count = min(100_000, rows - begin)
        mix = generator.standard_normal((count, 64)).astype(np.float32)
        noise = generator.standard_normal((count, dim)).astype(np.float32) * 0.3
        matrix[begin : begin + count] = mix @ basis + noise
    matrix.flush()
    del matrix
    with open(os.path.join(directory, store.VOCAB), "w", encoding="utf-8") as handle:
        for row in range(rows):
            handle.write(f"w{row}\t{rows - row}\n")
    meta = store.new_meta({"name": "whitespace", "lowercase": False})
    meta["dim"] = dim
    meta["vocab"] = {"size": rows}
    meta["files"] = {store.VOCAB: store.fingerprint(os.path.join(directory, store.VOCAB)),
                     store.EMBEDDINGS: store.fingerprint(path)}
    store.commit(directory, {store.META: store.meta_temp(directory, meta)})


def rss_megabytes():
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=300)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kind", choices=["ivf", "hnsw"], default="ivf")
    parser.add_argument("--nlist", type=int, help="ivf: lists (default: embcli's default for the row count)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[128, 256, 384, 512])
    parser.add_argument("--rerank", type=int, nargs="+", default=[200, 400, 800],
                        help="ivf: candidates re-scored exactly")
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--threads", type=int, default=2, help="threads for building the index")
    parser.add_argument("--search-threads", type=int, default=1, help="threads for searching the index")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of exact then approximate timing")
    parser.add_argument("--keep", help="keep the model here instead of a temporary directory")
    parser.add_argument("--reuse-index", action="store_true", help="with --keep: search the index already there")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="embcli-bench-ann-")
    model_dir = args.keep or os.path.join(work, "model")
    try:
        if not os.path.exists(os.path.join(model_dir, "meta.json")):
            started = time.time()
            write_model(model_dir, args.rows, args.dim)
            print(f"wrote a synthetic {args.rows:,} x {args.dim} model in {time.time() - started:.1f} s", flush=True)
        if not (args.reuse_index and os.path.exists(os.path.join(model_dir, "ann.json"))):
            command = EMBCLI + ["index", "-q", "-m", model_dir, "--kind", args.kind, "--threads", str(args.threads)]
            if args.kind == "hnsw":
                command += ["--m", str(args.m), "--ef-construction", str(args.ef_construction)]
                settings = f"M {args.m}, ef_construction {args.ef_construction}"
            elif args.nlist:
                command += ["--nlist", str(args.nlist)]
            seconds, _ = run(command)
            with open(os.path.join(model_dir, "ann.json"), encoding="utf-8") as handle:
                description = json.load(handle)
            if args.kind == "ivf":
                settings = f"nlist {description['nlist']}, {description['training_rows']:,} training rows"
            print(f"embcli index --kind {args.kind} ({settings}, {args.threads} threads): {seconds:.1f} s",
                  flush=True)
        size = os.path.getsize(os.path.join(model_dir, INDEX_FILES[args.kind]))
        print(f"index file {size / 2**20:,.0f} MiB", flush=True)
        measure(model_dir, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(model_dir, args):
    import embcli
    from embcli.ann import open_index

    model = embcli.load(model_dir)
    rows = np.random.default_rng(7).choice(len(model.words), size=args.queries, replace=False)
    words = [model.words[row] for row in rows]
    _ = model.inverse_norms  # computed once per opened model, so not part of a query's time

    if args.kind == "ivf":
        import faiss  # noqa: F401 (imported first, so the RSS below is the index's alone)
    else:
        import hnswlib  # noqa: F401
    before = rss_megabytes()
    started = time.perf_counter()
    index = open_index(model)
    print(f"open index: {time.perf_counter() - started:.2f} s, RSS +{rss_megabytes() - before:,.0f} MB", flush=True)
    if args.kind == "ivf":
        import faiss

        faiss.omp_set_num_threads(args.search_threads)
        settings = [(nprobe, rerank) for nprobe in args.nprobe for rerank in args.rerank]
        header = "| nprobe | rerank "
    else:
        index.index.set_num_threads(args.search_threads)
        settings = [(ef, 0) for ef in args.ef]
        header = "| ef "

    model.neighbors_batch(words[:1], 10)
    exact = model.neighbors_batch(words, 10)
    recalls = {}
    for effort, rerank in settings:
        approx = index.neighbors_batch(words, 10, effort, rerank=rerank)
        hits = sum(len({w for w, _ in a} & {w for w, _ in e}) for a, e in zip(approx, exact))
        recalls[effort, rerank] = hits / sum(len(e) for e in exact)

    for round_number in range(1, args.rounds + 1):
        started = time.perf_counter()
        model.neighbors_batch(words, 10)
        exact_seconds = (time.perf_counter() - started) / len(words)
        print(f"\nround {round_number}: exact search {exact_seconds * 1e3:.2f} ms per query", flush=True)
        print(f"\n{header}| recall@10 | ms per query | speed-up vs exact |")
        print("|---:" * header.count("|") + "|---:|---:|---:|")
        for effort, rerank in settings:
            index.neighbors_batch(words[:1], 10, effort, rerank=rerank)
            started = time.perf_counter()
            index.neighbors_batch(words, 10, effort, rerank=rerank)
            seconds = (time.perf_counter() - started) / len(words)
            columns = f"| {effort} | {rerank} " if args.kind == "ivf" else f"| {effort} "
            print(f"{columns}| {recalls[effort, rerank]:.4f} | {seconds * 1e3:.3f} | "
                  f"{exact_seconds / seconds:.1f}x |", flush=True)
    print(f"\nRSS after the searches: {rss_megabytes():,.0f} MB (includes mapped pages of the model and index "
          "files that the searches read)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
