"""Interrupted training: checkpoints, resuming, reproducibility, and SIGKILL at any moment."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from embcli import store
from embcli.errors import TrainingInterrupted
from embcli.model import Model
from embcli.tokenize import Tokenizer
from embcli.train import TrainConfig, train_model
from embcli.vocab import build_vocab

from conftest import interrupt_after

# Small chunks, so that the small corpus spans many chunks and a stop lands mid-epoch.
SETTINGS = dict(dim=12, epochs=2, threads=1, seed=5, chunk_tokens=4096)


@pytest.fixture
def vocab_dir(tmp_path, small_corpus):
    model_dir = str(tmp_path / "model")
    build_vocab(model_dir, [small_corpus], Tokenizer(), min_count=3)
    return model_dir


def copy_model(source, target):
    shutil.copytree(source, target)
    return target


def embeddings_bytes(model_dir):
    with open(os.path.join(model_dir, "embeddings.npy"), "rb") as handle:
        return handle.read()


def test_one_thread_runs_are_byte_identical(vocab_dir, tmp_path):
    other = copy_model(vocab_dir, str(tmp_path / "other"))
    train_model(vocab_dir, TrainConfig(**SETTINGS))
    train_model(other, TrainConfig(**SETTINGS))
    assert embeddings_bytes(vocab_dir) == embeddings_bytes(other)
    training = store.read_meta(vocab_dir)["training"]
    assert training["reproducible"] is True
    assert training["settings"]["seed"] == 5
    assert training["settings"]["threads"] == 1
    for key in ("torch_version", "numpy_version", "python_version", "device", "corpus"):
        assert training[key]


@pytest.mark.parametrize(("reports", "signum"), [(1, signal.SIGINT), (5, signal.SIGTERM)],
                         ids=["SIGINT-early", "SIGTERM-later"])
def test_resume_matches_uninterrupted_run(vocab_dir, tmp_path, reports, signum):
    reference = copy_model(vocab_dir, str(tmp_path / "reference"))
    reference_stats = train_model(reference, TrainConfig(**SETTINGS))

    with pytest.raises(TrainingInterrupted) as stopped:
        train_model(vocab_dir, TrainConfig(**SETTINGS), progress=interrupt_after(reports, signum))
    assert stopped.value.exit_code == 128 + signum
    assert stopped.value.checkpoint == os.path.join(vocab_dir, "checkpoint.json")
    assert not os.path.exists(os.path.join(vocab_dir, "embeddings.npy"))

    # Settings given on resume are ignored: the checkpoint's are used.
    stats = train_model(vocab_dir, TrainConfig(dim=99, epochs=9, threads=1, seed=77), resume=True)
    assert stats.epochs_done == 2
    assert embeddings_bytes(vocab_dir) == embeddings_bytes(reference)
    # The loss of the last chunks includes those trained before the stop.
    assert stats.final_loss == reference_stats.final_loss
    remaining = set(os.listdir(vocab_dir))
    assert not remaining & set(store.CHECKPOINT_FILES)
    assert store.read_meta(vocab_dir)["training"]["resumed"] is True


def test_resume_twice_interrupted(vocab_dir, tmp_path):
    reference = copy_model(vocab_dir, str(tmp_path / "reference"))
    train_model(reference, TrainConfig(**SETTINGS))
    with pytest.raises(TrainingInterrupted):
        train_model(vocab_dir, TrainConfig(**SETTINGS), progress=interrupt_after(2, signal.SIGINT))
    with pytest.raises(TrainingInterrupted):
        train_model(vocab_dir, TrainConfig(**SETTINGS), resume=True,
                    progress=interrupt_after(3, signal.SIGINT))
    train_model(vocab_dir, TrainConfig(**SETTINGS), resume=True)
    assert embeddings_bytes(vocab_dir) == embeddings_bytes(reference)


def test_resume_keeps_corpus_given_to_train(vocab_dir, tmp_path, small_corpus):
    # A corpus passed to train is encoded for that run only; the checkpoint keeps it.
    part = tmp_path / "part.txt"
    part.write_text("".join(open(small_corpus, encoding="utf-8").readlines()[:1500]), encoding="utf-8")
    reference = copy_model(vocab_dir, str(tmp_path / "reference"))
    train_model(reference, TrainConfig(**SETTINGS), corpus_paths=[str(part)])
    with pytest.raises(TrainingInterrupted):
        train_model(vocab_dir, TrainConfig(**SETTINGS), corpus_paths=[str(part)],
                    progress=interrupt_after(2, signal.SIGINT))
    assert os.path.exists(os.path.join(vocab_dir, store.CHECKPOINT_TOKENS))
    train_model(vocab_dir, TrainConfig(**SETTINGS), resume=True)
    assert embeddings_bytes(vocab_dir) == embeddings_bytes(reference)
    tokens = os.path.join(vocab_dir, "tokens.npy")
    assert open(tokens, "rb").read() == open(os.path.join(reference, "tokens.npy"), "rb").read()
    assert not os.path.exists(os.path.join(vocab_dir, store.CHECKPOINT_TOKENS))
    Model.open(vocab_dir)


def test_resume_without_checkpoint_is_clear(vocab_dir):
    from embcli.errors import ModelNotFound

    with pytest.raises(ModelNotFound, match="no checkpoint to resume from"):
        train_model(vocab_dir, TrainConfig(**SETTINGS), resume=True)


def test_resume_rejects_damaged_checkpoint(vocab_dir):
    from embcli.errors import ModelCorrupt

    with pytest.raises(TrainingInterrupted):
        train_model(vocab_dir, TrainConfig(**SETTINGS), progress=interrupt_after(1, signal.SIGINT))
    path = os.path.join(vocab_dir, "checkpoint-input.npy")
    data = bytearray(open(path, "rb").read())
    data[200:204] = b"\x00\x00\xc0\x7f"  # a NaN written over one value
    open(path, "wb").write(bytes(data))
    with pytest.raises(ModelCorrupt, match="does not match checkpoint.json"):
        train_model(vocab_dir, TrainConfig(**SETTINGS), resume=True)


def test_build_vocab_refuses_to_orphan_checkpoint(vocab_dir, small_corpus):
    from embcli.errors import EmbcliError

    with pytest.raises(TrainingInterrupted):
        train_model(vocab_dir, TrainConfig(**SETTINGS), progress=interrupt_after(1, signal.SIGINT))
    with pytest.raises(EmbcliError, match="already contains a training checkpoint"):
        build_vocab(vocab_dir, [small_corpus], Tokenizer(), min_count=3)
    build_vocab(vocab_dir, [small_corpus], Tokenizer(), min_count=4, replace_embeddings=True)
    assert not set(os.listdir(vocab_dir)) & set(store.CHECKPOINT_FILES)


def test_second_writer_is_rejected(vocab_dir, small_corpus):
    from embcli.errors import ModelBusy

    with store.writer_lock(vocab_dir):
        with pytest.raises(ModelBusy, match="being written by another embcli process"):
            train_model(vocab_dir, TrainConfig(**SETTINGS))


TRAIN_COMMAND = [sys.executable, "-m", "embcli", "train", "--threads", "1", "--dim", "12",
                 "--epochs", "2", "--seed", "9", "-q"]


def wait_for_lock(model_dir, process, timeout=60):
    """Return once `process` holds the write lock of `model_dir` (it has started work)."""
    import fcntl

    deadline = time.monotonic() + timeout
    fd = os.open(os.path.join(model_dir, store.LOCK), os.O_RDONLY)
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                return
            time.sleep(0.01)
    finally:
        os.close(fd)


def test_sigkill_at_random_moments_leaves_whole_model(vocab_dir, tmp_path):
    """Kill `embcli train` with SIGKILL at random moments; the model is always whole.

    The directory holds model A (seed 5). Each run trains model B (seed 9) in a
    subprocess, killed at a random moment between taking the write lock and a little
    after the time a whole run takes, so kills land in loading, training and saving.
    Afterwards the directory must open as exactly A or exactly B, never a mix, and the
    metadata must describe the matrix it holds.
    """
    train_model(vocab_dir, TrainConfig(**SETTINGS))
    model_a = embeddings_bytes(vocab_dir)
    vocab = open(os.path.join(vocab_dir, "vocab.tsv"), "rb").read()

    # B, trained to the end in this process: one thread makes it the subprocess's result.
    expected_b = copy_model(vocab_dir, str(tmp_path / "b"))
    started = time.monotonic()
    train_model(expected_b, TrainConfig(dim=12, epochs=2, threads=1, seed=9))  # as TRAIN_COMMAND
    duration = time.monotonic() - started
    model_b = embeddings_bytes(expected_b)
    assert model_b != model_a

    saved_a = copy_model(vocab_dir, str(tmp_path / "a"))
    generator = random.Random(1234)
    for attempt in range(3):
        shutil.rmtree(vocab_dir)
        copy_model(saved_a, vocab_dir)
        process = subprocess.Popen(TRAIN_COMMAND + ["-m", vocab_dir])
        wait_for_lock(vocab_dir, process)
        time.sleep(generator.uniform(0, 1.5 * duration))
        process.kill()
        process.wait(timeout=30)

        model = Model.open(vocab_dir)  # completes a commit that the kill cut short
        assert not os.path.exists(os.path.join(vocab_dir, store.JOURNAL))
        matrix = embeddings_bytes(vocab_dir)
        assert matrix in (model_a, model_b), f"attempt {attempt}: a matrix from neither run"
        seed = model.meta["training"]["settings"]["seed"]
        assert seed == (5 if matrix == model_a else 9), f"attempt {attempt}: metadata of another run"
        assert open(os.path.join(vocab_dir, "vocab.tsv"), "rb").read() == vocab
    # The next writer removes the temporary files that killed runs left.
    train_model(vocab_dir, TrainConfig(**SETTINGS))
    assert not [name for name in os.listdir(vocab_dir) if name.startswith(store.TMP_PREFIX)]


def test_fresh_run_keeps_checkpoint_unless_forced(vocab_dir):
    from embcli.errors import EmbcliError

    with pytest.raises(TrainingInterrupted):
        train_model(vocab_dir, TrainConfig(**SETTINGS), progress=interrupt_after(1, signal.SIGINT))
    with pytest.raises(EmbcliError, match="contains the state of an interrupted run") as refused:
        train_model(vocab_dir, TrainConfig(**SETTINGS))
    assert refused.value.options == ("resume", "force")
    assert os.path.exists(os.path.join(vocab_dir, "checkpoint.json"))
    train_model(vocab_dir, TrainConfig(**SETTINGS), discard_checkpoint=True)
    assert not set(os.listdir(vocab_dir)) & set(store.CHECKPOINT_FILES)


def test_sigkill_after_periodic_checkpoint_resumes(vocab_dir, tmp_path):
    """A run killed with SIGKILL resumes from its last periodic checkpoint, bytes intact."""
    settings = dict(dim=12, epochs=6, threads=1, seed=9)
    reference = copy_model(vocab_dir, str(tmp_path / "reference"))
    train_model(reference, TrainConfig(**settings))

    command = [sys.executable, "-m", "embcli", "train", "-m", vocab_dir, "--threads", "1",
               "--dim", "12", "--epochs", "6", "--seed", "9", "-q",
               "--checkpoint-every", "0.0001"]  # about every chunk
    process = subprocess.Popen(command)
    checkpoint = os.path.join(vocab_dir, "checkpoint.json")
    deadline = time.monotonic() + 120
    while not os.path.exists(checkpoint) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.kill()
    process.wait(timeout=30)
    assert not os.path.exists(os.path.join(vocab_dir, "embeddings.npy")), "the run ended first"

    train_model(vocab_dir, TrainConfig(**settings), resume=True)
    assert embeddings_bytes(vocab_dir) == embeddings_bytes(reference)


def test_worker_processes_interrupt_and_resume(vocab_dir):
    """Two Hogwild workers: SIGINT saves both positions, and --resume finishes the run."""
    import json

    # Forked workers start at once and progress is polled every 0.25 s: on an idle machine
    # 20 epochs ended before the second poll, so stop at the first one, with 40 epochs.
    settings = dict(dim=8, epochs=40, threads=2, seed=5, chunk_tokens=4096)
    with pytest.raises(TrainingInterrupted) as stopped:
        train_model(vocab_dir, TrainConfig(**settings), progress=interrupt_after(1, signal.SIGINT))
    assert stopped.value.exit_code == 130
    state = json.load(open(os.path.join(vocab_dir, "checkpoint.json")))
    assert state["workers"] == 2
    assert len(state["positions"]) == 4

    stats = train_model(vocab_dir, TrainConfig(threads=1), resume=True)
    assert stats.epochs_done == 40
    training = store.read_meta(vocab_dir)["training"]
    assert training["workers"] == 2
    assert training["reproducible"] is False
    matrix = np.load(os.path.join(vocab_dir, "embeddings.npy"), allow_pickle=False)
    assert matrix.shape[1] == 8
    assert np.isfinite(matrix).all()
    assert not set(os.listdir(vocab_dir)) & set(store.CHECKPOINT_FILES)


def test_resume_warns_about_ignored_settings(vocab_dir):
    command = [sys.executable, "-m", "embcli", "train", "-m", vocab_dir, "--resume", "--epochs", "3", "--dim=20"]
    # Without a checkpoint, the missing checkpoint is the only message.
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1
    assert "no checkpoint to resume from" in result.stderr
    assert "ignoring" not in result.stderr
    with pytest.raises(TrainingInterrupted):
        train_model(vocab_dir, TrainConfig(**SETTINGS), progress=interrupt_after(1, signal.SIGINT))
    both = subprocess.run([*command, "--force"], capture_output=True, text=True)
    assert both.returncode == 2
    assert "give one of them" in both.stderr
    # The values that the checkpoint has give no warning, as when the same command runs again.
    again = str(shutil.copytree(vocab_dir, os.path.join(os.path.dirname(vocab_dir), "again")))
    same = subprocess.run([*command[:4], "-m", again, "--resume", "--epochs", str(SETTINGS["epochs"]),
                           f"--dim={SETTINGS['dim']}", f"--seed={SETTINGS['seed']}"], capture_output=True, text=True)
    assert same.returncode == 0, same.stderr
    assert "ignoring" not in same.stderr
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "ignoring --dim, --epochs" in result.stderr
    assert "torchrun" not in result.stderr


def test_failed_periodic_checkpoint_lets_training_finish(tmp_path, small_corpus):
    """A checkpoint that cannot be written (here: a per-file size limit that the input
    matrix of a subword run exceeds, but no file of the model does) is a warning."""
    import resource

    from embcli import subwords

    model_dir = str(tmp_path / "model")
    build_vocab(model_dir, [small_corpus], Tokenizer(), min_count=3)
    words = [line.split("\t")[0] for line in open(os.path.join(model_dir, store.VOCAB), encoding="utf-8")]
    table = subwords.SubwordTable.build(words, 3, 6, 100_000)
    row_bytes = 16 * 4
    largest_model_file = max(table.vocab_size, table.input_rows - table.vocab_size) * row_bytes
    limit = (largest_model_file + table.input_rows * row_bytes) // 2
    assert largest_model_file + 4096 < limit < table.input_rows * row_bytes

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of ending the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [sys.executable, "-m", "embcli", "train", "-m", model_dir, "--subwords", "3-6", "--buckets", "100000",
         "--dim", "16", "--epochs", "3", "--threads", "1", "--checkpoint-every", "0.0001"],
        capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size)
    assert result.returncode == 0, result.stderr
    assert "warning: could not save a checkpoint" in result.stderr
    assert Model.open(model_dir).dim == 16
    assert not [name for name in os.listdir(model_dir) if name.startswith(".tmp-") or name.startswith("checkpoint")]


def test_full_shared_memory_is_named(tmp_path, small_corpus):
    """Worker processes share the vectors through /dev/shm; a file there that cannot grow
    (here: a per-file size limit below one matrix) is a user-facing error."""
    import resource

    model_dir = str(tmp_path / "model")
    build_vocab(model_dir, [small_corpus], Tokenizer(), min_count=3)
    limit = 64 * 1024  # below one 1,698 x 32 float32 matrix

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run([sys.executable, "-m", "embcli", "train", "-m", model_dir, "--dim", "32", "--threads", "2"],
                            capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size)
    assert result.returncode == 1
    assert "/dev/shm" in result.stderr
    assert "[--threads]" in result.stderr
    assert "internal error" not in result.stderr


@pytest.mark.parametrize("edit, message", [({"dim": 60}, "gives dim 60"), ({"positions": [5, 0]}, "lie outside")])
def test_edited_checkpoint_rejected(vocab_dir, edit, message):
    import json

    from embcli.errors import ModelCorrupt

    with pytest.raises(TrainingInterrupted):
        train_model(vocab_dir, TrainConfig(**SETTINGS), progress=interrupt_after(1, signal.SIGINT))
    path = os.path.join(vocab_dir, "checkpoint.json")
    state = json.load(open(path, encoding="utf-8"))
    if "dim" in edit:
        state["config"]["dim"] = edit["dim"]
    else:
        state["positions"][:2] = edit["positions"]
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(state, handle)
    with pytest.raises(ModelCorrupt, match=message):
        train_model(vocab_dir, TrainConfig(**SETTINGS), resume=True)


@pytest.mark.parametrize("late_signal", ["KeyboardInterrupt", "Terminated"])
def test_signal_after_save_exits_zero(vocab_dir, tmp_path, monkeypatch, late_signal):
    # Ctrl-C or SIGTERM just after the commit, before train_model returns, as the interpreter delivers it.
    from typer.testing import CliRunner

    from embcli import cli, train

    model_dir = str(tmp_path / "late")
    shutil.copytree(vocab_dir, model_dir)
    real_train_model = train.train_model
    raised = {"KeyboardInterrupt": KeyboardInterrupt, "Terminated": cli.Terminated}[late_signal]

    def train_then_signal(*args, **kwargs):
        real_train_model(*args, **kwargs)
        raise raised()

    monkeypatch.setattr(train, "train_model", train_then_signal)
    result = CliRunner().invoke(cli.app, ["train", "-m", model_dir, "--epochs", "1", "--dim", "8", "--threads", "1"])
    assert result.exit_code == 0, result.stderr
    assert "saved" in result.stderr
    assert "trained 1 epoch" in result.stderr

    # Before the commit, the same signal still stops the run with its exit code.
    def signal_at_once(*args, **kwargs):
        raise raised()

    monkeypatch.setattr(train, "train_model", signal_at_once)
    result = CliRunner().invoke(cli.app, ["train", "-m", model_dir, "--epochs", "1", "--dim", "8", "--threads", "1"])
    assert result.exit_code == {"KeyboardInterrupt": 130, "Terminated": 143}[late_signal]


@pytest.mark.parametrize("threads, epochs", [(1, 2), (2, 40)])
def test_ignored_sigint_stays_ignored(vocab_dir, threads, epochs):
    """A shell starts a background job without job control with SIGINT ignored."""
    # Two workers report their progress every 0.25 s, so they get 40 epochs to run.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stats = train_model(vocab_dir, TrainConfig(**dict(SETTINGS, threads=threads, epochs=epochs)),
                            progress=interrupt_after(1, signal.SIGINT))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stats.epochs_done == epochs
    assert os.path.exists(os.path.join(vocab_dir, "embeddings.npy"))
    assert not os.path.exists(os.path.join(vocab_dir, "checkpoint.json"))


def test_stop_message_counts_one_epoch(vocab_dir):
    with pytest.raises(TrainingInterrupted) as stopped:
        train_model(vocab_dir, TrainConfig(**dict(SETTINGS, epochs=1)), progress=interrupt_after(1))
    assert " of 1 epoch; " in str(stopped.value)
