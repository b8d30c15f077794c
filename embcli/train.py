"""Train word2vec embeddings (skip-gram or CBOW, negative sampling) with PyTorch.

The method is word2vec's (Mikolov et al. 2013, "Distributed Representations of Words
and Phrases and their Compositionality"), kept faithful where it matters for quality:
- frequent words are subsampled with word2vec's formula: a word with count c is kept
  with probability (sqrt(c / (s * T)) + 1) * (s * T) / c, for sample s and T in-vocabulary
  tokens;
- each center word draws a reduced window b uniformly from 1..window;
- negatives are drawn from counts raised to `ns_exponent` (0.75);
- the learning rate decays linearly from `lr` to `lr * 1e-4` over all epochs;
- input vectors start uniform in [-0.5/dim, 0.5/dim], output vectors at zero;
- CBOW averages the context vectors and adds the whole error to each of them.

How it differs from word2vec.c, and why:
- No autograd and no optimizer. Pairs are generated for a chunk of the corpus at a time
  with tensor operations, and gradients are applied with `index_add_` in steps of
  `batch` pairs. Updates within one step are summed, not applied one after another.
  Skip-gram pairs come grouped by their input word and CBOW windows by center word, both
  in strides of 2 * window + 1, so that one step never contains two neighbouring words'
  windows. (With per-pair negatives, skip-gram pairs come in offset-major order.)
- The learning rate is constant within a chunk of `chunk_tokens` tokens, not lowered
  after every word.
- By default, negatives are shared: each block of `block` pairs draws `shared_negatives`
  negatives (more for a large `negative`, see PAIRS_PER_SHARED_NEGATIVE), each weighted
  `negative` / their number, so the negative scores of a block are one matrix product.
  Skip-gram draws them once per step instead, in the same proportion (64 for a step of
  1,024 pairs), and scores each input word once against them. This changes the
  objective slightly; `negatives="per-pair"` gives each pair its own `negative` draws,
  as word2vec does.
- With several threads, worker processes update the vectors on shared memory without
  locks (Hogwild), as word2vec.c's threads do. By default they take the chunks of the
  corpus in turn; `chunk_order="slices"` gives each its own contiguous slice, as
  word2vec.c does. Results depend on the scheduling of the processes, so they vary from
  run to run.
- Randomness comes from a generator seeded per (seed, worker, epoch, chunk), so a run
  with one thread is reproducible and can resume at any chunk boundary.

Run it through the CLI: `embcli build-vocab corpus.txt && embcli train`.
"""

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch

from embcli import store
from embcli.errors import DiskFull, EmbcliError, TrainingDiverged, TrainingError, TrainingInterrupted, plural
from embcli.tokencache import TokenCache

LINE_END = int(store.LINE_END)
# The loss is computed on every LOSS_EVERY-th update step only, then scaled to the chunk.
# Computing it on every step cost about 8 % of the training time, and on every 4th step
# about 3.5 % more CPU than on every 8th (skip-gram, one process, text8). A piece of
# 16,384 tokens of text8 (PIECE_TOKENS) still samples 10 of its 72 to 80 steps of 1,024
# pairs.
LOSS_EVERY = 8

# A chunk is trained in pieces of at most this many tokens, each with its own pairs. The
# pair tensors of a whole chunk of 65,536 tokens took about 30 MiB of heap in each worker
# process. With these pieces, a 2-worker run on text8_en_5M peaked at 102-105 MiB above
# a bare `import torch` instead of 172 MiB, at the same speed. Pieces of 8,192 tokens
# saved 5 MiB more but took about 3 % more CPU (docs/benchmarks.md, "chunks trained in
# pieces"). A chunk stays the unit of the learning rate, of the workers' turns and of
# checkpoints. Only on the CPU: see Trainer.train_chunk.
PIECE_TOKENS = 16384

# A step adds up the changes of all its pairs, each computed from the vectors as they were
# before the step, where word2vec applies them one after another. When one word fills a
# step, as in a table of numbers or a line of one repeated token, hundreds of its changes
# point the same way, and their sum overshoots. word2vec's one-at-a-time updates saturate
# instead. So a word with n pairs in one step, more than a limit, has those pairs weighted
# limit / n. The limit is BURST_PAIRS at an initial learning rate of BURST_LR and
# --negative BURST_LIMIT_NEGATIVE, and scales with 1 / lr**2 and 1 / (1 + negative). A
# run of 20,000 copies of "zero" inside a Bible text trained at lr 0.025 with 64 and
# diverged with 128. At lr 0.05 it trained with 16 and diverged with 32. The limit
# follows the initial rate, not the decaying one: raising it as the rate fell let that
# run diverge in its second epoch. With subwords, text8_en_5M itself
# diverged at the default --sample 1e-3, in a table of number words. There, with 2
# workers, the limit damps 3.5 % of the skip-gram pairs: number words of tables and dates,
# and a few names within their own article ("lincoln"). Its 5-epoch scores stayed where
# they were: 12.24 % analogy and 0.555 WS-353, against 12.00 % and 0.574 before.
# NOTE: these limits were found by trial on a handful of corpora (number tables, runs of
# one token, texts mostly one word); other repetition patterns may still diverge.
BURST_PAIRS = 64
BURST_LR = 0.025
# NOTE: the scaling with --negative was checked up to 64 on one 460,000-token text slice.
BURST_LIMIT_NEGATIVE = 5
BURST_SCREEN = 1 << 18
# A CBOW example gives its whole error to each of its context words, and has up to
# 2 * window of them, so CBOW counts context slots against a limit this many times larger.
# With 5, a step of text8 damped 4 % of its slots, but a corpus 47 % "0" (a sparse table
# among text8 lines) still diverged with --sample 0. With 2 it trained, and text8's
# 5-epoch CBOW scores stayed within a run's spread (12.38 % analogy, 0.494 WS-353).
CBOW_BURST_FACTOR = 2
# The same holds for negatives. When one word makes up most of a corpus, it is most of
# every step's negatives too. Their summed changes diverged on a trial corpus 90 %
# "spam", even with --sample 0 and a learning rate 5 times lower. A word drawn n times
# in one step, more than BURST_NEGATIVE_DRAWS (scaled as BURST_PAIRS is), has its
# negative changes weighted that limit / n. With shared negatives a step draws 64; the
# most frequent word of text8 is about 1.6 % of the draws, so ordinary text is not
# touched. With --negatives per-pair the limit is in the same units: pairs' worth.
BURST_NEGATIVE_DRAWS = 8
# A shared negative takes the changes of all the pairs that share it, each weighted
# negative / (negatives drawn). At the defaults (16 per block of 256 pairs, --negative 5)
# that is 80 pairs' worth. With --negative 25 it was 400, and skip-gram, CBOW and subword
# training all diverged at the default learning rate. So a larger --negative draws more
# shared negatives, each carrying at most this many pairs' worth of change (320 negatives
# per skip-gram step for --negative 25).
PAIRS_PER_SHARED_NEGATIVE = 80


# Seeds that torch.manual_seed accepts: a signed or unsigned 64-bit integer.
SEED_RANGE = (-(2**63), 2**64 - 1)

# Accepted --ns-exponent values. gensim 4 takes any float, and its documentation
# describes 1 (draw in proportion to the counts), 0 (uniformly) and negative values (rare
# words more often). Beyond 1 or -1 nearly all draws go to the most frequent or rarest
# words, and the powers overflow float64 (a count of 10**10 to the power 31).
NS_EXPONENT_RANGE = (-1.0, 1.0)


@dataclass
class TrainConfig:
    """Training settings. `lr=None` means 0.025 for skip-gram and 0.05 for CBOW."""

    method: str = "skipgram"
    dim: int = 100
    window: int = 5
    negative: int = 5
    sample: float = 1e-3
    epochs: int = 5
    lr: float | None = None
    min_lr_fraction: float = 1e-4
    ns_exponent: float = 0.75
    seed: int = 1
    threads: int = 0
    device: str = "auto"
    negatives: str = "shared"
    shared_negatives: int = 16
    block: int = 256
    # NOTE: with these block and step sizes the CPU benchmark scores match gensim's. A GPU
    # needs larger steps for speed, and the quality of larger steps has not been checked.
    batch: int = 1024
    chunk_tokens: int = 65536
    # How several worker processes split the corpus: "in-turn" (worker w trains chunks
    # w, w + workers, ...) or "slices" (one contiguous slice each, as word2vec.c's threads).
    chunk_order: str = "in-turn"
    # Subwords (embcli.train_subwords): character n-grams of min_n..max_n characters,
    # hashed into `buckets` rows; min_n = 0 turns them off.
    min_n: int = 0
    max_n: int = 0
    buckets: int = 2_000_000
    # "sum" scored higher than fastText's "mean" on both analogies and WS-353 in
    # embcli's summed steps (docs/benchmarks.md, Subwords, fifth round).
    combination: str = "sum"

    def resolved_lr(self):
        if self.lr is not None:
            return self.lr
        return 0.05 if self.method == "cbow" else 0.025

    def validate(self):
        if self.method not in ("skipgram", "cbow"):
            raise EmbcliError(f"method must be skipgram or cbow, not {self.method!r}")
        if self.chunk_order not in ("in-turn", "slices"):
            raise EmbcliError(f"chunk_order must be in-turn or slices, not {self.chunk_order!r}")
        if self.negatives not in ("shared", "per-pair"):
            raise EmbcliError(f"negatives must be shared or per-pair, not {self.negatives!r}")
        for name in ("dim", "window", "negative", "epochs", "block", "batch", "chunk_tokens"):
            if getattr(self, name) < 1:
                raise EmbcliError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name, largest in (("window", MAX_WINDOW), ("negative", MAX_NEGATIVE)):
            if getattr(self, name) > largest:
                raise EmbcliError(f"{name} must be at most {largest:,}, not {getattr(self, name):,}")
        if self.shared_negatives < 1:
            raise EmbcliError(f"shared_negatives must be at least 1, not {self.shared_negatives}")
        if self.resolved_lr() <= 0 or not math.isfinite(self.resolved_lr()):
            raise EmbcliError(f"learning rate must be a positive number, not {self.lr}")
        if not (math.isfinite(self.ns_exponent) and NS_EXPONENT_RANGE[0] <= self.ns_exponent <= NS_EXPONENT_RANGE[1]):
            raise EmbcliError(f"ns_exponent must be between {NS_EXPONENT_RANGE[0]} and {NS_EXPONENT_RANGE[1]}, "
                              f"not {self.ns_exponent}")
        if self.sample < 0:
            raise EmbcliError(f"sample must be 0 (off) or positive, not {self.sample}")
        if not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise EmbcliError(f"seed must be between {SEED_RANGE[0]} and {SEED_RANGE[1]}, not {self.seed}")
        if self.min_n:
            from embcli.subwords import check_settings

            check_settings(self.min_n, self.max_n, self.buckets, self.combination)


def pick_device(name):
    """Return the torch device for `name` ('auto', 'cpu' or 'cuda[:N]')."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EmbcliError("device cuda was requested but torch sees no CUDA GPU; use cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise EmbcliError(f"unknown device {name!r}; use auto, cpu or cuda") from None


def default_threads():
    """Return the number of worker processes for `--threads 0`: the usable cores, at most 8.

    Usable means the cores this process may run on (taskset, cpusets) and, under a
    cgroup v2 CPU quota (containers), no more cores than the quota pays for.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, round(quota)))
    return max(1, min(cores, 8))


def _cgroup_cpu_quota(path="/sys/fs/cgroup/cpu.max"):
    """Return the cgroup v2 CPU quota in cores, or None when there is none or no such file."""
    try:
        with open(path) as handle:
            limit, period = handle.read().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        return None


class Corpus:
    """Token ids for training: a memory-mapped uint32 array with LINE_END markers."""

    def __init__(self, path, counts):
        self.path = path
        self.tokens = TokenCache(path)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.total_words = int(self.counts.sum())

    def __len__(self):
        return len(self.tokens)


def keep_probabilities(counts, sample):
    """word2vec's subsampling: the probability of keeping each word, as float32."""
    counts = np.asarray(counts, dtype=np.float64)
    if sample <= 0:
        return np.ones(len(counts), dtype=np.float32)
    threshold = sample * counts.sum()
    keep = (np.sqrt(counts / threshold) + 1.0) * threshold / np.maximum(counts, 1)
    return np.minimum(keep, 1.0).astype(np.float32)


# The largest --window and --negative. A piece's tensors grow with the window (CBOW's
# context matrix is 16,384 x 2 window ids): 300 took 480 MB of memory for CBOW, and
# 100,000 asked for 52 GB. A step's negatives grow with --negative: 100,000 took 4.2 GB,
# and one chunk ran for more than 10 minutes, so SIGTERM could not stop it. word2vec
# uses windows of 5 to 10 and 5 to 20 negatives.
MAX_WINDOW = 1000
MAX_NEGATIVE = 1000


def subsampling_for(config, total_words):
    """Return (config, warning or None): `config` with --sample 0 when the corpus is too
    small for subsampling.

    word2vec's formula drops words more frequent than `sample`. In a corpus of fewer than
    1 / sample words, even a word seen once is more frequent than that, so the formula
    would drop nearly every word. For example, 6 words at the default 0.001 keep each
    word with a chance of 6 % to 8 %, which leaves no pairs to train on.
    """
    if config.sample <= 0 or config.sample * total_words >= 1:
        return config, None
    warning = (f"the corpus has {plural(total_words, 'word')}, fewer than 1 / --sample ({1 / config.sample:,.0f}), "
               "so subsampling would drop nearly every word; training without it (--sample 0)")
    return replace(config, sample=0.0), warning


def negative_cdf(counts, exponent):
    """Return the cumulative distribution of counts**exponent, normalised to end at 1.

    The powers are taken in log space, relative to the largest, so they cannot
    overflow. A word with count 0 is never drawn.
    """
    counts = np.asarray(counts, dtype=np.float64)
    positive = counts > 0
    logs = exponent * np.log(counts[positive])
    weights = np.zeros(len(counts))
    weights[positive] = np.exp(logs - logs.max()) if len(logs) else 0.0
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def chunk_seed(seed, worker, epoch, chunk):
    # A fixed mix, so that each chunk's randomness depends only on where it is.
    value = (seed * 1_000_003 + worker) * 1_000_033 + epoch
    return (value * 1_000_037 + chunk) % (2**63 - 1)


def slice_bounds(length, workers, worker):
    return length * worker // workers, length * (worker + 1) // workers


def chunk_starts(start, stop, chunk_tokens):
    return list(range(start, stop, chunk_tokens))


def worker_chunk_starts(length, chunk_tokens, workers, worker, chunk_order):
    """Return the start of each chunk that `worker` of `workers` trains, in training order."""
    if chunk_order == "in-turn" and workers > 1:
        return chunk_starts(0, length, chunk_tokens)[worker::workers]
    start, stop = slice_bounds(length, workers, worker)
    return chunk_starts(start, stop, chunk_tokens)


class Trainer:
    """One worker's training loop over its slice of the corpus.

    `input_vectors` and `output_vectors` may live in shared memory, updated by other
    workers at the same time.
    """

    def __init__(self, config, corpus, input_vectors, output_vectors, device, worker=0, workers=1):
        self.config = config
        self.corpus = corpus
        self.device = torch.device(device)
        self.worker = worker
        self.workers = workers
        self.input_vectors = input_vectors
        self.output_vectors = output_vectors
        self.keep = torch.from_numpy(keep_probabilities(corpus.counts, config.sample)).to(device)
        cdf = negative_cdf(corpus.counts, config.ns_exponent)
        self.cdf = torch.from_numpy(cdf).to(device)
        self.start, self.stop = slice_bounds(len(corpus), workers, worker)
        self.chunks = chunk_starts(self.start, self.stop, config.chunk_tokens)
        self.lr0 = config.resolved_lr()
        self.block_negatives = max(config.shared_negatives,
                                   math.ceil(config.block * config.negative / PAIRS_PER_SHARED_NEGATIVE))
        # Workers add their steps' changes to the same rows at once, so they share the
        # limits. A rate below BURST_LR keeps its limits: at --lr 0.005, limits 25 times
        # larger let a corpus 47 % "0" diverge.
        scale = min(1.0, (BURST_LR / max(self.lr0, 1e-12)) ** 2) / workers
        # At least one pair's change always goes through, so a learning rate far too
        # large still ends in divergence instead of being cancelled.
        # A pair changes its input row once for its target and once per negative. The limit
        # was found at --negative 5, and unscaled it let skip-gram diverge at --negative 48.
        changes = (1 + BURST_LIMIT_NEGATIVE) / (1 + config.negative)
        self.burst_limit = max(1.0, BURST_PAIRS * scale * min(1.0, changes))
        # The negative limit counts draws of one shared negative. A per-pair draw weighs
        # block_negatives / (block * negative) of one.
        self.negative_limit = max(1.0, BURST_NEGATIVE_DRAWS * scale)
        if config.negatives == "per-pair":
            self.negative_limit *= config.block * config.negative / self.block_negatives
        # Steps where no word can be drawn that often skip the count.
        draws = (config.batch // config.block + 1) * self.block_negatives
        if config.negatives == "per-pair":
            draws = config.batch * config.negative
        top = float(np.diff(cdf, prepend=0.0).max(initial=0.0))
        self.count_negatives = draws * top + 4 * math.sqrt(draws * top) + 1 > self.negative_limit
        self.vocab_size = len(corpus.counts)

    def take_chunks_in_turn(self):
        """Train on chunks `worker`, `worker + workers`, ... of the whole corpus instead of a slice.

        The workers then move through the corpus side by side, as gensim's workers share
        one reader. With contiguous slices (word2vec.c's threads), each worker starts its
        slice at the full learning rate. So on a corpus made of several sources in file
        order, the second half is learned as if it came first, which cost 1.3-2.0 analogy
        points in docs/benchmarks.md.
        """
        self.start, self.stop = 0, len(self.corpus)
        self.chunks = worker_chunk_starts(len(self.corpus), self.config.chunk_tokens, self.workers,
                                          self.worker, "in-turn")

    # -- pair generation -------------------------------------------------------------

    def _load_chunk(self, begin, end=None):
        """Return (ids, sentence ids, is-core mask, is-line-end mask, end - begin) for the
        tokens from `begin` to `end` (default: the end of the chunk at `begin`), with margins."""
        window = self.config.window
        end = min(begin + self.config.chunk_tokens, self.stop) if end is None else end
        lo = max(begin - 4 * window, 0)
        hi = min(end + 4 * window, len(self.corpus))
        raw = torch.from_numpy(np.asarray(self.corpus.tokens[lo:hi], dtype=np.int64))
        raw = raw.to(self.device, non_blocking=True)
        position = torch.arange(lo, hi, device=self.device)
        is_end = raw == LINE_END
        sentence = torch.cumsum(is_end, 0)
        core = (position >= begin) & (position < end) & ~is_end
        return raw, sentence, core, is_end, end - begin

    def _subsample(self, raw, sentence, core, is_end, generator):
        safe = torch.where(is_end, torch.zeros_like(raw), raw)
        draw = torch.rand(raw.shape, generator=generator, device=self.device)
        kept = ~is_end & (draw < self.keep[safe])
        return raw[kept], sentence[kept], core[kept]

    def skipgram_pairs(self, ids, sentence, core, generator):
        """Return (inputs, outputs) index tensors for every skip-gram pair in a chunk."""
        n = ids.shape[0]
        reduced = torch.randint(1, self.config.window + 1, (n,), generator=generator, device=self.device)
        inputs, outputs = [], []
        for offset in range(1, self.config.window + 1):
            if offset >= n:
                break
            same = sentence[:-offset] == sentence[offset:]
            # center at i, context at i + offset
            forward = same & (reduced[:-offset] >= offset) & core[:-offset]
            inputs.append(ids[offset:][forward])
            outputs.append(ids[:-offset][forward])
            # center at i + offset, context at i
            backward = same & (reduced[offset:] >= offset) & core[offset:]
            inputs.append(ids[:-offset][backward])
            outputs.append(ids[offset:][backward])
        if not inputs:
            empty = torch.zeros(0, dtype=torch.int64, device=self.device)
            return empty, empty
        # As word2vec.c does, the context word's input vector predicts the center word.
        return torch.cat(inputs), torch.cat(outputs)

    def skipgram_pairs_by_input(self, ids, sentence, core, generator):
        """Return (positions, offsets, targets): the skip-gram pairs of a chunk, grouped by
        their input word.

        The index positions[u] into `ids` is the input (context) word of the pairs
        offsets[u]:offsets[u + 1], whose center words are those entries of `targets`. The
        pairs and the random draws are those of skipgram_pairs, in another order. The
        positions come in strides of 2 * window + 1, as in cbow_windows, so that no two
        positions of one update step lie within a window of each other.
        """
        n = ids.shape[0]
        window = self.config.window
        reduced = torch.randint(1, window + 1, (n,), generator=generator, device=self.device)
        shifts = [offset for offset in range(-window, window + 1) if offset != 0]
        valid = torch.zeros((n, len(shifts)), dtype=torch.bool, device=self.device)
        for column, offset in enumerate(shifts):
            if abs(offset) >= n:
                continue
            # The input word at j, the center word at i = j + offset.
            j = slice(max(0, -offset), n - max(0, offset))
            i = slice(max(0, offset), n + min(0, offset))
            valid[j, column] = (sentence[j] == sentence[i]) & (reduced[i] >= abs(offset)) & core[i]
        stride = 2 * window + 1
        order = torch.argsort(torch.arange(n, device=self.device) % stride, stable=True)
        valid = valid.index_select(0, order)
        counts = valid.sum(1)
        used = counts.nonzero().squeeze(1)
        offsets = torch.zeros(used.shape[0] + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(counts.index_select(0, used), 0, out=offsets[1:])
        row, column = valid.nonzero().unbind(1)
        centers = order.index_select(0, row) + torch.tensor(shifts, device=self.device).index_select(0, column)
        return order.index_select(0, used), offsets, ids.index_select(0, centers)

    def cbow_windows(self, ids, sentence, core, generator):
        """Return (context ids (n, 2*window), mask, centers) for the CBOW examples."""
        n = ids.shape[0]
        window = self.config.window
        reduced = torch.randint(1, window + 1, (n,), generator=generator, device=self.device)
        offsets = torch.cat([torch.arange(-window, 0), torch.arange(1, window + 1)]).to(self.device)
        position = torch.arange(n, device=self.device)[:, None] + offsets[None, :]
        # Row r of `within` marks the offsets that a window reduced to r reaches. One gather
        # of it per center costs less than comparing every offset with `reduced`.
        within = offsets.abs()[None, :] <= torch.arange(window + 1, device=self.device)[:, None]
        mask = within.index_select(0, reduced)
        # Only the first and last `window` centers have offsets outside the piece.
        for edge in (slice(0, window), slice(max(n - window, window), n)):
            mask[edge] &= (position[edge] >= 0) & (position[edge] < n)
            position[edge].clamp_(0, max(n - 1, 0))
        mask &= sentence.index_select(0, position.view(-1)).view(n, 2 * window) == sentence[:, None]
        has_context = mask.any(1) & core
        # Visit the centers in strides of 2 * window + 1, so that the windows within one
        # update step never overlap. In text order, a context word would sit in up to
        # 2 * window windows of the same step, and their summed (rather than
        # sequential) updates made CBOW unstable.
        stride = 2 * window + 1
        order = torch.argsort(torch.arange(n, device=self.device) % stride, stable=True)
        order = order[has_context.index_select(0, order)]
        context = ids.index_select(0, position.index_select(0, order).view(-1)).view(-1, 2 * window)
        return context, mask.index_select(0, order), ids.index_select(0, order)

    # -- updates ---------------------------------------------------------------------

    def _draw_negatives(self, shape, generator):
        draw = torch.rand(shape, generator=generator, device=self.device, dtype=torch.float64)
        return torch.searchsorted(self.cdf, draw).clamp_(max=self.vocab_size - 1)

    def burst_weights(self, inputs, outputs, steps, limit=None):
        """Return per-pair weights that limit each word's change per step, or None.

        `inputs`, `outputs` and `steps` give each pair of a chunk its two words and its
        update step. A word in n pairs of one step (as input or as output), more than
        `limit` (default self.burst_limit), gets the weight limit / n on those pairs;
        see BURST_PAIRS.
        """
        limit = self.burst_limit if limit is None else limit
        if inputs.shape[0] <= limit:
            return None
        weight = None
        # At least one counter per pair, at most BURST_SCREEN.
        screen = min(BURST_SCREEN, 1 << max(inputs.shape[0] - 1, 1).bit_length())
        for words in (inputs, outputs):
            # Screen first: hash the (step, word) keys into `screen` counters. No key
            # counts more than its counter, so only the pairs of counters past the limit
            # need an exact count. About 2 ms per chunk of 65,536 tokens.
            keys = steps * self.vocab_size + words
            hashed = (keys * 2654435761) & (screen - 1)
            counters = torch.bincount(hashed, minlength=screen)
            # NOTE: not run on a GPU yet. This reads one value on the host per chunk,
            # not per step.
            if int(counters.max()) <= limit:
                continue
            hot = (counters.index_select(0, hashed) > limit).nonzero().squeeze(1)
            _, inverse, counts = torch.unique(keys.index_select(0, hot), return_inverse=True, return_counts=True)
            if weight is None:
                weight = torch.ones(inputs.shape[0], device=self.device)
            share = (limit / counts.to(weight.dtype)).clamp_(max=1.0).index_select(0, inverse)
            weight.index_copy_(0, hot, torch.minimum(weight.index_select(0, hot), share))
        return weight

    def cbow_burst_weights(self, flat_context, example_of_slot, centers, batch):
        """Return burst_weights for CBOW as per-example weights (or None). Each context
        slot counts as a pair of its context word and the example's center word."""
        weight = self.burst_weights(flat_context, centers.index_select(0, example_of_slot),
                                    torch.div(example_of_slot, batch, rounding_mode="floor"),
                                    self.burst_limit * CBOW_BURST_FACTOR)
        if weight is None:
            return None
        # An example takes the smallest weight of its slots.
        return torch.ones(centers.shape[0], device=self.device).scatter_reduce_(
            0, example_of_slot, weight, reduce="amin")

    def _negative_draw_weight(self, negatives):
        """Return weights shaped like `negatives`: limit / n for a word drawn n times in
        this step, more than self.negative_limit, and 1 for the others (see
        BURST_NEGATIVE_DRAWS). None when no word of the corpus is common enough."""
        weights = self._negative_draw_weights(negatives.reshape(1, -1))
        return None if weights is None else weights.view(negatives.shape)

    def _negative_draw_weights(self, negatives):
        """Return _negative_draw_weight of each row of `negatives` (steps, S), computed for
        all rows in one call. Each row contains one step's negatives. Returns None when
        no word of the corpus is common enough."""
        if not self.count_negatives:
            return None
        # The counts stay on the device: reading them on the host would stall a GPU step.
        step = torch.arange(negatives.shape[0], device=self.device)[:, None]
        _, inverse, counts = torch.unique((step * self.vocab_size + negatives).view(-1), return_inverse=True,
                                          return_counts=True)
        weight = (self.negative_limit / counts.to(torch.float32)).clamp_(max=1.0)
        return weight.index_select(0, inverse).view(negatives.shape)

    def _negative_step(self, hidden, targets, lr, generator, with_loss=True, pair_weight=None):
        """Update the output vectors for `hidden` (B, D) predicting `targets` (B).

        `pair_weight` (B,), if given, scales each pair's changes (see burst_weights). Return
        (the gradient for `hidden`, the summed loss or None unless `with_loss`).
        """
        config = self.config
        out = self.output_vectors
        count = hidden.shape[0]
        target_vectors = out.index_select(0, targets)
        positive = (hidden * target_vectors).sum(1)
        g_positive = (1.0 - torch.sigmoid(positive)) * lr  # (B)
        if pair_weight is not None:
            g_positive *= pair_weight
        loss = torch.nn.functional.softplus(-positive).sum() if with_loss else None

        if config.negatives == "shared":
            block = min(config.block, count)
            blocks = -(-count // block)
            padded = blocks * block
            if padded != count:
                pad = padded - count
                hidden_blocks = torch.cat([hidden, hidden.new_zeros(pad, hidden.shape[1])])
            else:
                hidden_blocks = hidden
            hidden_blocks = hidden_blocks.view(blocks, block, -1)  # (nb, block, D)
            negatives = self._draw_negatives((blocks, self.block_negatives), generator)
            draw_weight = self._negative_draw_weight(negatives)
            negative_vectors = out.index_select(0, negatives.view(-1)).view(blocks, self.block_negatives, -1)
            scores = torch.bmm(hidden_blocks, negative_vectors.transpose(1, 2))  # (nb, block, S)
            weight = config.negative / self.block_negatives
            g_negative = torch.sigmoid(scores) * (-lr * weight)
            if padded != count:
                g_negative.view(padded, -1)[count:] = 0
            if pair_weight is not None:
                g_negative.view(padded, -1)[:count] *= pair_weight[:, None]
            if draw_weight is not None:
                g_negative *= draw_weight[:, None, :]
            if with_loss:
                loss = loss + weight * torch.nn.functional.softplus(scores).view(padded, -1)[:count].sum()
            grad_hidden = torch.addcmul(
                torch.bmm(g_negative, negative_vectors).view(padded, -1)[:count],
                g_positive[:, None],
                target_vectors,
            )
            grad_negative = torch.bmm(g_negative.transpose(1, 2), hidden_blocks)  # (nb, S, D)
            out.index_add_(0, negatives.view(-1), grad_negative.view(-1, hidden.shape[1]))
        else:
            negatives = self._draw_negatives((count, config.negative), generator)
            draw_weight = self._negative_draw_weight(negatives)
            negative_vectors = out.index_select(0, negatives.view(-1)).view(count, config.negative, -1)
            scores = torch.bmm(negative_vectors, hidden[:, :, None]).squeeze(2)  # (B, K)
            g_negative = torch.sigmoid(scores) * -lr
            if pair_weight is not None:
                g_negative *= pair_weight[:, None]
            if draw_weight is not None:
                g_negative *= draw_weight
            if with_loss:
                loss = loss + torch.nn.functional.softplus(scores).sum()
            grad_hidden = torch.addcmul(
                torch.bmm(g_negative[:, None, :], negative_vectors).squeeze(1),
                g_positive[:, None],
                target_vectors,
            )
            grad_negative = g_negative[:, :, None] * hidden[:, None, :]
            out.index_add_(0, negatives.view(-1), grad_negative.view(-1, hidden.shape[1]))
        out.index_add_(0, targets, g_positive[:, None] * hidden)
        return grad_hidden, loss

    def _positive_part(self, hidden, targets, lr, with_loss, pair_weight):
        """Return (the target rows, each pair's positive gradient factor, the positive loss
        summed or None) for `hidden` (B, D) predicting `targets` (B)."""
        target_vectors = self.output_vectors.index_select(0, targets)
        positive = torch.linalg.vecdot(hidden, target_vectors)
        loss = torch.nn.functional.softplus(-positive).sum() if with_loss else None
        g_positive = torch.sigmoid(positive.neg_()).mul_(lr)  # (1 - sigmoid(x)) * lr
        if pair_weight is not None:
            g_positive *= pair_weight
        return target_vectors, g_positive, loss

    def _one_block_step(self, hidden, targets, negatives, draw_weight, lr, with_loss=True, pair_weight=None):
        """Run _negative_step with shared negatives for at most `block` pairs, which form
        one block. The caller draws the block's `negatives` and computes their
        `draw_weight` (see _negative_draw_weight). The update is the same, in plain
        (B, D) x (D, S) products, without the padding and views of several blocks."""
        out = self.output_vectors
        target_vectors, g_positive, loss = self._positive_part(hidden, targets, lr, with_loss, pair_weight)
        negative_vectors = out.index_select(0, negatives)  # (S, D)
        scores = torch.mm(hidden, negative_vectors.t())  # (B, S)
        weight = self.config.negative / negatives.shape[0]
        if with_loss:
            loss = loss + weight * torch.nn.functional.softplus(scores).sum()
        g_negative = torch.sigmoid(scores).mul_(-lr * weight)
        if pair_weight is not None:
            g_negative *= pair_weight[:, None]
        if draw_weight is not None:
            g_negative *= draw_weight[None, :]
        grad_hidden = torch.addmm(target_vectors.mul_(g_positive[:, None]), g_negative, negative_vectors)
        out.index_add_(0, negatives, torch.mm(g_negative.t(), hidden))
        out.index_add_(0, targets, hidden.mul(g_positive[:, None]))
        return grad_hidden, loss

    def step_negatives(self):
        """Return how many negatives a skip-gram step with shared negatives draws: as many
        per `block` pairs of its `batch` as a block of _negative_step."""
        return max(1, self.block_negatives * self.config.batch // self.config.block)

    def _shared_negative_step_by_word(self, combined, pair_word, targets, lr, generator, with_loss=True,
                                      pair_weight=None, pairs_of_word=None, pair_offsets=None, negatives=None,
                                      draw_weight=None):
        """Run a shared-negative step for pairs whose input vectors repeat.

        Pair p's input vector is row pair_word[p] of `combined` (U, D), and it predicts
        targets[p]. Returns (the gradient of each row of `combined`, summed over its pairs
        (U, D), the summed loss or None unless `with_loss`). `pairs_of_word` (U), if
        given, must contain each row's number of pairs. `pair_offsets` (U), if given, gives where
        each row's pairs start, for pairs contiguous by row (`pair_word` sorted).
        `negatives`, if given, are the step's negatives, drawn by the caller, and
        `draw_weight` their _negative_draw_weight.

        The step draws one set of step_negatives() negatives, so that each
        carries as many pairs' changes as in a block of _negative_step. A pair's negative
        changes depend only on its input vector. So each row is scored once against
        the negatives, and its changes count once per pair. This is the update of
        _negative_step on `combined[pair_word]` with a single block, in three (U, D) x
        (D, negatives) products instead of three per-pair ones.
        """
        config = self.config
        out = self.output_vectors
        shared = self.step_negatives()
        if pairs_of_word is None:
            pairs_of_word = torch.zeros(combined.shape[0], dtype=combined.dtype, device=self.device).index_add_(
                0, pair_word, torch.ones(pair_word.shape[0], dtype=combined.dtype, device=self.device))
        multiplicity = pairs_of_word[:, None]
        if pair_weight is not None:
            weighted = torch.zeros_like(pairs_of_word).index_add_(0, pair_word, pair_weight)[:, None]
        else:
            weighted = multiplicity
        hidden = combined.index_select(0, pair_word)
        target_vectors, g_positive, loss = self._positive_part(hidden, targets, lr, with_loss, pair_weight)
        if negatives is None:
            negatives = self._draw_negatives((shared,), generator)
            draw_weight = self._negative_draw_weight(negatives)
        negative_vectors = out.index_select(0, negatives)  # (S, D)
        scores = torch.mm(combined, negative_vectors.t())  # (U, S)
        weight = config.negative / shared
        g_negative = torch.sigmoid(scores).mul_(weighted * (-lr * weight))
        if draw_weight is not None:
            g_negative *= draw_weight[None, :]
        if with_loss:
            loss = loss + weight * (torch.nn.functional.softplus(scores) * multiplicity).sum()
        if pair_offsets is not None:
            # Gather, weight and sum each row's targets in one kernel, then add the
            # negatives' part in the same product.
            positive_grad = torch.nn.functional.embedding_bag(targets, out, pair_offsets, mode="sum",
                                                              per_sample_weights=g_positive)
            grad = torch.addmm(positive_grad, g_negative, negative_vectors)
        else:
            grad = torch.mm(g_negative, negative_vectors)
            grad.index_add_(0, pair_word, g_positive[:, None] * target_vectors)
        out.index_add_(0, negatives, torch.mm(g_negative.t(), combined))
        out.index_add_(0, targets, hidden.mul_(g_positive[:, None]))
        return grad, loss

    def _chunk_loss(self, losses, sampled, examples):
        """Scale the loss of the sampled steps to all `examples` of the chunk (float64)."""
        if not losses:
            return torch.zeros((), dtype=torch.float64, device=self.device)
        return torch.stack(losses).to(torch.float64).sum() * (examples / sampled)

    def train_skipgram_chunk(self, ids, sentence, core, lr, generator):
        if self.config.negatives == "shared":
            return self._train_skipgram_by_input(ids, sentence, core, lr, generator)
        inputs, outputs = self.skipgram_pairs(ids, sentence, core, generator)
        batch = self.config.batch
        examples = inputs.shape[0]
        steps = torch.div(torch.arange(examples, device=self.device), batch, rounding_mode="floor")
        weight = self.burst_weights(inputs, outputs, steps)
        losses, sampled = [], 0
        for step, begin in enumerate(range(0, examples, batch)):
            word = inputs[begin : begin + batch]
            with_loss = step % LOSS_EVERY == 0
            hidden = self.input_vectors.index_select(0, word)
            grad, loss = self._negative_step(hidden, outputs[begin : begin + batch], lr, generator, with_loss,
                                             None if weight is None else weight[begin : begin + batch])
            self.input_vectors.index_add_(0, word, grad)
            if with_loss:
                losses.append(loss)
                sampled += word.shape[0]
        return self._chunk_loss(losses, sampled, examples), examples

    def _train_skipgram_by_input(self, ids, sentence, core, lr, generator):
        """Train skip-gram with shared negatives on one chunk, in steps of whole input words.

        Each step takes the pairs of about batch / (pairs per input word) input positions,
        about `batch` pairs, and scores each position once against the step's negatives
        (_shared_negative_step_by_word).
        """
        positions, offsets, targets = self.skipgram_pairs_by_input(ids, sentence, core, generator)
        rows, examples = positions.shape[0], targets.shape[0]
        if examples == 0:
            return self._chunk_loss([], 0, 0), 0
        words = ids.index_select(0, positions)
        pair_row = torch.repeat_interleave(torch.arange(rows, device=self.device), offsets[1:] - offsets[:-1])
        step_rows = max(1, round(self.config.batch * rows / examples))
        starts = list(range(0, rows, step_rows))
        # One host read per chunk, not per step.
        bounds = offsets[starts + [rows]].tolist()
        weight = self.burst_weights(words.index_select(0, pair_row), targets,
                                    torch.div(pair_row, step_rows, rounding_mode="floor"))
        pairs_of_row = (offsets[1:] - offsets[:-1]).to(self.input_vectors.dtype)
        # All the chunk's negatives in one call instead of one per step.
        negatives = self._draw_negatives((len(starts), self.step_negatives()), generator)
        draw_weights = self._negative_draw_weights(negatives)
        losses, sampled = [], 0
        for step, begin in enumerate(starts):
            stop = min(begin + step_rows, rows)
            low, high = bounds[step], bounds[step + 1]
            word = words[begin:stop]
            with_loss = step % LOSS_EVERY == 0
            grad, loss = self._shared_negative_step_by_word(
                self.input_vectors.index_select(0, word), pair_row[low:high] - begin, targets[low:high], lr,
                generator, with_loss, None if weight is None else weight[low:high], pairs_of_row[begin:stop],
                offsets[begin:stop] - low, negatives[step],
                None if draw_weights is None else draw_weights[step])
            self.input_vectors.index_add_(0, word, grad)
            if with_loss:
                losses.append(loss)
                sampled += high - low
        return self._chunk_loss(losses, sampled, examples), examples

    def train_cbow_chunk(self, ids, sentence, core, lr, generator):
        context, mask, centers = self.cbow_windows(ids, sentence, core, generator)
        # About as many context words per step as skip-gram has pairs, so that a frequent
        # word collects a similar number of summed updates in one step.
        batch = max(1, self.config.batch // (2 * self.config.window) * 2)
        examples = centers.shape[0]
        # Flatten the used context slots once per chunk. Each step then takes a contiguous
        # slice, with no host round trip per step (which would stall a GPU).
        sizes = mask.sum(1)
        flat_context = context[mask]
        rows = torch.repeat_interleave(torch.arange(examples, device=self.device), sizes)
        offsets = torch.zeros(examples + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(sizes, 0, out=offsets[1:])
        weight = self.cbow_burst_weights(flat_context, rows, centers, batch)
        slot_share = sizes.to(self.input_vectors.dtype).reciprocal_().index_select(0, rows)
        bounds = offsets[::batch].tolist() + ([int(offsets[-1])] if examples % batch else [])
        starts = range(0, examples, batch)
        # A step of at most one block of shared negatives draws them all in one call per chunk.
        one_block = self.config.negatives == "shared" and batch <= self.config.block
        negatives = self._draw_negatives((len(starts), self.block_negatives), generator) if one_block else None
        draw_weights = self._negative_draw_weights(negatives) if one_block else None
        losses, sampled = [], 0
        for step, begin in enumerate(starts):
            stop = min(begin + batch, examples)
            low, high = bounds[step], bounds[step + 1]
            flat = flat_context[low:high]
            step_rows = rows[low:high] - begin
            with_loss = step % LOSS_EVERY == 0
            # Gather and average each example's context rows in one kernel. A sum weighted by
            # 1 / count is the mean, and took 13 us against the mean mode's 31 us.
            hidden = torch.nn.functional.embedding_bag(flat, self.input_vectors, offsets[begin:stop] - low,
                                                       mode="sum", per_sample_weights=slot_share[low:high])
            step_weight = None if weight is None else weight[begin:stop]
            if one_block:
                grad, loss = self._one_block_step(hidden, centers[begin:stop], negatives[step],
                                                  None if draw_weights is None else draw_weights[step], lr,
                                                  with_loss, step_weight)
            else:
                grad, loss = self._negative_step(hidden, centers[begin:stop], lr, generator, with_loss, step_weight)
            # word2vec.c adds the whole error to every context word, not error / count.
            self.input_vectors.index_add_(0, flat, grad.index_select(0, step_rows))
            if with_loss:
                losses.append(loss)
                sampled += stop - begin
        return self._chunk_loss(losses, sampled, examples), examples

    # -- the loop --------------------------------------------------------------------

    def learning_rate(self, epoch, chunk_index):
        done = epoch * len(self.chunks) + chunk_index
        total = self.config.epochs * len(self.chunks)
        return self.lr0 * max(1.0 - done / max(total, 1), self.config.min_lr_fraction)

    def run(self, start_epoch=0, start_chunk=0, report=None, should_stop=None):
        """Train from (start_epoch, start_chunk); return (epoch, chunk) where it stopped.

        `report(words, examples, loss_sum, lr)` is called after each chunk. `should_stop()`
        is checked between chunks; when it returns True, training stops there.
        """
        for epoch in range(start_epoch, self.config.epochs):
            first = start_chunk if epoch == start_epoch else 0
            for chunk_index in range(first, len(self.chunks)):
                if should_stop is not None and should_stop():
                    return epoch, chunk_index
                lr = self.learning_rate(epoch, chunk_index)
                words, examples, loss = self.train_chunk(epoch, chunk_index, lr, self.worker)
                if report is not None:
                    report(words, examples, loss, lr)
        return self.config.epochs, 0

    def run_tickets(self, take, report, should_stop):
        """Train the chunks that `take()` hands out until it returns None or should_stop().

        Ticket t is chunk t % len(self.chunks) of epoch t // len(self.chunks), so tickets
        handed out in order go through the chunks in corpus order, epoch after epoch (see
        _Tickets). Call take_all_chunks() first. Returns the ticket taken but not
        trained because should_stop() turned True meanwhile, or None.
        """
        chunks = len(self.chunks)
        total = self.config.epochs * chunks
        while not should_stop():
            ticket = take()
            if ticket is None:
                return None
            if should_stop():
                return ticket
            epoch, chunk_index = divmod(ticket, chunks)
            # The rate of one process at this point of the run (learning_rate).
            lr = self.lr0 * max(1.0 - ticket / max(total, 1), self.config.min_lr_fraction)
            # The chunk's randomness depends on its place in the corpus, not on the
            # worker that happens to take it.
            words, examples, loss = self.train_chunk(epoch, chunk_index, lr, 0)
            report(words, examples, loss, lr)
        return None

    def take_all_chunks(self):
        """Make self.chunks every chunk of the corpus, for run_tickets."""
        self.start, self.stop = 0, len(self.corpus)
        self.chunks = chunk_starts(0, len(self.corpus), self.config.chunk_tokens)

    def train_chunk(self, epoch, chunk_index, lr, seed_worker):
        """Train chunk `chunk_index` of self.chunks once; return (words, examples, loss sum)."""
        config = self.config
        train = self.train_cbow_chunk if config.method == "cbow" else self.train_skipgram_chunk
        generator = torch.Generator(device=self.device)
        generator.manual_seed(chunk_seed(config.seed, seed_worker, epoch, chunk_index))
        begin = self.chunks[chunk_index]
        end = min(begin + config.chunk_tokens, self.stop)
        # A GPU keeps whole chunks: its steps are launched from the host, and larger pieces
        # give it more work per launch.
        piece_tokens = PIECE_TOKENS if self.device.type == "cpu" else config.chunk_tokens
        words, examples, losses = 0, 0, []
        for piece in range(begin, end, piece_tokens):
            raw, sentence, core, is_end, _ = self._load_chunk(piece, min(piece + piece_tokens, end))
            words += int(core.sum())
            ids, sentence, core = self._subsample(raw, sentence, core, is_end, generator)
            with torch.no_grad():
                loss, piece_examples = train(ids, sentence, core, lr, generator)
            losses.append(loss)
            examples += piece_examples
        loss_value = float(sum(losses))
        # A fresh model's loss per example is ln 2 per score (about 4.2 with 5
        # negatives); 50 times that only happens when the updates blow up.
        diverging = examples and loss_value / examples > 50 * math.log(2) * (1 + config.negative)
        if not math.isfinite(loss_value) or diverging:
            advice = f"lower the learning rate (it was {self.lr0:g})"
            if config.negative > 10:
                # Each step sums the changes of many negatives per input word.
                advice += f", or --negative (it was {config.negative})"
            raise TrainingError(
                f"training diverged in epoch {epoch + 1} (the loss per example became "
                f"{loss_value / max(examples, 1):.4g}); {advice}"
            )
        return words, examples, loss_value


def init_vectors(vocab_size, dim, seed):
    """word2vec's initialisation: input uniform in ±0.5/dim, output zero."""
    generator = torch.Generator().manual_seed(seed)
    input_vectors = (torch.rand(vocab_size, dim, generator=generator) - 0.5) / dim
    output_vectors = torch.zeros(vocab_size, dim)
    return input_vectors, output_vectors


@dataclass
class TrainStats:
    words: int
    examples: int
    seconds: float
    words_per_second: float
    final_loss: float
    epochs_done: int

    def to_json(self):
        data = asdict(self)
        # A resumed run with nothing left to train has no loss; JSON has no NaN.
        if not math.isfinite(data["final_loss"]):
            data["final_loss"] = None
        return data


# -- orchestration: workers, checkpoints, saving ---------------------------------------

CHECKPOINT = store.CHECKPOINT
CHECKPOINT_INPUT = store.CHECKPOINT_INPUT
CHECKPOINT_OUTPUT = store.CHECKPOINT_OUTPUT
CHECKPOINT_TOKENS = store.CHECKPOINT_TOKENS
CHECKPOINT_FILES = store.CHECKPOINT_FILES
CHECKPOINT_VERSION = 2
# After SIGINT or SIGTERM, how long workers get to finish their chunk, in seconds.
STOP_GRACE_SECONDS = 3.0
# How often a running training saves a checkpoint, in seconds.
DEFAULT_CHECKPOINT_SECONDS = 600
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _RemoteTraceback(Exception):
    """The formatted traceback of a worker process, chained as the cause of its error."""

    def __str__(self):
        return self.args[0]


def _worker_main(worker, workers, config, tokens_path, counts, input_vectors, output_vectors,
                 positions, shared_stats, stop_flag, errors, parent_pid, table=None,
                 save_orphaned=None, tickets=None):
    """Entry point of one Hogwild worker process.

    The worker shares no lock with the others or with the parent: `positions`,
    `shared_stats` and `stop_flag` are lock-free shared arrays, and each worker writes
    only its own slots. So a worker killed at any moment, for example by the kernel's
    out-of-memory killer, cannot leave a lock held that would hang the rest.

    With `tickets` (a _Tickets), the worker trains the chunks it takes from them, and
    `positions` contains its claim (see _Tickets.resume_point). Otherwise it trains its
    own share of the chunks, and `positions` contains its [epoch, chunk].

    If the parent dies (SIGKILL), every worker stops after its chunk, and worker 0 calls
    `save_orphaned(positions, words, examples)` to save a checkpoint in its place.
    """
    import traceback

    # The parent started this process with SIGINT and SIGTERM ignored and blocked, so a
    # Ctrl-C that reaches the whole process group during start-up is dropped here. The
    # parent alone handles signals and stops the workers through `stop_flag`.
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    _prefer_as_oom_victim()
    torch.set_num_threads(1)
    try:
        corpus = Corpus(tokens_path, counts)
        trainer = _new_trainer(config, corpus, input_vectors, output_vectors, torch.device("cpu"), worker,
                               workers, table)
        base = worker * 4

        def should_stop():
            # A parent killed with SIGKILL cannot set stop_flag; its death re-parents us.
            return stop_flag[0] != 0 or os.getppid() != parent_pid

        if tickets is not None:
            _train_tickets(worker, workers, trainer, tickets, positions, shared_stats, should_stop,
                           parent_pid, save_orphaned)
            return
        chunks = len(trainer.chunks)

        def report(words, examples, loss, lr):
            # Trainer.run reports once per finished chunk: advance this worker's position,
            # so that a checkpoint taken after any chunk resumes at the next one.
            epoch, chunk = positions[2 * worker], positions[2 * worker + 1] + 1
            if chunk >= chunks:
                epoch, chunk = epoch + 1, 0
            # The chunk goes first: a reader (or a kill) between the two stores reads
            # (old epoch, 0) at an epoch boundary, which repeats that epoch's work
            # instead of skipping the next epoch.
            positions[2 * worker + 1] = chunk
            positions[2 * worker] = epoch
            shared_stats[base] += words
            shared_stats[base + 1] += examples
            shared_stats[base + 2] += loss
            shared_stats[base + 3] = lr

        epoch, chunk = positions[2 * worker], positions[2 * worker + 1]
        epoch, chunk = trainer.run(int(epoch), int(chunk), report, should_stop)
        positions[2 * worker + 1] = chunk
        positions[2 * worker] = epoch
        if worker == 0 and save_orphaned is not None and os.getppid() != parent_pid:
            # Another worker may still be inside a chunk: its position is that of its last
            # finished chunk, which a resumed run trains again.
            words = sum(shared_stats[4 * w] for w in range(workers))
            examples = sum(shared_stats[4 * w + 1] for w in range(workers))
            save_orphaned([int(p) for p in positions], words, examples)
    except TrainingError as error:
        errors.put(("training", str(error), ""))
        stop_flag[0] = 1
    except BaseException as error:  # reported to the parent, which raises it
        if _is_out_of_memory(error):
            # torch's message starts with the C++ check that failed; the rest is the size.
            detail = str(error).split("err == 0. ")[-1].strip() or type(error).__name__
            errors.put(("memory", f"worker process {worker} ran out of memory ({detail})", ""))
        else:
            errors.put(("internal", f"worker process {worker} failed: {type(error).__name__}: {error}",
                        traceback.format_exc()))
        stop_flag[0] = 1


def _train_tickets(worker, workers, trainer, tickets, claims, shared_stats, should_stop, parent_pid,
                   save_orphaned):
    """Run `trainer` on the chunks of `tickets`, keeping this worker's claim in `claims`.

    claims[3 * worker] is the last ticket taken, claims[3 * worker + 1] is 1 from just
    before a take until that ticket's chunk is trained, and claims[3 * worker + 2] counts
    the tickets taken. _Tickets.resume_point reads them.
    """
    tickets.in_worker()
    trainer.take_all_chunks()
    slot, base = 3 * worker, 4 * worker

    def take():
        # Busy before the read, so that a ticket read but not yet recorded still keeps
        # the resume point at or before it.
        claims[slot + 1] = 1
        ticket = tickets.take()
        if ticket is None:
            claims[slot + 1] = 0
            return None
        claims[slot] = ticket
        claims[slot + 2] += 1
        return ticket

    def report(words, examples, loss, lr):
        shared_stats[base] += words
        shared_stats[base + 1] += examples
        shared_stats[base + 2] += loss
        shared_stats[base + 3] = lr
        claims[slot + 1] = 0

    trainer.run_tickets(take, report, should_stop)
    if worker == 0 and save_orphaned is not None and os.getppid() != parent_pid:
        words = sum(shared_stats[4 * w] for w in range(workers))
        examples = sum(shared_stats[4 * w + 1] for w in range(workers))
        resume = tickets.resume_point(claims, workers)
        save_orphaned(tickets.positions(resume, workers), words, examples)


class _Tickets:
    """Hands out the chunks of a run to Hogwild worker processes, in corpus order.

    Ticket t stands for chunk t % chunks of epoch t // chunks (Trainer.run_tickets). The
    parent writes the tickets into a pipe as 8-byte integers, 512 per write. A write of
    at most PIPE_BUF (4,096) bytes enters the pipe whole, and the kernel serializes the
    readers, so each 8-byte read takes one whole ticket and no ticket goes to two workers.
    embcli takes no lock here, so a worker killed at any moment leaves none held.

    A worker that runs faster (its core is less loaded) takes more chunks. With fixed
    shares, the faster worker finished early and left its core idle: 3.1 s at the end of a
    48 s subword run, in docs/benchmarks.md.
    """

    RECORD = 8
    PER_WRITE = 512  # tickets per write: 4,096 bytes, PIPE_BUF on Linux

    def __init__(self, start, chunks, epochs):
        self.start = start
        self.chunks = chunks
        self.total = chunks * epochs
        self.next = start
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self.fill()

    def fill(self):
        """Write as many of the remaining tickets as fit in the pipe; close it after the last."""
        while self.write_fd is not None and self.next < self.total:
            end = min(self.next + self.PER_WRITE, self.total)
            try:
                written = os.write(self.write_fd, np.arange(self.next, end, dtype="<i8").tobytes())
            except BlockingIOError:
                return  # the pipe is full; the next poll writes more
            assert written == (end - self.next) * self.RECORD  # a pipe write of <= PIPE_BUF is whole
            self.next = end
        if self.next >= self.total:
            self.close()

    def close(self):
        """Hand out no more tickets: the workers read the end once the pipe is empty."""
        if self.write_fd is not None:
            os.close(self.write_fd)
            self.write_fd = None

    def release(self):
        self.close()
        if self.read_fd is not None:
            os.close(self.read_fd)
            self.read_fd = None

    def in_worker(self):
        """Close a forked worker's copy of the write end, so that the end can be read."""
        if self.write_fd is not None:
            os.close(self.write_fd)
            self.write_fd = None

    def take(self):
        """Return the next ticket, or None when there are no more (blocks while the pipe is empty)."""
        data = os.read(self.read_fd, self.RECORD)
        if not data:
            return None
        if len(data) != self.RECORD:
            raise RuntimeError(f"read {len(data)} bytes of a chunk ticket instead of {self.RECORD}")
        return int.from_bytes(data, "little", signed=True)

    def resume_point(self, claims, workers):
        """Return the first ticket that is not known to be trained.

        Tickets go out in order, so every ticket before start + (tickets taken) was taken,
        and each worker has at most one untrained ticket. The counts are read before the
        claims: a worker that takes a ticket in between is then busy, which keeps the
        result at or before its previous ticket. Chunks trained after the result are
        trained again by a resumed run, as after a stop in the middle of a chunk.
        """
        tickets_taken = sum(int(claims[3 * w + 2]) for w in range(workers))
        resume = self.start + tickets_taken
        for w in range(workers):
            ticket = int(claims[3 * w])
            if claims[3 * w + 1]:
                resume = min(resume, ticket)
        return min(resume, self.total)

    def positions(self, ticket, workers):
        """Return the checkpoint positions of `ticket`: [epoch, chunk] of the whole corpus's
        chunks, once per worker (the layout of fixed shares, which hold one per worker)."""
        return list(divmod(ticket, self.chunks)) * workers


def ticket_from_positions(positions, workers, chunks, dispatched):
    """Return the first ticket of a run of `workers` resumed at checkpoint `positions`.

    `dispatched` positions come from _Tickets.positions. Older checkpoints of in-turn
    workers hold each worker's [epoch, chunk] of its share (chunks w, w + workers, ...
    of each epoch): the run resumes at the earliest, and trains again what the others
    had trained beyond it.
    """
    if dispatched:
        return positions[0] * chunks + positions[1]
    return min(positions[2 * w] * chunks + positions[2 * w + 1] * workers + w for w in range(workers))


def shares_from_ticket(ticket, workers, chunks, epochs):
    """Return the in-turn positions of `workers` fixed shares that resume at `ticket`:
    each worker's first chunk at or after it (for torchrun ranks, which keep shares)."""
    positions = []
    epoch, chunk = divmod(ticket, chunks)
    for w in range(workers):
        per_epoch = len(range(w, chunks, workers))
        index = max(0, -(-(chunk - w) // workers))
        at = (epoch, index) if index < per_epoch else (epoch + 1, 0)
        positions += [epochs, 0] if at[0] >= epochs else list(at)
    return positions


# Added to a worker's /proc/self/oom_score_adj (range -1000..1000). The kernel's
# out-of-memory killer then picks a worker before the parent process, which can still
# save a checkpoint after a worker dies but not after it dies itself.
WORKER_OOM_SCORE_ADJ = 200


def _prefer_as_oom_victim():
    """Raise this process's oom_score_adj by WORKER_OOM_SCORE_ADJ (Linux only, else a no-op)."""
    try:
        with open("/proc/self/oom_score_adj", "r+") as handle:
            current = int(handle.read().strip() or 0)
            handle.seek(0)
            handle.write(str(min(1000, current + WORKER_OOM_SCORE_ADJ)))
    except (OSError, ValueError):
        pass


def is_shared_memory_full(error):
    """Return True for torch's RuntimeError when a shared-memory file cannot be created or grown."""
    text = str(error)
    return isinstance(error, RuntimeError) and ("shared memory" in text or "unable to resize file" in text) and (
        "No space left" in text or "File too large" in text or "(28)" in text or "(27)" in text)


def _is_out_of_memory(error):
    """Return True for a failed allocation: MemoryError, or torch's RuntimeError for ENOMEM."""
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "Cannot allocate memory" in text or "out of memory" in text)


class _Stop:
    """Records the first SIGINT or SIGTERM so training can stop between chunks."""

    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        if self.signal is None:
            self.signal = signum

    def is_set(self):
        return self.signal is not None

    @property
    def name(self):
        return signal.Signals(self.signal).name if self.signal else None


def route_signals(signals, handler):
    """Set `handler` for each of `signals`; return {signal: previous handler}.

    A signal that this process ignores stays ignored: a shell starts a background job
    without job control with SIGINT ignored, and Python keeps it so.
    """
    return {sig: signal.signal(sig, handler) for sig in signals if signal.getsignal(sig) != signal.SIG_IGN}


@contextlib.contextmanager
def _signals_to(handler):
    """Route SIGINT and SIGTERM to `handler` for the block (a no-op off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = route_signals(_SIGNALS, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class _Resume:
    """The starting state of a run: fresh vectors, or those of a checkpoint."""

    config: TrainConfig
    workers: int
    positions: list
    input_vectors: torch.Tensor
    output_vectors: torch.Tensor
    tokens_name: str  # the file in the model directory holding the token ids
    corpus_record: list
    words_done: float = 0.0
    examples_done: float = 0.0
    seconds_done: float = 0.0
    resumed: bool = False
    table: object = None  # the SubwordTable of a subword run, else None
    # True when `positions` come from _Tickets.positions, False for fixed shares.
    dispatched: bool = False
    # The (loss, examples) pairs of the most recent chunks before the checkpoint, so that
    # a resumed run's final loss is the mean over the same chunks as without the stop.
    loss_window: list = None


def train_model(model_dir, config, corpus_paths=None, encoding="utf-8", errors="strict",
                resume=False, progress=None, encode_progress=None, discard_checkpoint=False,
                checkpoint_seconds=DEFAULT_CHECKPOINT_SECONDS, warn=None):
    """Train embeddings for the vocabulary in `model_dir` and save them there.

    `progress(words_done, words_total, examples, loss, lr)` is called a few times a
    second. Returns TrainStats. On SIGINT or SIGTERM it stops between two chunks of the
    corpus, saves a checkpoint and raises TrainingInterrupted. With `resume=True` it
    continues from that checkpoint with its settings, learning-rate schedule and random
    streams.
    Raises TrainingError, writing no vectors, if training diverges. The model directory
    is locked against other writers for the whole run. A fresh run in a directory with a
    checkpoint raises EmbcliError, so the interrupted work is not lost, unless
    `discard_checkpoint` is set. Every `checkpoint_seconds` (0: never) a checkpoint is
    also saved during training, so a run killed with SIGKILL can resume from it.
    """
    config.validate()
    if resume and corpus_paths:
        raise EmbcliError(
            "a resumed run trains on the corpus that its checkpoint recorded; drop the "
            "corpus arguments, or start again without resuming"
        )
    checkpoint = os.path.join(model_dir, CHECKPOINT)
    if not resume and not discard_checkpoint and os.path.exists(checkpoint):
        raise EmbcliError(
            f"{checkpoint} contains the state of an interrupted run; continue it, or start "
            "from scratch and discard it",
            options=("resume", "force"),
        )
    with store.writer_lock(model_dir):
        return _train_locked(model_dir, config, corpus_paths, encoding, errors, resume,
                             progress, encode_progress, checkpoint_seconds, warn)


def _train_locked(model_dir, config, corpus_paths, encoding, errors, resume, progress,
                  encode_progress, checkpoint_seconds, warn=None):
    from embcli.errors import EmptyCorpus

    meta = store.read_meta(model_dir)
    words, counts = store.read_vocab(model_dir, meta)
    check_trainable(model_dir, meta, counts)
    if len(words) < 2:
        raise EmptyCorpus(
            f"{os.path.join(model_dir, store.VOCAB)} has {len(words)} words, and word "
            "vectors need at least 2; rebuild the vocabulary from a larger corpus"
        )
    device = pick_device(config.device)
    new_cache = None
    checkpoints = None
    try:
        if resume:
            start = _load_checkpoint(model_dir, meta, config, len(words), words)
            config = start.config
            table = start.table
        if not resume:
            table = _subword_table(words, config)
        if table is not None:
            _check_room_for_subwords(model_dir, config, table)
        if not resume:
            start, new_cache = _fresh_start(model_dir, meta, config, words, corpus_paths,
                                            encoding, errors, encode_progress, table)
        tokens_path = new_cache or os.path.join(model_dir, start.tokens_name)
        corpus = _open_corpus(tokens_path, counts)
        words_in_corpus = _words_in(corpus)
        if words_in_corpus == 0:
            names = ", ".join(corpus_paths) if corpus_paths else "the corpus"
            raise EmptyCorpus(f"{names} contains no word of the vocabulary; nothing to train on")
        if not resume:
            config, warning = subsampling_for(config, corpus.total_words)
            if warning:
                (warn or _warn_on_stderr)(warning)

        if resume and start.workers > 1 and device.type != "cpu":
            raise EmbcliError(
                f"the checkpoint in {model_dir} was saved by {start.workers} worker processes "
                "on the CPU, and each resumes its own slice of the corpus; resume it on the CPU"
            )
        if device.type != "cpu":
            workers = 1
        elif resume:
            workers = start.workers
        else:
            workers = config.threads or default_threads()
        positions = start.positions or [0] * (2 * workers)
        input_vectors = start.input_vectors.to(device)
        output_vectors = start.output_vectors.to(device)
        words_total = words_in_corpus * config.epochs

        stop = _Stop()
        failure = None
        started = time.time()
        checkpoints = _Checkpointer(model_dir, meta, config, workers, start, new_cache,
                                    words_total, started, checkpoint_seconds)
        new_cache = None  # `checkpoints` owns it now

        def save_if_due(positions, words, examples):
            if checkpoints.due():
                try:
                    checkpoints.save(positions, input_vectors, output_vectors, words, examples)
                except (OSError, DiskFull) as error:
                    # The checkpoint protects the run; failing to save one must not end it.
                    checkpoints.last_save = time.monotonic()
                    (warn or _warn_on_stderr)(
                        f"could not save a checkpoint ({error}); training goes on, and the next "
                        f"try is in {checkpoints.interval / 60:g} minutes")

        def save_orphaned(positions, words, examples):
            checkpoints.save_orphaned(positions, input_vectors, output_vectors, words, examples)

        # Signals stay routed to `stop` until the embeddings or the checkpoint are
        # committed, so a second Ctrl-C cannot cut a save short.
        with _signals_to(stop):
            try:
                window = _LossWindow(PROCESS_LOSS_WINDOW if workers == 1 else WORKER_LOSS_WINDOW, start.loss_window)
                checkpoints.window = window
                if workers == 1:
                    positions, totals = _run_in_process(config, corpus, input_vectors,
                                                        output_vectors, device, positions, stop,
                                                        progress, words_total, save_if_due, table, window)
                else:
                    positions, totals, failure = _run_workers(
                        workers, config, tokens_path, counts, input_vectors, output_vectors,
                        positions, stop, progress, words_total, save_if_due, table,
                        save_orphaned, dispatched=start.dispatched, window=window)
            except TrainingError as error:
                # Trainer.run reports a non-finite loss as TrainingError "training diverged".
                if "diverged" in str(error) and not isinstance(error, TrainingDiverged):
                    raise TrainingDiverged(f"{error}; nothing was written") from None
                raise
            seconds = start.seconds_done + time.time() - started
            done_words = start.words_done + totals[0]
            if all(positions[2 * w] >= config.epochs for w in range(workers)):
                # After a worker or the parent was killed, a resumed run trains again the chunks
                # finished after the first unfinished one. The stats count the corpus once per epoch.
                done_words = min(done_words, words_total)
            done_examples = start.examples_done + totals[1]
            finished = all(positions[2 * w] >= config.epochs for w in range(workers))
            if not finished:
                if failure is None and not stop.is_set():
                    failure = _WorkerFailure("the worker processes stopped before the end of training")
                _stop_with_checkpoint(checkpoints, positions, input_vectors, output_vectors, totals,
                                      stop, failure, done_words / max(words_total, 1))

            vectors = input_vectors.detach().to("cpu").numpy()
            _check_trained(vectors, config, done_examples, corpus)
            stats = TrainStats(
                words=int(done_words),
                examples=int(done_examples),
                seconds=seconds,
                words_per_second=done_words / max(seconds, 1e-9),
                final_loss=totals[2],
                epochs_done=config.epochs,
            )
            _save_embeddings(model_dir, meta, config, stats, vectors, workers, device, start,
                             checkpoints.new_cache, table=table)
            checkpoints.new_cache = None
        return stats
    finally:
        if checkpoints is not None:
            new_cache = checkpoints.new_cache
        if new_cache is not None and os.path.exists(new_cache):
            os.remove(new_cache)


def _warn_on_stderr(message):
    sys.stderr.write(f"warning: {message}\n")


def _stop_with_checkpoint(checkpoints, positions, input_vectors, output_vectors, totals, stop,
                          failure, fraction_done):
    """Save a checkpoint of an unfinished run, then raise an error that names the resume command.

    Raises TrainingInterrupted after a signal, and TrainingError (or RuntimeError with the
    worker's traceback, for an unexpected exception in a worker) after a failure. If the
    save itself fails, the error reports that failure and whether a previous checkpoint is
    left unchanged (a save commits all its files at once or none).
    """
    model_dir = checkpoints.model_dir
    command = f"embcli train --resume -m {model_dir}"
    cause = failure.message if failure is not None else f"training stopped by {stop.name}"
    try:
        checkpoint = checkpoints.save(positions, input_vectors, output_vectors, totals[0], totals[1])
    except (OSError, MemoryError, DiskFull) as error:
        earlier = os.path.join(model_dir, CHECKPOINT)
        if os.path.exists(earlier):
            fallback = f"the previous checkpoint {earlier} is unchanged; continue from it with: {command}"
        else:
            fallback = "no earlier checkpoint exists, so the work of this run is lost and it must start again"
        message = f"{cause}, and saving a checkpoint failed ({error}); {fallback}"
        if failure is None:
            raise TrainingInterrupted(message, exit_code=128 + stop.signal) from None
        raise TrainingError(message) from None
    if failure is not None:
        message = f"{cause}; the work done so far is saved in {checkpoint}; continue with: {command}"
        if failure.traceback:
            raise RuntimeError(message) from _RemoteTraceback(failure.traceback)
        raise TrainingError(message)
    config = checkpoints.config
    raise TrainingInterrupted(
        f"training stopped by {stop.name} at {fraction_done:.0%} of {plural(config.epochs, 'epoch')}; "
        f"checkpoint saved in {checkpoint}; continue with: {command}",
        exit_code=128 + stop.signal,
        checkpoint=checkpoint,
    )


class _Checkpointer:
    """Saves checkpoints of one run: on a signal, and every `interval` seconds."""

    def __init__(self, model_dir, meta, config, workers, start, new_cache, words_total,
                 started, interval):
        self.model_dir = model_dir
        self.meta = meta
        self.config = config
        self.workers = workers
        self.start = start
        self.new_cache = new_cache  # a corpus encoded for this run, until a save keeps it
        self.words_total = words_total
        self.started = started
        self.interval = interval
        self.last_save = time.monotonic()
        self.window = None  # the run's _LossWindow, saved with each checkpoint

    def due(self):
        return bool(self.interval) and time.monotonic() - self.last_save >= self.interval

    def save(self, positions, input_vectors, output_vectors, words, examples):
        """Commit a checkpoint at `positions`; return the path of checkpoint.json.

        `words` and `examples` count this run only; the checkpoint adds earlier runs.
        """
        path = _save_checkpoint(
            self.model_dir, self.meta, self.config, self.workers, positions, input_vectors,
            output_vectors, self.start, self.new_cache, self.start.words_done + words,
            self.start.examples_done + examples,
            self.start.seconds_done + time.time() - self.started, self.words_total,
            None if self.window is None else self.window.items)
        if self.new_cache is not None:
            # The encoded corpus is checkpoint-tokens.npy from now on.
            self.start.tokens_name = CHECKPOINT_TOKENS
            self.new_cache = None
        self.last_save = time.monotonic()
        return path

    def save_orphaned(self, positions, input_vectors, output_vectors, words, examples):
        """Save a checkpoint from worker 0 after the parent process died; never raise.

        This runs in the worker, on the copy of this object made when it was forked. The
        worker still holds the write lock, because it shares the parent's open `.lock`
        file, and a lock on it lasts until the last process holding it exits.
        """
        try:
            store.recover(self.model_dir)  # a commit that the parent left half applied
            if self.new_cache is not None and not os.path.exists(self.new_cache):
                # A checkpoint the parent saved after the fork renamed the encoded corpus.
                self.start.tokens_name = CHECKPOINT_TOKENS
                self.new_cache = None
            self.save(positions, input_vectors, output_vectors, words, examples)
        except Exception:
            # NOTE: no process is left to report a failed save to, so it goes unreported.
            # The previous checkpoint, if any, stays as it was.
            pass


def _subword_table(words, config):
    """Return the SubwordTable of `words` for `config`, or None without subwords."""
    if not config.min_n:
        return None
    from embcli.subwords import SubwordTable

    return SubwordTable.build(words, config.min_n, config.max_n, config.buckets, config.combination)


def _no_token_cache_message(model_dir, meta):
    if "imported" in meta:
        return _imported_message(model_dir, meta)
    return f"{model_dir} has no token cache; run 'embcli build-vocab CORPUS' again"


def _imported_message(model_dir, meta):
    imported = meta["imported"]
    if imported.get("format") == "fasttext-bin":
        # Its counts were imported, but not the text they came from.
        reason = "a fastText model, with no token ids of a corpus to train on"
    else:
        reason = "whose vocabulary has no word counts to train with"
    return (f"{model_dir} contains vectors imported from {imported.get('path', 'a file')}, {reason}; to train, "
            "run 'embcli build-vocab CORPUS' with another model directory")


def check_trainable(model_dir, meta, counts):
    """Raise EmbcliError before a training run that could only overwrite imported vectors.

    An imported vocabulary has count 0 for every word, which leaves subsampling and the
    negative-sampling table undefined.
    """
    if "imported" in meta or not np.any(np.asarray(counts) > 0):
        raise EmbcliError(_imported_message(model_dir, meta) if "imported" in meta else
                          f"{os.path.join(model_dir, store.VOCAB)} has no word with a count above 0; "
                          "rebuild the vocabulary with 'embcli build-vocab CORPUS'")


def _check_room_for_subwords(model_dir, config, table):
    """Raise EmbcliError, before training, if the disk cannot take the saved subword model:
    the rows of the used buckets and their ids, and the words' vectors."""
    import shutil

    used = table.input_rows - table.vocab_size
    needed = (used + table.vocab_size) * config.dim * 4 + used * 4
    free = shutil.disk_usage(model_dir).free
    if needed > free:
        raise EmbcliError(
            f"saving this model needs {_size_text(needed)} ({used:,} used n-gram buckets and "
            f"{table.vocab_size:,} words x {config.dim} dimensions), but {model_dir} has "
            f"{_size_text(free)} free; free some space, or use a smaller dim or vocabulary",
            options=("dim",),
        )


def _size_text(size):
    """Return a byte count in MiB below 1 GiB, else in GiB: "17.5 MiB", "2.3 GiB"."""
    return f"{size / 2**20:,.1f} MiB" if size < 2**30 else f"{size / 2**30:,.1f} GiB"


def cached_sources(meta):
    """Return the sources whose token ids tokens.npy holds: those of the last `train
    CORPUS` that replaced the cache, else those that build-vocab read."""
    return meta.get("token_cache", {}).get("sources") or meta.get("corpus", {}).get("sources", [])


def _fresh_start(model_dir, meta, config, words, corpus_paths, encoding, errors, encode_progress,
                 table=None):
    """Return (_Resume for epoch 0, path of a new token cache or None)."""
    from embcli.tokenize import Tokenizer
    from embcli.vocab import encode_corpus

    new_cache = None
    if corpus_paths:
        tokenizer = Tokenizer.from_config(meta["tokenizer"])
        new_cache, _, scan = encode_corpus(model_dir, corpus_paths, tokenizer, words,
                                           encoding, errors, encode_progress)
        corpus_record = [source.to_json() for source in scan.sources]
    else:
        if not os.path.exists(os.path.join(model_dir, store.TOKENS)):
            from embcli.errors import ModelNotFound

            raise ModelNotFound(_no_token_cache_message(model_dir, meta))
        store.check_fingerprint(model_dir, meta, store.TOKENS)
        corpus_record = cached_sources(meta)
    torch.manual_seed(config.seed)
    try:
        if config.min_n:
            from embcli.train_subwords import init_subword_vectors

            input_vectors, output_vectors = init_subword_vectors(table, config.dim, config.seed)
        else:
            input_vectors, output_vectors = init_vectors(len(words), config.dim, config.seed)
    except (RuntimeError, MemoryError) as error:
        if "allocate" not in str(error) and not isinstance(error, MemoryError):
            raise
        size = 2 * 4 * len(words) * config.dim
        raise TrainingError(
            f"not enough memory for {len(words):,} words x {config.dim:,} dimensions "
            f"(two float32 matrices, {size / 2**30:,.1f} GiB); use a smaller dim or vocabulary",
            options=("dim",),
        ) from None
    start = _Resume(config, 0, [], input_vectors, output_vectors, store.TOKENS, corpus_record)
    return start, new_cache


def _has_adjacent_words(tokens):
    """Return True if two words of the token ids `tokens` follow each other on a line."""
    # Blocks of 1 M tokens, overlapping by one, keep the temporaries small.
    block = 1 << 20
    for begin in range(0, max(len(tokens) - 1, 0), block):
        part = np.asarray(tokens[begin : begin + block + 1])
        words = part != LINE_END
        if np.any(words[:-1] & words[1:]):
            return True
    return False


def _check_trained(vectors, config, examples, corpus=None):
    """Raise TrainingError if training diverged or had nothing to learn from."""
    # Trained word2vec values stay within a few units; 1e4 means the updates blew up.
    # max() and min() return NaN if any value is NaN, and they allocate nothing, where
    # np.abs(vectors) would copy the whole matrix (0.8 GB with 2 M subword buckets).
    high = float(vectors.max(initial=0.0))
    low = float(vectors.min(initial=0.0))
    if not (math.isfinite(high) and math.isfinite(low)) or max(high, -low) > 1e4:
        raise TrainingDiverged(
            "training diverged (the vectors hold NaN, infinite or huge values); lower the "
            f"learning rate (it was {config.resolved_lr():g}); nothing was written"
        )
    if examples == 0:
        if config.sample > 0 and (corpus is None or _has_adjacent_words(corpus.tokens)):
            cause = "no line of the corpus has two vocabulary words within the window after subsampling"
            advice = "use a larger corpus, or turn subsampling off (--sample 0, or sample=0 in Python)"
        else:
            # Out-of-vocabulary words are not in the token ids, so any two words left on a
            # line are next to each other there: no window helps.
            cause = "no line of the corpus has two vocabulary words"
            advice = ("put more than one word on a line (build-vocab --tokenizer chooses how lines split "
                      "into words), or use a larger corpus")
        raise TrainingError(f"training found no (word, context) pairs: {cause}; {advice}; nothing was written",
                            options=("sample",) if config.sample > 0 else ())


def _open_corpus(tokens_path, counts):
    """Return the Corpus of a token cache, or raise ModelCorrupt if the file is damaged."""
    from embcli.errors import ModelCorrupt

    try:
        corpus = Corpus(tokens_path, counts)
    except (ValueError, OSError, EOFError) as error:
        raise ModelCorrupt(f"{tokens_path}: not a valid token cache ({error}); "
                           "run 'embcli build-vocab CORPUS' again") from None
    if corpus.tokens.dtype != np.uint32 or corpus.tokens.ndim != 1:
        raise ModelCorrupt(f"{tokens_path}: expected a 1-D uint32 array, found "
                           f"{corpus.tokens.dtype} {corpus.tokens.shape}; run 'embcli build-vocab CORPUS' again")
    return corpus


def _words_in(corpus):
    """Return the number of tokens except LINE_END markers; check every id is a row."""
    from embcli.errors import ModelCorrupt

    tokens = corpus.tokens
    ends = 0
    # Blocks of 1 M tokens keep the scan's temporaries and mapped pages at a few MB.
    for begin in range(0, len(tokens), 1 << 20):
        block = tokens[begin : begin + (1 << 20)]
        is_end = block == store.LINE_END
        ends += int(np.count_nonzero(is_end))
        ids = block[~is_end]
        if len(ids) and int(ids.max()) >= len(corpus.counts):
            raise ModelCorrupt(
                f"{corpus.path}: word id {int(ids.max())} is beyond the vocabulary of "
                f"{len(corpus.counts):,} words; run 'embcli build-vocab CORPUS' again")
    return len(tokens) - ends


# The loss windows' sizes: chunks of one process, polls of the parent of worker processes.
PROCESS_LOSS_WINDOW = 50
WORKER_LOSS_WINDOW = 20


class _LossWindow:
    """Mean loss per example over the most recent chunks (float64, never saturates)."""

    def __init__(self, size=PROCESS_LOSS_WINDOW, items=None):
        self.items = list(items or [])[-size:]
        self.size = size

    def add(self, loss, examples):
        self.items.append((loss, examples))
        if len(self.items) > self.size:
            self.items.pop(0)

    def mean(self):
        examples = sum(e for _, e in self.items)
        return sum(l for l, _ in self.items) / examples if examples else float("nan")


def _new_trainer(config, corpus, input_vectors, output_vectors, device, worker, workers, table):
    if table is None:
        trainer = Trainer(config, corpus, input_vectors, output_vectors, device, worker, workers)
    else:
        from embcli.train_subwords import SubwordTrainer

        trainer = SubwordTrainer(config, corpus, input_vectors, output_vectors, device, worker, workers, table)
    if workers > 1 and config.chunk_order == "in-turn":
        trainer.take_chunks_in_turn()
    return trainer


def _run_in_process(config, corpus, input_vectors, output_vectors, device, positions, stop,
                    progress, words_total, after_chunk=None, table=None, window=None):
    """Train in this process from `positions` ([epoch, chunk]) until done or stopped.

    `after_chunk(positions, words, examples)` is called after every chunk, with the
    position to resume at. Returns ([epoch, chunk] to resume at, [words, examples,
    recent mean loss]).
    """
    if device.type == "cpu":
        torch.set_num_threads(1)
    trainer = _new_trainer(config, corpus, input_vectors, output_vectors, device, 0, 1, table)
    totals = [0.0, 0.0, float("nan")]
    window = _LossWindow() if window is None else window
    words_before = _words_before(trainer, positions[0], positions[1])
    position = [int(positions[0]), int(positions[1])]

    def report(words, examples, loss, lr):
        # Called once per chunk, which takes far longer than a progress update.
        totals[0] += words
        totals[1] += examples
        window.add(loss, examples)
        position[1] += 1
        if position[1] >= len(trainer.chunks):
            position[0], position[1] = position[0] + 1, 0
        if progress is not None:
            progress(words_before + totals[0], words_total, totals[1], window.mean(), lr)
        if after_chunk is not None:
            after_chunk(list(position), totals[0], totals[1])

    epoch, chunk = trainer.run(int(positions[0]), int(positions[1]), report, stop.is_set)
    totals[2] = window.mean()
    if progress is not None:
        progress(words_before + totals[0], words_total, totals[1], totals[2], 0.0)
    return [epoch, chunk], totals


def _words_before(trainer, epoch, chunk):
    # Approximate words already trained before a resume point, for progress only.
    per_chunk = min(trainer.config.chunk_tokens, trainer.stop - trainer.start)
    return (epoch * len(trainer.chunks) + chunk) * per_chunk


@contextlib.contextmanager
def _signals_held():
    """Block SIGINT and SIGTERM, and ignore them, while worker processes start.

    A process started meanwhile inherits the ignored disposition, so a Ctrl-C sent to
    the process group cannot raise KeyboardInterrupt inside a worker that is still
    importing torch. A signal sent to this process meanwhile stays pending (Linux keeps
    blocked signals even when ignored) and reaches the restored handler afterwards.
    """
    main = threading.current_thread() is threading.main_thread()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _SIGNALS} if main else {}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


@dataclass
class _WorkerFailure:
    """The cause of a worker process ending before its share of the corpus was done."""

    message: str
    traceback: str = ""  # the worker's traceback of an unexpected exception, else empty


def _run_workers(workers, config, tokens_path, counts, input_vectors, output_vectors, positions,
                 stop, progress, words_total, every_poll=None, table=None, save_orphaned=None,
                 dispatched=False, window=None):
    """Train with `workers` Hogwild processes on shared vectors until done or stopped.

    With the in-turn chunk order, the workers take the chunks from one _Tickets;
    `dispatched` says that `positions` came from _Tickets.positions (else from fixed
    shares, see ticket_from_positions). With slices, each trains its own slice.
    `every_poll(positions, words, examples)` is called about four times a second. The
    workers go on updating the vectors while it reads them, which Hogwild tolerates.
    `save_orphaned` runs in worker 0 if this process dies (see _worker_main).

    Returns (positions, [words, examples, recent mean loss], failure). `failure` is None,
    or a _WorkerFailure when a worker died (for example killed by the kernel's
    out-of-memory killer), ran out of memory, or raised an unexpected exception. The
    other workers are then stopped after their current chunk, so the caller can save a
    checkpoint at the returned positions. Raises TrainingError if training diverged.
    """
    import torch.multiprocessing as mp
    from multiprocessing.connection import wait

    context = mp.get_context("fork")
    _share_vectors(input_vectors, output_vectors)
    tickets = None
    if _uses_tickets(config, workers):
        chunks = len(chunk_starts(0, len(Corpus(tokens_path, counts)), config.chunk_tokens))
        start = min(ticket_from_positions(positions, workers, chunks, dispatched), chunks * config.epochs)
        tickets = _Tickets(start, chunks, config.epochs)
        # Per worker: the last ticket taken, busy (0 or 1), tickets taken.
        claims = [float(start), 0.0, 0.0] * workers
    # Lock-free shared arrays: a worker killed while holding a lock would hang the others.
    shared_positions = context.RawArray("d", claims if tickets else [float(p) for p in positions])

    def current_positions():
        if tickets is None:
            return [int(p) for p in shared_positions]
        return tickets.positions(tickets.resume_point(shared_positions, workers), workers)

    shared_stats = context.RawArray("d", 4 * workers)
    stop_flag = context.RawArray("b", 1)
    errors = context.Queue()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    processes = [
        context.Process(
            target=_worker_main,
            args=(w, workers, config, tokens_path, np.asarray(counts), input_vectors, output_vectors,
                  shared_positions, shared_stats, stop_flag, errors, os.getpid(), table,
                  save_orphaned, tickets),
            daemon=True,
        )
        for w in range(workers)
    ]
    # Keep the collector from writing to the parent's objects in the children, which would
    # copy those pages into each child (copy-on-write) and raise the memory use.
    import gc

    _release_free_heap()
    gc.freeze()
    with _signals_held():
        for process in processes:
            process.start()
    gc.unfreeze()
    window = _LossWindow(size=WORKER_LOSS_WINDOW) if window is None else window
    previous = (0.0, 0.0)
    stop_deadline = None
    failure = None
    try:
        while True:
            alive = [p for p in processes if p.is_alive()]
            if not alive:
                break
            wait([p.sentinel for p in alive], timeout=0.25)
            if failure is None and not stop.is_set():
                failure = _killed_worker(processes)
            if stop.is_set() or failure is not None:
                stop_flag[0] = 1
            if tickets is not None and stop_flag[0]:
                tickets.close()  # wakes a worker that waits for a ticket
            elif tickets is not None:
                tickets.fill()
            if stop_flag[0] and stop_deadline is None:
                stop_deadline = time.monotonic() + STOP_GRACE_SECONDS
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                # A worker still starting, or inside a long chunk: end it. Its
                # position is that of its last finished chunk, which a resumed run
                # trains again (Hogwild tolerates the repeated partial update).
                for process in processes:
                    if process.is_alive():
                        process.kill()
            examples = sum(shared_stats[4 * w + 1] for w in range(workers))
            loss = sum(shared_stats[4 * w + 2] for w in range(workers))
            if examples > previous[1]:
                window.add(loss - previous[0], examples - previous[1])
                previous = (loss, examples)
            words = sum(shared_stats[4 * w] for w in range(workers))
            if progress is not None:
                lr = max(shared_stats[4 * w + 3] for w in range(workers))
                progress(words, words_total, examples, window.mean(), lr)
            if every_poll is not None and stop_deadline is None:
                every_poll(current_positions(), words, examples)
    except BaseException:
        stop_flag[0] = 1
        if tickets is not None:
            tickets.close()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()  # workers ignore SIGTERM, so terminate() would not end them
        raise
    finally:
        if tickets is not None:
            tickets.close()
    for process in processes:
        process.join()
    positions = current_positions()
    if tickets is not None:
        tickets.release()
    failure = _reported_failure(errors, failure)
    words = sum(shared_stats[4 * w] for w in range(workers))
    examples = sum(shared_stats[4 * w + 1] for w in range(workers))
    return positions, [words, examples, window.mean()], failure


def _release_free_heap():
    """Give the C heap's free pages back to the system before forking workers.

    Pages freed by the steps before training stay in the heap. There they count in the
    parent's memory, and a worker that reuses one gets its own copy. Returning them took
    about 12 MiB off a run on text8_en_5M. Only glibc has malloc_trim; elsewhere this
    does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _share_vectors(input_vectors, output_vectors):
    """Move the vectors to shared memory, or raise TrainingError if memory is short."""
    try:
        input_vectors.share_memory_()
        output_vectors.share_memory_()
    except RuntimeError as error:
        if is_shared_memory_full(error):
            import shutil

            needed = (input_vectors.numel() + output_vectors.numel()) * input_vectors.element_size()
            free = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
            raise TrainingError(
                f"the worker processes share the vectors through /dev/shm, and it cannot take the "
                f"{needed / 2**20:,.1f} MiB they need ({free / 2**20:,.1f} MiB free there; {error}); "
                "nothing in the model directory was changed; train with one worker process, or "
                "give /dev/shm more room (a Docker container gets 64 MiB unless run with --shm-size)",
                options=("threads",),
            ) from None
        if not _is_out_of_memory(error):
            raise
        rows, dim = input_vectors.shape
        raise TrainingError(
            f"not enough memory to share the {rows:,} x {dim:,} vectors with the worker "
            f"processes ({error}); nothing in the model directory was changed; free memory, "
            "or use a smaller dim or vocabulary",
            options=("dim",),
        ) from None


def _killed_worker(processes):
    """Return a _WorkerFailure for the first worker that ended with a non-zero exit code."""
    for index, process in enumerate(processes):
        code = process.exitcode
        if code is None or code == 0:
            continue
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            cause = f"was killed by {name}"
            if -code == signal.SIGKILL:
                cause += (" (the kernel's out-of-memory killer sends SIGKILL, and the kernel "
                          "log, dmesg, records it)")
        else:
            cause = f"ended with exit code {code}"
        return _WorkerFailure(f"worker process {index} {cause}")
    return None


def _reported_failure(errors, failure):
    """Return the failure that the workers reported in `errors`, else `failure`.

    Raises TrainingError if a worker reported that training diverged.
    """
    reported = []
    while True:
        try:
            reported.append(errors.get(timeout=0.1))
        except Exception:  # queue.Empty: every report has been read
            break
    for kind, message, remote in reported:
        if kind == "training":
            raise TrainingError(message)
    for kind, message, remote in reported:
        if kind == "memory":
            return _WorkerFailure(message)
    for kind, message, remote in reported:
        return _WorkerFailure(message, remote)
    return failure


def _config_json(config):
    data = asdict(config)
    data["lr"] = config.resolved_lr()
    return data


def _config_from_json(data, current):
    """Return the TrainConfig saved in a checkpoint, with the device of `current`."""
    known = {field.name for field in fields(TrainConfig)}
    saved = {key: value for key, value in data.items() if key in known}
    saved["device"] = current.device
    # Checkpoints written before chunk_order existed were trained in slices.
    saved.setdefault("chunk_order", "slices")
    return TrainConfig(**saved)


def _all_finite(matrix, block_rows=1 << 14):
    """Return True if `matrix` contains no NaN or infinity.

    Checks blocks of rows, so the temporary mask stays small when memory is short (a
    checkpoint is often saved just after a worker was killed for lack of memory).
    """
    return all(np.isfinite(matrix[begin : begin + block_rows]).all()
               for begin in range(0, matrix.shape[0], block_rows))


def _uses_tickets(config, workers):
    """Return True if _run_workers hands out the chunks of this run as _Tickets."""
    return workers > 1 and config.chunk_order == "in-turn"


def _save_checkpoint(model_dir, meta, config, workers, positions, input_vectors, output_vectors,
                     start, new_cache, words_done, examples_done, seconds, words_total, loss_window=None):
    """Commit the training state in `model_dir`; return the path of checkpoint.json.

    A corpus encoded for this run only (`new_cache`) becomes checkpoint-tokens.npy, so a
    resumed run trains on the same token ids.
    """
    inputs = input_vectors.detach().cpu().numpy()
    outputs = output_vectors.detach().cpu().numpy()
    if not (_all_finite(inputs) and _all_finite(outputs)):
        raise TrainingDiverged(
            f"training diverged before it was stopped (the vectors contain NaN or infinite "
            f"values), so no checkpoint was saved; lower the learning rate (it was "
            f"{config.resolved_lr():g})"
        )
    input_tmp = store.save_npy_temp(model_dir, CHECKPOINT_INPUT, inputs)
    with store.removed_on_error(input_tmp):
        output_tmp = store.save_npy_temp(model_dir, CHECKPOINT_OUTPUT, outputs)
    renames = {CHECKPOINT_INPUT: input_tmp, CHECKPOINT_OUTPUT: output_tmp}
    tokens_name = start.tokens_name
    if new_cache is not None:
        tokens_name = CHECKPOINT_TOKENS
        renames[CHECKPOINT_TOKENS] = new_cache
    tokens_path = new_cache or os.path.join(model_dir, tokens_name)
    state = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "model_id": meta["model_id"],
        "vocab": meta["files"].get(store.VOCAB),
        "tokens_file": tokens_name,
        "config": _config_json(config),
        "workers": workers,
        "positions": [int(p) for p in positions],
        # Worker processes in turn take their chunks from one _Tickets; see ticket_from_positions.
        **({"chunk_dispatch": "tickets"} if _uses_tickets(config, workers) else {}),
        "corpus": start.corpus_record,
        "words_done": words_done,
        "examples_done": examples_done,
        "words_total": words_total,
        "seconds": seconds,
        **({"loss_window": [[loss, examples] for loss, examples in loss_window]} if loss_window else {}),
        "files": {
            CHECKPOINT_INPUT: store.fingerprint(input_tmp),
            CHECKPOINT_OUTPUT: store.fingerprint(output_tmp),
            tokens_name: store.fingerprint(tokens_path),
        },
    }
    state_tmp = store.temp_path(model_dir, CHECKPOINT)
    store.write_bytes_synced(state_tmp, (json.dumps(state, indent=2) + "\n").encode())
    renames[CHECKPOINT] = state_tmp
    stale = [CHECKPOINT_TOKENS] if tokens_name != CHECKPOINT_TOKENS else []
    store.commit(model_dir, renames, remove=stale)
    return os.path.join(model_dir, CHECKPOINT)


# A checkpoint that cannot be resumed also blocks a plain train, so the fix is to discard it.
_DISCARD_DAMAGED = "train from scratch, discarding the checkpoint"


def read_checkpoint_state(model_dir):
    """Return the parsed checkpoint.json of `model_dir`, or raise ModelNotFound or ModelCorrupt."""
    from embcli.errors import ModelCorrupt, ModelNotFound

    path = os.path.join(model_dir, CHECKPOINT)
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        raise ModelNotFound(f"{model_dir} has no checkpoint to resume from; train without resuming") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelCorrupt(f"{path}: not valid JSON ({error}); " + _DISCARD_DAMAGED, options=("force",)) from None


def _load_checkpoint(model_dir, meta, config, vocab_size, words=None):
    """Return the _Resume that the checkpoint in `model_dir` describes."""
    from embcli.errors import ModelCorrupt

    path = os.path.join(model_dir, CHECKPOINT)
    state = read_checkpoint_state(model_dir)
    try:
        version = state["checkpoint_version"]
        saved_vocab = state["vocab"]
        tokens_name = state["tokens_file"]
        workers = int(state["workers"])
        positions = [int(p) for p in state["positions"]]
        files = dict(state["files"])
        resumed = _config_from_json(state["config"], config)
        resumed.validate()
    except (KeyError, TypeError, ValueError, AttributeError, EmbcliError) as error:
        raise ModelCorrupt(f"{path}: incomplete or invalid checkpoint ({error}); " + _DISCARD_DAMAGED, options=("force",)) from None
    if version > CHECKPOINT_VERSION:
        raise ModelCorrupt(f"{path} has checkpoint version {version}, newer than this embcli reads; upgrade embcli")
    if saved_vocab != meta["files"].get(store.VOCAB):
        raise ModelCorrupt(f"{path} was saved for another vocabulary; " + _DISCARD_DAMAGED, options=("force",))
    if tokens_name not in (store.TOKENS, CHECKPOINT_TOKENS) or len(positions) != 2 * workers:
        raise ModelCorrupt(f"{path}: incomplete or invalid checkpoint; " + _DISCARD_DAMAGED, options=("force",))
    for name in (CHECKPOINT_INPUT, CHECKPOINT_OUTPUT, tokens_name):
        file_path = os.path.join(model_dir, name)
        if not os.path.exists(file_path):
            raise ModelCorrupt(f"{file_path} is missing, so {CHECKPOINT} cannot be resumed; " + _DISCARD_DAMAGED, options=("force",))
        if store.fingerprint(file_path) != files.get(name):
            raise ModelCorrupt(f"{file_path} does not match {CHECKPOINT}; " + _DISCARD_DAMAGED, options=("force",))
    table = _subword_table(words, resumed) if words is not None else None
    input_rows = vocab_size if table is None else table.input_rows
    input_vectors = store.load_matrix(os.path.join(model_dir, CHECKPOINT_INPUT), input_rows, mmap=False)
    output_vectors = store.load_matrix(os.path.join(model_dir, CHECKPOINT_OUTPUT), vocab_size, mmap=False)
    if input_vectors.shape[1] != resumed.dim or output_vectors.shape[1] != resumed.dim:
        raise ModelCorrupt(f"{path} gives dim {resumed.dim}, but the checkpoint's matrices have "
                           f"{input_vectors.shape[1]} columns; " + _DISCARD_DAMAGED, options=("force",))
    if any(not 0 <= epoch <= resumed.epochs for epoch in positions[0::2]) or min(positions[1::2], default=0) < 0:
        raise ModelCorrupt(f"{path}: positions {positions} lie outside the {resumed.epochs} epochs of the run; "
                           + _DISCARD_DAMAGED, options=("force",))
    return _Resume(
        config=resumed,
        workers=workers,
        positions=positions,
        # load_matrix(mmap=False) returns writable arrays of their own, so torch can use
        # them without a copy: a resumed run needs no more memory than a fresh one.
        input_vectors=torch.from_numpy(np.ascontiguousarray(input_vectors)),
        output_vectors=torch.from_numpy(np.ascontiguousarray(output_vectors)),
        tokens_name=tokens_name,
        corpus_record=state.get("corpus", []),
        words_done=float(state.get("words_done", 0)),
        examples_done=float(state.get("examples_done", 0)),
        seconds_done=float(state.get("seconds", 0)),
        resumed=True,
        table=table,
        dispatched=state.get("chunk_dispatch") == "tickets",
        loss_window=_loss_window_of(state),
    )


def _loss_window_of(state):
    """Return the checkpoint's list of (loss, examples) pairs, or None if it has none or a damaged one."""
    return checked_loss_pairs(state.get("loss_window"))


def checked_loss_pairs(pairs):
    """Return `pairs` read from a checkpoint as a list of (loss, examples) floats, or None
    if it is missing or damaged."""
    try:
        pairs = [(float(loss), float(examples)) for loss, examples in pairs]
    except (TypeError, ValueError):
        return None
    return pairs if all(math.isfinite(loss) and examples >= 0 for loss, examples in pairs) else None


def _save_embeddings(model_dir, meta, config, stats, vectors, workers, device, start, new_cache,
                     distributed=None, table=None):
    """Commit embeddings.npy and meta.json, and remove the checkpoint, in one commit."""
    import platform

    from embcli import subwords

    meta = dict(meta)
    meta["files"] = dict(meta.get("files", {}))
    renames = {}
    remove = []
    if table is not None:
        from embcli.train_subwords import combine_word_vectors

        # embeddings.npy keeps each word's whole vector. subwords.npy keeps the rows of
        # the buckets that vocabulary words use (the training matrix's rows after the
        # words' rows), and subword-buckets.npy their bucket ids. The other buckets never
        # received a gradient. Writing all 2,000,000 rows took 1.4 s and
        # 800 MB of disk for 155,268 used ones (text8_en_5M).
        for name, array in ((subwords.SUBWORDS, vectors[table.vocab_size :]),
                            (subwords.SUBWORD_BUCKETS, table.bucket_ids.astype(np.uint32))):
            renames[name] = store.save_npy_temp(model_dir, name, array)
            meta["files"][name] = store.fingerprint(renames[name])
        meta["subwords"] = table.to_meta()
        vectors = combine_word_vectors(vectors, table)
    else:
        meta.pop("subwords", None)
        for name in (subwords.SUBWORDS, subwords.SUBWORD_BUCKETS):
            meta["files"].pop(name, None)
            if os.path.exists(os.path.join(model_dir, name)):
                remove.append(name)
    embeddings_tmp = store.save_npy_temp(model_dir, store.EMBEDDINGS, vectors.astype(np.float32, copy=False))
    meta["files"][store.EMBEDDINGS] = store.fingerprint(embeddings_tmp)
    # Stored norms save one-off queries a pass over the whole matrix.
    renames[store.NORMS] = store.save_norms_temp(model_dir, vectors, meta)
    meta["dim"] = int(vectors.shape[1])
    meta["training"] = {
        "settings": _config_json(config),
        "workers": workers,
        "device": str(device),
        # NOTE: CUDA runs are not known to repeat: index_add_ on CUDA sums with atomics.
        "reproducible": workers == 1 and device.type == "cpu",
        "resumed": start.resumed,
        "corpus": start.corpus_record,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "stats": stats.to_json(),
    }
    if distributed is not None:
        meta["training"]["distributed"] = distributed
    renames[store.EMBEDDINGS] = embeddings_tmp
    # A corpus given to train replaces the token cache: encoded now, or kept by a checkpoint.
    cache = new_cache
    if cache is None and start.tokens_name == CHECKPOINT_TOKENS:
        cache = os.path.join(model_dir, CHECKPOINT_TOKENS)
    if cache is not None:
        meta["files"][store.TOKENS] = store.fingerprint(cache)
        meta["token_cache"] = {"tokens": int(np.load(cache, mmap_mode="r").shape[0]),
                               "line_end": int(store.LINE_END), "sources": start.corpus_record}
        renames[store.TOKENS] = cache
    meta_tmp = store.meta_temp(model_dir, meta)
    renames[store.META] = meta_tmp
    # The journal applies removals before renames, so a checkpoint-tokens.npy that is
    # renamed to tokens.npy here must not also be removed.
    present = [name for name in CHECKPOINT_FILES
               if os.path.exists(os.path.join(model_dir, name))
               and not (name == CHECKPOINT_TOKENS and cache is not None and new_cache is None)]
    store.commit(model_dir, renames, remove=present + remove)
