import os
import signal
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
# ../shared beside the repository (CI lays it there), or in any folder above it.
SHARED = next(
    (parent / "shared" for parent in Path(__file__).resolve().parents if (parent / "shared" / "data").is_dir()),
    Path(__file__).resolve().parents[2] / "shared",
)


@pytest.fixture(autouse=True)
def isolated_model_dir(tmp_path, monkeypatch):
    """Run each test in its own directory, with no model chosen by the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EMBCLI_MODEL", raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    yield


@pytest.fixture
def small_corpus():
    """3,000 verses of the King James Bible (about 90 k tokens)."""
    return str(DATA / "kjv_small.txt")


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory):
    """A small skip-gram model trained once on kjv_small.txt, shared by read-only tests."""
    from embcli.tokenize import Tokenizer
    from embcli.train import TrainConfig, train_model
    from embcli.vocab import build_vocab

    model_dir = str(tmp_path_factory.mktemp("model") / "kjv")
    build_vocab(model_dir, [str(DATA / "kjv_small.txt")], Tokenizer(), min_count=3)
    train_model(model_dir, TrainConfig(dim=32, epochs=3, threads=1, seed=3))
    return model_dir


def interrupt_after(reports, signum=signal.SIGINT):
    """Return a progress callback that sends `signum` to this process at report number `reports`."""
    calls = [0]

    def progress(words, total, examples, loss, lr):
        calls[0] += 1
        if calls[0] == reports:
            os.kill(os.getpid(), signum)

    return progress
