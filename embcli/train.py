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
- By default, negatives are shared: each block of `block` pairs draws `shared_negatives`
  negatives, weighted `negative / shared_negatives`, so the negative scores of a block
  are one matrix product. This changes the objective slightly; `negatives="per-pair"`
  gives each pair its own `negative` draws, as word2vec does.
- With several threads, each worker process trains on its own contiguous slice of the
  corpus on shared memory, without locks (Hogwild), as word2vec.c's threads do. Results
  then depend on the scheduling of the processes, so they vary from run to run.
- Randomness comes from a generator seeded per (seed, worker, epoch, chunk), so a run
  with one thread is reproducible and can resume at any chunk boundary.

Run it through the CLI: `embcli build-vocab corpus.txt && embcli train`.
"""

import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from embcli import store
from embcli.errors import EmbcliError, TrainingError

LINE_END = int(store.LINE_END)


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
    batch: int = 1024
    chunk_tokens: int = 65536
    # Subwords (embcli.train_subwords): character n-grams of min_n..max_n characters,
    # hashed into `buckets` rows; min_n = 0 turns them off.
    min_n: int = 0
    max_n: int = 0
    buckets: int = 2_000_000
    combination: str = "mean"

    def resolved_lr(self):
        if self.lr is not None:
            return self.lr
        return 0.05 if self.method == "cbow" else 0.025

    def validate(self):
        if self.method not in ("skipgram", "cbow"):
            raise EmbcliError(f"method must be skipgram or cbow, not {self.method!r}")
        if self.negatives not in ("shared", "per-pair"):
            raise EmbcliError(f"negatives must be shared or per-pair, not {self.negatives!r}")
        for name in ("dim", "window", "negative", "epochs", "block", "batch", "chunk_tokens"):
            if getattr(self, name) < 1:
                raise EmbcliError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.shared_negatives < 1:
            raise EmbcliError(f"shared_negatives must be at least 1, not {self.shared_negatives}")
        if self.resolved_lr() <= 0 or not math.isfinite(self.resolved_lr()):
            raise EmbcliError(f"learning rate must be a positive number, not {self.lr}")
        if self.sample < 0:
            raise EmbcliError(f"sample must be 0 (off) or positive, not {self.sample}")
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
    return max(1, min(os.cpu_count() or 1, 8))


class Corpus:
    """Token ids for training: a memory-mapped uint32 array with LINE_END markers."""

    def __init__(self, path, counts):
        self.path = path
        self.tokens = np.load(path, mmap_mode="r", allow_pickle=False)
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


def negative_cdf(counts, exponent):
    weights = np.asarray(counts, dtype=np.float64) ** exponent
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


class Trainer:
    """One worker's training loop over its slice of the corpus.

    `input_vectors` and `output_vectors` may live in shared memory, updated by other
    workers at the same time.
    """

    def __init__(self, config, corpus, input_vectors, output_vectors, device, worker=0, workers=1):
        self.config = config
        self.corpus = corpus
        self.device = device
        self.worker = worker
        self.workers = workers
        self.input_vectors = input_vectors
        self.output_vectors = output_vectors
        self.keep = torch.from_numpy(keep_probabilities(corpus.counts, config.sample)).to(device)
        self.cdf = torch.from_numpy(negative_cdf(corpus.counts, config.ns_exponent)).to(device)
        self.start, self.stop = slice_bounds(len(corpus), workers, worker)
        self.chunks = chunk_starts(self.start, self.stop, config.chunk_tokens)
        self.lr0 = config.resolved_lr()
        self.vocab_size = len(corpus.counts)

    # -- pair generation -------------------------------------------------------------

    def _load_chunk(self, begin):
        """Return (ids, sentence ids, is-core mask) for the chunk at `begin`, with margins."""
        window = self.config.window
        end = min(begin + self.config.chunk_tokens, self.stop)
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

    def cbow_windows(self, ids, sentence, core, generator):
        """Return (context ids (n, 2*window), mask, centers) for the CBOW examples."""
        n = ids.shape[0]
        window = self.config.window
        reduced = torch.randint(1, window + 1, (n,), generator=generator, device=self.device)
        offsets = torch.cat([torch.arange(-window, 0), torch.arange(1, window + 1)]).to(self.device)
        position = torch.arange(n, device=self.device)[:, None] + offsets[None, :]
        inside = (position >= 0) & (position < n)
        position = position.clamp(0, max(n - 1, 0))
        mask = inside & (offsets.abs()[None, :] <= reduced[:, None])
        mask &= sentence[position] == sentence[:, None]
        has_context = mask.any(1) & core
        context = ids[position][has_context]
        return context, mask[has_context], ids[has_context]

    # -- updates ---------------------------------------------------------------------

    def _draw_negatives(self, shape, generator):
        draw = torch.rand(shape, generator=generator, device=self.device, dtype=torch.float64)
        return torch.searchsorted(self.cdf, draw).clamp_(max=self.vocab_size - 1)

    def _negative_step(self, hidden, targets, lr, generator):
        """Score `hidden` (B, D) against `targets` (B) and negatives; return (grad_hidden, loss)."""
        config = self.config
        out = self.output_vectors
        count = hidden.shape[0]
        target_vectors = out.index_select(0, targets)
        positive = (hidden * target_vectors).sum(1)
        g_positive = (1.0 - torch.sigmoid(positive)) * lr  # (B)
        loss = torch.nn.functional.softplus(-positive).sum()

        if config.negatives == "shared":
            block = config.block
            blocks = -(-count // block)
            padded = blocks * block
            if padded != count:
                pad = padded - count
                hidden_blocks = torch.cat([hidden, hidden.new_zeros(pad, hidden.shape[1])])
            else:
                hidden_blocks = hidden
            hidden_blocks = hidden_blocks.view(blocks, block, -1)  # (nb, block, D)
            negatives = self._draw_negatives((blocks, config.shared_negatives), generator)
            negative_vectors = out.index_select(0, negatives.view(-1)).view(blocks, config.shared_negatives, -1)
            scores = torch.bmm(hidden_blocks, negative_vectors.transpose(1, 2))  # (nb, block, S)
            weight = config.negative / config.shared_negatives
            g_negative = torch.sigmoid(scores) * (-lr * weight)
            if padded != count:
                g_negative.view(padded, -1)[count:] = 0
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
            negative_vectors = out.index_select(0, negatives.view(-1)).view(count, config.negative, -1)
            scores = torch.bmm(negative_vectors, hidden[:, :, None]).squeeze(2)  # (B, K)
            g_negative = torch.sigmoid(scores) * -lr
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

    def train_skipgram_chunk(self, ids, sentence, core, lr, generator):
        inputs, outputs = self.skipgram_pairs(ids, sentence, core, generator)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        batch = self.config.batch
        for begin in range(0, inputs.shape[0], batch):
            word = inputs[begin : begin + batch]
            hidden = self.input_vectors.index_select(0, word)
            grad, step_loss = self._negative_step(hidden, outputs[begin : begin + batch], lr, generator)
            self.input_vectors.index_add_(0, word, grad)
            loss += step_loss
        return loss, inputs.shape[0]

    def train_cbow_chunk(self, ids, sentence, core, lr, generator):
        context, mask, centers = self.cbow_windows(ids, sentence, core, generator)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        batch = max(1, self.config.batch // (2 * self.config.window) * 2)
        dim = self.input_vectors.shape[1]
        for begin in range(0, centers.shape[0], batch):
            words = context[begin : begin + batch]
            used = mask[begin : begin + batch]
            flat = words[used]
            vectors = self.input_vectors.index_select(0, flat)
            sizes = used.sum(1)
            rows = torch.repeat_interleave(torch.arange(words.shape[0], device=self.device), sizes)
            hidden = torch.zeros(words.shape[0], dim, device=self.device).index_add_(0, rows, vectors)
            hidden /= sizes[:, None]
            grad, step_loss = self._negative_step(hidden, centers[begin : begin + batch], lr, generator)
            self.input_vectors.index_add_(0, flat, grad.index_select(0, rows))
            loss += step_loss
        return loss, centers.shape[0]

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
        config = self.config
        train_chunk = self.train_cbow_chunk if config.method == "cbow" else self.train_skipgram_chunk
        for epoch in range(start_epoch, config.epochs):
            first = start_chunk if epoch == start_epoch else 0
            for chunk_index in range(first, len(self.chunks)):
                if should_stop is not None and should_stop():
                    return epoch, chunk_index
                generator = torch.Generator(device=self.device)
                generator.manual_seed(chunk_seed(config.seed, self.worker, epoch, chunk_index))
                raw, sentence, core, is_end, _ = self._load_chunk(self.chunks[chunk_index])
                words = int(core.sum())
                ids, sentence, core = self._subsample(raw, sentence, core, is_end, generator)
                lr = self.learning_rate(epoch, chunk_index)
                with torch.no_grad():
                    loss, examples = train_chunk(ids, sentence, core, lr, generator)
                loss_value = float(loss)
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"training diverged in epoch {epoch + 1} (the loss became "
                        f"{loss_value}); lower the learning rate (it was {self.lr0:g})"
                    )
                if report is not None:
                    report(words, examples, loss_value, lr)
        return config.epochs, 0


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
        return asdict(self)


# -- orchestration: workers, checkpoints, saving ---------------------------------------

CHECKPOINT = "checkpoint.json"
CHECKPOINT_INPUT = "checkpoint-input.npy"
CHECKPOINT_OUTPUT = "checkpoint-output.npy"
CHECKPOINT_FILES = (CHECKPOINT, CHECKPOINT_INPUT, CHECKPOINT_OUTPUT)


def _worker_main(worker, workers, config, tokens_path, counts, input_vectors, output_vectors,
                 positions, shared_stats, stop_event, errors, table=None):
    """Entry point of one Hogwild worker process."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)
    try:
        corpus = Corpus(tokens_path, counts)
        trainer = _new_trainer(config, corpus, input_vectors, output_vectors, torch.device("cpu"), worker,
                               workers, table)
        base = worker * 4

        def report(words, examples, loss, lr):
            with shared_stats.get_lock():
                shared_stats[base] += words
                shared_stats[base + 1] += examples
                shared_stats[base + 2] += loss
                shared_stats[base + 3] = lr

        epoch, chunk = positions[2 * worker], positions[2 * worker + 1]
        epoch, chunk = trainer.run(int(epoch), int(chunk), report, stop_event.is_set)
        positions[2 * worker], positions[2 * worker + 1] = epoch, chunk
    except TrainingError as error:
        errors.put(str(error))
        stop_event.set()
    except BaseException as error:  # reported to the parent, which raises it
        errors.put(f"worker {worker} failed: {type(error).__name__}: {error}")
        stop_event.set()


class _Stop:
    """Records the first SIGINT or SIGTERM so training can stop between chunks."""

    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        if self.signal is None:
            self.signal = signum

    def is_set(self):
        return self.signal is not None


def train_model(model_dir, config, corpus_paths=None, encoding="utf-8", errors="strict",
                resume=False, progress=None, encode_progress=None):
    """Train embeddings for the vocabulary in `model_dir` and save them there.

    `progress(words_done, words_total, examples, loss, lr)` is called a few times a
    second. Returns TrainStats. On SIGINT or SIGTERM it saves a checkpoint and raises
    TrainingInterrupted.
    """
    import signal

    from embcli.corpus import check_unchanged
    from embcli.errors import ModelCorrupt, TrainingInterrupted
    from embcli.vocab import encode_corpus
    from embcli.tokenize import Tokenizer

    config.validate()
    meta = store.read_meta(model_dir)
    words, counts = store.read_vocab(model_dir, meta)
    if not words:
        raise EmbcliError(f"{model_dir}/vocab.tsv is empty; rebuild the vocabulary")
    device = pick_device(config.device)
    threads = config.threads or default_threads()
    if device.type != "cpu":
        threads = 1

    # Token ids: the cache that build-vocab wrote, or a fresh encoding of other files.
    tokens_path = os.path.join(model_dir, store.TOKENS)
    new_cache = None
    if corpus_paths:
        tokenizer = Tokenizer.from_config(meta["tokenizer"])
        new_cache, cached, scan = encode_corpus(model_dir, corpus_paths, tokenizer, words,
                                                encoding, errors, encode_progress)
        tokens_path = new_cache
        corpus_record = [source.to_json() for source in scan.sources]
    else:
        for source in meta.get("corpus", {}).get("sources", []):
            check_unchanged(source)
        if not os.path.exists(tokens_path):
            raise ModelNotFoundError(model_dir)
        store.check_fingerprint(model_dir, meta, store.TOKENS)
        corpus_record = meta.get("corpus", {}).get("sources", [])
    try:
        corpus = Corpus(tokens_path, counts)
        if corpus.total_words == 0 or len(corpus) == 0:
            from embcli.errors import EmptyCorpus

            raise EmptyCorpus("the corpus has no words from the vocabulary to train on")

        # Start fresh, or from a checkpoint.
        workers = threads if device.type == "cpu" else 1
        positions = [0] * (2 * workers)
        if resume:
            input_vectors, output_vectors, positions, config, workers = _load_checkpoint(
                model_dir, meta, config, len(words))
        else:
            torch.manual_seed(config.seed)
            if config.min_n:
                from embcli.train_subwords import init_subword_vectors

                input_vectors, output_vectors = init_subword_vectors(len(words), config.buckets,
                                                                     config.dim, config.seed)
            else:
                input_vectors, output_vectors = init_vectors(len(words), config.dim, config.seed)
        table = None
        if config.min_n:
            from embcli.subwords import SubwordTable

            table = SubwordTable.build(words, config.min_n, config.max_n, config.buckets, config.combination)
        input_vectors = input_vectors.to(device)
        output_vectors = output_vectors.to(device)
        words_total = _words_in(corpus) * config.epochs

        stop = _Stop()
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        started = time.time()
        try:
            if workers == 1:
                positions, totals = _run_in_process(config, corpus, input_vectors, output_vectors,
                                                    device, positions, stop, progress, words_total, table)
            else:
                positions, totals = _run_workers(workers, config, tokens_path, counts, input_vectors,
                                                 output_vectors, positions, stop, progress, words_total,
                                                 table)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        seconds = time.time() - started

        finished = all(positions[2 * w] >= config.epochs for w in range(workers))
        if stop.is_set() and not finished:
            _save_checkpoint(model_dir, meta, config, workers, positions, input_vectors, output_vectors)
            name = "SIGINT" if stop.signal == signal.SIGINT else "SIGTERM"
            done = totals[0] / max(words_total, 1)
            raise TrainingInterrupted(
                f"training stopped by {name} at {done:.0%} ({min(p for p in positions[::2]) + 1} of "
                f"{config.epochs} epochs); checkpoint saved in {model_dir}/{CHECKPOINT}; "
                f"continue with: embcli train --resume -m {model_dir}",
                exit_code=128 + stop.signal,
            )

        vectors = input_vectors.detach().to("cpu").numpy()
        if not np.isfinite(vectors).all():
            raise TrainingError(
                "training diverged (the vectors hold NaN or infinite values); lower the "
                f"learning rate (it was {config.resolved_lr():g})"
            )
        stats = TrainStats(
            words=int(totals[0]),
            examples=int(totals[1]),
            seconds=seconds,
            words_per_second=totals[0] / max(seconds, 1e-9),
            final_loss=totals[2],
            epochs_done=config.epochs,
        )
        _save_embeddings(model_dir, meta, config, stats, vectors, workers, device,
                         corpus_record, new_cache, table)
        new_cache = None
        return stats
    finally:
        if new_cache is not None and os.path.exists(new_cache):
            os.remove(new_cache)


def ModelNotFoundError(model_dir):
    from embcli.errors import ModelNotFound

    return ModelNotFound(f"{model_dir} has no token cache; run 'embcli build-vocab CORPUS' again")


def _words_in(corpus):
    # Every token except the LINE_END markers.
    tokens = corpus.tokens
    ends = 0
    for begin in range(0, len(tokens), 1 << 24):
        ends += int(np.count_nonzero(tokens[begin : begin + (1 << 24)] == store.LINE_END))
    return len(tokens) - ends


class _LossWindow:
    """Mean loss per example over the most recent chunks (float64, never saturates)."""

    def __init__(self, size=50):
        self.items = []
        self.size = size

    def add(self, loss, examples):
        self.items.append((loss, examples))
        if len(self.items) > self.size:
            self.items.pop(0)

    def mean(self):
        examples = sum(e for _, e in self.items)
        return sum(l for l, _ in self.items) / examples if examples else float("nan")


def _run_in_process(config, corpus, input_vectors, output_vectors, device, positions, stop,
                    progress, words_total, table=None):
    if device.type == "cpu":
        torch.set_num_threads(1)
    trainer = _new_trainer(config, corpus, input_vectors, output_vectors, device, 0, 1, table)
    totals = [0.0, 0.0, float("nan")]
    window = _LossWindow()
    last = [0.0]
    words_before = _words_before(trainer, positions[0], positions[1])
    totals[0] = 0.0

    def report(words, examples, loss, lr):
        totals[0] += words
        totals[1] += examples
        window.add(loss, examples)
        now = time.time()
        if progress is not None and now - last[0] > 0.2:
            last[0] = now
            progress(words_before + totals[0], words_total, totals[1], window.mean(), lr)

    epoch, chunk = trainer.run(positions[0], positions[1], report, stop.is_set)
    totals[2] = window.mean()
    if progress is not None:
        progress(words_before + totals[0], words_total, totals[1], totals[2], 0.0)
    return [epoch, chunk], totals


def _words_before(trainer, epoch, chunk):
    # Approximate words already trained before a resume point, for progress only.
    per_chunk = (trainer.stop - trainer.start) / max(len(trainer.chunks), 1)
    return (epoch * len(trainer.chunks) + chunk) * per_chunk


def _run_workers(workers, config, tokens_path, counts, input_vectors, output_vectors, positions,
                 stop, progress, words_total, table=None):
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    input_vectors.share_memory_()
    output_vectors.share_memory_()
    shared_positions = context.Array("d", [float(p) for p in positions], lock=False)
    shared_stats = context.Array("d", 4 * workers)
    stop_event = context.Event()
    errors = context.Queue()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    processes = [
        context.Process(
            target=_worker_main,
            args=(w, workers, config, tokens_path, np.asarray(counts), input_vectors, output_vectors,
                  shared_positions, shared_stats, stop_event, errors, table),
            daemon=True,
        )
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    window = _LossWindow(size=20)
    previous = (0.0, 0.0)
    try:
        while any(p.is_alive() for p in processes):
            for process in processes:
                process.join(timeout=0.25)
                break
            if stop.is_set():
                stop_event.set()
            words = sum(shared_stats[4 * w] for w in range(workers))
            examples = sum(shared_stats[4 * w + 1] for w in range(workers))
            loss = sum(shared_stats[4 * w + 2] for w in range(workers))
            lr = max(shared_stats[4 * w + 3] for w in range(workers))
            if examples > previous[1]:
                window.add(loss - previous[0], examples - previous[1])
                previous = (loss, examples)
            if progress is not None:
                progress(words, words_total, examples, window.mean(), lr)
    except BaseException:
        stop_event.set()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
        raise
    for process in processes:
        process.join()
    if not errors.empty():
        message = errors.get()
        if message.startswith("training diverged"):
            raise TrainingError(message)
        raise RuntimeError(message)
    words = sum(shared_stats[4 * w] for w in range(workers))
    examples = sum(shared_stats[4 * w + 1] for w in range(workers))
    return list(shared_positions), [words, examples, window.mean()]


def _new_trainer(config, corpus, input_vectors, output_vectors, device, worker, workers, table):
    if table is None:
        return Trainer(config, corpus, input_vectors, output_vectors, device, worker, workers)
    from embcli.train_subwords import SubwordTrainer

    return SubwordTrainer(config, corpus, input_vectors, output_vectors, device, worker, workers, table)


def _config_json(config):
    data = asdict(config)
    data["lr"] = config.resolved_lr()
    return data


def _save_checkpoint(model_dir, meta, config, workers, positions, input_vectors, output_vectors):
    input_tmp = store.save_npy_temp(model_dir, CHECKPOINT_INPUT, input_vectors.detach().cpu().numpy())
    output_tmp = store.save_npy_temp(model_dir, CHECKPOINT_OUTPUT, output_vectors.detach().cpu().numpy())
    state = {
        "model_id": meta["model_id"],
        "vocab": meta["files"].get(store.VOCAB),
        "config": _config_json(config),
        "workers": workers,
        "positions": [int(p) for p in positions],
        "files": {
            CHECKPOINT_INPUT: store.fingerprint(input_tmp),
            CHECKPOINT_OUTPUT: store.fingerprint(output_tmp),
        },
    }
    state_tmp = store.temp_path(model_dir, CHECKPOINT)
    store.write_bytes_synced(state_tmp, (__import__("json").dumps(state, indent=2) + "\n").encode())
    store.commit(model_dir, {CHECKPOINT_INPUT: input_tmp, CHECKPOINT_OUTPUT: output_tmp, CHECKPOINT: state_tmp})


def _load_checkpoint(model_dir, meta, config, vocab_size):
    import json

    from embcli.errors import ModelCorrupt, ModelNotFound

    path = os.path.join(model_dir, CHECKPOINT)
    try:
        with open(path, "rb") as handle:
            state = json.loads(handle.read())
    except FileNotFoundError:
        raise ModelNotFound(f"{model_dir} has no checkpoint to resume from; train without resuming") from None
    except ValueError as error:
        raise ModelCorrupt(f"{path}: not valid JSON ({error})") from None
    if state.get("vocab") != meta["files"].get(store.VOCAB):
        raise ModelCorrupt(f"{path} was saved for another vocabulary; train without resuming")
    for name in (CHECKPOINT_INPUT, CHECKPOINT_OUTPUT):
        if store.fingerprint(os.path.join(model_dir, name)) != state["files"][name]:
            raise ModelCorrupt(f"{model_dir}/{name} does not match {CHECKPOINT}; train without resuming")
    saved = dict(state["config"])
    # The checkpoint's settings win, except where changing them cannot alter the result.
    for key in ("threads", "device"):
        saved[key] = getattr(config, key)
    resumed = TrainConfig(**saved)
    workers = state["workers"]
    if (resumed.threads or default_threads()) != workers and resumed.device in ("auto", "cpu"):
        resumed.threads = workers
    input_rows = vocab_size + (resumed.buckets if resumed.min_n else 0)
    input_vectors = torch.from_numpy(store.load_matrix(os.path.join(model_dir, CHECKPOINT_INPUT), input_rows, mmap=False).copy())
    output_vectors = torch.from_numpy(store.load_matrix(os.path.join(model_dir, CHECKPOINT_OUTPUT), vocab_size, mmap=False).copy())
    return input_vectors, output_vectors, state["positions"], resumed, workers


def _save_embeddings(model_dir, meta, config, stats, vectors, workers, device, corpus_record, new_cache,
                     table=None):
    import platform

    from embcli import subwords

    meta = dict(meta)
    meta["files"] = dict(meta.get("files", {}))
    renames = {}
    remove = []
    if table is not None:
        # embeddings.npy keeps each word's whole vector; subwords.npy the bucket rows.
        vocab_size = table.vocab_size
        buckets_tmp = store.save_npy_temp(model_dir, subwords.SUBWORDS, vectors[vocab_size:])
        meta["files"][subwords.SUBWORDS] = store.fingerprint(buckets_tmp)
        meta["subwords"] = table.to_meta()
        renames[subwords.SUBWORDS] = buckets_tmp
        vectors = subwords.combine_rows(vectors, table.offsets, table.rows, table.combination)
    else:
        meta.pop("subwords", None)
        meta["files"].pop(subwords.SUBWORDS, None)
        if os.path.exists(os.path.join(model_dir, subwords.SUBWORDS)):
            remove.append(subwords.SUBWORDS)
    embeddings_tmp = store.save_npy_temp(model_dir, store.EMBEDDINGS, vectors.astype(np.float32, copy=False))
    meta["files"][store.EMBEDDINGS] = store.fingerprint(embeddings_tmp)
    meta["dim"] = int(vectors.shape[1])
    meta["training"] = {
        "settings": _config_json(config),
        "workers": workers,
        "device": str(device),
        "reproducible": workers == 1,
        "corpus": corpus_record,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "stats": stats.to_json(),
    }
    renames[store.EMBEDDINGS] = embeddings_tmp
    if new_cache is not None:
        meta["files"][store.TOKENS] = store.fingerprint(new_cache)
        meta["token_cache"] = {"tokens": int(np.load(new_cache, mmap_mode="r").shape[0]),
                               "line_end": int(store.LINE_END), "sources": corpus_record}
        renames[store.TOKENS] = new_cache
    meta_tmp = store.meta_temp(model_dir, meta)
    renames[store.META] = meta_tmp
    present = [name for name in CHECKPOINT_FILES if os.path.exists(os.path.join(model_dir, name))]
    store.commit(model_dir, renames, remove=present + remove)
