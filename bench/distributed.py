"""Benchmark distributed training: 1 and 2 torchrun ranks (one thread each), speed and scores.

    .venv/bin/python bench/distributed.py                      # corpus_en, 1 and 2 ranks
    .venv/bin/python bench/distributed.py --corpus ../shared/data/text8_en_5M.gz \
        --ranks 2 --sync-tokens 4096 65536 1048576 4194304     # how often to synchronize
    .venv/bin/python bench/distributed.py --corpus ../shared/data/text8_en_5M.gz --ranks 2 \
        --sync-tokens 65536 --hogwild --train-options "--subwords 3-6 --sample 1e-4"   # subwords

build-vocab runs once; each training run gets its own model directory that shares the
token cache. Ranks talk through gloo on 127.0.0.1 only. Words/s counts corpus words per
second of the training loop, summed over ranks (as `embcli info` reports it); "wall" is
the whole torchrun command, with start-up. Scores: gensim's evaluate_word_analogies
(30,000 most frequent words) and evaluate_word_pairs (WS-353, SimLex-999).
"""

import argparse
import os
import shlex
import shutil
import socket
import sys
import tempfile

from scale_common import DATA, EMBCLI, run, score, training_stats

from embcli.distributed import DEFAULT_SYNC_TOKENS


def free_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def fresh_copy(vocab_dir, name):
    """Return a model directory holding `vocab_dir`'s vocabulary and a hard link to its cache."""
    target = os.path.join(os.path.dirname(vocab_dir), name)
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    for file in ("vocab.tsv", "tokens.npy"):
        os.link(os.path.join(vocab_dir, file), os.path.join(target, file))
    shutil.copy(os.path.join(vocab_dir, "meta.json"), target)
    return target


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(DATA / "corpus_en.txt.gz"))
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sync-tokens", type=int, nargs="+", default=[DEFAULT_SYNC_TOKENS])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1],
                        help="train every configuration once per seed (analogy accuracy varies by seed)")
    parser.add_argument("--hogwild", action="store_true", help="also train with embcli train --threads N")
    parser.add_argument("--train-options", default="",
                        help='more options for every embcli train, for example "--subwords 3-6 --sample 1e-4"')
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="embcli-bench-dist-")
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", GLOO_SOCKET_IFNAME="lo",
               MASTER_ADDR="127.0.0.1")
    try:
        vocab_dir = os.path.join(work, "vocab")
        seconds, _ = run(EMBCLI + ["build-vocab", "-q", "-m", vocab_dir, args.corpus], env=env)
        print(f"build-vocab {args.corpus}: {seconds:.1f} s", flush=True)
        rows = []
        for seed in args.seeds:
            common = ["--epochs", str(args.epochs), "--dim", str(args.dim), "--seed", str(seed), "-q",
                      *shlex.split(args.train_options)]
            for ranks in args.ranks:
                # One rank never synchronizes, so one run of it is enough.
                for sync in args.sync_tokens if ranks > 1 else args.sync_tokens[-1:]:
                    model = fresh_copy(vocab_dir, f"r{ranks}-s{sync}-seed{seed}")
                    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                               "--nproc-per-node", str(ranks), "--master-addr", "127.0.0.1",
                               "--master-port", str(free_port()), "-m", "embcli", "train", "-m", model,
                               "--sync-tokens", str(sync)] + common
                    print(f"running {ranks} rank(s), sync every {sync} tokens, seed {seed}", flush=True)
                    wall, _ = run(command, env=env)
                    rows.append((f"torchrun, {ranks} rank(s), sync every {sync:,} tokens, seed {seed}", model, wall))
                    report(*rows[-1])
                    shutil.rmtree(model, ignore_errors=True)
                if args.hogwild:
                    model = fresh_copy(vocab_dir, f"hogwild{ranks}-seed{seed}")
                    wall, _ = run(EMBCLI + ["train", "-m", model, "--threads", str(ranks)] + common, env=env)
                    rows.append((f"embcli train --threads {ranks} (Hogwild), seed {seed}", model, wall))
                    report(*rows[-1])
                    shutil.rmtree(model, ignore_errors=True)
        print_table(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


RESULTS = {}


def report(label, model, wall):
    stats = training_stats(model)
    scores = score(model)
    RESULTS[label] = (stats, scores, wall)
    distributed = stats.get("distributed", {})
    print(f"{label}: {stats['stats']['words_per_second']:,.0f} words/s, wall {wall:.1f} s, "
          f"analogy {scores['analogy']:.2f} %, WS-353 {scores['ws353']:.3f}, SimLex {scores['simlex']:.3f}, "
          f"syncs {distributed.get('synchronizations', '-')}, "
          f"sync time rank 0 {distributed.get('sync_seconds_rank0', '-')} s "
          f"(waiting for the other ranks {distributed.get('sync_wait_seconds_rank0', '-')} s)", flush=True)


def print_table(rows):
    """Print every run, then each run against the first run of its seed."""
    print("\n| run | words/s | wall s | analogy % | WS-353 | SimLex | syncs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, _, _ in rows:
        stats, scores, wall = RESULTS[label]
        speed = stats["stats"]["words_per_second"]
        syncs = stats.get("distributed", {}).get("synchronizations", "-")
        print(f"| {label} | {speed:,.0f} | {wall:.1f} | {scores['analogy']:.2f} | {scores['ws353']:.3f} "
              f"| {scores['simlex']:.3f} | {syncs} |")
    first_of_seed = {}
    for label, _, _ in rows:
        seed = label.rsplit("seed ", 1)[-1]
        stats, scores, _ = RESULTS[label]
        if seed not in first_of_seed:
            first_of_seed[seed] = (label, stats["stats"]["words_per_second"], scores["analogy"])
            continue
        first_label, first_speed, first_analogy = first_of_seed[seed]
        print(f"{label} vs {first_label}: {stats['stats']['words_per_second'] / first_speed:.2f}x words/s, "
              f"analogy {scores['analogy'] - first_analogy:+.2f} points")


if __name__ == "__main__":
    main()
