"""Edge cases of the command line: - given twice, info on a damaged model, a closed
stdin, and messages with a count of one."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import embcli
from embcli.cli import app

runner = CliRunner()
EMBCLI = [sys.executable, "-m", "embcli"]


def invoke(*args, input=None):
    return runner.invoke(app, list(args), input=input)


def edit_meta(model_dir, change):
    """Apply `change` to the parsed meta.json of `model_dir` and write it back."""
    path = model_dir / "meta.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    change(meta)
    path.write_text(json.dumps(meta), encoding="utf-8")


@pytest.fixture
def model_copy(trained_model, tmp_path):
    """A copy of the shared trained model that a test may damage."""
    return shutil.copytree(trained_model, tmp_path / "model")


# - (read the queries from stdin) given more than once.

REPEATED_DASH = [
    ("lookup", "-", "-"),
    ("neighbors", "-", "-"),
    ("similarity", "-", "-"),
    ("analogy", "-", "-", "-"),
]


@pytest.mark.parametrize("command", REPEATED_DASH, ids=[args[0] for args in REPEATED_DASH])
def test_repeated_dash_is_usage_error(trained_model, command):
    result = invoke(*command, "-m", trained_model, input="lord god\n")
    assert result.exit_code == 2
    assert "stdin (-) can be read only once" in result.stderr
    assert result.stdout == ""


def test_repeated_dash_before_model_open(tmp_path):
    # The usage error comes first, even where no model exists.
    for command in REPEATED_DASH:
        result = invoke(*command, "-m", str(tmp_path / "missing"), input="lord god\n")
        assert result.exit_code == 2, command
        assert "can be read only once" in result.stderr, command


def test_repeated_dash_with_approx(trained_model):
    result = invoke("neighbors", "--approx", "-m", trained_model, "-", "-", input="lord\n")
    assert result.exit_code == 2
    assert "can be read only once" in result.stderr


def test_repeated_dash_through_main(trained_model):
    for command in (["neighbors", "-", "-"], ["similarity", "-", "-"]):
        process = subprocess.run(EMBCLI + command + ["-m", trained_model], input="lord god\n",
                                 capture_output=True, text=True, timeout=60)
        assert process.returncode == 2, command
        assert "can be read only once" in process.stderr, command


@pytest.mark.parametrize("command", [("similarity", "-", "lord"), ("analogy", "lord", "-", "god"),
                                     ("analogy", "-", "lord")])
def test_dash_among_pair_words_is_usage_error(trained_model, command):
    result = invoke(*command, "-m", trained_model, input="lord god\n")
    assert result.exit_code == 2
    assert "must be the only word" in result.stderr


def test_single_dash_still_reads_stdin(trained_model):
    result = invoke("similarity", "-", "-m", trained_model, input="lord god\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("lord\tgod\t")


# info on a model that queries cannot open.

def test_info_dim_mismatch_fails_after_printing(model_copy):
    edit_meta(model_copy, lambda meta: meta.update(dim=49))
    result = invoke("info", "-m", str(model_copy))
    assert result.exit_code == 1
    assert "dim\t49\n" in result.stdout
    assert "embcli\t" in result.stdout
    assert "the files do not belong together" in result.stderr
    query = invoke("lookup", "lord", "-m", str(model_copy))
    assert query.exit_code == 1
    assert query.stderr == result.stderr


def test_info_broken_fingerprint_fails(model_copy):
    def break_fingerprint(meta):
        meta["files"]["embeddings.npy"] = "2:" + "0" * 24

    edit_meta(model_copy, break_fingerprint)
    result = invoke("info", "-m", str(model_copy))
    assert result.exit_code == 1
    assert "vocabulary\t" in result.stdout
    assert "embeddings.npy does not belong to this model" in result.stderr


def test_info_json_reports_damage(model_copy):
    edit_meta(model_copy, lambda meta: meta.update(dim=49))
    result = invoke("info", "--json", "-m", str(model_copy))
    assert result.exit_code == 1
    assert json.loads(result.stdout)["dim"] == 49
    assert "the files do not belong together" in result.stderr


def test_info_changed_vocabulary_fails(model_copy):
    with open(model_copy / "vocab.tsv", "a", encoding="utf-8") as handle:
        handle.write("zzzextra\t3\n")
    result = invoke("info", "-m", str(model_copy))
    assert result.exit_code == 1
    assert "vocab.tsv does not belong to this model" in result.stderr


def test_info_invalid_vocab_size_counts_words(model_copy):
    edit_meta(model_copy, lambda meta: meta["vocab"].update(size="x"))
    words = len(embcli.load(str(model_copy)))
    result = invoke("info", "-m", str(model_copy))
    assert result.exit_code == 0, result.stderr
    assert f"vocabulary\t{words:,} words (min count" in result.stdout
    assert "?" not in result.stdout.split("\n")[1]
    assert "vocab.size 'x'" in result.stderr


def test_info_sound_model_has_no_warning(trained_model):
    result = invoke("info", "-m", trained_model)
    assert result.exit_code == 0
    assert result.stderr == ""


def test_info_untrained_model_succeeds(small_corpus, tmp_path):
    model_dir = str(tmp_path / "vocab-only")
    assert invoke("build-vocab", "-q", "-m", model_dir, small_corpus, "--min-count", "3").exit_code == 0
    result = invoke("info", "-m", model_dir)
    assert result.exit_code == 0, result.stderr
    assert "training\tnot trained yet" in result.stdout


def test_info_broken_subword_file_fails(small_corpus, tmp_path):
    model_dir = tmp_path / "subwords"
    assert invoke("build-vocab", "-q", "-m", str(model_dir), small_corpus, "--min-count", "3").exit_code == 0
    trained = invoke("train", "-q", "-m", str(model_dir), "--epochs", "1", "--threads", "1", "--dim", "8",
                     "--subwords", "3-4", "--buckets", "500")
    assert trained.exit_code == 0, trained.stderr
    assert invoke("info", "-m", str(model_dir)).exit_code == 0

    def break_fingerprint(meta):
        meta["files"]["subwords.npy"] = "2:" + "0" * 24

    edit_meta(model_dir, break_fingerprint)
    result = invoke("info", "-m", str(model_dir))
    assert result.exit_code == 1
    assert "subwords\tn-grams 3-4" in result.stdout
    assert "subwords.npy does not belong to this model" in result.stderr


def test_info_damage_survives_closed_pipe(model_copy):
    edit_meta(model_copy, lambda meta: meta.update(dim=49))
    # stdout is a pipe whose reader is already gone, as in `info | head -c 0`.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = subprocess.run(EMBCLI + ["info", "-m", str(model_copy)], stdout=write_end,
                                 stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert process.returncode == 1
    assert "the files do not belong together" in process.stderr


# A closed stdin.

@pytest.mark.parametrize("command", [["lookup", "-"], ["neighbors", "-"], ["neighbors", "--vector", "-"],
                                     ["similarity", "-"], ["analogy", "-"]])
def test_closed_stdin_message_names_stdin(trained_model, tmp_path, command):
    line = " ".join(f"'{part}'" for part in EMBCLI + command + ["-m", trained_model])
    process = subprocess.run(["bash", "-c", f"exec {line} 0<&-"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
    assert process.returncode == 1
    assert "embcli: error: <stdin>: cannot read (" in process.stderr
    assert "standard input is closed" in process.stderr


# Messages with a count of one.

def test_pair_layout_error_one_line(trained_model, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("lord,god\n", encoding="utf-8")
    result = invoke("evaluate", "-m", trained_model, "--similarity", str(pairs))
    assert result.exit_code == 1
    assert "1 line was skipped, with 1 field" in result.stderr
    assert "1 lines" not in result.stderr


def test_pair_layout_error_many_lines(trained_model, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("lord god\nlord\n", encoding="utf-8")
    result = invoke("evaluate", "-m", trained_model, "--similarity", str(pairs))
    assert result.exit_code == 1
    assert "2 lines were skipped, 1 of them with 2 fields" in result.stderr


def test_pairs_unknown_with_one_skipped_line(trained_model, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("zzzq yyyq 3.0\nlord god\n", encoding="utf-8")
    result = invoke("evaluate", "-m", trained_model, "--similarity", str(pairs))
    assert result.exit_code == 1
    assert "(1 line was not 'word word score' with a finite score)" in result.stderr


def test_evaluate_restrict_one_word(trained_model, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("lord god 3.0\n", encoding="utf-8")
    result = invoke("evaluate", "-m", trained_model, "--similarity", str(pairs), "--restrict", "1")
    assert result.exit_code == 1
    assert "among the first 1 word of the model" in result.stderr


def test_evaluate_table_cutoff_of_one(trained_model, tmp_path):
    questions = tmp_path / "questions.txt"
    questions.write_text(": family\nlord god lord god\n", encoding="utf-8")
    result = invoke("evaluate", "-m", trained_model, "--analogies", str(questions), "--restrict", "1")
    assert result.exit_code == 0, result.stderr
    assert "vocabulary cutoff: the 1 most frequent word (--restrict 1," in result.stdout


def test_vector_of_one_value(trained_model):
    dim = embcli.load(trained_model).dim
    result = invoke("neighbors", "-m", trained_model, "--vector", "0.5")
    assert result.exit_code == 1
    assert f"the vector has 1 value, but the model has {dim} dimensions" in result.stderr


# Several unknown words on one line.

def test_every_unknown_word_of_a_query_is_named(trained_model):
    single = invoke("analogy", "zzqq", "lord", "xxyy", "-m", trained_model)
    assert single.exit_code == 1
    assert "zzqq, xxyy: not in vocabulary" in single.stderr
    batch = invoke("similarity", "-", "-m", trained_model, input="zzqq xxyy\nlord god\nlord zzqq\n")
    assert batch.exit_code == 1
    assert "<stdin>: line 1: zzqq, xxyy: not in vocabulary" in batch.stderr
    assert "<stdin>: line 3: zzqq: not in vocabulary" in batch.stderr
    assert [line.split("\t")[:2] for line in batch.stdout.splitlines()] == [["lord", "god"]]


# meta.json parts of the wrong type.

@pytest.mark.parametrize("change, part", [
    (lambda meta: meta["training"].update(stats="x"), "training"),
    (lambda meta: meta["training"].update(settings=None), "training"),
    (lambda meta: meta["training"]["stats"].update(final_loss="x"), "training"),
    (lambda meta: meta["corpus"].update(sources=[{"size": 1}]), "corpus"),
])
def test_info_names_a_damaged_part_of_meta_json(model_copy, change, part):
    edit_meta(model_copy, change)
    result = invoke("info", "-m", str(model_copy))
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    assert "internal error" not in result.stderr
    assert f"meta.json: {part} does not have the layout that embcli writes" in result.stderr
    assert f"{part}\t?" in result.stdout
    assert "vocabulary\t" in result.stdout  # the other lines still print
