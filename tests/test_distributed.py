"""Distributed training: 2 ranks through torchrun and gloo on 127.0.0.1, on a small real text."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import embcli
from embcli import store
from embcli.distributed import TrackingSubwordTrainer, TrackingTrainer, load_checkpoint
from embcli.errors import ModelCorrupt
from embcli.tokenize import Tokenizer
from embcli.train import (TrainConfig, _open_corpus, _subword_table, chunk_starts, init_vectors, slice_bounds,
                          train_model)
from embcli.train_subwords import init_subword_vectors
from embcli.vocab import build_vocab

from conftest import interrupt_after

SETTINGS = dict(dim=32, epochs=3, seed=3)
# kjv_small has about 115 k tokens, so each of 2 ranks trains 57 k per epoch. The ranks
# synchronize a few times per epoch, and the one-process reference uses chunks of the same size.
SYNC_TOKENS = 16384


def free_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def loopback_env():
    return dict(os.environ, MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
                OMP_WAIT_POLICY="PASSIVE")


def torchrun_command(model_dir, ranks, *options):
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
            "-m", "embcli", "train", "-m", model_dir, *options]


def torchrun(model_dir, ranks, *options):
    return subprocess.run(torchrun_command(model_dir, ranks, *options), env=loopback_env(),
                          capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory, small_corpus_path):
    path = str(tmp_path_factory.mktemp("dist") / "vocab")
    build_vocab(path, [small_corpus_path], Tokenizer(), min_count=3)
    return path


@pytest.fixture(scope="module")
def small_corpus_path():
    return os.path.join(os.path.dirname(__file__), "data", "kjv_small.txt")


def copy_model(vocab_dir, target):
    shutil.copytree(vocab_dir, target)
    return str(target)


def one_process(vocab_dir, target, seed):
    model_dir = copy_model(vocab_dir, target)
    settings = dict(SETTINGS, seed=seed)
    train_model(model_dir, TrainConfig(threads=1, chunk_tokens=SYNC_TOKENS, **settings))
    return embcli.load(model_dir)


def neighbour_overlap(first, second, words):
    shared = [len({w for w, _ in first.neighbors(word, 10)} & {w for w, _ in second.neighbors(word, 10)})
              for word in words]
    return sum(shared) / (10 * len(words))


@pytest.mark.parametrize("chunk_order", ["slices", "in-turn"])
def test_two_ranks_match_one_process(vocab_dir, tmp_path, chunk_order):
    model_dir = copy_model(vocab_dir, tmp_path / "two")
    options = ["--chunk-order", chunk_order] if chunk_order == "in-turn" else []
    result = torchrun(model_dir, 2, "--dim", "32", "--epochs", "3", "--seed", "3",
                      "--sync-tokens", str(SYNC_TOKENS), *options)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 ranks" in result.stderr
    assert embcli.load(model_dir).meta["training"]["settings"]["chunk_order"] == chunk_order

    reference = one_process(vocab_dir, tmp_path / "one-seed3", 3)
    assert sorted(os.listdir(model_dir)) == sorted(os.listdir(reference.path))
    model = embcli.load(model_dir)
    assert model.matrix.shape == reference.matrix.shape
    assert np.isfinite(model.matrix).all()
    record = model.meta["training"]["distributed"]
    assert record["world_size"] == 2
    assert record["backend"] == "gloo"
    assert record["synchronizations"] >= 6

    # Another seed of the one-process run sets the scale: how far two good models differ.
    other_seed = one_process(vocab_dir, tmp_path / "one-seed4", 4)
    words = reference.words[20:120]
    baseline = neighbour_overlap(reference, other_seed, words)
    distributed = neighbour_overlap(reference, model, words)
    assert baseline > 0.3
    assert distributed >= 0.6 * baseline, (distributed, baseline)


def test_one_rank_equals_one_process(vocab_dir, tmp_path):
    model_dir = copy_model(vocab_dir, tmp_path / "rank")
    result = torchrun(model_dir, 1, "--dim", "16", "--epochs", "1", "--seed", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    reference = copy_model(vocab_dir, tmp_path / "process")
    train_model(reference, TrainConfig(dim=16, epochs=1, seed=5, threads=1))
    with open(os.path.join(model_dir, "embeddings.npy"), "rb") as first:
        with open(os.path.join(reference, "embeddings.npy"), "rb") as second:
            assert first.read() == second.read()


def stopped_torchrun(model_dir, options, stop=None):
    """Start 2 ranks with `options` and call `stop(process)` once they train.

    The default stop sends SIGTERM to every process. Returns (torchrun's exit code, the
    rest of its stderr).
    """
    process = subprocess.Popen(torchrun_command(model_dir, 2, *options), env=loopback_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # Rank 0 prints this line once the ranks have met and installed their signal handlers.
        started = time.time()
        for line in process.stderr:
            if "training on 2 ranks" in line or time.time() - started > 120:
                break
        if stop is None:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            stop(process)
        rest = process.stderr.read()
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, rest


STOPPED_RUN = ["--dim", "16", "--epochs", "8", "--sync-tokens", str(SYNC_TOKENS)]


def test_interrupted_ranks_resume(vocab_dir, tmp_path):
    model_dir = copy_model(vocab_dir, tmp_path / "resume")
    returncode, rest = stopped_torchrun(model_dir, STOPPED_RUN)
    assert returncode != 0
    assert rest.count("checkpoint saved") == 1, rest[-3000:]
    assert "rank 1 stopped by SIGTERM" in rest
    with open(os.path.join(model_dir, "checkpoint.json"), encoding="utf-8") as handle:
        state = json.load(handle)
    assert state["workers"] == 2
    assert state["distributed"]["sync_tokens"] == SYNC_TOKENS
    info = subprocess.run([sys.executable, "-m", "embcli", "info", "-m", model_dir], capture_output=True, text=True,
                          timeout=60).stdout
    assert f"(continue with: torchrun with 2 ranks in all and embcli train --resume -m {model_dir})" in info
    assert not os.path.exists(os.path.join(model_dir, "embeddings.npy"))

    with open(os.path.join(model_dir, "meta.json"), encoding="utf-8") as handle:
        meta = json.load(handle)
    vocab_size = meta["vocab"]["size"]
    with pytest.raises(ModelCorrupt, match="saved by 2 workers but this run has 1 rank"):
        load_checkpoint(model_dir, meta, TrainConfig(), vocab_size, 1, SYNC_TOKENS)

    # Resumed without torchrun, the 2 ranks go on as 2 worker processes, with a warning.
    elsewhere = copy_model(model_dir, tmp_path / "without-torchrun")
    plain = subprocess.run([sys.executable, "-m", "embcli", "train", "-m", elsewhere, "--resume"],
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "checkpointed by a torchrun run of 2 ranks" in plain.stderr
    assert embcli.load(elsewhere).dim == 16

    resumed = torchrun(model_dir, 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpointed by" not in resumed.stderr
    assert "checkpoint.json" not in os.listdir(model_dir)
    model = embcli.load(model_dir)
    assert model.dim == 16
    assert model.meta["training"]["settings"]["epochs"] == 8
    # The summary and meta.json count the words of all 8 epochs, before and after the resume.
    whole_run = 8 * meta["vocab"]["tokens_covered"]
    assert model.meta["training"]["stats"]["words"] == pytest.approx(whole_run, rel=0.02)
    assert model.meta["training"]["stats"]["words"] > state["words_done"]
    per_epoch = model.meta["training"]["stats"]["words"] // 8
    assert f"trained 8 epochs over {per_epoch:,} words on 2 ranks in" in resumed.stderr
    # The ranks stopped at a synchronization point, so both parts together synchronize as
    # often as planned, and end as a run without the stop does.
    planned = int(re.search(r"training on 2 ranks \(gloo\), (\d+) synchronizations", resumed.stderr).group(1))
    assert model.meta["training"]["distributed"]["synchronizations"] == planned
    whole = copy_model(vocab_dir, tmp_path / "whole")
    uninterrupted = torchrun(whole, 2, *STOPPED_RUN)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    reference = embcli.load(whole)
    assert np.array_equal(np.asarray(model.matrix), np.asarray(reference.matrix))
    assert model.meta["training"]["stats"]["final_loss"] == reference.meta["training"]["stats"]["final_loss"]


def test_interrupted_subword_ranks_resume(vocab_dir, tmp_path):
    model_dir = copy_model(vocab_dir, tmp_path / "resume")
    returncode, rest = stopped_torchrun(model_dir, [*STOPPED_RUN, "--subwords", "3-6", "--buckets", "20000"])
    assert returncode != 0
    assert rest.count("checkpoint saved") == 1, rest[-3000:]
    resumed = torchrun(model_dir, 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint.json" not in os.listdir(model_dir)
    model = embcli.load(model_dir)
    assert model.meta["subwords"]["buckets"] == 20000
    assert np.isfinite(model.vector("tabernacles")).all()


def rank_process(model_dir, rank):
    """Return the pid of torchrun's rank `rank` that trains `model_dir`, or None."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().split(b"\0")
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environment = handle.read().split(b"\0")
        except OSError:
            continue
        if model_dir.encode() in command and b"embcli" in command and f"RANK={rank}".encode() in environment:
            return int(entry)
    return None


def test_killed_rank_checkpoint_counts_words(vocab_dir, tmp_path):
    model_dir = copy_model(vocab_dir, tmp_path / "killed")
    # Short chunks, so that the ranks are most likely inside an epoch when one is killed.
    sync_tokens = 2048

    def kill_rank_1(process):
        time.sleep(2.0)
        os.kill(rank_process(model_dir, 1), signal.SIGKILL)

    _, rest = stopped_torchrun(model_dir, ["--dim", "8", "--epochs", "40", "--sync-tokens", str(sync_tokens)],
                               kill_rank_1)
    assert "the ranks lost contact during training" in rest, rest[-3000:]
    with open(os.path.join(model_dir, "checkpoint.json"), encoding="utf-8") as handle:
        state = json.load(handle)
    with open(os.path.join(model_dir, "meta.json"), encoding="utf-8") as handle:
        per_epoch = json.load(handle)["vocab"]["tokens_covered"]
    # The checkpoint counts the words of the chunks its matrices contain: those before
    # each rank's position, within an epoch too.
    tokens = np.load(os.path.join(model_dir, "tokens.npy"))
    expected = 0
    for rank in range(2):
        begin, stop = slice_bounds(len(tokens), 2, rank)
        epoch, chunk = state["positions"][2 * rank : 2 * rank + 2]
        expected += epoch * int((tokens[begin:stop] != store.LINE_END).sum())
        for first in chunk_starts(begin, stop, sync_tokens)[:chunk]:
            expected += int((tokens[first : min(first + sync_tokens, stop)] != store.LINE_END).sum())
    assert 0 < state["words_done"] < 40 * per_epoch
    assert state["words_done"] == expected

    resumed = torchrun(model_dir, 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    words = embcli.load(model_dir).meta["training"]["stats"]["words"]
    assert words == pytest.approx(40 * per_epoch, rel=0.02)


def test_resumed_ranks_end_as_without_the_stop(vocab_dir, tmp_path):
    # 6 epochs of 5 chunks per rank: fewer than the 50 chunks of a loss window, so the final
    # loss averages every chunk of the run, before and after the stop.
    options = ["--dim", "8", "--epochs", "6", "--sync-tokens", "8192", "--checkpoint-every", "0.0001"]
    model_dir = copy_model(vocab_dir, tmp_path / "killed")
    checkpoint = os.path.join(model_dir, "checkpoint.json")

    def kill_at_first_checkpoint(process):
        # torchrun starts each rank in a process group of its own, so each is killed by its pid.
        ranks = [rank_process(model_dir, rank) for rank in (0, 1)]
        deadline = time.time() + 120
        while not os.path.exists(checkpoint) and process.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        for pid in ranks:
            os.kill(pid, signal.SIGKILL)

    stopped_torchrun(model_dir, options, kill_at_first_checkpoint)
    with open(checkpoint, encoding="utf-8") as handle:
        state = json.load(handle)
    assert len(state["distributed"]["loss_windows"]) == 2
    assert "embeddings.npy" not in os.listdir(model_dir)
    resumed = torchrun(model_dir, 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    # Periodic checkpoints hold the matrices, each rank's position and its recent losses as
    # of a synchronization, so the resumed run ends as a run without the kill does.
    whole = copy_model(vocab_dir, tmp_path / "whole")
    uninterrupted = torchrun(whole, 2, *options)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    model, reference = embcli.load(model_dir), embcli.load(whole)
    assert np.array_equal(np.asarray(model.matrix), np.asarray(reference.matrix))
    assert model.meta["training"]["stats"]["final_loss"] == reference.meta["training"]["stats"]["final_loss"]


def test_ranks_with_different_settings_stop(vocab_dir, tmp_path):
    model_dir = copy_model(vocab_dir, tmp_path / "mixed")
    port = str(free_port())
    nodes = []
    for node, options in ((0, ["--lr", "0.025", "--dim", "16"]), (1, ["--lr", "0.05", "--dim", "20"])):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
                   "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port,
                   "-m", "embcli", "train", "-m", model_dir, "--epochs", "1", *options]
        nodes.append(subprocess.Popen(command, env=loopback_env(), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    outputs = [node.communicate(timeout=180)[1] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode != 0
        assert "different training settings: dim, lr" in output, output[-3000:]
        # torchrun's summary shows embcli's message as the rank's failure.
        assert "traceback : embcli: error: " in output, output[-3000:]
        assert "To enable traceback see" not in output
    assert "(this rank has dim=16, lr=0.025); start every rank with the same embcli train options [--dim, --lr]" \
        in outputs[0]
    assert not os.path.exists(os.path.join(model_dir, "embeddings.npy"))


def test_worker_checkpoint_resumes_on_ranks(vocab_dir, tmp_path):
    """Worker processes take chunks from one queue; ranks resume from its first untrained chunk."""
    from embcli.errors import TrainingInterrupted

    model_dir = copy_model(vocab_dir, tmp_path / "workers")
    with pytest.raises(TrainingInterrupted):
        train_model(model_dir, TrainConfig(dim=16, epochs=40, threads=2, chunk_tokens=4096), progress=interrupt_after(2))
    with open(os.path.join(model_dir, "checkpoint.json"), encoding="utf-8") as handle:
        state = json.load(handle)
    assert state["chunk_dispatch"] == "tickets"
    assert state["positions"][:2] == state["positions"][2:]
    resumed = torchrun(model_dir, 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpointed by 'embcli train' with 2 worker processes" in resumed.stderr
    model = embcli.load(model_dir)
    whole_run = 40 * model.meta["vocab"]["tokens_covered"]
    # Chunks trained after the first untrained one are trained again: at most one per worker.
    assert whole_run <= model.meta["training"]["stats"]["words"] <= whole_run * 1.05


SYNC_CHECK = """
import sys
import numpy as np
import torch
import torch.distributed as dist
from embcli.distributed import Replicas

rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=rank, world_size=2)
first = torch.arange(12, dtype=torch.float32).view(6, 2)
second = torch.zeros(6, 2)
touched = [torch.zeros(6, dtype=torch.bool), torch.zeros(6, dtype=torch.bool)]
replicas = Replicas([first, second], touched)
# Rank 0 changes row 1 of the first matrix and rank 1 row 4; both change row 2 of the
# first matrix and row 5 of the second.
first[1 if rank == 0 else 4] += 10.0
first[2] += 1.0 + rank
second[5] -= 3.0
# The marks may include rows that did not change (row 0 here).
touched[0][[0, 2, 1 if rank == 0 else 4]] = True
touched[1][5] = True
replicas.synchronize()
assert not any(mask.any() for mask in touched)
np.save(sys.argv[3], np.stack([first.numpy(), replicas.base[0].numpy(), second.numpy()]))
dist.destroy_process_group()
"""


def test_synchronize_adds_every_rank_change(tmp_path):
    port = str(free_port())
    outputs = [str(tmp_path / f"rank{rank}.npy") for rank in (0, 1)]
    processes = [subprocess.Popen([sys.executable, "-c", SYNC_CHECK, str(rank), port, outputs[rank]],
                                  env=loopback_env(), stderr=subprocess.PIPE, text=True)
                 for rank in (0, 1)]
    for process in processes:
        _, errors = process.communicate(timeout=120)
        assert process.returncode == 0, errors[-2000:]
    expected_first = np.arange(12, dtype=np.float32).reshape(6, 2)
    expected_first[1] += 10.0
    expected_first[4] += 10.0
    expected_first[2] += 3.0
    expected_second = np.zeros((6, 2), dtype=np.float32)
    expected_second[5] = -6.0
    for output in outputs:
        first, base, second = np.load(output, allow_pickle=False)
        np.testing.assert_array_equal(first, expected_first)
        np.testing.assert_array_equal(base, expected_first)
        np.testing.assert_array_equal(second, expected_second)


@pytest.mark.parametrize("method,subwords", [("skipgram", False), ("cbow", False), ("skipgram", True),
                                             ("cbow", True)])
def test_tracking_trainer_marks_changed_rows(vocab_dir, method, subwords):
    meta = store.read_meta(vocab_dir)
    words, counts = store.read_vocab(vocab_dir, meta)
    corpus = _open_corpus(os.path.join(vocab_dir, store.TOKENS), counts)
    config = TrainConfig(method=method, dim=8, epochs=1, chunk_tokens=4096, seed=2, min_n=3 * subwords,
                         max_n=6 * subwords, buckets=5000)
    table = _subword_table(words, config)
    if subwords:
        input_vectors, output_vectors = init_subword_vectors(table, config.dim, config.seed)
    else:
        input_vectors, output_vectors = init_vectors(len(words), config.dim, config.seed)
    # Give the output rows values too, so that a change to any of them shows.
    output_vectors += 0.01
    before = [input_vectors.clone(), output_vectors.clone()]
    if subwords:
        trainer = TrackingSubwordTrainer(config, corpus, input_vectors, output_vectors, "cpu", worker=1, workers=2,
                                         table=table)
    else:
        trainer = TrackingTrainer(config, corpus, input_vectors, output_vectors, "cpu", worker=1, workers=2)
    chunks = []
    trainer.run(0, 0, lambda *_: chunks.append(1), lambda: len(chunks) >= 3)
    for matrix, previous, marks in zip((input_vectors, output_vectors), before, trainer.touched):
        changed = (matrix != previous).any(1)
        assert changed.any()
        assert not (changed & ~marks).any(), "a changed row is not marked"
        # The marks stay close to the changed rows, or synchronizing would send far more than needed.
        assert int(marks.sum()) <= 2 * int(changed.sum())


def test_two_ranks_train_subwords(vocab_dir, tmp_path):
    subwords = ["--subwords", "3-6", "--buckets", "20000"]
    model_dir = copy_model(vocab_dir, tmp_path / "two")
    result = torchrun(model_dir, 2, "--dim", "32", "--epochs", "3", "--seed", "3",
                      "--sync-tokens", str(SYNC_TOKENS), *subwords)
    assert result.returncode == 0, result.stderr[-3000:]
    model = embcli.load(model_dir)
    assert model.meta["subwords"]["buckets"] == 20000
    assert model.meta["training"]["distributed"]["world_size"] == 2

    references = []
    for seed in (3, 4):
        reference = copy_model(vocab_dir, tmp_path / f"one-seed{seed}")
        train_model(reference, TrainConfig(threads=1, chunk_tokens=SYNC_TOKENS, min_n=3, max_n=6, buckets=20000,
                                           **dict(SETTINGS, seed=seed)))
        references.append(embcli.load(reference))
    assert sorted(os.listdir(model_dir)) == sorted(os.listdir(references[0].path))
    words = references[0].words[20:120]
    baseline = neighbour_overlap(references[0], references[1], words)
    assert baseline > 0.3
    assert neighbour_overlap(references[0], model, words) >= 0.6 * baseline

    # A word outside the vocabulary gets its vector from n-gram rows that both ranks trained.
    assert "tabernacles" not in model.index
    assert "tabernacle" in [word for word, _ in model.neighbors("tabernacles", 5)]


@pytest.mark.parametrize("chunk_order", ["slices", "in-turn"])
def test_positions_at_sync_follow_chunk_order(tmp_path, chunk_order):
    import torch

    from embcli import train
    from embcli.distributed import positions_at_sync, sync_points

    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.zeros(1000, dtype=np.uint32))
    corpus = train.Corpus(str(tokens), np.ones(1, dtype=np.int64))
    config = train.TrainConfig(epochs=3, chunk_tokens=96, chunk_order=chunk_order)
    syncs = 4
    for index in range(syncs):
        positions = positions_at_sync(len(corpus), config, 2, syncs, index, [0] * 4)
        for rank in range(2):
            trainer = train._new_trainer(config, corpus, torch.zeros(1, 4), torch.zeros(1, 4),
                                         torch.device("cpu"), rank, 2, None)
            per_epoch = len(trainer.chunks)
            done = sync_points(config.epochs * per_epoch, syncs)[index]
            expected = [config.epochs, 0] if done >= config.epochs * per_epoch else list(divmod(done, per_epoch))
            assert positions[2 * rank : 2 * rank + 2] == expected, (index, rank)
