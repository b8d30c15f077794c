"""Helpers shared by the Scale benchmarks: paths, scoring with gensim, memory readings."""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ../shared next to the main checkout, or two levels up from a worktree under wt/.
SHARED = next((p / "shared" for p in ROOT.parents if (p / "shared" / "data").is_dir()), ROOT.parent / "shared")
DATA = SHARED / "data"
EVAL = DATA / "eval"
EMBCLI = [sys.executable, "-m", "embcli"]


def score(model_dir):
    """Return gensim's analogy accuracy (30,000 most frequent words) and WS-353/SimLex Spearman."""
    import logging

    import numpy as np
    from gensim.models import KeyedVectors

    import embcli

    logging.getLogger("gensim").setLevel(logging.ERROR)
    model = embcli.load(str(model_dir))
    vectors = KeyedVectors(model.dim)
    vectors.add_vectors(model.words, np.asarray(model.matrix))
    analogy, _ = vectors.evaluate_word_analogies(str(EVAL / "questions-words.txt"), restrict_vocab=30000)
    ws353 = vectors.evaluate_word_pairs(str(EVAL / "wordsim353.tsv"))[1].statistic
    simlex = vectors.evaluate_word_pairs(str(EVAL / "simlex999.txt"))[1].statistic
    return {"analogy": 100 * analogy, "ws353": float(ws353), "simlex": float(simlex)}


def run(command, env=None, stdin=None):
    """Run `command`, raise with its stderr on failure, and return (seconds, stderr)."""
    started = time.time()
    result = subprocess.run(command, env=env, stdin=stdin, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{result.stderr[-3000:]}")
    return time.time() - started, result.stderr


def training_stats(model_dir):
    import json

    with open(os.path.join(model_dir, "meta.json"), encoding="utf-8") as handle:
        return json.load(handle)["training"]
