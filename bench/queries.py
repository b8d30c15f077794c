"""Benchmark embcli's query commands against their peers, as whole commands in one run.

    .venv/bin/python bench/queries.py                 # full sizes (several minutes, ~3 GB disk)
    .venv/bin/python bench/queries.py --quick         # smaller sizes, for a smoke run

Prints one line per measurement and the ratio against the peer measured in the same run:
1. `embcli neighbors WORD` on a synthetic 100k x 300 model vs `python -c "import numpy, typer"`
   (target: at most 1.3x);
2. neighbour queries from stdin vs a script that loads the same vectors in gensim and calls
   `most_similar` once per query (target: at least 20x faster);
3. `embcli import` of a 1M x 300 word2vec binary file vs a script that calls gensim's
   `load_word2vec_format` on it (target: at least 5x faster), with the CPU time of each and
   the time `dd conv=fsync` takes to write the same number of bytes durably;
4. peak resident memory of `embcli neighbors` minus that of `python -c "import numpy, typer"`,
   against the matrix size plus one block of scores.
Synthetic vectors are standard normal; words are "w0", "w1", ... Files go to bench/out/.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
PYTHON = sys.executable
EMBCLI = [PYTHON, "-m", "embcli"]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


def run(command, stdin=None):
    """Run `command`; return (seconds, peak RSS in KiB, CPU seconds) measured by /usr/bin/time.

    CPU seconds are user plus system time of the command and its children.
    """
    started = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", *command], stdin=stdin, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=ENV)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr.decode()[-2000:]}")
    peak, user, system = result.stderr.decode().strip().splitlines()[-1].split()
    return seconds, int(peak), float(user) + float(system)


def best_of(command, repeat, stdin_path=None):
    times, peaks = [], []
    for _ in range(repeat):
        stdin = open(stdin_path, "rb") if stdin_path else None
        try:
            seconds, peak, _ = run(command, stdin)
        finally:
            if stdin:
                stdin.close()
        times.append(seconds)
        peaks.append(peak)
    return statistics.median(times), max(peaks)


def make_model(name, rows, dim, seed=0):
    """Import a synthetic rows x dim model through `embcli import`; return its directory."""
    directory = os.path.join(OUT, name)
    if os.path.exists(os.path.join(directory, "meta.json")):
        return directory
    matrix = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    npy = os.path.join(OUT, f"{name}.npy")
    words = os.path.join(OUT, f"{name}.words")
    np.save(npy, matrix)
    with open(words, "w", encoding="utf-8") as handle:
        handle.writelines(f"w{i}\n" for i in range(rows))
    subprocess.run([*EMBCLI, "import", npy, "--words", words, "-m", directory, "-q", "--force"], check=True, env=ENV)
    return directory


def bench_startup(repeat):
    model = make_model("startup-100k-300", 100_000, 300)
    baseline, base_peak = best_of([PYTHON, "-c", "import numpy, typer"], repeat)
    ours, peak = best_of([*EMBCLI, "neighbors", "-m", model, "w4242", "-k", "10"], repeat)
    print(f"neighbors end to end, 100k x 300: {ours * 1000:.0f} ms; python -c 'import numpy, typer': "
          f"{baseline * 1000:.0f} ms; ratio {ours / baseline:.2f}x (target <= 1.3x)")
    # embcli sets OPENBLAS_NUM_THREADS=1 for queries, which also makes importing numpy
    # cheaper; this second baseline gets the same setting.
    single = {**ENV, "OPENBLAS_NUM_THREADS": "1"}
    started = []
    for _ in range(repeat):
        began = time.perf_counter()
        subprocess.run([PYTHON, "-c", "import numpy, typer"], env=single, check=True)
        started.append(time.perf_counter() - began)
    one_thread = statistics.median(started)
    print(f"  against OPENBLAS_NUM_THREADS=1 python -c 'import numpy, typer': {one_thread * 1000:.0f} ms; "
          f"ratio {ours / one_thread:.2f}x")
    matrix_mib = 100_000 * 300 * 4 / 2**20
    block_mib = 16384 * 4 / 2**20
    print(f"neighbors peak RSS {peak / 1024:.0f} MiB, {(peak - base_peak) / 1024:.0f} MiB above the "
          f"numpy+typer process; matrix {matrix_mib:.0f} MiB + one block of scores {block_mib:.2f} MiB")


def bench_batch(rows, dim, queries):
    model = make_model(f"batch-{rows}-{dim}", rows, dim, seed=1)
    vectors = os.path.join(OUT, f"batch-{rows}-{dim}.bin")
    if not os.path.exists(vectors):
        subprocess.run([*EMBCLI, "export", vectors, "-m", model, "--format", "word2vec-binary", "-q"], check=True,
                       env=ENV)
    words = np.random.default_rng(2).integers(0, rows, queries)
    query_file = os.path.join(OUT, f"queries-{queries}.txt")
    with open(query_file, "w") as handle:
        handle.writelines(f"w{i}\n" for i in words)
    ours, peak = best_of([*EMBCLI, "neighbors", "-m", model, "-", "-k", "10"], 1, query_file)
    script = (
        "import sys\n"
        "from gensim.models import KeyedVectors\n"
        f"kv = KeyedVectors.load_word2vec_format({vectors!r}, binary=True)\n"
        "for line in open(sys.argv[1]):\n"
        "    kv.most_similar(line.strip(), topn=10)\n"
    )
    peer, _ = best_of([PYTHON, "-c", script, query_file], 1)
    print(f"{queries:,} neighbour queries from stdin, {rows:,} x {dim}: embcli {ours:.1f} s "
          f"(peak RSS {peak / 1024:.0f} MiB); gensim most_similar per query {peer:.1f} s; "
          f"embcli {peer / ours:.1f}x faster (target >= 20x)")


def bench_import(rows, dim):
    path = os.path.join(OUT, f"import-{rows}-{dim}.bin")
    if not os.path.exists(path):
        from embcli.formats import write_vectors

        matrix = np.random.default_rng(3).standard_normal((rows, dim)).astype(np.float32)
        write_vectors(path, [f"w{i}" for i in range(rows)], matrix, "word2vec-binary")
        del matrix
    target = os.path.join(OUT, f"imported-{rows}-{dim}")
    # A fresh directory each time: replacing the last run's model would add deleting its 1.2 GB matrix.
    shutil.rmtree(target, ignore_errors=True)
    ours, peak, cpu = run([*EMBCLI, "import", path, "-m", target, "-q"])
    script = (
        "from gensim.models import KeyedVectors\n"
        f"KeyedVectors.load_word2vec_format({path!r}, binary=True)\n"
    )
    peer, peer_peak, peer_cpu = run([PYTHON, "-c", script])
    print(f"import {rows:,} x {dim} word2vec binary ({os.path.getsize(path) / 2**20:.0f} MiB): embcli {ours:.1f} s, "
          f"CPU {cpu:.1f} s (peak RSS {peak / 1024:.0f} MiB, model directory written and synced); gensim "
          f"load_word2vec_format {peer:.1f} s, CPU {peer_cpu:.1f} s (peak RSS {peer_peak / 1024:.0f} MiB); "
          f"embcli {peer / ours:.1f}x faster (target >= 5x), {peer_cpu / cpu:.1f}x less CPU")
    # The floor: embcli must write and fsync the float32 matrix, whatever else it does.
    floor_path = os.path.join(OUT, "durable-write-floor.bin")
    mebibytes = -(-rows * dim * 4 // 2**20)
    floor, _, _ = run(["dd", "if=/dev/zero", f"of={floor_path}", "bs=1M", f"count={mebibytes}", "conv=fsync"])
    os.remove(floor_path)
    print(f"  floor: dd conv=fsync of the {mebibytes:,} MiB matrix took {floor:.1f} s; gensim's time over it is "
          f"{peer / floor:.1f}x, the most any importer that syncs its output could reach in this run")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Use small sizes.")
    parser.add_argument("--repeat", type=int, default=7, help="Runs of each startup command; the median counts.")
    parser.add_argument("--only", choices=["startup", "batch", "import"], help="Run one benchmark.")
    options = parser.parse_args()
    # numpy, typer and gensim start from bytecode that pip compiled when it installed
    # them. An editable install of embcli compiles on first import, unless
    # PYTHONDONTWRITEBYTECODE is set; then every command would compile embcli's sources
    # again. Compile them once, as pip does.
    import embcli

    subprocess.run([PYTHON, "-m", "compileall", "-q", os.path.dirname(embcli.__file__)], check=True)
    os.makedirs(OUT, exist_ok=True)
    if options.only in (None, "startup"):
        bench_startup(options.repeat)
    if options.only in (None, "batch"):
        bench_batch(*((20_000, 100, 1_000) if options.quick else (100_000, 300, 10_000)))
    if options.only in (None, "import"):
        bench_import(*((100_000, 300) if options.quick else (1_000_000, 300)))


if __name__ == "__main__":
    main()
