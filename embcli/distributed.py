"""Data-parallel training on torch.distributed: one model kept by several ranks.

Start it the standard way; every rank runs `embcli train` with the same options:

    torchrun --nproc-per-node 2 -m embcli train -m MODEL
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 \
        --master-addr HOST --master-port 29500 -m embcli train -m MODEL

`embcli train` switches to this module when torchrun's environment variables
(WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) are set. The backend is gloo
on CPUs and NCCL on GPUs (rank i uses GPU LOCAL_RANK).

How the ranks keep one model:
- Every rank keeps a full copy of the input and output matrices, starting from the same
  values (broadcast from rank 0).
- Rank r trains with `Trainer(worker=r, workers=world_size)`, so it reads only its own
  contiguous slice of the token-id cache. With `--chunk-order in-turn` it takes chunks
  r, r + world_size, ... of the whole cache instead, as Hogwild worker processes do by
  default.
- Every `sync_tokens` tokens of its slice, each rank takes the rows it changed since the
  last synchronization, which its trainer marked as it went (TrackingTrainer, or
  TrackingSubwordTrainer, which also marks the n-gram rows of the chunk's words). The ranks
  take the union of those rows, all-reduce the sum of their changes to them, and add
  that sum to the rows as they were at the last synchronization. Every rank then has the
  same matrices again. Between two synchronizations a rank does not see the others'
  updates, as a Hogwild worker would not see updates still in another core's cache. A
  rank that trained nothing since the last synchronization contributes a change of
  zero. Ranks synchronize between chunks, so an interval shorter than a chunk shortens
  the chunks to the interval.
- The ranks synchronize the same number of times, at the same fractions of their own
  slice, because slices may differ in length by one chunk. They also synchronize once at
  the end, so the saved model contains every rank's updates.
- No step depends on timing: two runs of the same command and seed on 2 gloo ranks gave
  byte-identical vectors.

Rank 0 alone writes the model directory, through `embcli.store`, with the same files as
a one-process run. On SIGINT or SIGTERM every rank trains on to the next
synchronization point and stops there; after that synchronization rank 0 saves a
checkpoint in the layout that `embcli.train` uses for Hogwild workers (one position per
worker, plus a "distributed" entry), and `embcli train --resume` under torchrun with the
same number of ranks continues it. In such a checkpoint every rank is at a
synchronization point, so the resumed run gives the same vectors as a run without the
stop.
"""

import dataclasses
import hashlib
import json
import math
import os
import re
import signal
import threading
import time

import numpy as np
import torch
import torch.distributed as dist

from embcli import store, train
from embcli.train_subwords import SubwordTrainer, init_subword_vectors
from embcli.errors import EmbcliError, ModelCorrupt, ModelNotFound, TrainingError, TrainingInterrupted, plural

# After this many seconds in init_process_group, train_distributed's `waiting` callback runs.
# A rank that failed to start leaves the others there for torch's timeout, 30 minutes.
JOIN_NOTICE_SECONDS = 30.0
# Tokens of its own slice that a rank trains between two synchronizations. bench/distributed.py
# measured quality against this interval; see docs/benchmarks.md, section Scale.
DEFAULT_SYNC_TOKENS = 1 << 16

ENVIRONMENT = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclasses.dataclass
class Launch:
    """This process's place in a torchrun launch."""

    rank: int
    world_size: int
    local_rank: int


def launched():
    """Return the Launch that torchrun's environment describes, or None outside torchrun."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    missing = [name for name in ENVIRONMENT if name not in os.environ]
    if missing:
        raise EmbcliError(
            f"WORLD_SIZE is set but {', '.join(missing)} is not; start distributed training "
            "with torchrun, or unset WORLD_SIZE to train in one process"
        )
    try:
        values = [int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")]
    except ValueError:
        raise EmbcliError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    rank, world_size, local_rank = values
    if world_size < 1 or not 0 <= rank < world_size:
        raise EmbcliError(f"RANK {rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE {world_size})")
    return Launch(rank, world_size, local_rank)


def _pick_device(name, launch):
    """Return the device for this rank: GPU LOCAL_RANK when CUDA is in use, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{launch.local_rank}"
    device = train.pick_device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


class _Tracking:
    """A trainer mixin that marks every row the trainer may change, for Replicas to send.

    Training changes the input and output rows of the words in a chunk and the output rows
    of the drawn negatives, and nothing else. With subwords, a word's input rows are its
    own row and its n-gram rows. The marks are a superset of the changed rows (a
    subsampled word is marked too), which costs only an all-reduced zero.
    NOTE: this relies on the trainers updating rows only through those words and
    negatives; tests/test_distributed.py checks it for skip-gram, CBOW and subwords.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        rows = self.input_vectors.shape[0]
        self.touched = [torch.zeros(rows, dtype=torch.bool, device=self.device),
                        torch.zeros(self.output_vectors.shape[0], dtype=torch.bool, device=self.device)]

    def _load_chunk(self, begin, end=None):
        loaded = super()._load_chunk(begin, end)
        raw, is_end = loaded[0], loaded[3]
        words = raw[~is_end]
        self._mark_inputs(words)
        self.touched[1][words] = True
        return loaded

    def _mark_inputs(self, words):
        self.touched[0][words] = True

    def _draw_negatives(self, shape, generator):
        negatives = super()._draw_negatives(shape, generator)
        self.touched[1][negatives.view(-1)] = True
        return negatives


class TrackingTrainer(_Tracking, train.Trainer):
    """A word-level Trainer that marks the rows it may change."""


class TrackingSubwordTrainer(_Tracking, SubwordTrainer):
    """A SubwordTrainer that marks the rows it may change, n-gram rows included."""

    def _mark_inputs(self, words):
        rows, _, _ = self._word_rows(torch.unique(words))
        self.touched[0][rows] = True


class Replicas:
    """Keeps every rank's copy of the matrices equal by all-reducing the changed rows.

    `touched` holds one bool mask per matrix that marks every row this rank changed
    since the last synchronization (TrackingTrainer.touched); synchronize() clears it.
    """

    def __init__(self, matrices, touched):
        self.matrices = matrices
        self.touched = touched
        # The values at the last synchronization; a rank's change is `matrix - base`. One
        # rank alone needs no copy.
        alone = dist.get_world_size() == 1
        self.base = [] if alone else [matrix.clone() for matrix in matrices]
        self.rows_sent = 0
        self.seconds = 0.0
        self.wait_seconds = 0.0  # of `seconds`, spent in the first all-reduce, which waits for every rank
        self.count = 0

    def synchronize(self):
        """All-reduce the changes since the last call; every rank ends with the same values."""
        self.count += 1
        if dist.get_world_size() == 1:
            return  # the only copy is already the model
        started = time.perf_counter()
        changed = torch.cat(self.touched).to(torch.uint8)
        for mask in self.touched:
            mask.zero_()
        dist.all_reduce(changed, op=dist.ReduceOp.MAX)
        self.wait_seconds += time.perf_counter() - started
        rows = changed.nonzero().squeeze(1)
        if rows.numel():
            # Row i of matrix m is entry (rows of the matrices before m) + i of `changed`. With
            # subwords the input matrix has more rows than the output matrix.
            ends = np.cumsum([mask.shape[0] for mask in self.touched]).tolist()
            starts = [0] + ends[:-1]
            picked = [rows[(rows >= start) & (rows < end)] - start for start, end in zip(starts, ends)]
            # Each matrix's changed rows are gathered straight into their part of one
            # buffer, and the base rows are read once: about 15 % less time per exchange
            # than gathering, subtracting and concatenating separately.
            deltas = torch.empty(rows.numel(), self.matrices[0].shape[1], dtype=self.matrices[0].dtype,
                                 device=self.matrices[0].device)
            bases, offset = [], 0
            for rows_of, matrix, base in zip(picked, self.matrices, self.base):
                part = deltas[offset : offset + len(rows_of)]
                offset += len(rows_of)
                torch.index_select(matrix, 0, rows_of, out=part)
                base_rows = base.index_select(0, rows_of)
                part.sub_(base_rows)
                bases.append(base_rows)
            dist.all_reduce(deltas, op=dist.ReduceOp.SUM)
            offset = 0
            for rows_of, matrix, base, updated in zip(picked, self.matrices, self.base, bases):
                updated.add_(deltas[offset : offset + len(rows_of)])
                offset += len(rows_of)
                base.index_copy_(0, rows_of, updated)
                matrix.index_copy_(0, rows_of, updated)
            self.rows_sent += int(rows.numel())
        self.seconds += time.perf_counter() - started


def _sum_across(values, device, op=None):
    """Return the element-wise all-reduce (sum by default) of a list of floats."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor.tolist()


def _broadcast_matrices(matrices):
    for matrix in matrices:
        dist.broadcast(matrix, src=0)


def _check_same_settings(config, resume, sync_tokens, device):
    """Raise EmbcliError on every rank unless all ranks were started with the same settings.

    Each setting's value is hashed to 48 bits (exact in a float64), and the ranks compare
    the smallest and largest hash of each. The device and thread count may differ.
    """
    settings = {name: value for name, value in train._config_json(config).items()
                if name not in ("device", "threads")}
    settings["resume"] = bool(resume)
    settings["sync_tokens"] = sync_tokens
    names = sorted(settings)
    values = [float(int(hashlib.blake2b(json.dumps(settings[name]).encode(), digest_size=6).hexdigest(), 16))
              for name in names]
    low = _sum_across(values, device, dist.ReduceOp.MIN)
    high = _sum_across(values, device, dist.ReduceOp.MAX)
    differ = [name for name, a, b in zip(names, low, high) if a != b]
    if differ:
        raise EmbcliError(
            f"the ranks were started with different training settings: {', '.join(differ)} (this rank has "
            + ", ".join(f"{name}={settings[name]}" for name in differ)
            + "); start every rank with the same embcli train options",
            options=tuple(differ),
        )


def _check_same_data(meta, device):
    """Raise ModelCorrupt unless every rank reads the same vocabulary and token cache."""
    files = meta.get("files", {})
    digest = hashlib.blake2b((files.get(store.VOCAB, "") + files.get(store.TOKENS, "")).encode(), digest_size=6)
    value = float(int(digest.hexdigest(), 16))  # 48 bits: exact in a float64
    low, = _sum_across([value], device, dist.ReduceOp.MIN)
    high, = _sum_across([value], device, dist.ReduceOp.MAX)
    if low != high:
        raise ModelCorrupt(
            "the ranks read different vocabularies or token caches; give every node a copy "
            "of the same model directory (the one build-vocab wrote) at the path passed to -m"
        )


def sync_points(total_chunks, syncs):
    """Return the chunk counts after which a rank with `total_chunks` chunks synchronizes.

    Point k (1..syncs) is ceil(k * total_chunks / syncs), so every rank synchronizes
    `syncs` times whatever the length of its slice, the last time at its end.
    """
    return [-(-k * total_chunks // syncs) for k in range(1, syncs + 1)]


def train_distributed(model_dir, config, launch, resume=False, progress=None, started=None,
                      sync_tokens=DEFAULT_SYNC_TOKENS, checkpoint_seconds=train.DEFAULT_CHECKPOINT_SECONDS,
                      waiting=None):
    """Train the model in `model_dir` as rank `launch.rank` of `launch.world_size`.

    Every rank returns the same TrainStats (summed over the ranks); only rank 0 writes
    files. `progress` has train_model's signature and is called on rank 0 only.
    `started(backend, syncs)` is called on rank 0 once training begins. `waiting(seconds)`
    is called once if the ranks have not all joined after JOIN_NOTICE_SECONDS. Rank 0 saves a
    checkpoint after the first synchronization at least `checkpoint_seconds` (0: never)
    after the previous one, and after a collective fails (for example because another
    rank was killed), so that `--resume` continues from the last synchronization.
    """
    config.validate()
    if sync_tokens < 1:
        raise EmbcliError(f"invalid synchronization interval {sync_tokens}: it must be at least 1 token")
    device = _pick_device(config.device, launch)
    # NOTE: only the gloo path has run (CPU ranks); the NCCL path has not been tried on GPUs.
    backend = "nccl" if device.type == "cuda" else "gloo"
    notice = None
    if waiting is not None:
        notice = threading.Timer(JOIN_NOTICE_SECONDS, waiting, (JOIN_NOTICE_SECONDS,))
        notice.daemon = True
        notice.start()
    try:
        dist.init_process_group(backend, rank=launch.rank, world_size=launch.world_size)
    finally:
        if notice is not None:
            notice.cancel()
    try:
        return _train(model_dir, config, launch, device, backend, resume, progress, started, sync_tokens,
                      checkpoint_seconds)
    finally:
        dist.destroy_process_group()


def _train(model_dir, config, launch, device, backend, resume, progress, started, sync_tokens,
           checkpoint_seconds=train.DEFAULT_CHECKPOINT_SECONDS):
    meta = store.read_meta(model_dir)
    words, counts = store.read_vocab(model_dir, meta)
    if not words:
        raise EmbcliError(f"{model_dir}/vocab.tsv is empty; rebuild the vocabulary")
    train.check_trainable(model_dir, meta, counts)
    tokens_path = os.path.join(model_dir, store.TOKENS)
    if not os.path.exists(tokens_path):
        raise ModelNotFound(train._no_token_cache_message(model_dir, meta))
    if launch.rank == 0:
        store.check_fingerprint(model_dir, meta, store.TOKENS)
    _check_same_data(meta, device)
    _check_same_settings(config, resume, sync_tokens, device)
    if device.type == "cpu":
        torch.set_num_threads(1)

    corpus = train._open_corpus(tokens_path, counts)
    if corpus.total_words == 0 or len(corpus) == 0:
        from embcli.errors import EmptyCorpus

        raise EmptyCorpus("the corpus has no words from the vocabulary to train on")
    if not resume:
        config, warning = train.subsampling_for(config, corpus.total_words)
        if warning and launch.rank == 0:
            train._warn_on_stderr(warning)

    positions = [0] * (2 * launch.world_size)
    corpus_record = train.cached_sources(meta)
    done_before = (0.0, 0.0, 0.0)  # words, examples and seconds of the run before a resume
    windows = None  # each rank's loss window at the checkpoint
    if resume:
        input_vectors, output_vectors, positions, config, sync_tokens, done_before, windows = load_checkpoint(
            model_dir, meta, config, len(words), launch.world_size, sync_tokens, len(corpus), words)
    table = train._subword_table(words, config)
    if table is not None and launch.rank == 0:
        train._check_room_for_subwords(model_dir, config, table)
    if not resume and table is None:
        input_vectors, output_vectors = train.init_vectors(len(words), config.dim, config.seed)
    elif not resume:
        input_vectors, output_vectors = init_subword_vectors(table, config.dim, config.seed)
    start = train._Resume(config, launch.world_size, positions, input_vectors, output_vectors,
                          store.TOKENS, corpus_record, *done_before, resumed=resume)
    input_vectors = input_vectors.to(device)
    output_vectors = output_vectors.to(device)
    # Rank 0's values win, so the replicas start equal even if initialisation differed.
    _broadcast_matrices([input_vectors, output_vectors])

    if sync_tokens < config.chunk_tokens:
        # Ranks synchronize between chunks, so a short interval needs short chunks.
        config = dataclasses.replace(config, chunk_tokens=sync_tokens)
    if table is None:
        trainer = TrackingTrainer(config, corpus, input_vectors, output_vectors, device,
                                  worker=launch.rank, workers=launch.world_size)
    else:
        trainer = TrackingSubwordTrainer(config, corpus, input_vectors, output_vectors, device,
                                         worker=launch.rank, workers=launch.world_size, table=table)
    if config.chunk_order == "in-turn":
        trainer.take_chunks_in_turn()
    chunks_per_epoch = len(trainer.chunks)
    total_chunks = config.epochs * chunks_per_epoch
    chunks_per_sync = max(1, round(sync_tokens / config.chunk_tokens))
    longest, = _sum_across([total_chunks], device, dist.ReduceOp.MAX)
    syncs = max(1, math.ceil(longest / chunks_per_sync))
    points = sync_points(total_chunks, syncs)
    epoch, chunk = positions[2 * launch.rank], positions[2 * launch.rank + 1]
    done = min(epoch * chunks_per_epoch + chunk, total_chunks)
    # Every rank catches SIGINT and SIGTERM before this all-reduce, so once rank 0 reports
    # the start, a signal to any rank leads to a checkpoint.
    stop = train._Stop()
    previous = train.route_signals((signal.SIGINT, signal.SIGTERM), stop)
    # A rank stopped by a signal may be short of the synchronization point that the others
    # reached, so the ranks resume from the earliest one; ranks already past it wait there.
    syncs_done, = _sum_across([sum(1 for point in points if point <= done)], device, dist.ReduceOp.MIN)
    syncs_done = min(int(syncs_done), syncs - 1)

    replicas = Replicas([input_vectors, output_vectors], trainer.touched)
    words_total = corpus.total_words * config.epochs
    local = {"words": 0.0, "examples": 0.0, "done": done}
    # A resumed rank goes on with the window it had at the checkpoint, so that the final
    # loss is the mean over the same chunks as in a run without the stop.
    window = train._LossWindow(items=windows[launch.rank] if windows else None)
    last_progress = [0.0]

    def report(chunk_words, examples, loss, lr):
        local["words"] += chunk_words
        local["examples"] += examples
        local["done"] += 1
        window.add(loss, examples)
        now = time.time()
        if progress is not None and launch.rank == 0 and now - last_progress[0] > 0.2:
            last_progress[0] = now
            # Between synchronizations rank 0 counts only its own slice, so scale it up.
            estimate = words_before + local["words"] * launch.world_size
            progress(estimate, words_total, local["examples"] * launch.world_size, window.mean(), lr)

    words_before = done / max(total_chunks, 1) * words_total
    if started is not None and launch.rank == 0:
        started(backend, syncs)
    began = time.time()
    stopped = False
    last_save = time.monotonic()

    # The words and examples of the whole run that the last synchronization contains,
    # summed over the ranks.
    synced = {"words": start.words_done, "examples": start.examples_done}
    # The synchronizations of the run before a resume, so that meta.json counts them all.
    earlier = (train.read_checkpoint_state(model_dir).get("distributed") or {}) if resume else {}

    def sync_record():
        """Return the synchronization counts of the whole run, resumed parts included."""
        return {
            "synchronizations": earlier.get("synchronizations", 0) + replicas.count,
            "rows_all_reduced": earlier.get("rows_all_reduced", 0) + replicas.rows_sent,
            "sync_seconds_rank0": round(earlier.get("sync_seconds_rank0", 0.0) + replicas.seconds, 3),
            "sync_wait_seconds_rank0": round(earlier.get("sync_wait_seconds_rank0", 0.0) + replicas.wait_seconds, 3),
        }

    # Every rank's loss window as of the last two synchronizations, by index. The windows
    # are gathered just before a synchronization, so if that one fails, the one before it
    # (the one a checkpoint then saves) still has its windows.
    recent_windows = {}

    def save_synchronized(index, matrices):
        """Save `matrices`, the replicas as of synchronization `index`, as a checkpoint (rank 0)."""
        at_sync = positions_at_sync(len(corpus), config, launch.world_size, syncs, index, positions)
        totals = (synced["words"], synced["examples"], start.seconds_done + time.time() - began, words_total)
        save_checkpoint(model_dir, meta, config, launch.world_size, sync_tokens, at_sync, *matrices,
                        corpus_record, totals, sync_record(), recent_windows.get(index))

    synchronized = None  # the index of the last synchronization that every rank completed
    try:
        for index in range(syncs_done, syncs):
            target = points[index]
            if local["done"] < target:
                epoch, chunk = divmod(local["done"], chunks_per_epoch)
                trainer.run(epoch, chunk, report, lambda: local["done"] >= target)
            # Every rank has trained up to this synchronization, so its counts are those
            # of the matrices it is about to exchange.
            (words_now, examples_now), recent_windows[index] = _gather_windows(
                [local["words"], local["examples"]], window, launch, device)
            recent_windows.pop(index - 2, None)
            replicas.synchronize()
            synced.update(words=start.words_done + words_now, examples=start.examples_done + examples_now)
            synchronized = index
            due = checkpoint_seconds and time.monotonic() - last_save >= checkpoint_seconds
            if launch.rank == 0 and due and index < syncs - 1:
                save_synchronized(index, [input_vectors, output_vectors])
                last_save = time.monotonic()
            signalled, unfinished = _sum_across(
                [1.0 if stop.is_set() else 0.0, 1.0 if local["done"] < total_chunks else 0.0], device)
            if signalled and (index < syncs - 1 or unfinished):
                stopped = True
                break
    except RuntimeError as error:
        # A collective failed: gloo raises when another rank's connection closes, for
        # example because that rank was killed. Replicas.base still contains the matrices of
        # the last synchronization, the same on every rank, so rank 0 saves those.
        if launch.world_size == 1:
            raise
        # gloo's message starts with its source location and ends with advice; keep the cause.
        detail = re.sub(r"^\[[^\]]*\]\s*", "", str(error).strip()).split(". ")[0]
        path = os.path.join(model_dir, train.CHECKPOINT)
        resume = f"continue with the same torchrun command and: embcli train --resume -m {model_dir}"
        if launch.rank == 0 and synchronized is not None:
            save_synchronized(synchronized, replicas.base)
            saved = f"the work up to the last synchronization is saved in {path}; {resume}"
        elif launch.rank == 0:
            saved = f"no synchronization completed, so nothing new was saved; if {path} exists, {resume}"
        else:
            saved = f"rank 0 saves the checkpoints; if {path} exists on its node, {resume}"
        raise TrainingError(
            f"the ranks lost contact during training ({detail}), for example because a rank was "
            f"killed (the kernel's out-of-memory killer sends SIGKILL); {saved}"
        ) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    seconds = start.seconds_done + time.time() - began

    words_sum, examples_sum = _sum_across([local["words"], local["examples"]], device)
    # A resumed run's summary and meta.json count the whole run, as embcli.train's do.
    words_sum += start.words_done
    examples_sum += start.examples_done
    if local["done"] >= total_chunks:
        finished_position = (config.epochs, 0)
    else:
        finished_position = divmod(local["done"], chunks_per_epoch)
    gathered = _gather_positions(finished_position, launch, device)

    if stopped:
        if launch.rank == 0:
            save_checkpoint(model_dir, meta, config, launch.world_size, sync_tokens, gathered,
                            input_vectors, output_vectors, corpus_record,
                            (words_sum, examples_sum, seconds, words_total), sync_record(),
                            recent_windows.get(synchronized))
        dist.barrier()
        # A rank on another node may have stopped only because a signal reached other ranks.
        number = stop.signal or signal.SIGTERM
        name = "SIGINT" if number == signal.SIGINT else "SIGTERM"
        epochs_reached = min(gathered[::2]) + 1
        if launch.rank != 0:
            # Only rank 0 saves the checkpoint, so only it prints where it is and how to resume.
            # A stop, not an error: rank 0 saved the checkpoint.
            raise TrainingInterrupted(f"rank {launch.rank} stopped by {name}; rank 0 saved the checkpoint",
                                      exit_code=128 + number,
                                      checkpoint=os.path.join(model_dir, train.CHECKPOINT))
        raise TrainingInterrupted(
            f"training stopped by {name} ({min(epochs_reached, config.epochs)} of "
            f"{plural(config.epochs, 'epoch')}) "
            f"on {launch.world_size} ranks; checkpoint saved in {model_dir}/{train.CHECKPOINT}; continue "
            f"with the same torchrun command and: embcli train --resume -m {model_dir}",
            exit_code=128 + number,
            checkpoint=os.path.join(model_dir, train.CHECKPOINT),
        )

    # The last window of each rank, weighted by examples, as the one-process loss is.
    final = _sum_across([sum(l for l, _ in window.items), sum(e for _, e in window.items)], device)
    final_loss = final[0] / final[1] if final[1] else float("nan")
    stats = train.TrainStats(
        words=int(words_sum),
        examples=int(examples_sum),
        seconds=seconds,
        words_per_second=words_sum / max(seconds, 1e-9),
        final_loss=final_loss,
        epochs_done=config.epochs,
    )
    if launch.rank == 0:
        vectors = input_vectors.detach().to("cpu").numpy()
        if not np.isfinite(vectors).all():
            raise TrainingError(
                "training diverged (the vectors hold NaN or infinite values); lower the "
                f"learning rate (it was {config.resolved_lr():g}) or synchronize more often"
            )
        record = {
            "backend": backend,
            "world_size": launch.world_size,
            "method": "sum of each rank's changes to the rows changed since the last synchronization",
            "sync_tokens": sync_tokens,
            **sync_record(),
        }
        if progress is not None:
            progress(words_total, words_total, stats.examples, final_loss, 0.0)
        train._save_embeddings(model_dir, meta, config, stats, vectors, launch.world_size, device,
                               start, None, distributed=record, table=table)
    dist.barrier()
    return stats


def positions_at_sync(corpus_tokens, config, world_size, syncs, index, start_positions):
    """Return every rank's [epoch, chunk] once synchronization `index` has completed.

    Each rank's chunks and synchronization points follow from the corpus length and the
    chunk order alone, so rank 0 computes them all without a collective. A rank that started past
    that point (a resumed run) is at its start position.
    """
    positions = []
    for rank in range(world_size):
        per_epoch = len(train.worker_chunk_starts(corpus_tokens, config.chunk_tokens, world_size, rank,
                                                  config.chunk_order))
        total = config.epochs * per_epoch
        began = start_positions[2 * rank] * per_epoch + start_positions[2 * rank + 1]
        done = max(min(began, total), sync_points(total, syncs)[index])
        if per_epoch == 0 or done >= total:
            positions += [config.epochs, 0]
        else:
            positions += list(divmod(done, per_epoch))
    return positions


def _gather_windows(values, window, launch, device):
    """Return (`values` summed over the ranks, every rank's loss window items), on every rank.

    One all-reduce: each rank fills its own row of a zero matrix with `values`, its
    window's length and its (loss, examples) pairs. Adding zeros leaves each value as it was.
    """
    size, count = window.size, len(values)
    items = window.items[-size:]
    padding = [0.0] * (size - len(items))
    row = [*values, float(len(items))] + [loss for loss, _ in items] + padding \
        + [examples for _, examples in items] + padding
    matrix = torch.zeros((launch.world_size, len(row)), dtype=torch.float64, device=device)
    matrix[launch.rank] = torch.tensor(row, dtype=torch.float64, device=device)
    dist.all_reduce(matrix, op=dist.ReduceOp.SUM)
    rows = matrix.cpu().tolist()
    summed = [sum(rank_row[column] for rank_row in rows) for column in range(count)]
    windows = []
    for rank_row in rows:
        length = int(rank_row[count])
        losses, examples = rank_row[count + 1 : count + 1 + size], rank_row[count + 1 + size :]
        windows.append([[losses[i], examples[i]] for i in range(length)])
    return summed, windows


def _gather_positions(position, launch, device):
    """Return [epoch0, chunk0, epoch1, chunk1, ...] of every rank, on every rank."""
    values = [0.0] * (2 * launch.world_size)
    values[2 * launch.rank], values[2 * launch.rank + 1] = position
    return [int(v) for v in _sum_across(values, device)]


# -- checkpoints --------------------------------------------------------------------------
#
# The files and JSON layout are those of embcli.train's checkpoints for Hogwild workers,
# with one position per rank and a "distributed" entry, so the final save removes them.


def save_checkpoint(model_dir, meta, config, world_size, sync_tokens, positions, input_vectors,
                    output_vectors, corpus_record, totals, sync=None, loss_windows=None):
    """Write the replicated matrices and every rank's (epoch, chunk) as one commit.

    `totals` is (words, examples, seconds, words_total) of the run so far, `sync` the
    synchronization counts so far (see _train's sync_record), and `loss_windows`, if
    given, every rank's recent (loss, examples) pairs.
    """
    words_done, examples_done, seconds, words_total = totals
    input_tmp = store.save_npy_temp(model_dir, train.CHECKPOINT_INPUT, input_vectors.detach().cpu().numpy())
    output_tmp = store.save_npy_temp(model_dir, train.CHECKPOINT_OUTPUT, output_vectors.detach().cpu().numpy())
    state = {
        "checkpoint_version": train.CHECKPOINT_VERSION,
        "model_id": meta["model_id"],
        "vocab": meta["files"].get(store.VOCAB),
        "tokens_file": store.TOKENS,
        "config": train._config_json(config),
        "workers": world_size,
        "positions": [int(p) for p in positions],
        "corpus": corpus_record,
        "words_done": words_done,
        "examples_done": examples_done,
        "words_total": words_total,
        "seconds": seconds,
        "distributed": {"world_size": world_size, "sync_tokens": sync_tokens, **(sync or {}),
                        **({"loss_windows": loss_windows} if loss_windows else {})},
        "files": {
            train.CHECKPOINT_INPUT: store.fingerprint(input_tmp),
            train.CHECKPOINT_OUTPUT: store.fingerprint(output_tmp),
            store.TOKENS: meta["files"].get(store.TOKENS) or store.fingerprint(os.path.join(model_dir, store.TOKENS)),
        },
    }
    state_tmp = store.temp_path(model_dir, train.CHECKPOINT)
    store.write_bytes_synced(state_tmp, (json.dumps(state, indent=2) + "\n").encode())
    store.commit(model_dir, {train.CHECKPOINT_INPUT: input_tmp, train.CHECKPOINT_OUTPUT: output_tmp,
                             train.CHECKPOINT: state_tmp})


def load_checkpoint(model_dir, meta, config, vocab_size, world_size, sync_tokens, corpus_tokens=None, words=None):
    """Return (input, output, positions, config, sync_tokens, done, loss windows) from the
    checkpoint in `model_dir`.

    `done` is (words, examples, seconds) of the run up to the checkpoint. The loss windows
    are every rank's (loss, examples) pairs, or None when the checkpoint has none for
    `world_size` ranks (a checkpoint of worker processes, or one saved by an older version). `words`, the
    vocabulary, is needed to resume a subword run, whose input matrix has n-gram rows too.

    The checkpoint's settings win over `config` and `sync_tokens`, except the device. A
    checkpoint without a "distributed" entry keeps the given `sync_tokens`. Raises ModelCorrupt when the
    checkpoint was saved for another vocabulary or another number of ranks (each rank's
    position belongs to its slice, which depends on the number of ranks).
    """
    path = os.path.join(model_dir, train.CHECKPOINT)
    state = train.read_checkpoint_state(model_dir)
    if state.get("workers") != world_size:
        raise ModelCorrupt(
            f"{path} was saved by {state.get('workers')} workers but this run has {world_size} "
            f"rank(s); resume with {state.get('workers')} ranks in all (nodes x processes per node)"
        )
    if state.get("tokens_file", store.TOKENS) != store.TOKENS:
        raise ModelCorrupt(
            f"{path} was saved while training on other files than the token cache, which "
            "torchrun runs do not support; resume it without torchrun"
        )
    start = train._load_checkpoint(model_dir, meta, config, vocab_size, words)
    positions = start.positions
    if start.dispatched and corpus_tokens is not None:
        # Worker processes took chunks in turn from one queue; each rank keeps a fixed share.
        chunks = len(train.chunk_starts(0, corpus_tokens, start.config.chunk_tokens))
        ticket = train.ticket_from_positions(positions, world_size, chunks, True)
        positions = train.shares_from_ticket(ticket, world_size, chunks, start.config.epochs)
    distributed = state.get("distributed") or {}
    sync_tokens = distributed.get("sync_tokens", sync_tokens)
    done = (start.words_done, start.examples_done, start.seconds_done)
    windows = [train.checked_loss_pairs(items) for items in distributed.get("loss_windows") or []]
    if len(windows) != world_size or any(items is None for items in windows):
        windows = None
    return start.input_vectors, start.output_vectors, positions, start.config, sync_tokens, done, windows
