"""Compare embcli's subword training with the fastText Python package, in one run.

    .venv/bin/pip install fasttext-wheel   # the bench extra: pip install -e '.[bench]'
    .venv/bin/python bench/subwords_vs_fasttext.py [--corpus FILE.gz] [--epochs 3]

Both tools train skip-gram with character n-grams of 3-6 characters on the same corpus
and settings (dim 100, window 5, 5 negatives, sample 1e-4, min count 5, 2 threads).
Each run is a fresh process tree: embcli is `build-vocab` followed by `train`, fastText
is one Python process that loads the package and trains. Speed is corpus tokens times
epochs divided by that whole-command wall-clock time. Memory is the peak over the run
of the summed proportional set size (PSS) of the process tree, sampled every 0.2 s, so
memory shared between processes counts once. Vectors are scored with gensim's
evaluate_word_analogies (30,000 most frequent words) and evaluate_word_pairs.

On a shared machine, timings are noisy: compare the ratios printed at the end, which
come from runs made one after the other in this process.
"""

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
if not os.path.isdir(SHARED):
    SHARED = "/work/shared"
DATA = os.path.join(SHARED, "data")
EMBCLI = [sys.executable, "-m", "embcli"]

FASTTEXT_SCRIPT = """
import sys, time, json
import numpy as np
import fasttext
args = json.loads(sys.argv[1])
model = fasttext.train_unsupervised(args["corpus"], model="skipgram", dim=args["dim"], ws=args["window"],
    neg=args["negative"], minn=args["min_n"], maxn=args["max_n"], bucket=args["buckets"], epoch=args["epochs"],
    minCount=5, t=args["sample"], thread=args["threads"], verbose=0)
print(time.time(), flush=True)
words = model.words
vectors = np.stack([model.get_word_vector(w) for w in words]).astype(np.float32)
np.save(args["out"] + ".npy", vectors)
with open(args["out"] + ".txt", "w", encoding="utf-8") as handle:
    handle.write("\\n".join(words) + "\\n")
"""


def run_measured(commands, env=None):
    """Run `commands` one after another; return (seconds, CPU seconds, peak PSS in bytes,
    last stdout). CPU seconds are user plus system time of the commands and of the
    processes they waited for."""
    import resource

    peak = 0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    stdout = ""
    for command in commands:
        process = psutil.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        while process.poll() is None:
            total = 0
            try:
                tree = [process] + process.children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            for member in tree:
                try:
                    total += member.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peak = max(peak, total)
            time.sleep(0.2)
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{command} failed with exit code {process.returncode}:\n{stderr}")
    seconds = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, cpu, peak, stdout


def evaluate(words, vectors):
    """Return (analogy accuracy, WS-353 Spearman, SimLex-999 Spearman) with gensim."""
    from gensim.models import KeyedVectors

    keyed = KeyedVectors(vectors.shape[1])
    keyed.add_vectors(words, vectors)
    eval_dir = os.path.join(DATA, "eval")
    analogy, _ = keyed.evaluate_word_analogies(os.path.join(eval_dir, "questions-words.txt"), restrict_vocab=30000)
    ws353 = keyed.evaluate_word_pairs(os.path.join(eval_dir, "wordsim353.tsv"))[1][0]
    simlex = keyed.evaluate_word_pairs(os.path.join(eval_dir, "simlex999.txt"))[1][0]
    return analogy, ws353, simlex


def run_embcli(args, work, label, extra=()):
    model_dir = os.path.join(work, label)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    commands = [
        EMBCLI + ["build-vocab", "-m", model_dir, "--min-count", "5", "--quiet", args.corpus],
        EMBCLI + ["train", "-m", model_dir, "--quiet", "--method", "skipgram", "--dim", str(args.dim),
                  "--window", str(args.window), "--negative", str(args.negative), "--sample", str(args.sample),
                  "--epochs", str(args.epochs), "--threads", str(args.threads), *extra],
    ]
    seconds, cpu, peak, _ = run_measured(commands, env)
    words = [line.split("\t")[0] for line in open(os.path.join(model_dir, "vocab.tsv"), encoding="utf-8")]
    vectors = np.load(os.path.join(model_dir, "embeddings.npy"), allow_pickle=False)
    tokens_cache = os.path.getsize(os.path.join(model_dir, "tokens.npy"))
    shutil.rmtree(model_dir)
    return seconds, cpu, peak, words, vectors, tokens_cache


def run_fasttext(args, work, plain_corpus):
    out = os.path.join(work, "fasttext")
    settings = {"corpus": plain_corpus, "dim": args.dim, "window": args.window, "negative": args.negative,
                "min_n": 3, "max_n": 6, "buckets": 2_000_000, "epochs": args.epochs, "sample": args.sample,
                "threads": args.threads, "out": out}
    started = time.time()
    seconds, cpu, peak, stdout = run_measured([[sys.executable, "-c", FASTTEXT_SCRIPT, json.dumps(settings)]])
    trained_at = float(stdout.split()[0])
    words = open(out + ".txt", encoding="utf-8").read().split("\n")[:-1]
    vectors = np.load(out + ".npy", allow_pickle=False)
    # NOTE: the CPU time includes writing the vectors out after training, which the
    # wall-clock time leaves out.
    return trained_at - started, cpu, peak, words, vectors


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=os.path.join(DATA, "text8_en_5M.gz"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--negative", type=int, default=5)
    parser.add_argument("--sample", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=5_000_000, help="Corpus tokens, for words/s.")
    parser.add_argument("--variant", action="append", default=[],
                        help="LABEL=OPTIONS: an embcli run with these extra train options; repeatable. "
                             "[default: subwords=--subwords 3-6]")
    parser.add_argument("--skip-fasttext", action="store_true")
    args = parser.parse_args()
    variants = args.variant or ["subwords=--subwords 3-6"]

    results = []
    with tempfile.TemporaryDirectory(prefix="embcli-bench-") as work:
        if not args.skip_fasttext:
            plain = os.path.join(work, "corpus.txt")
            with gzip.open(args.corpus, "rb") as source, open(plain, "wb") as target:
                shutil.copyfileobj(source, target)
            seconds, cpu, peak, words, vectors = run_fasttext(args, work, plain)
            results.append(("fastText", seconds, cpu, peak, evaluate(words, vectors), 0))
            print_row(results[-1], args)
        for variant in variants:
            label, _, options = variant.partition("=")
            seconds, cpu, peak, words, vectors, cache = run_embcli(args, work, label, options.split())
            results.append((f"embcli {label}", seconds, cpu, peak, evaluate(words, vectors), cache))
            print_row(results[-1], args)

    if not args.skip_fasttext:
        base = results[0]
        for name, seconds, cpu, peak, scores, cache in results[1:]:
            print(f"{name} vs fastText: speed x{base[1] / seconds:.2f} (wall), x{base[2] / cpu:.2f} (CPU time), "
                  f"analogy {100 * (scores[0] - base[4][0]):+.1f} points, WS-353 {scores[1] - base[4][1]:+.3f}, "
                  f"SimLex {scores[2] - base[4][2]:+.3f}, peak PSS {(peak - base[3]) / 2**20:+.0f} MiB "
                  f"(token cache {cache / 2**20:.0f} MiB)")


def print_row(result, args):
    name, seconds, cpu, peak, (analogy, ws353, simlex), _ = result
    speed = args.tokens * args.epochs / seconds
    print(f"{name}\t{seconds:.1f} s\t{speed / 1000:,.0f} k words/s\tCPU {cpu:.1f} s\tanalogy {100 * analogy:.1f} %\t"
          f"WS-353 {ws353:.3f}\tSimLex {simlex:.3f}\tpeak PSS {peak / 2**20:,.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
