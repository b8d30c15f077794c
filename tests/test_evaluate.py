"""evaluate: analogy accuracy, pair correlations, cutoff and case rules, table and JSON."""

import bz2
import gzip
import json
import lzma
import warnings

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from embcli.cli import app
from embcli.evaluate import average_ranks, pearson, spearman
from embcli.formats import write_vectors

runner = CliRunner()

WORDS = ["king", "queen", "man", "woman", "apple", "pear", "King", "walk", "walked", "talk", "talked"]
VECTORS = np.array([
    [0.5, 0.5, 0.7, 0.0], [0.2, 0.9, 0.6, 0.0], [0.9, 0.1, 0.0, 0.0], [0.8, 0.3, 0.0, 0.0],
    [-0.5, 0.1, -0.8, 0.0], [-0.4, 0.2, -0.9, 0.0], [0.0, 0.0, 0.0, 1.0],
    [0.1, -0.9, 0.1, 0.1], [0.1, -0.9, 0.1, 0.9], [0.3, -0.8, 0.0, 0.1], [0.3, -0.8, 0.0, 0.9],
], dtype=np.float32)

QUESTIONS = """: family
man king woman queen
MAN KING WOMAN QUEEN
man king woman unicornword
king queen man
: gram-past-tense
walk walked talk talked
talk talked walk walked
"""

PAIRS = """# comment line
king\tqueen\t8.5
man\twoman\t8.3
apple\tpear\t7.9
king\tapple\t1.0
walk talk 5.0
king\tunicornword\t3.0
"""


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "vectors.txt"
    write_vectors(str(path), WORDS, VECTORS, "word2vec")
    directory = str(tmp_path / "model")
    assert runner.invoke(app, ["import", str(path), "-m", directory, "-q"]).exit_code == 0
    (tmp_path / "questions.txt").write_text(QUESTIONS, encoding="utf-8")
    (tmp_path / "pairs.txt").write_text(PAIRS, encoding="utf-8")
    return directory


def evaluate(model, tmp_path, *extra):
    result = runner.invoke(app, ["evaluate", "-m", model, "--analogies", str(tmp_path / "questions.txt"),
                                 "--similarity", str(tmp_path / "pairs.txt"), *extra])
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_analogy_sections_and_coverage(model, tmp_path):
    report = json.loads(evaluate(model, tmp_path, "--json"))
    analogies = report["analogies"][0]
    family, tense = analogies["sections"]
    assert family["section"] == "family"
    assert family["questions"] == 3  # the three-word line is skipped, not a question
    assert family["answered"] == 2
    assert family["correct"] == 2
    assert tense["correct"] == 2
    assert analogies["semantic"]["answered"] == 2
    assert analogies["syntactic"]["answered"] == 2
    assert analogies["overall"]["accuracy"] == 1.0
    assert analogies["overall"]["coverage"] == pytest.approx(4 / 5)
    assert analogies["skipped_lines"] == [5]


def test_pairs_report_oov_share(model, tmp_path):
    pairs = json.loads(evaluate(model, tmp_path, "--json"))["similarity"][0]
    assert pairs["pairs"] == 5
    assert pairs["oov"] == 1
    assert pairs["oov_share"] == pytest.approx(1 / 6)
    assert -1 <= pairs["spearman"] <= 1


def test_case_sensitive_and_cutoff_change_coverage(model, tmp_path):
    report = json.loads(evaluate(model, tmp_path, "--json", "--case-sensitive"))
    assert report["case_sensitive"] is True
    assert report["analogies"][0]["sections"][0]["answered"] == 1
    report = json.loads(evaluate(model, tmp_path, "--json", "--restrict", "4"))
    assert report["vocabulary_cutoff"] == 4
    assert report["analogies"][0]["overall"]["answered"] == 2


def test_upper_case_takes_first_variant(tmp_path):
    # "King" comes first and points away from queen, so KING must take its vector and
    # the analogy then answers apple or pear, which the lower-case rows would not.
    directory = tmp_path / "m"
    words = ["King", "king", "queen", "man", "woman", "apple", "pear"]
    vectors = np.concatenate([-VECTORS[[1]], VECTORS[[0, 1, 2, 3, 4, 5]]])
    path = tmp_path / "v.txt"
    write_vectors(str(path), words, vectors, "word2vec")
    assert runner.invoke(app, ["import", str(path), "-m", str(directory), "-q"]).exit_code == 0
    (tmp_path / "q.txt").write_text(": family\nman king woman queen\n", encoding="utf-8")
    result = runner.invoke(app, ["evaluate", "-m", str(directory), "--analogies", str(tmp_path / "q.txt"), "--json"])
    assert json.loads(result.stdout)["analogies"][0]["overall"]["correct"] == 0
    result = runner.invoke(app, ["analogy", "-m", str(directory), "man", "King", "woman", "-k", "1"])
    assert result.stdout.split("\t")[0] in ("apple", "pear")
    result = runner.invoke(app, ["analogy", "-m", str(directory), "man", "king", "woman", "-k", "1"])
    assert result.stdout.split("\t")[0] == "queen"


def test_table_names_cutoff_and_case(model, tmp_path):
    table = evaluate(model, tmp_path)
    assert "vocabulary cutoff: the 11 most frequent words (--restrict 300,000, vocabulary 11)" in table
    assert "case: case-insensitive (words compared in upper case)" in table
    assert "overall" in table and "semantic" in table and "syntactic" in table
    assert "spearman" in table


def test_evaluate_needs_a_file(model):
    result = runner.invoke(app, ["evaluate", "-m", model])
    assert result.exit_code == 2


def test_correlations_match_scipy():
    rng = np.random.default_rng(4)
    gold = rng.integers(0, 5, 60).astype(float)  # many ties
    predicted = gold + rng.standard_normal(60)
    assert spearman(gold, predicted) == pytest.approx(stats.spearmanr(gold, predicted).statistic, abs=1e-12)
    assert pearson(gold, predicted) == pytest.approx(stats.pearsonr(gold, predicted).statistic, abs=1e-12)
    np.testing.assert_allclose(average_ranks(gold), stats.rankdata(gold))


def test_analogy_file_without_questions_fails(model, tmp_path):
    (tmp_path / "broken.txt").write_text(": sec\nman king woman\nfoo\n", encoding="utf-8")
    result = runner.invoke(app, ["evaluate", "-m", model, "--analogies", str(tmp_path / "broken.txt")])
    assert result.exit_code == 1
    assert "no question of four words (2 lines did not have four words)" in result.stderr
    assert result.stdout == ""


def test_unanswered_section_shows_no_accuracy(model, tmp_path):
    (tmp_path / "unknown.txt").write_text(": sec\nzzz yyy xxx www\nbad line\n", encoding="utf-8")
    result = runner.invoke(app, ["evaluate", "-m", model, "--analogies", str(tmp_path / "unknown.txt")])
    assert result.exit_code == 0, result.stderr
    overall = [line for line in result.stdout.splitlines() if line.startswith("overall")]
    assert overall[0].split()[1] == "n/a"
    assert "skipped 1 line without four words, line 3" in result.stderr


def test_pairs_skip_bad_scores_with_warning(model, tmp_path):
    pairs = tmp_path / "bad_pairs.txt"
    pairs.write_text("king\tqueen\t9\nman\twoman\tnan\nboy girl\napple\tpear\tabc\n"
                     "walk\ttalk\tinf\nking\tapple\t1\nwalk\twalked\t5\n", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = runner.invoke(app, ["evaluate", "-m", model, "--similarity", str(pairs), "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)["similarity"][0]
    assert report["skipped_lines"] == [2, 3, 4, 5]
    assert report["pairs"] == 3
    assert "bad_pairs.txt: skipped 4 lines without two words and a finite score" in result.stderr
    assert "the first are lines 2, 3, 4, 5" in result.stderr
    text = runner.invoke(app, ["evaluate", "-m", model, "--similarity", str(pairs)])
    assert "skipped 4 lines" in text.stderr
    assert "nan" not in text.stdout


def test_constant_gold_scores_give_undefined_correlation(trained_model, tmp_path):
    pairs = tmp_path / "constant.txt"
    pairs.write_text("lord\tgod\t5\nking\tisrael\t5\nson\tfather\t5\n", encoding="utf-8")
    table = runner.invoke(app, ["evaluate", "-m", trained_model, "--similarity", str(pairs)])
    assert table.exit_code == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith(str(pairs)))
    assert row.split()[1:3] == ["n/a", "n/a"]
    as_json = runner.invoke(app, ["evaluate", "-m", trained_model, "--similarity", str(pairs), "--json"])
    result = json.loads(as_json.stdout)["similarity"][0]
    assert result["spearman"] is None
    assert result["pearson"] is None


def test_pair_file_in_another_layout_says_so(trained_model, tmp_path):
    # WordSim-353's combined.csv separates with commas; nothing in it is a WORD1 WORD2 SCORE line.
    pairs = tmp_path / "combined.csv"
    pairs.write_text("Word 1,Word 2,Human (mean)\nlove,sex,6.77\n", encoding="utf-8")
    result = runner.invoke(app, ["evaluate", "-m", trained_model, "--similarity", str(pairs)])
    assert result.exit_code == 1
    assert "no line has the layout WORD1 WORD2 SCORE" in result.stderr
    assert "2 lines were skipped" in result.stderr


def test_json_accuracy_of_unanswered_section_is_null(trained_model, tmp_path):
    questions = tmp_path / "questions.txt"
    questions.write_text(": capital-world\nqqq www eee rrr\n: gram-plural\nlord lords god gods\n", encoding="utf-8")
    result = runner.invoke(app, ["evaluate", "-m", trained_model, "--analogies", str(questions), "--json"])
    assert result.exit_code == 0, result.stderr
    sections = {s["section"]: s for s in json.loads(result.stdout)["analogies"][0]["sections"]}
    assert sections["capital-world"]["accuracy"] is None


OOV_PAIRS = "zzz\tyyy\t3.0\nxxx\twww\t4.0\n"


def test_unscorable_file_keeps_other_results(model, tmp_path):
    (tmp_path / "unknown_pairs.txt").write_text(OOV_PAIRS, encoding="utf-8")
    extra = ["--similarity", str(tmp_path / "unknown_pairs.txt")]
    args = ["evaluate", "-m", model, "--analogies", str(tmp_path / "questions.txt"),
            "--similarity", str(tmp_path / "pairs.txt"), *extra]
    table = runner.invoke(app, args)
    assert table.exit_code == 1
    assert "unknown_pairs.txt: no pair has both words among the first 11 words" in table.stderr
    assert "overall" in table.stdout
    assert str(tmp_path / "pairs.txt") in table.stdout
    assert "unknown_pairs.txt" not in table.stdout
    as_json = runner.invoke(app, args + ["--json"])
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert report["analogies"][0]["overall"]["correct"] == 4
    assert report["analogies"][0]["error"] is None
    good, bad = report["similarity"]
    assert good["pairs"] == 5
    assert good["error"] is None
    assert bad["file"] == str(tmp_path / "unknown_pairs.txt")
    assert "no pair has both words" in bad["error"]
    assert "unknown_pairs.txt: no pair has both words" in as_json.stderr


def test_missing_file_fails_before_model_opens(tmp_path):
    (tmp_path / "questions.txt").write_text(QUESTIONS, encoding="utf-8")
    result = runner.invoke(app, ["evaluate", "-m", str(tmp_path / "no_model"), "--analogies",
                                 str(tmp_path / "questions.txt"), "--similarity", str(tmp_path / "typo.tsv")])
    assert result.exit_code == 1
    assert "typo.tsv: no such file" in result.stderr
    assert "no_model" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("opener", [gzip.open, bz2.open, lzma.open], ids=["gzip", "bzip2", "xz"])
def test_compressed_test_sets_are_read(model, tmp_path, opener):
    # The names end in .txt: the first bytes decide, as for corpora.
    with opener(tmp_path / "questions_packed.txt", "wb") as handle:
        handle.write(QUESTIONS.encode("utf-8"))
    with opener(tmp_path / "pairs_packed.txt", "wb") as handle:
        handle.write(PAIRS.encode("utf-8"))
    plain = json.loads(evaluate(model, tmp_path, "--json"))
    result = runner.invoke(app, ["evaluate", "-m", model, "--json",
                                 "--analogies", str(tmp_path / "questions_packed.txt"),
                                 "--similarity", str(tmp_path / "pairs_packed.txt")])
    assert result.exit_code == 0, result.stderr
    packed = json.loads(result.stdout)
    assert packed["analogies"][0]["overall"] == plain["analogies"][0]["overall"]
    assert packed["similarity"][0]["spearman"] == plain["similarity"][0]["spearman"]
    assert packed["similarity"][0]["pairs"] == plain["similarity"][0]["pairs"]


def test_utf16_file_names_its_encoding(model, tmp_path):
    pairs = tmp_path / "pairs16.txt"
    pairs.write_bytes(PAIRS.encode("utf-16"))  # Python writes a byte-order mark first
    result = runner.invoke(app, ["evaluate", "-m", model, "--similarity", str(pairs)])
    assert result.exit_code == 1
    assert "UTF-16 byte-order mark" in result.stderr
    assert "[--encoding]" in result.stderr
    result = runner.invoke(app, ["evaluate", "-m", model, "--similarity", str(pairs), "--encoding", "utf-16",
                                 "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["similarity"][0]["pairs"] == 5


def test_cp1252_file_needs_encoding_option(model, tmp_path):
    pairs = tmp_path / "pairs1252.txt"
    pairs.write_bytes((PAIRS + "café\tking\t2.0\n").encode("cp1252"))
    result = runner.invoke(app, ["evaluate", "-m", model, "--similarity", str(pairs)])
    assert result.exit_code == 1
    assert "pairs1252.txt: line 8, byte offset" in result.stderr
    assert "invalid UTF-8" in result.stderr
    assert "[--encoding]" in result.stderr
    result = runner.invoke(app, ["evaluate", "-m", model, "--similarity", str(pairs), "--encoding", "cp1252",
                                 "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)["similarity"][0]
    assert report["pairs"] == 5
    assert report["oov"] == 2


def test_pairs_read_from_stdin(model, tmp_path):
    result = runner.invoke(app, ["evaluate", "-m", model, "--similarity", "-", "--json"], input=PAIRS)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)["similarity"][0]
    assert report["file"] == "<stdin>"
    assert report["pairs"] == 5
    twice = runner.invoke(app, ["evaluate", "-m", model, "--similarity", "-", "--analogies", "-"], input=PAIRS)
    assert twice.exit_code == 2
    assert "stdin (-) can be read only once" in twice.stderr


SIMLEX_HEADER = "word1\tword2\tPOS\tSimLex999\tconc(w1)\tconc(w2)\tconcQ\tAssoc(USF)\tSimAssoc333\tSD(SimLex)\n"


def simlex_layout(pairs):
    """Return `pairs` (word TAB word TAB score lines) in SimLex-999.txt's ten-field layout."""
    lines = [SIMLEX_HEADER]
    for line in pairs.splitlines():
        if line.startswith("#"):
            continue
        first, second, score = line.split("\t") if "\t" in line else line.split()
        lines.append(f"{first}\t{second}\tN\t{score}\t4.5\t4.6\t2\t0.5\t1\t0.4\n")
    return "".join(lines)


def test_simlex_layout_needs_score_column(model, tmp_path):
    simlex = tmp_path / "SimLex-999.txt"
    simlex.write_text(simlex_layout(PAIRS), encoding="utf-8")
    result = runner.invoke(app, ["evaluate", "-m", model, "--similarity", str(simlex)])
    assert result.exit_code == 1
    assert "7 lines were skipped, 7 of them with 10 fields" in result.stderr
    assert f"cut -f1,2,4 {simlex}" in result.stderr
    assert "[--score-column]" in result.stderr
    result = runner.invoke(app, ["evaluate", "-m", model, "--similarity", str(simlex), "--score-column", "4",
                                 "--json"])
    assert result.exit_code == 0, result.stderr
    columns = json.loads(result.stdout)["similarity"][0]
    plain = json.loads(evaluate(model, tmp_path, "--json"))["similarity"][0]
    assert columns["spearman"] == plain["spearman"]
    assert columns["pearson"] == plain["pearson"]
    assert columns["pairs"] == plain["pairs"]
    assert columns["oov"] == plain["oov"]
    assert columns["skipped_lines"] == [1]  # the header, whose field 4 is not a number


def test_score_column_beyond_line_skips_it(model, tmp_path):
    pairs = tmp_path / "short.txt"
    pairs.write_text("king\tqueen\t8.5\nman\twoman\t8.3\n", encoding="utf-8")
    result = runner.invoke(app, ["evaluate", "-m", model, "--similarity", str(pairs), "--score-column", "4",
                                 "--json"])
    assert result.exit_code == 1
    assert "no line has the layout two words and a number in field 4" in result.stderr
    assert "2 lines were skipped, 2 of them with 3 fields" in result.stderr
    assert "Field 3 is a number in most of them. If it is the score, read the score from field 3" in result.stderr
    assert "cut -f" not in result.stderr
    assert json.loads(result.stdout)["similarity"][0]["error"].startswith(str(pairs))
    too_low = runner.invoke(app, ["evaluate", "-m", model, "--similarity", str(pairs), "--score-column", "2"])
    assert too_low.exit_code == 2


def test_trailing_empty_field_is_ignored(model, tmp_path):
    pairs = tmp_path / "trailing.txt"
    pairs.write_text("king\tqueen\t8.5\t\nman\twoman\t8.3\t\t\napple\tpear\t7.9\n", encoding="utf-8")
    result = runner.invoke(app, ["evaluate", "-m", model, "--similarity", str(pairs), "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)["similarity"][0]
    assert report["pairs"] == 3
    assert report["skipped_lines"] == []


def test_json_warns_about_skipped_analogy_lines(model, tmp_path):
    result = runner.invoke(app, ["evaluate", "-m", model, "--analogies", str(tmp_path / "questions.txt"), "--json"])
    assert result.exit_code == 0, result.stderr
    assert "questions.txt: skipped 1 line without four words, line 5" in result.stderr
    assert json.loads(result.stdout)["analogies"][0]["skipped_lines"] == [5]


def test_json_help_promises_one_object():
    result = runner.invoke(app, ["evaluate", "--help"], terminal_width=200)
    assert "one JSON object" in result.stdout
    assert "JSON lines" not in result.stdout
