"""Import a real fastText .bin model and check every vector against fastText itself.

    .venv/bin/pip install -e '.[bench]'   # fasttext-wheel and gensim
    .venv/bin/python bench/fasttext_bin.py [--corpus FILE.gz] [--bin MODEL.bin] [--unseen 2000]

Without --bin, it first trains a fastText skip-gram model (dim 100, n-grams 3-6,
2,000,000 buckets, 1 epoch, 2 threads) on the corpus (default text8_en_5M) and saves it.
Then, each in its own process, one after the other:
- `embcli import MODEL.bin` (the whole command). Its vectors of every vocabulary word and
  of --unseen words outside the vocabulary (vocabulary words with one letter changed) are
  then compared with fastText's get_word_vector. The bench prints the count of float32
  vectors equal bit for bit, and the largest difference;
- gensim's load_facebook_model on the same file, the peer that also reads .bin models,
  timed the same way, and its vectors compared with fastText's too.
Peak memory is each process's maximum resident set size.
"""

import argparse
import gzip
import os
import random
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
if not os.path.isdir(SHARED):
    SHARED = "/work/shared"

TRAIN_SCRIPT = """
import sys
import fasttext
model = fasttext.train_unsupervised(sys.argv[1], model="skipgram", dim=100, minn=3, maxn=6, bucket=2_000_000,
                                    epoch=1, thread=2, verbose=0)
model.save_model(sys.argv[2])
"""

GENSIM_SCRIPT = """
import sys, time
t = time.perf_counter()
from gensim.models.fasttext import load_facebook_model
model = load_facebook_model(sys.argv[1])
print(time.perf_counter() - t)
"""


def timed(command):
    """Run `command`; return (wall seconds, peak RSS of that process in MiB, stdout)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
        out = process.stdout.read().decode()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if process.returncode:
            errors.seek(0)
            sys.exit(f"{command[0]} failed ({process.returncode}): {errors.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, out


def unseen_words(words, count, seed=7):
    """Vocabulary words with one letter changed, not themselves in the vocabulary."""
    rng = random.Random(seed)
    known = set(words)
    found = []
    candidates = [word for word in words if len(word) >= 4 and word.isalpha()]
    while len(found) < count:
        word = rng.choice(candidates)
        at = rng.randrange(len(word))
        changed = word[:at] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[at + 1 :]
        if changed not in known:
            known.add(changed)
            found.append(changed)
    return found


def compare(name, ours, theirs):
    equal = sum(a.tobytes() == b.tobytes() for a, b in zip(ours, theirs))
    difference = float(np.abs(np.asarray(ours) - np.asarray(theirs)).max())
    print(f"  {name}: {equal:,} of {len(theirs):,} vectors equal bit for bit, largest difference {difference:.3g}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default=os.path.join(SHARED, "data", "text8_en_5M.gz"))
    parser.add_argument("--bin", help="an existing fastText .bin model (skips training)")
    parser.add_argument("--unseen", type=int, default=2000)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="embcli-ftbin-")
    path = args.bin
    if path is None:
        text = os.path.join(work, "corpus.txt")
        with gzip.open(args.corpus, "rb") as source, open(text, "wb") as target:
            target.write(source.read())
        path = os.path.join(work, "model.bin")
        # In a child process: a child's peak RSS starts from its parent's at the fork.
        seconds, _, _ = timed([sys.executable, "-c", TRAIN_SCRIPT, text, path])
        print(f"fastText trained {path} in {seconds:.1f} s ({os.path.getsize(path) / 2**20:,.0f} MiB)")
    model_dir = os.path.join(work, "imported")
    seconds, peak, _ = timed([sys.executable, "-m", "embcli", "-q", "import", path, "-m", model_dir])
    print(f"embcli import: {seconds:.2f} s, peak RSS {peak:,.0f} MiB")
    gensim_seconds, gensim_peak, out = timed([sys.executable, "-c", GENSIM_SCRIPT, path])
    print(f"gensim load_facebook_model: {gensim_seconds:.2f} s ({float(out):.2f} s of loading), "
          f"peak RSS {gensim_peak:,.0f} MiB")
    print(f"embcli's import took {seconds / gensim_seconds:.2f}x gensim's time")
    import fasttext

    reference = fasttext.load_model(path)
    words = reference.words
    unseen = unseen_words(words, args.unseen)

    import embcli

    model = embcli.load(model_dir)
    print("vectors against fastText's get_word_vector:")
    compare("vocabulary", np.asarray(model.matrix), [reference.get_word_vector(word) for word in words])
    compare("outside the vocabulary", [model.vector(word) for word in unseen],
            [reference.get_word_vector(word) for word in unseen])
    from gensim.models.fasttext import load_facebook_model

    peer = load_facebook_model(path).wv
    compare("gensim, vocabulary", [peer[word] for word in words], [reference.get_word_vector(word) for word in words])
    compare("gensim, outside the vocabulary", [peer[word] for word in unseen],
            [reference.get_word_vector(word) for word in unseen])
    print(f"(files under {work}; remove them when done)")


if __name__ == "__main__":
    main()
