"""Train embcli and gensim Word2Vec on the same corpus, one after the other, and compare.

Usage:
    python bench/train_vs_gensim.py CORPUS [--method skipgram|cbow|both] [--repeat N]

Both trainers get the same settings: dim 100, window 5, negative 5, sample 1e-3,
min-count 5, 5 epochs, 2 workers. The speed ratio compares whole commands, because that
is what a user waits for:
- embcli: `embcli build-vocab` plus `embcli train`, as two processes;
- gensim: one Python process that reads and tokenizes the corpus into memory, builds the
  vocabulary, trains and saves the vectors.
It also prints each training loop's own words/s (raw corpus words per second of training).

Both vector sets are scored with gensim's own evaluation: questions-words accuracy
(restrict_vocab=30000, case-insensitive), and WordSim-353 and SimLex-999 Spearman.

Memory: the peak of the PSS summed over the training process and its children, sampled
every 0.2 s, minus the PSS of a bare `python -c "import torch"` process. The target
is 1.5 x (two vocabulary x dim float32 matrices + the uint32 token ids).

The machine is shared and noisy: run gensim and embcli in the same invocation, and repeat
(`--repeat`) when numbers look off. CPU seconds (user + system, all processes) are printed
too, because they move less than wall-clock time under load from other processes.

Needs the `bench` extra: pip install -e '.[bench]'.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
EVAL_DIR = [ROOT.parent / "shared" / "data" / "eval"]  # --eval-dir replaces it
SETTINGS = dict(dim=100, window=5, negative=5, sample=1e-3, min_count=5, epochs=5, workers=2)

# gensim's whole training script, run as its own process. It tokenizes as embcli's default
# tokenizer does for plain text (lowercase runs of letters, digits and underscores) and cuts
# lines into pieces of at most 10,000 tokens, because gensim's trainer ignores the tokens
# of a sentence beyond that.
GENSIM_SCRIPT = r"""
import gzip, json, re, sys, time
import numpy as np
from gensim.models import Word2Vec

corpus, out, sg, dim, window, negative, sample, min_count, epochs, workers, seed = sys.argv[1:]
token = re.compile(r"\w+")
opener = gzip.open if corpus.endswith(".gz") else open
sentences = []
with opener(corpus, "rt", encoding="utf-8", errors="replace") as handle:
    for line in handle:
        words = token.findall(line.lower())
        for begin in range(0, len(words), 10000):
            sentences.append(words[begin:begin + 10000])
model = Word2Vec(vector_size=int(dim), window=int(window), negative=int(negative),
                 sample=float(sample), min_count=int(min_count), workers=int(workers),
                 sg=int(sg), seed=int(seed))
model.build_vocab(sentences)
started = time.time()
model.train(sentences, total_examples=model.corpus_count, epochs=int(epochs))
seconds = time.time() - started
np.save(out + "/vectors.npy", model.wv.vectors)
with open(out + "/words.txt", "w", encoding="utf-8") as handle:
    handle.write("\n".join(model.wv.index_to_key) + "\n")
raw_words = model.corpus_total_words * int(epochs)
with open(out + "/stats.json", "w") as handle:
    json.dump({"train_seconds": seconds, "words_per_second": raw_words / seconds,
               "vocab": len(model.wv.index_to_key)}, handle)
"""


class Sampler:
    """Peak PSS, summed over a process and all its descendants, sampled in a thread."""

    def __init__(self, pid):
        import threading

        self.pid = pid
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.done.is_set():
            try:
                root = psutil.Process(self.pid)
                total = 0
                for process in [root] + root.children(recursive=True):
                    try:
                        total += process.memory_full_info().pss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
                self.peak = max(self.peak, total)
            except psutil.NoSuchProcess:
                return
            self.done.wait(0.2)

    def stop(self):
        self.done.set()
        self.thread.join()
        return self.peak


def run_measured(command, env=None):
    """Run `command`; return (wall seconds, CPU seconds of it and its children, peak PSS)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(process.pid)
    stdout, stderr = process.communicate()
    peak = sampler.stop()
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if process.returncode != 0:
        sys.exit(f"command failed ({process.returncode}): {' '.join(command)}\n{stderr}")
    return wall, cpu, peak


def torch_baseline_pss():
    """PSS of a bare Python process that has imported torch."""
    process = subprocess.Popen([sys.executable, "-c", "import torch, sys; print(1, flush=True); sys.stdin.read()"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    process.stdout.readline()
    time.sleep(0.5)
    pss = psutil.Process(process.pid).memory_full_info().pss
    process.stdin.close()
    process.wait()
    return pss


def score(words, vectors):
    from gensim.models import KeyedVectors

    folder = EVAL_DIR[0]
    keyed = KeyedVectors(vectors.shape[1])
    keyed.add_vectors(words, vectors)
    analogy = keyed.evaluate_word_analogies(str(folder / "questions-words.txt"), restrict_vocab=30000,
                                            case_insensitive=True)[0]
    wordsim = keyed.evaluate_word_pairs(str(folder / "wordsim353.tsv"), case_insensitive=True)[1][0]
    simlex = keyed.evaluate_word_pairs(str(folder / "simlex999.txt"), case_insensitive=True)[1][0]
    return {"analogy": analogy, "ws353": wordsim, "simlex": simlex}


def run_gensim(corpus, method, workdir, seed):
    out = Path(workdir) / f"gensim-{method}"
    out.mkdir()
    s = SETTINGS
    command = [sys.executable, "-c", GENSIM_SCRIPT, corpus, str(out), "1" if method == "skipgram" else "0",
               str(s["dim"]), str(s["window"]), str(s["negative"]), str(s["sample"]), str(s["min_count"]),
               str(s["epochs"]), str(s["workers"]), str(seed)]
    wall, cpu, pss = run_measured(command)
    stats = json.loads((out / "stats.json").read_text())
    words = (out / "words.txt").read_text(encoding="utf-8").split("\n")[:-1]
    vectors = np.load(out / "vectors.npy")
    return {"wall": wall, "cpu": cpu, "pss": pss, "loop_words_per_second": stats["words_per_second"],
            "vocab": stats["vocab"], **score(words, vectors)}


def run_embcli(corpus, method, workdir, extra, seed):
    model = str(Path(workdir) / f"embcli-{method}")
    embcli = [sys.executable, "-m", "embcli"]
    s = SETTINGS
    build = embcli + ["build-vocab", "-m", model, "--min-count", str(s["min_count"]), "--quiet", corpus]
    train = embcli + ["train", "-m", model, "--method", method, "--dim", str(s["dim"]),
                      "--window", str(s["window"]), "--negative", str(s["negative"]),
                      "--sample", str(s["sample"]), "--epochs", str(s["epochs"]),
                      "--threads", str(s["workers"]), "--seed", str(seed), "--quiet"] + extra
    build_wall, build_cpu, build_pss = run_measured(build)
    train_wall, train_cpu, train_pss = run_measured(train)
    meta = json.loads(Path(model, "meta.json").read_text())
    words = [line.split("\t")[0] for line in Path(model, "vocab.tsv").read_text(encoding="utf-8").splitlines()]
    vectors = np.load(Path(model, "embeddings.npy"))
    tokens = np.load(Path(model, "tokens.npy"), mmap_mode="r")
    bound = 1.5 * (2 * vectors.shape[0] * vectors.shape[1] * 4 + tokens.nbytes)
    return {"wall": build_wall + train_wall, "build_wall": build_wall, "cpu": build_cpu + train_cpu,
            "pss": max(build_pss, train_pss), "train_pss": train_pss, "memory_bound": bound,
            "loop_words_per_second": meta["training"]["stats"]["words_per_second"],
            "vocab": len(words), **score(words, vectors)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--method", choices=["skipgram", "cbow", "both"], default="both")
    parser.add_argument("--epochs", type=int, default=SETTINGS["epochs"],
                        help="Passes over the corpus for both trainers. [default: 5]")
    parser.add_argument("--repeat", type=int, default=1,
                        help="Runs of each trainer, interleaved; run N uses seed N for both.")
    parser.add_argument("--embcli-args", default="", help="Extra options for embcli train, e.g. '--negatives per-pair'.")
    parser.add_argument("--eval-dir", default=str(EVAL_DIR[0]),
                        help="Folder with questions-words.txt, wordsim353.tsv and simlex999.txt.")
    args = parser.parse_args()
    EVAL_DIR[0] = Path(args.eval_dir)
    SETTINGS["epochs"] = args.epochs

    methods = ["skipgram", "cbow"] if args.method == "both" else [args.method]
    baseline = torch_baseline_pss()
    mib = 1 / 2**20
    print(f"corpus {args.corpus}; settings {SETTINGS}; bare 'import torch' PSS {baseline * mib:.0f} MiB")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    for method in methods:
        runs = []
        for run in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="embcli-bench-") as workdir:
                gensim = run_gensim(args.corpus, method, workdir, run + 1)
                ours = run_embcli(args.corpus, method, workdir, args.embcli_args.split(), run + 1)
            runs.append((gensim, ours))
            load = os.getloadavg()[0]
            print(f"\n{method} run {run + 1}/{args.repeat} (load average {load:.1f} after)")
            print(f"  {'':8} {'wall s':>8} {'CPU s':>8} {'loop words/s':>13} {'analogy':>8} {'WS-353':>7} "
                  f"{'SimLex':>7} {'vocab':>7} {'peak PSS MiB':>13}")
            for name, r in (("gensim", gensim), ("embcli", ours)):
                print(f"  {name:8} {r['wall']:8.1f} {r['cpu']:8.1f} {r['loop_words_per_second']:13,.0f} "
                      f"{r['analogy']:8.2%} {r['ws353']:7.3f} {r['simlex']:7.3f} {r['vocab']:7,} "
                      f"{r['pss'] * mib:13.0f}")
            print(f"  speed ratio (gensim wall / embcli wall, whole commands): {gensim['wall'] / ours['wall']:.2f}x"
                  f"  (build-vocab {ours['build_wall']:.1f} s of it)")
            print(f"  training loop ratio (words/s): "
                  f"{ours['loop_words_per_second'] / gensim['loop_words_per_second']:.2f}x")
            print(f"  CPU-time ratio (gensim / embcli): {gensim['cpu'] / ours['cpu']:.2f}x")
            print(f"  analogy difference: {100 * (ours['analogy'] - gensim['analogy']):+.2f} points; "
                  f"WS-353 difference: {ours['ws353'] - gensim['ws353']:+.3f}")
            added = ours["train_pss"] - baseline
            print(f"  embcli train memory above bare torch: {added * mib:.0f} MiB; bound "
                  f"{ours['memory_bound'] * mib:.0f} MiB ({added / ours['memory_bound']:.2f} of it)")
            sys.stdout.flush()
        if len(runs) > 1:
            print_summary(method, runs)


def print_summary(method, runs):
    """Print the mean and range of each score and ratio over the seeds."""
    print(f"\n{method}, {len(runs)} runs (seeds 1-{len(runs)}): mean [min, max]")

    def line(label, values, form):
        values = np.array(values)
        print(f"  {label:34} {form.format(values.mean())} [{form.format(values.min())}, {form.format(values.max())}]")

    for name, side in (("gensim", 0), ("embcli", 1)):
        line(f"{name} analogy %", [100 * r[side]["analogy"] for r in runs], "{:.2f}")
        line(f"{name} WS-353", [r[side]["ws353"] for r in runs], "{:.3f}")
    line("analogy difference, points", [100 * (o["analogy"] - g["analogy"]) for g, o in runs], "{:+.2f}")
    line("WS-353 difference", [o["ws353"] - g["ws353"] for g, o in runs], "{:+.3f}")
    line("speed ratio (whole commands)", [g["wall"] / o["wall"] for g, o in runs], "{:.2f}")


if __name__ == "__main__":
    main()
