"""Turn text into tokens, the same way for the corpus and for every query.

A tokenizer is described by a small dict (`Tokenizer.config()`) that the model's
metadata stores, so that queries are normalized and split exactly as the corpus was.

Every tokenizer first normalizes each line:
1. Format characters (category Cf: zero-width space and joiners, soft hyphen, BOM,
   bidirectional marks) and variation selectors are removed. Control characters
   (category Cc) become spaces.
2. Unicode NFKC normalization: full-width letters and digits become ASCII, half-width
   katakana become full-width, NO-BREAK SPACE becomes a space, and decomposed accents
   (NFD) are composed. CJK compatibility ideographs become their unified
   counterparts, but traditional and simplified characters are kept as they are.
3. Lowercasing (`str.lower`), unless case is kept.

Then the tokenizer's rule splits the line:

`default` finds tokens left to right. Its treatment of scripts written without
spaces follows the Unicode word boundary rules (UAX #29) without a dictionary:
- every CJK ideograph is a token of its own, as in BERT's basic tokenizer;
- every hiragana character is a token of its own;
- a run of katakana (with the prolonged sound mark) is one token, so loanwords such as
  コンピューター stay whole;
- Hangul is a letter like any other: Korean puts spaces between words, so a run of
  Hangul syllables is one token;
- a number with inner separators (`5.00`, `1,000`) is one token;
- otherwise a token is a maximal run of letters, digits, underscores and the combining
  marks that follow them (Arabic vowel signs, Devanagari vowel signs).
Everything else (whitespace of any kind, punctuation, symbols) separates tokens, so
`printer,` gives `printer`, `don't` gives `don` and `t`, and `web2.0` gives `web2`
and `0`. Thai, Lao, Khmer and Myanmar are also written without spaces, but this rule
has no dictionary for them, so a run of their letters stays one token.

`whitespace` splits on any Unicode whitespace and keeps everything else, punctuation
included, for corpora that are already tokenized or segmented.

`jieba` is the default rule, except that each run of CJK ideographs is segmented into
words by the jieba library (an optional dependency) with its default dictionary and
its HMM for unknown words.
"""

import importlib.util
import logging
import os
import re
import string
import sys
import tempfile
import unicodedata
import warnings
from dataclasses import dataclass, field

import numpy as np

from embcli.errors import QUOTE_CHARS, EmbcliError, QueryError, shorten

TOKENIZER_NAMES = ("default", "whitespace", "jieba")

# CJK ideographs: the URO, Extension A, compatibility ideographs and the
# supplementary-plane extensions B to H (the blocks BERT treats as CJK, plus the newer
# ones), and the ideographic iteration mark, closing mark and number zero (々〆〇).
_HAN = (
    "\u3005-\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    "\U00020000-\U0002a6df\U0002a700-\U0002ebef\U0002f800-\U0002fa1f"
    "\U00030000-\U000323af"
)
# Hiragana, with the iteration marks ゝゞ and the ligature ゟ, the hentaigana and
# archaic letters of the Kana Supplement and Kana Extended-A blocks, and small letters.
# U+1B132 and U+1B155 are new in Unicode 15; older Pythons treat them as unassigned.
_HIRAGANA = "\u3041-\u3096\u309d-\u309f\U0001b001-\U0001b11f\U0001b132\U0001b150-\U0001b152"
# Katakana, the prolonged sound mark and iteration marks (U+30FB, the middle dot, is
# punctuation), the phonetic extensions, and archaic and small letters.
_KATAKANA = (
    "\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff"
    "\U0001b000\U0001b120-\U0001b122\U0001b155\U0001b164-\U0001b167"
)
# Scripts written without spaces between words, which the default rule cannot segment.
_UNSPACED = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u1980-\u19df"

_HAN_RUN = re.compile(f"([{_HAN}]+)")
_HAS_CJK = re.compile(f"[{_HAN}{_HIRAGANA}{_KATAKANA}]")
_HAS_HAN = re.compile(f"[{_HAN}]")
_HAS_KANA = re.compile(f"[{_HIRAGANA}{_KATAKANA}]")
_HAS_UNSPACED = re.compile(f"[{_UNSPACED}]")


def _code_point_ranges(codes):
    """Return a regex character class body for the sorted code points `codes`."""
    parts = []
    start = previous = None
    for code in codes:
        if previous is not None and code == previous + 1:
            previous = code
            continue
        if start is not None:
            parts.append(_class_range(start, previous))
        start = previous = code
    if start is not None:
        parts.append(_class_range(start, previous))
    return "".join(parts)


def _class_range(first, last):
    if first == last:
        return re.escape(chr(first))
    return f"{re.escape(chr(first))}-{re.escape(chr(last))}"


class _Tables:
    """Character tables that take a scan of the Unicode database to build (about 0.1 s).

    Built on first use, so that a query found in the vocabulary as typed never pays for
    them. Only planes 0, 1 and 14 are scanned: the other planes hold no marks, format
    or control characters.
    """

    def __init__(self):
        marks, removed, spaced = [], [], []
        for plane in (range(0x0, 0x20000), range(0xE0000, 0xE1000)):
            for code in plane:
                category = unicodedata.category(chr(code))
                if 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF:
                    removed.append(code)  # variation selectors (category Mn)
                elif category[0] == "M":
                    marks.append(code)
                elif category == "Cf":
                    removed.append(code)
                elif category == "Cc" and not chr(code).isspace():
                    spaced.append(code)
        self.removed = re.compile(f"[{_code_point_ranges(removed)}]+")
        self.spaced = re.compile(f"[{_code_point_ranges(spaced)}]")
        mark = f"[{_code_point_ranges(marks)}]"
        not_word = f"\\W{_HAN}{_HIRAGANA}{_KATAKANA}"
        self.default_token = re.compile(
            f"[{_HAN}{_HIRAGANA}]"
            f"|[{_KATAKANA}][{_KATAKANA}\u3099\u309a]*"
            r"|\d+(?:[.,]\d+)+"
            # U+FFFD stands for a byte that could not be decoded: it stays inside the
            # word, so that a damaged word never merges with an intact one.
            f"|(?:[^{not_word}]|\ufffd)+(?:{mark}+(?:[^{not_word}]|\ufffd)*)*"
        )


# Exactly the default rule on ASCII text, which is most English lines, at twice its speed.
_ASCII_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|\w+", re.ASCII)
# The ASCII characters of the \w and \s classes: deleting them from ASCII text leaves
# nothing when the text has no punctuation, symbol or control character.
_ASCII_WORD_OR_SPACE = (string.ascii_letters + string.digits + "_ \t\n\r\f\v").encode("ascii")


_TABLES = None


def _tables():
    global _TABLES
    if _TABLES is None:
        _TABLES = _Tables()
    return _TABLES


class Tokenizer:
    """Split lines of text into tokens by one named, documented rule."""

    def __init__(self, name="default", lowercase=True, check_available=True):
        """Raise EmbcliError for an unknown name, or for jieba when it is not installed.

        `check_available=False` defers the jieba check to the first line that needs
        segmenting. A model built with jieba then still returns the vectors of queries
        that are in its vocabulary after normalization, without jieba installed.
        """
        if name not in TOKENIZER_NAMES:
            raise EmbcliError(
                f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZER_NAMES)}"
            )
        self.name = name
        self.lowercase = lowercase
        if name == "jieba" and check_available and importlib.util.find_spec("jieba") is None:
            raise _jieba_missing()

    @classmethod
    def from_config(cls, config):
        """Return the tokenizer that a model's metadata describes."""
        name = config.get("name", "default")
        if name not in TOKENIZER_NAMES:
            raise EmbcliError(
                f"the model was built with the tokenizer {name!r}, which this version of "
                f"embcli does not have ({', '.join(TOKENIZER_NAMES)}); upgrade embcli"
            )
        return cls(name, config.get("lowercase", True), check_available=False)

    def config(self):
        """Return the settings that meta.json records, enough to rebuild this tokenizer."""
        config = {
            "name": self.name,
            "lowercase": self.lowercase,
            "normalization": "NFKC",
            "unicode_version": unicodedata.unidata_version,
        }
        if self.name == "jieba":
            config["jieba_version"] = _jieba_version()
            config["jieba_hmm"] = True
        return config

    def normalize(self, text):
        """Return `text` cleaned, NFKC-normalized and (by default) lowercased."""
        if not text.isascii():
            tables = _tables()
            text = tables.removed.sub("", text)
            text = tables.spaced.sub(" ", text)
            text = unicodedata.normalize("NFKC", text)
        elif not text.isprintable():
            text = _tables().spaced.sub(" ", text)
        if self.lowercase:
            text = text.lower()
        return text

    def tokenize(self, text):
        """Return the list of tokens in `text` (one line or a piece of one)."""
        text = self.normalize(text)
        if self.name == "whitespace":
            return text.split()
        if text.isascii():
            # Without punctuation, symbols or control characters, the tokens are the
            # runs between whitespace; str.split finds them in half the time (text8).
            # bytes.translate checks this 9 times faster than a regular expression search.
            if not text.encode("ascii").translate(None, _ASCII_WORD_OR_SPACE):
                return text.split()
            return _ASCII_TOKEN.findall(text)
        find_tokens = _tables().default_token.findall
        if self.name == "default":
            return find_tokens(text)
        # jieba: the default rule between runs of CJK ideographs, jieba inside them.
        pieces = _HAN_RUN.split(text)
        if len(pieces) == 1:
            return find_tokens(text)
        cut = self._jieba().lcut
        tokens = []
        for index, piece in enumerate(pieces):
            if index % 2:
                tokens.extend(cut(piece, HMM=True))
            elif piece:
                tokens.extend(find_tokens(piece))
        return tokens

    def query_token(self, query, vocabulary=None):
        """Return the single token that `query` stands for, or raise QueryError.

        A query whose normalized form is a word of `vocabulary` (a set or dict) is that
        word, even where this tokenizer would split the query typed alone: jieba may
        segment a word differently with and without its context.
        """
        normalized = self.normalize(query).strip()
        if vocabulary is not None and normalized in vocabulary:
            return normalized
        if len(query) > QUOTE_CHARS and len(normalized.split(maxsplit=1)) > 1:
            # Every tokenizer splits at whitespace, so a long query with spaces is several
            # tokens. Stop before tokenizing it, which takes minutes for a line of 100 MB.
            # Short queries are tokenized, so their message can list the tokens.
            raise QueryError(
                f"{shorten(query)!r} contains several words, but a query is one word; "
                "query them one at a time"
            )
        tokens = self.tokenize(query)
        if len(tokens) == 1:
            return tokens[0]
        if not tokens:
            raise QueryError(f"{shorten(query)!r} contains no token under the {self.name} tokenizer")
        listed = shorten(" ".join(tokens))
        raise QueryError(
            f"{shorten(query)!r} splits into {len(tokens)} tokens under the {self.name} "
            f"tokenizer: {listed}; query them one at a time"
        )

    def _jieba(self):
        global _JIEBA
        if _JIEBA is None:
            _JIEBA = _load_jieba()
        return _JIEBA


# One jieba.Tokenizer per process, shared by every Tokenizer("jieba"): loading its
# dictionary takes about a second and 70 MB.
_JIEBA = None


def _jieba_missing():
    return EmbcliError(
        "the jieba tokenizer needs the jieba package, which is not installed; "
        "install it with: pip install 'embcli[zh]'"
    )


def _jieba_version():
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jieba")
    except PackageNotFoundError:
        return None


def _jieba_cache_dir():
    """Return a private directory for jieba's dictionary cache, or None if none can be made.

    jieba's default is the shared temporary directory, where any user could plant the
    marshal file that jieba then loads.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "embcli")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        return None
    return path


def _load_jieba():
    """Return a jieba.Tokenizer with its dictionary loaded, printing nothing.

    jieba logs "Building prefix dict..." and timing lines to stderr at DEBUG level when
    it loads its dictionary. Its logger is raised above CRITICAL for the load only, so a
    program that uses jieba's logging itself keeps its setting.
    """
    try:
        with warnings.catch_warnings():
            # Older Pythons compile jieba's regex literals with SyntaxWarnings.
            warnings.simplefilter("ignore")
            import jieba
    except ImportError:
        raise _jieba_missing() from None
    segmenter = jieba.Tokenizer()
    logger = logging.getLogger("jieba")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 10)
    try:
        cache_dir = _jieba_cache_dir()
        if cache_dir is not None:
            segmenter.tmp_dir = cache_dir
            segmenter.initialize()
        else:
            # Build the dictionary without a lasting cache rather than share one.
            with tempfile.TemporaryDirectory() as private:
                segmenter.tmp_dir = private
                segmenter.initialize()
    finally:
        logger.setLevel(level)
    return segmenter


# build-vocab's checks on the tokens it read. In the gold segmentation of People's
# Daily (January 1998), 99.3% of Chinese word tokens are one to four characters long
# and the median is 2, so CJK tokens whose median length reaches 5 are phrases or lines.
CJK_MEDIAN_LIMIT = 5
# Fewer CJK tokens than this share are left alone (names or quotes in other text).
CJK_MIN_SHARE = 0.05
# A median token over this many characters means lines were not split into words, in
# any script.
MEDIAN_LIMIT = 20
# Chinese text has almost no kana, while most Japanese sentences contain hiragana, so
# CJK tokens with at least this share of kana mark the text as Japanese.
JAPANESE_KANA_SHARE = 0.3


@dataclass
class TokenReport:
    """Statistics of the tokens build-vocab read, with warnings when they look wrong."""

    median_length: int  # token-weighted median length in characters
    cjk_share: float  # share of tokens that contain CJK ideographs or kana
    cjk_median_length: int  # median length of those tokens; 0 without any
    single_han_share: float  # share of tokens that are one CJK ideograph
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def to_json(self):
        return {
            "median_length": self.median_length,
            "cjk_share": round(self.cjk_share, 4),
            "cjk_median_length": self.cjk_median_length,
            "single_han_share": round(self.single_han_share, 4),
            "warnings": list(self.warnings),
        }


def _weighted_median(lengths, weights):
    if not len(lengths) or weights.sum() == 0:
        return 0
    order = np.argsort(lengths, kind="stable")
    cumulative = np.cumsum(weights[order])
    middle = np.searchsorted(cumulative, cumulative[-1] / 2)
    return int(lengths[order][middle])


def review_tokens(words, counts, tokenizer_name):
    """Return a TokenReport on the distinct `words` and their `counts` from one corpus.

    A warning names what looks wrong and the tokenizer that fits. A note describes what
    the tokenizer did with CJK text, where a user might not expect it.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    is_cjk = np.fromiter((_HAS_CJK.search(w) is not None for w in words), dtype=bool, count=len(words))
    single_han = (lengths == 1) & is_cjk
    single_han &= np.fromiter((_HAS_HAN.match(w) is not None for w in words), dtype=bool, count=len(words))
    cjk_total = int(counts[is_cjk].sum())
    report = TokenReport(
        median_length=_weighted_median(lengths, counts),
        cjk_share=cjk_total / total if total else 0.0,
        cjk_median_length=_weighted_median(lengths[is_cjk], counts[is_cjk]),
        single_han_share=int(counts[single_han].sum()) / total if total else 0.0,
    )

    japanese = _kana_share(words, counts, is_cjk) >= JAPANESE_KANA_SHARE
    unsegmented_cjk = report.cjk_share >= CJK_MIN_SHARE and report.cjk_median_length >= CJK_MEDIAN_LIMIT
    if unsegmented_cjk:
        report.warnings.append(
            f"{report.cjk_share:.0%} of tokens contain Chinese or Japanese characters, and "
            f"half of those are {report.cjk_median_length} or more characters long: the text "
            "looks unsegmented, with phrases or whole lines as tokens. "
            + _suggest_for_cjk(tokenizer_name, japanese)
        )
    elif report.median_length > MEDIAN_LIMIT:
        long_tokens = lengths > MEDIAN_LIMIT
        unspaced = np.fromiter((_HAS_UNSPACED.search(w) is not None for w in words), dtype=bool, count=len(words))
        unspaced_share = int(counts[long_tokens & unspaced].sum()) / int(counts[long_tokens].sum())
        report.warnings.append(
            f"half of the tokens are {report.median_length} or more characters long, so lines "
            "were not split into words. " + _suggest_for_long(tokenizer_name, unspaced_share)
        )

    if tokenizer_name == "default" and japanese and report.cjk_share >= CJK_MIN_SHARE:
        report.notes.append(
            f"{report.cjk_share:.0%} of tokens are Japanese, where the default tokenizer makes "
            "each kanji and hiragana a token and keeps katakana words whole; for Japanese "
            "words, segment the text with a Japanese segmenter such as MeCab and read the "
            "result with the whitespace tokenizer"
        )
    elif tokenizer_name == "default" and report.single_han_share >= CJK_MIN_SHARE:
        report.notes.append(
            f"{report.single_han_share:.0%} of tokens are single Chinese characters, because "
            "the default tokenizer makes each CJK ideograph a token. That suits classical "
            "Chinese; for words of modern Chinese, use the jieba tokenizer, or a segmented "
            "corpus with the whitespace tokenizer"
        )
    if tokenizer_name == "jieba" and total and not _any_han(words):
        report.notes.append(
            "the text contains no CJK ideographs, so jieba segmented nothing and every "
            "token comes from the default rule"
        )
    return report


def _any_han(words):
    return any(_HAS_HAN.search(word) for word in words)


def _kana_share(words, counts, is_cjk):
    """Return the share of CJK token occurrences that contain kana (Japanese text)."""
    has_kana = np.fromiter((_HAS_KANA.search(w) is not None for w in words), dtype=bool, count=len(words))
    cjk_total = int(counts[is_cjk].sum())
    return int(counts[has_kana].sum()) / cjk_total if cjk_total else 0.0


def _suggest_for_cjk(tokenizer_name, japanese):
    if japanese:
        return (
            "For Japanese, the default tokenizer makes each kanji and hiragana a token and "
            "keeps katakana words whole; for words, segment the text with a Japanese "
            "segmenter such as MeCab and read the result with the whitespace tokenizer."
        )
    if tokenizer_name == "whitespace":
        return (
            "The whitespace tokenizer splits only at spaces. Use the jieba tokenizer for "
            "Chinese words, or the default tokenizer for one token per character."
        )
    return "Use the jieba tokenizer for Chinese words, or the default tokenizer for one token per character."


def _suggest_for_long(tokenizer_name, unspaced_share):
    if unspaced_share >= 0.5:
        return (
            "Most long tokens are Thai, Lao, Khmer or Myanmar text, which is written without "
            "spaces: segment it with a word segmenter for that language and read the result "
            "with the whitespace tokenizer."
        )
    if tokenizer_name == "whitespace":
        return "The whitespace tokenizer splits only at spaces; the default tokenizer also splits at punctuation."
    return "Check that the corpus is text with spaces or punctuation between words."
