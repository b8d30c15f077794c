"""Bad corpora that embedding tools are known to mishandle, run through the CLI.

Each test reads its input from tests/data/cases/<case>/ and checks what embcli must do:
the right vocabulary, or an error that names the cause, exit code 1, no traceback and
nothing written.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from embcli import store
from embcli.cli import app

from conftest import DATA

CASES = DATA / "cases"
runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, [str(arg) for arg in args], input=input)


def vocab_of(model_dir="embcli-model"):
    """Return {word: count} from the model's vocab.tsv, checking its line format."""
    counts = {}
    with open(os.path.join(model_dir, "vocab.tsv"), "rb") as handle:
        data = handle.read()
    assert b"\r" not in data
    for line in data.decode("utf-8").split("\n")[:-1]:
        word, count = line.split("\t")
        assert word and word == word.strip()
        counts[word] = int(count)
    return counts


def assert_clean_error(result):
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith("embcli: error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_non_utf8_corpus_error_names_place():
    corpus = CASES / "02-non-utf8-corpus" / "corpus.txt"
    result = invoke("build-vocab", corpus, "--min-count", "1")
    assert_clean_error(result)
    assert "corpus.txt: line 2, byte offset 24: invalid UTF-8" in result.stderr
    assert "0xe9" in result.stderr
    assert "--encoding" in result.stderr
    assert "--decode-errors replace" in result.stderr
    assert not os.path.exists("embcli-model")


@pytest.mark.parametrize(
    ("options", "word"),
    [(["--encoding", "latin-1"], "café"), (["--encoding", "cp1252"], "café"),
     (["--decode-errors", "replace"], "caf\ufffd")],
)
def test_non_utf8_corpus_decoded_on_request(options, word):
    corpus = CASES / "02-non-utf8-corpus" / "corpus.txt"
    result = invoke("build-vocab", corpus, "--min-count", "1", *options)
    assert result.exit_code == 0, result.stderr
    counts = vocab_of()
    # U+FFFD stays inside its word, so the damaged word never merges with "caf".
    assert counts[word] == 1
    assert "caf" not in counts
    assert counts["the"] == 3
    assert counts["sleeps"] == 1
    assert counts["runs"] == 1


def test_non_utf8_corpus_whitespace_tokenizer_keeps_replacement():
    corpus = CASES / "02-non-utf8-corpus" / "corpus.txt"
    result = invoke("build-vocab", corpus, "--min-count", "1", "--decode-errors", "replace",
                    "--tokenizer", "whitespace")
    assert result.exit_code == 0, result.stderr
    assert vocab_of()["caf\ufffd"] == 1


def test_bom_is_dropped_from_first_word():
    result = invoke("build-vocab", CASES / "04-bom-corpus" / "corpus.txt", "--min-count", "1")
    assert result.exit_code == 0, result.stderr
    assert vocab_of() == {"the": 2, "sat": 2, "cat": 1, "dog": 1}
    result = invoke("train", "--dim", "8", "--epochs", "2", "--threads", "1", "--sample", "0", "-q")
    assert result.exit_code == 0, result.stderr
    result = invoke("lookup", "the")
    assert result.exit_code == 0
    assert result.stdout.split("\t")[0] == "the"


def test_crlf_corpus_has_no_carriage_returns():
    result = invoke("build-vocab", CASES / "05-crlf-line-endings" / "corpus.txt", "--min-count", "1")
    assert result.exit_code == 0, result.stderr
    assert vocab_of() == {"apple": 2, "red": 2, "car": 1, "green": 1}
    meta = store.read_meta("embcli-model")
    assert meta["corpus"]["lines"] == 3
    # Three lines, so three line-end markers in the token cache.
    tokens = np.load("embcli-model/tokens.npy", allow_pickle=False)
    assert int((tokens == store.LINE_END).sum()) == 3


def test_lone_cr_ends_lines(tmp_path):
    corpus = tmp_path / "cr.txt"
    corpus.write_bytes(b"red apple\rgreen apple\rred car\r")
    result = invoke("build-vocab", corpus, "--min-count", "1")
    assert result.exit_code == 0, result.stderr
    assert vocab_of() == {"apple": 2, "red": 2, "car": 1, "green": 1}
    assert store.read_meta("embcli-model")["corpus"]["lines"] == 3


@pytest.mark.parametrize("tokenizer", ["default", "whitespace"])
def test_unicode_whitespace_separates_tokens(tokenizer):
    corpus = CASES / "06-unicode-whitespace-in-corpus" / "corpus.txt"
    result = invoke("build-vocab", corpus, "--min-count", "1", "--tokenizer", tokenizer)
    assert result.exit_code == 0, result.stderr
    counts = vocab_of()
    expected = {"new", "york", "is", "big", "hello", "world", "again", "zerowidth", "joiner",
                "tab", "here"}
    assert set(counts) == expected
    for word in counts:
        assert not any(ch.isspace() or ch in "\u200b\u00a0\u2009" for ch in word)


def test_unicode_whitespace_query_uses_same_rule():
    corpus = CASES / "06-unicode-whitespace-in-corpus" / "corpus.txt"
    assert invoke("build-vocab", corpus, "--min-count", "1").exit_code == 0
    result = invoke("train", "--dim", "8", "--epochs", "2", "--threads", "1", "--sample", "0", "-q")
    assert result.exit_code == 0, result.stderr
    zero_width = invoke("lookup", "zero\u200bwidth")
    plain = invoke("lookup", "zerowidth")
    assert zero_width.exit_code == 0, zero_width.stderr
    assert zero_width.stdout.split("\t")[1:] == plain.stdout.split("\t")[1:]


@pytest.mark.parametrize("name", ["empty.txt", "blank_lines.txt"])
def test_empty_corpus_writes_nothing(name):
    result = invoke("build-vocab", CASES / "15-empty-corpus" / name)
    assert_clean_error(result)
    assert name in result.stderr
    assert "contains no tokens" in result.stderr
    assert not os.path.exists("embcli-model")


def test_empty_corpus_keeps_existing_model(small_corpus):
    assert invoke("build-vocab", small_corpus, "--min-count", "3").exit_code == 0
    before = {name: open(f"embcli-model/{name}", "rb").read() for name in ("vocab.tsv", "meta.json")}
    result = invoke("build-vocab", CASES / "15-empty-corpus" / "empty.txt")
    assert_clean_error(result)
    after = {name: open(f"embcli-model/{name}", "rb").read() for name in ("vocab.tsv", "meta.json")}
    assert after == before
    assert sorted(os.listdir("embcli-model")) == [".lock", "meta.json", "tokens.npy", "vocab.tsv"]


def test_train_on_empty_corpus_is_clean_error(small_corpus):
    assert invoke("build-vocab", small_corpus, "--min-count", "3").exit_code == 0
    result = invoke("train", CASES / "15-empty-corpus" / "blank_lines.txt", "--threads", "1")
    assert_clean_error(result)
    assert "blank_lines.txt contains no word of the vocabulary" in result.stderr
    assert not os.path.exists("embcli-model/embeddings.npy")


def test_all_below_min_count_names_threshold():
    corpus = CASES / "16-all-below-min-count" / "corpus.txt"
    result = invoke("build-vocab", corpus)
    assert_clean_error(result)
    assert "0 of 9 distinct words occur at least 5 times" in result.stderr
    assert "--min-count" in result.stderr
    assert not os.path.exists("embcli-model")
    result = invoke("build-vocab", corpus, "--min-count", "1")
    assert result.exit_code == 0
    assert len(vocab_of()) == 9


def test_large_drop_by_min_count_is_reported(tmp_path):
    corpus = tmp_path / "skewed.txt"
    rare = " ".join(f"rare{i}" for i in range(40))
    corpus.write_text("common word " * 5 + "\n" + rare + "\n", encoding="utf-8")
    result = invoke("build-vocab", corpus, "--min-count", "5")
    assert result.exit_code == 0, result.stderr
    assert "warning: --min-count 5 dropped 95% of distinct words" in result.stderr


def test_one_word_vocabulary_is_rejected(tmp_path):
    corpus = tmp_path / "one.txt"
    corpus.write_text("echo echo echo\necho\n", encoding="utf-8")
    result = invoke("build-vocab", corpus, "--min-count", "1")
    assert_clean_error(result)
    assert "1 of 1 distinct words" in result.stderr
    assert "at least 2 words" in result.stderr
    assert not os.path.exists("embcli-model")


def test_one_word_vocabulary_rejected_by_train(small_corpus):
    assert invoke("build-vocab", small_corpus, "--min-count", "3").exit_code == 0
    # A vocabulary of one word, written through the store as build-vocab writes it.
    meta = store.read_meta("embcli-model")
    vocab_tmp = store.save_vocab_temp("embcli-model", ["lord"], [10])
    meta["files"]["vocab.tsv"] = store.fingerprint(vocab_tmp)
    store.commit("embcli-model", {"vocab.tsv": vocab_tmp, "meta.json": store.meta_temp("embcli-model", meta)})
    result = invoke("train", "--threads", "1")
    assert_clean_error(result)
    assert "has 1 words, and word vectors need at least 2" in result.stderr


def test_mixed_case_kept_on_request():
    corpus = CASES / "22-mixed-case" / "corpus.txt"
    result = invoke("build-vocab", corpus, "--min-count", "1", "--keep-case")
    assert result.exit_code == 0, result.stderr
    counts = vocab_of()
    assert (counts["apple"], counts["Apple"], counts["APPLE"]) == (2, 1, 1)
    assert invoke("train", "--dim", "8", "--epochs", "1", "--threads", "1", "-q").exit_code == 0
    assert invoke("lookup", "APPLE").stdout.startswith("APPLE\t")
    missing = invoke("lookup", "aPPle")
    assert missing.exit_code == 1
    assert "aPPle: not in vocabulary" in missing.stderr


def test_mixed_case_lowercased_by_default():
    corpus = CASES / "22-mixed-case" / "corpus.txt"
    assert invoke("build-vocab", corpus, "--min-count", "1").exit_code == 0
    counts = vocab_of()
    assert counts["apple"] == 4
    assert "Apple" not in counts
    assert "APPLE" not in counts
    assert store.read_meta("embcli-model")["tokenizer"]["lowercase"] is True
    assert invoke("train", "--dim", "8", "--epochs", "1", "--threads", "1", "-q").exit_code == 0
    upper = invoke("lookup", "APPLE")
    lower = invoke("lookup", "apple")
    assert upper.exit_code == 0
    assert upper.stdout.split("\t")[1:] == lower.stdout.split("\t")[1:]


def test_digits_and_punctuation_default_tokenizer():
    corpus = CASES / "26-digits-and-punctuation" / "corpus.txt"
    assert invoke("build-vocab", corpus, "--min-count", "1").exit_code == 0
    counts = vocab_of()
    assert counts["printer"] == 2
    assert counts["html5"] == 2
    assert counts["3d"] == 2
    assert counts["web2"] == 1
    assert counts["0"] == 1
    assert counts["5.00"] == 1
    assert not any(ch in word for word in counts for ch in ",.!$" if word != "5.00")


def test_digits_and_punctuation_whitespace_tokenizer():
    corpus = CASES / "26-digits-and-punctuation" / "corpus.txt"
    result = invoke("build-vocab", corpus, "--min-count", "1", "--tokenizer", "whitespace")
    assert result.exit_code == 0
    counts = vocab_of()
    assert sum(counts.values()) == 15
    assert len(counts) == 13
    assert counts["printer,"] == 1
    assert counts["printer"] == 1
    assert "$5.00!" in counts
    assert "web2.0" in counts


@pytest.mark.parametrize("tokenizer", ["default", "whitespace"])
def test_extra_whitespace_gives_no_empty_tokens(tokenizer):
    corpus = CASES / "27-empty-tokens-extra-whitespace" / "corpus.txt"
    assert invoke("build-vocab", corpus, "--min-count", "1", "--tokenizer", tokenizer).exit_code == 0
    counts = vocab_of()
    assert counts == {"leading": 1, "spaces": 2, "trailing": 1, "double": 1, "space": 1,
                      "tabs": 1, "inside": 1}
    lines = open("embcli-model/vocab.tsv", encoding="utf-8").read().split("\n")
    assert lines[-1] == ""
    assert all(lines[:-1])
    assert len(lines) - 1 == 7
    # Blank lines leave no line-end markers of their own in the token cache.
    assert store.read_meta("embcli-model")["token_cache"]["tokens"] == 8 + 4


def test_diverging_training_writes_no_vectors():
    corpus = CASES / "32-training-diverges-nan" / "corpus.txt"
    assert invoke("build-vocab", corpus, "--min-count", "1").exit_code == 0
    meta_before = open("embcli-model/meta.json", "rb").read()
    result = invoke("train", "--lr", "1e6", "--epochs", "50", "--threads", "1", "-q")
    assert_clean_error(result)
    assert "training diverged" in result.stderr
    assert "--lr" in result.stderr
    assert not os.path.exists("embcli-model/embeddings.npy")
    assert open("embcli-model/meta.json", "rb").read() == meta_before
    assert not [name for name in os.listdir("embcli-model") if name.startswith(".tmp-")]


def test_small_corpus_training_stays_finite():
    corpus = CASES / "32-training-diverges-nan" / "corpus.txt"
    assert invoke("build-vocab", corpus, "--min-count", "1").exit_code == 0
    result = invoke("train", "--epochs", "50", "--threads", "1", "--dim", "8", "-q")
    assert result.exit_code == 0, result.stderr
    assert np.isfinite(np.load("embcli-model/embeddings.npy", allow_pickle=False)).all()


def _case31_model(tmp_path):
    shutil.copy(CASES / "31-interrupted-training" / "make_input.py", tmp_path)
    subprocess.run([sys.executable, "make_input.py"], cwd=tmp_path, check=True, timeout=60)
    assert invoke("build-vocab", tmp_path / "corpus.txt", "-q").exit_code == 0
    return str(tmp_path / "embcli-model")


def _wait_until_training(model_dir, process, timeout=60):
    """Return once `process` holds the model's write lock and has started training."""
    import fcntl

    deadline = time.monotonic() + timeout
    lock = os.open(os.path.join(model_dir, ".lock"), os.O_RDONLY)
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(lock, fcntl.LOCK_UN)
            except BlockingIOError:
                time.sleep(2.0)  # locked; let it get past loading into the training loop, under load too
                return
            time.sleep(0.05)
    finally:
        os.close(lock)
    raise AssertionError("training did not start")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupted_training_saves_checkpoint(tmp_path, signum, code):
    model_dir = _case31_model(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "embcli", "train", "-m", model_dir, "--threads", "1",
         "--epochs", "50", "--dim", "16", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    _wait_until_training(model_dir, process)
    sent = time.monotonic()
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert time.monotonic() - sent < 10
    assert process.returncode == code, stderr
    assert stdout == ""
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert f"checkpoint saved in {model_dir}/checkpoint.json" in stderr
    assert "embcli train --resume" in stderr
    assert not os.path.exists(os.path.join(model_dir, "embeddings.npy"))

    # The checkpoint loads for resuming (test_interrupt.py resumes to the end).
    from embcli.train import TrainConfig, _load_checkpoint

    start = _load_checkpoint(model_dir, store.read_meta(model_dir), TrainConfig(threads=1), 300)
    assert start.config.epochs == 50
    assert start.config.dim == 16
    assert start.positions[0] < 50
    assert start.input_vectors.shape == (300, 16)
    assert np.isfinite(start.input_vectors.numpy()).all()


def test_corpus_from_named_pipe(tmp_path):
    import threading

    pipe = tmp_path / "corpus.pipe"
    os.mkfifo(pipe)
    data = (CASES / "05-crlf-line-endings" / "corpus.txt").read_bytes()

    def feed():
        with open(pipe, "wb") as handle:
            handle.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    result = invoke("build-vocab", pipe, "--min-count", "1")
    writer.join(timeout=10)
    assert result.exit_code == 0, result.stderr
    assert vocab_of() == {"apple": 2, "red": 2, "car": 1, "green": 1}
    assert store.read_meta("embcli-model")["corpus"]["sources"][0]["size"] is None
    # The pipe cannot be read again, and training needs only the token cache.
    result = invoke("train", "--dim", "4", "--epochs", "1", "--threads", "1", "--sample", "0", "-q")
    assert result.exit_code == 0, result.stderr


def test_directory_as_corpus_is_clean_error(tmp_path):
    result = invoke("build-vocab", tmp_path)
    assert_clean_error(result)
    assert "is a directory, not a text file" in result.stderr


def test_train_corpus_argument_checks_encoding():
    corpus = CASES / "02-non-utf8-corpus" / "corpus.txt"
    assert invoke("build-vocab", corpus, "--min-count", "1", "--encoding", "latin-1").exit_code == 0
    result = invoke("train", corpus, "--threads", "1", "--dim", "4", "--epochs", "1")
    assert_clean_error(result)
    assert "line 2, byte offset 24: invalid UTF-8" in result.stderr
    assert not os.path.exists("embcli-model/embeddings.npy")
    assert not [name for name in os.listdir("embcli-model") if name.startswith(".tmp-")]
    result = invoke("train", corpus, "--threads", "1", "--dim", "4", "--epochs", "1", "--sample", "0",
                    "--encoding", "latin-1", "-q")
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(("variant", "nul_at"), [("utf-16-le", "odd"), ("utf-16-be", "even")])
def test_utf16_without_bom_is_named(tmp_path, variant, nul_at):
    corpus = tmp_path / "wide.txt"
    corpus.write_bytes("the cat sat\nthe dog sat\n".encode(variant))
    result = invoke("build-vocab", corpus, "--min-count", "1")
    assert_clean_error(result)
    assert f"looks like {variant.upper()} text without a byte-order mark" in result.stderr
    assert f"of the {nul_at} bytes" in result.stderr
    assert not os.path.exists("embcli-model")
    result = invoke("build-vocab", corpus, "--min-count", "1", "--encoding", variant)
    assert result.exit_code == 0, result.stderr
    assert vocab_of() == {"the": 2, "sat": 2, "cat": 1, "dog": 1}


def test_utf16_with_bom_is_named(tmp_path):
    corpus = tmp_path / "wide.txt"
    corpus.write_bytes("the cat sat\n".encode("utf-16"))
    result = invoke("build-vocab", corpus, "--min-count", "1")
    assert_clean_error(result)
    assert "starts with a UTF-16 byte-order mark, so it is not UTF-8" in result.stderr
    result = invoke("build-vocab", corpus, "--min-count", "1", "--encoding", "utf-16")
    assert result.exit_code == 0, result.stderr
    assert vocab_of() == {"the": 1, "cat": 1, "sat": 1}


@pytest.mark.parametrize("codec", ["utf-32-le", "utf-32-be"])
def test_utf32_with_bom_is_named(tmp_path, codec):
    bom = {"utf-32-le": b"\xff\xfe\x00\x00", "utf-32-be": b"\x00\x00\xfe\xff"}[codec]
    path = tmp_path / "u32.txt"
    path.write_bytes(bom + "the cat sat\n".encode(codec))
    result = invoke("build-vocab", str(path), "-m", str(tmp_path / "m"))
    assert result.exit_code == 1
    assert "starts with a UTF-32 byte-order mark" in result.stderr
