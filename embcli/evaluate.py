"""Score word vectors on the standard analogy and word-similarity test sets.

The rules follow gensim 4.4's `KeyedVectors.evaluate_word_analogies` and
`evaluate_word_pairs`, so that the numbers of the two tools can be compared:

- Only the first `restrict` words of the vocabulary (300,000 by default; word2vec's
  compute-accuracy and many papers use 30,000) are known. A question or pair with any
  other word is out of vocabulary: it is skipped and counted in the coverage.
- Unless `case_sensitive`, every word of the test set and the vocabulary is compared
  in upper case (`str.upper`), and a word with several case variants in the
  vocabulary takes the vector of the first (most frequent) one.
- An analogy a b c d is answered with 3CosAdd over the known words, leaving out the
  rows of a, b and c. The answer is the first of the top 5 whose upper-cased form is
  none of the inputs, and it is correct if it equals d. A question with an all-zero
  input vector counts as answered wrongly (gensim's score for it is NaN).
- Word pairs are scored by cosine similarity and compared with the human scores by
  Spearman's rank correlation (ties get their average rank) and Pearson's correlation.
  Two differences in reading: embcli also splits a pair line without a tab at spaces,
  and it ignores empty fields at the end of a line, where gensim skips both kinds of line.

Sections whose name starts with "gram" are syntactic, the others semantic, as in the
questions-words set (Mikolov et al., 2013).
"""

import codecs
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from embcli.corpus import open_text_lines
from embcli.errors import CorpusError, EncodingError, EvaluationError, plural

DEFAULT_RESTRICT = 300_000
_ANALOGY_BLOCK = 1024
_ANALOGY_TOP = 5  # gensim looks at the top 5 answers for one that is not an input


@dataclass
class Section:
    name: str
    correct: int = 0
    incorrect: int = 0
    oov: int = 0

    @property
    def answered(self):
        return self.correct + self.incorrect

    @property
    def total(self):
        return self.answered + self.oov

    @property
    def accuracy(self):
        return self.correct / self.answered if self.answered else 0.0

    @property
    def coverage(self):
        return self.answered / self.total if self.total else 0.0

    def to_json(self):
        # A section with no answered question has no accuracy (the table prints n/a).
        return {"section": self.name, "accuracy": self.accuracy if self.answered else None,
                "correct": self.correct,
                "answered": self.answered, "questions": self.total, "coverage": self.coverage}


@dataclass
class AnalogyResult:
    path: str
    sections: list
    semantic: Section
    syntactic: Section
    overall: Section
    skipped_lines: list = field(default_factory=list)

    def to_json(self):
        return {
            "file": self.path,
            "overall": self.overall.to_json(),
            "semantic": self.semantic.to_json(),
            "syntactic": self.syntactic.to_json(),
            "sections": [s.to_json() for s in self.sections],
            "skipped_lines": self.skipped_lines,
        }


@dataclass
class PairResult:
    path: str
    spearman: float
    pearson: float
    pairs: int
    oov: int
    skipped_lines: list = field(default_factory=list)

    @property
    def oov_share(self):
        total = self.pairs + self.oov
        return self.oov / total if total else 0.0

    def to_json(self):
        return {"file": self.path, "spearman": _number_or_none(self.spearman),
                "pearson": _number_or_none(self.pearson),
                "pairs": self.pairs, "oov": self.oov, "oov_share": self.oov_share,
                "skipped_lines": self.skipped_lines}


def known_words(words, restrict=DEFAULT_RESTRICT, case_sensitive=False):
    """Return {word or its upper case: row} over the first `restrict` words, first wins."""
    known = {}
    for row, word in enumerate(words[:restrict]):
        known.setdefault(word if case_sensitive else word.upper(), row)
    return known


def read_test_set(path, encoding="utf-8"):
    """Read a test set into (display name, list of lines without line ends).

    gzip, bzip2 and xz files are decompressed (recognised by their first bytes) and `-`
    is standard input, shown as <stdin>, as for corpora. Raises EvaluationError when
    the file is missing, unreadable, damaged or not valid in `encoding`.
    """
    name = "<stdin>" if path == "-" else str(path)
    try:
        return name, list(open_text_lines(str(path), encoding))
    except EncodingError as error:
        # The corpus reader's message suggests decode_errors, a setting that evaluation does not have.
        where = f"{error.path}: line {error.line}, byte offset {error.offset}"
        raise EvaluationError(
            f"{where}: invalid {_encoding_name(encoding)}; read it with the encoding it was written in, "
            "such as latin-1 or cp1252",
            options=("encoding",),
        ) from None
    except CorpusError as error:
        raise EvaluationError(str(error), options=error.options) from None


def _encoding_name(encoding):
    name = codecs.lookup(encoding).name
    return name.upper() if name.startswith("utf") else name


def evaluate_analogies(model, path, restrict=DEFAULT_RESTRICT, case_sensitive=False, method="3cosadd",
                       encoding="utf-8"):
    """Return an AnalogyResult for the questions-words file at `path`."""
    path, lines = read_test_set(path, encoding)
    return score_analogies(model, path, lines, restrict, case_sensitive, method)


def score_analogies(model, path, lines, restrict=DEFAULT_RESTRICT, case_sensitive=False, method="3cosadd"):
    """Return an AnalogyResult for `lines` of a questions-words file; `path` names it in messages."""
    restrict = min(restrict, len(model))
    known = known_words(model.words, restrict, case_sensitive)
    sections = []
    questions = []  # (section number, row a, row b, row c, expected, inputs)
    skipped = []
    for number, line in enumerate(lines, 1):
        if line.startswith(":"):
            sections.append(Section(line[1:].strip()))
            continue
        fields = line.split()
        if not fields:
            continue
        if not sections:
            raise EvaluationError(f"{path}: line {number}: a question before the first ': section' line")
        if len(fields) != 4:
            skipped.append(number)
            continue
        if not case_sensitive:
            fields = [word.upper() for word in fields]
        if any(word not in known for word in fields):
            sections[-1].oov += 1
            continue
        a, b, c, expected = fields
        questions.append((len(sections) - 1, known[a], known[b], known[c], expected, {a, b, c}))
    if not sections:
        raise EvaluationError(f"{path}: no ': section' line; expected the questions-words format")
    # Answered questions are counted below, so here a section's total is only its unknown ones.
    if not questions and not any(section.oov for section in sections):
        raise EvaluationError(
            f"{path}: no question of four words"
            + (f" ({plural(len(skipped), 'line')} did not have four words)" if skipped else "")
        )
    zero_rows = set(np.flatnonzero(model.inverse_norms[:restrict] == 0).tolist())
    for start in range(0, len(questions), _ANALOGY_BLOCK):
        block = questions[start : start + _ANALOGY_BLOCK]
        rows = np.array([q[1:4] for q in block], dtype=np.int64)
        # gensim scores a zero row NaN, which never ranks, so leave zero rows out too.
        answers = model.analogy_of_rows(rows, _ANALOGY_TOP, method, exclude_inputs=True, restrict=restrict,
                                        skip_zero_rows=True)
        for (section, a, b, c, expected, inputs), answer in zip(block, answers):
            if zero_rows and {a, b, c} & zero_rows:
                # An all-zero input has no direction, so gensim's scores are NaN: count it wrong.
                sections[section].incorrect += 1
                continue
            predicted = None
            for word, _ in answer:
                predicted = word if case_sensitive else word.upper()
                if predicted not in inputs:
                    break
            if predicted == expected:
                sections[section].correct += 1
            else:
                sections[section].incorrect += 1
    semantic, syntactic, overall = Section("semantic"), Section("syntactic"), Section("overall")
    for section in sections:
        group = syntactic if section.name.lower().startswith("gram") else semantic
        for total in (group, overall):
            total.correct += section.correct
            total.incorrect += section.incorrect
            total.oov += section.oov
    return AnalogyResult(path, sections, semantic, syntactic, overall, skipped)


def evaluate_pairs(model, path, restrict=DEFAULT_RESTRICT, case_sensitive=False, encoding="utf-8",
                   score_column=None):
    """Return a PairResult for the word-pair file at `path` (word, word, score per line)."""
    path, lines = read_test_set(path, encoding)
    return score_pairs(model, path, lines, restrict, case_sensitive, score_column)


def score_pairs(model, path, lines, restrict=DEFAULT_RESTRICT, case_sensitive=False, score_column=None):
    """Return a PairResult for `lines` of a word-pair file; `path` names it in messages.

    The words are fields 1 and 2. Without `score_column` a line must have exactly three
    fields, as gensim requires. With it, the score is field `score_column` (1-based) and
    the other fields are ignored, so SimLex-999.txt is read with score_column=4.
    """
    if score_column is not None and score_column < 3:
        raise ValueError(f"score_column must be 3 or more (fields 1 and 2 are the words), not {score_column}")
    restrict = min(restrict, len(model))
    known = known_words(model.words, restrict, case_sensitive)
    rows1, rows2, gold = [], [], []
    oov = 0
    skipped = []
    skipped_fields = []  # the fields of each skipped line, to describe the layout in an error
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = _pair_fields(line)
        score = _pair_score(fields, score_column)
        if score is None:
            skipped.append(number)
            skipped_fields.append(fields)
            continue
        first, second = fields[0], fields[1]
        if not case_sensitive:
            first, second = first.upper(), second.upper()
        if first not in known or second not in known:
            oov += 1
            continue
        rows1.append(known[first])
        rows2.append(known[second])
        gold.append(score)
    if not gold and not oov:
        raise _layout_error(path, skipped_fields, score_column, tabs=any("\t" in line for line in lines))
    if not gold:
        raise EvaluationError(
            f"{path}: no pair has both words among the first {plural(restrict, 'word')} of the model"
            + (f" ({plural(len(skipped), 'line')} {'was' if len(skipped) == 1 else 'were'} not 'word word score' "
               "with a finite score)" if skipped else "")
        )
    predicted = model.similarity_of_rows(rows1, rows2)
    gold = np.asarray(gold, dtype=np.float64)
    return PairResult(path, spearman(gold, predicted), pearson(gold, predicted), len(gold), oov, skipped)


def _pair_fields(line):
    """Split a word-pair line at tabs, or at whitespace if it has no tab; drop empty trailing fields."""
    fields = [field.strip() for field in (line.split("\t") if "\t" in line else line.split())]
    while fields and not fields[-1]:
        fields.pop()
    return fields


def _pair_score(fields, score_column):
    """Return the finite score of a line's `fields`, or None if the line is not a word pair."""
    if score_column is None:
        if len(fields) != 3:
            return None
        text = fields[2]
    else:
        if len(fields) < score_column:
            return None
        text = fields[score_column - 1]
    try:
        score = float(text)
    except ValueError:
        return None
    # A NaN or infinite score makes both correlations meaningless.
    return score if math.isfinite(score) else None


def _layout_error(path, skipped_fields, score_column, tabs):
    """Return the EvaluationError for a word-pair file in which no line could be read."""
    if score_column is None:
        layout = "WORD1 WORD2 SCORE (separated by a tab or spaces, with # comments allowed)"
    else:
        layout = f"two words and a number in field {score_column}"
    message = f"{path}: no line has the layout {layout}, so there is nothing to evaluate"
    if not skipped_fields:
        return EvaluationError(message + "; the file has only blank and # comment lines")
    counts = Counter(len(fields) for fields in skipped_fields)
    width, width_lines = counts.most_common(1)[0]
    if len(skipped_fields) == 1:
        message += f"; 1 line was skipped, with {plural(width, 'field')}"
    else:
        message += (f"; {plural(len(skipped_fields), 'line')} were skipped, {width_lines:,} of them with "
                    f"{plural(width, 'field')}")
    column = _numeric_column(skipped_fields)
    if column is None or column == score_column:
        return EvaluationError(message)
    message += f". Field {column} is a number in most of them. If it is the score, read the score from field {column}"
    if tabs and width > 3:
        message += f" or keep only fields 1, 2 and {column} (cut -f1,2,{column} {path})"
    return EvaluationError(message, options=("score_column",))


def _numeric_column(skipped_fields):
    """Return the first 1-based field after the two words that is a number in most lines, or None."""
    width = max(len(fields) for fields in skipped_fields)
    for index in range(2, width):
        numbers = sum(_is_number(fields[index]) for fields in skipped_fields if index < len(fields))
        if numbers * 2 > len(skipped_fields):
            return index + 1
    return None


def _is_number(text):
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _number_or_none(value):
    """Return `value`, or None for NaN, which JSON cannot hold."""
    return None if value != value else value


def pearson(x, y):
    """Return Pearson's correlation of two equal-length arrays; NaN (undefined) if one is constant.

    scipy, which gensim calls, also returns NaN there.
    """
    if len(x) == 0:
        return float("nan")
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    y = np.asarray(y, dtype=np.float64) - np.mean(y)
    denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
    return float(np.dot(x, y) / denominator) if denominator > 0 else float("nan")


def average_ranks(values):
    """Return the 1-based ranks of `values`, tied values sharing their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    group_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def spearman(x, y):
    """Return Spearman's rank correlation: Pearson's correlation of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))
