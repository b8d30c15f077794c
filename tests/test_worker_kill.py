"""SIGKILL of a Hogwild worker process or of the parent `embcli train`, then --resume.

The kernel's out-of-memory killer ends a process with SIGKILL at any moment. Each test
kills at a moment it observes (a worker process exists, a checkpoint file appears), never
after a sleep, so it behaves the same on an idle and on a busy machine.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from embcli import store
from embcli.model import Model
from embcli.tokenize import Tokenizer
from embcli.train import TrainConfig, train_model
from embcli.vocab import build_vocab

# 20 epochs of the small corpus take seconds, far longer than the 0.25 s between two
# polls of the parent, so every kill below lands while training runs.
TRAIN = [sys.executable, "-m", "embcli", "train", "--threads", "2", "--dim", "8", "--epochs", "20",
         "--seed", "3", "-q"]
# About every poll of the parent, so checkpoint.json appears soon after training starts.
FREQUENT_CHECKPOINTS = ["--checkpoint-every", "0.0001"]
TIMEOUT = 120


@pytest.fixture
def trained_dir(tmp_path, small_corpus):
    """A model directory with a vocabulary, a token cache and a first embeddings.npy."""
    model_dir = str(tmp_path / "model")
    build_vocab(model_dir, [small_corpus], Tokenizer(), min_count=3)
    train_model(model_dir, TrainConfig(dim=8, epochs=1, threads=1, seed=1))
    return model_dir


def file_bytes(model_dir, name):
    with open(os.path.join(model_dir, name), "rb") as handle:
        return handle.read()


def committed_files(model_dir):
    return {name: file_bytes(model_dir, name) for name in (store.VOCAB, store.TOKENS, store.EMBEDDINGS)}


def wait_until(condition, process, event):
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert process.poll() is None, f"embcli train ended (exit code {process.returncode}) before {event}"
        assert time.monotonic() < deadline, f"timed out waiting for {event}"
        time.sleep(0.005)


def worker_pids(process):
    return [child.pid for child in psutil.Process(process.pid).children()]


def wait_for_workers(process, count=2):
    wait_until(lambda: len(worker_pids(process)) >= count, process, "the worker processes to start")
    return worker_pids(process)


def wait_for_checkpoint(model_dir, process):
    path = os.path.join(model_dir, store.CHECKPOINT)
    wait_until(lambda: os.path.exists(path), process, "the first checkpoint")


def is_running(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids):
    """Wait until the processes `pids` have exited (orphans are reaped by init)."""
    deadline = time.monotonic() + TIMEOUT
    for pid in pids:
        while is_running(pid):
            assert time.monotonic() < deadline, f"process {pid} is still running"
            time.sleep(0.01)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "embcli", *args], capture_output=True, text=True,
                          timeout=TIMEOUT)


def assert_resumes_and_answers(model_dir, before, via_cli=False):
    """Check that resuming finishes the run and that the new model returns neighbors."""
    if via_cli:
        resumed = run_cli("train", "--resume", "-m", model_dir, "-q")
        assert resumed.returncode == 0, resumed.stderr
    else:
        # The settings given here are ignored: the checkpoint's are used.
        train_model(model_dir, TrainConfig(threads=1), resume=True)
    assert not set(os.listdir(model_dir)) & set(store.CHECKPOINT_FILES)
    assert file_bytes(model_dir, store.VOCAB) == before[store.VOCAB]
    assert file_bytes(model_dir, store.TOKENS) == before[store.TOKENS]
    assert file_bytes(model_dir, store.EMBEDDINGS) != before[store.EMBEDDINGS]
    training = Model.open(model_dir).meta["training"]
    assert training["resumed"] is True
    assert training["settings"]["epochs"] == 20
    neighbors = run_cli("neighbors", "-m", model_dir, "-k", "3", "god")
    assert neighbors.returncode == 0, neighbors.stderr
    assert len(neighbors.stdout.splitlines()) == 3


def assert_earlier_model_intact(model_dir, before):
    assert committed_files(model_dir) == before
    Model.open(model_dir)  # checks every file against the fingerprints in meta.json


@pytest.mark.parametrize("moment", ["at-start", "after-checkpoint"])
def test_killed_worker_saves_resumable_checkpoint(trained_dir, moment):
    before = committed_files(trained_dir)
    process = subprocess.Popen(TRAIN + FREQUENT_CHECKPOINTS + ["-m", trained_dir],
                               stderr=subprocess.PIPE, text=True)
    workers = wait_for_workers(process)
    if moment == "after-checkpoint":
        wait_for_checkpoint(trained_dir, process)
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = process.communicate(timeout=TIMEOUT)

    assert process.returncode == 1, stderr
    assert "was killed by SIGKILL" in stderr
    assert f"saved in {os.path.join(trained_dir, store.CHECKPOINT)}" in stderr
    assert f"continue with: embcli train --resume -m {trained_dir}" in stderr
    assert "Traceback" not in stderr
    wait_gone(workers)
    assert_earlier_model_intact(trained_dir, before)
    assert_resumes_and_answers(trained_dir, before)


def test_killed_parent_is_saved_by_worker(trained_dir):
    """Worker 0 saves the checkpoint that the killed parent cannot."""
    before = committed_files(trained_dir)
    # No periodic checkpoint, so a checkpoint can only come from the worker.
    process = subprocess.Popen(TRAIN + ["--checkpoint-every", "0", "-m", trained_dir])
    workers = wait_for_workers(process)
    process.kill()
    process.wait(timeout=TIMEOUT)
    # The orphaned workers notice that their parent is gone and stop after their chunk.
    wait_gone(workers)
    assert os.path.exists(os.path.join(trained_dir, store.CHECKPOINT))
    assert_earlier_model_intact(trained_dir, before)

    fresh = run_cli("train", "-m", trained_dir, "-q")
    assert fresh.returncode == 1
    assert "contains the state of an interrupted run" in fresh.stderr
    assert "--resume" in fresh.stderr
    assert_resumes_and_answers(trained_dir, before, via_cli=True)


def test_killed_worker_in_process_run(tmp_path, small_corpus):
    """train_model with worker processes: a killed worker raises TrainingError, then resume."""
    from embcli.errors import TrainingError

    model_dir = str(tmp_path / "model")
    build_vocab(model_dir, [small_corpus], Tokenizer(), min_count=3)
    settings = dict(dim=8, epochs=20, threads=2, seed=5, chunk_tokens=4096)

    def kill_a_worker(words, total, examples, loss, lr):
        # Called by the parent about four times a second while the workers run.
        children = psutil.Process().children()
        if children:
            os.kill(children[-1].pid, signal.SIGKILL)

    with pytest.raises(TrainingError, match="was killed by SIGKILL") as failed:
        train_model(model_dir, TrainConfig(**settings), progress=kill_a_worker)
    assert "continue with: embcli train --resume" in str(failed.value)
    assert not os.path.exists(os.path.join(model_dir, store.EMBEDDINGS))

    stats = train_model(model_dir, TrainConfig(threads=1), resume=True)
    assert stats.epochs_done == 20
    model = Model.open(model_dir)
    assert model.meta["training"]["workers"] == 2
    assert not set(os.listdir(model_dir)) & set(store.CHECKPOINT_FILES)


def torchrun_command(model_dir, *options):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
            "--master-addr", "127.0.0.1", "--master-port", str(port),
            "-m", "embcli", "train", "-m", model_dir, *options]


def test_killed_rank_saves_last_synchronization(trained_dir):
    """torchrun: rank 0 saves the replicas of the last synchronization when rank 1 dies."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    command = torchrun_command(trained_dir, "--dim", "8", "--epochs", "8", "--sync-tokens", "16384",
                               *FREQUENT_CHECKPOINTS)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        ranks = wait_for_workers(process)
        # Rank 0 saves a checkpoint after each synchronization: one has completed.
        wait_for_checkpoint(trained_dir, process)
        rank_1 = next(pid for pid in ranks if psutil.Process(pid).environ().get("RANK") == "1")
        os.kill(rank_1, signal.SIGKILL)
        _, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert "the ranks lost contact during training" in stderr
    assert f"the work up to the last synchronization is saved in {trained_dir}/checkpoint.json" in stderr
    assert not os.path.exists(os.path.join(trained_dir, store.JOURNAL))

    resumed = subprocess.run(torchrun_command(trained_dir, "--resume"), env=env, capture_output=True,
                             text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not set(os.listdir(trained_dir)) & set(store.CHECKPOINT_FILES)
    model = Model.open(trained_dir)
    assert model.meta["training"]["settings"]["epochs"] == 8
    assert model.meta["training"]["resumed"] is True
