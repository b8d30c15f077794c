"""Turn text into tokens, the same way for the corpus and for every query.

A tokenizer is described by a small dict (`Tokenizer.config()`) that the model's
metadata stores, so that queries are normalized and split exactly as the corpus was.

The `default` rule, applied to each line:
1. Unicode NFKC normalization, so full-width letters and digits become ASCII and
   NO-BREAK SPACE becomes a space.
2. Format characters (category Cf: zero-width space and joiners, soft hyphen, BOM,
   bidirectional marks) are removed. Control characters (category Cc) are separators.
3. Lowercasing (`str.lower`), unless case is kept.
4. Tokens are then found left to right:
   - every CJK ideograph is a token of its own, as in BERT's basic tokenizer, because
     Chinese text has no spaces between words;
   - a number with inner separators (`5.00`, `1,000`) is one token;
   - otherwise a token is a maximal run of letters, digits, combining marks and
     underscores.
   Everything else (whitespace of any kind, punctuation, symbols) separates tokens, so
   `printer,` gives `printer`, `don't` gives `don` and `t`, and `web2.0` gives `web2`
   and `0`.

The `whitespace` rule keeps text as it is (after NFC normalization, removal of format
characters and optional lowercasing) and splits on any Unicode whitespace.
"""

import re
import sys
import unicodedata

from embcli.errors import EmbcliError, QueryError

# CJK ideographs: the URO, Extension A, compatibility ideographs and the
# supplementary-plane extensions (B to H), the same blocks BERT treats as CJK.
_CJK = (
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    "\U00020000-\U0002a6df\U0002a700-\U0002ebef\U0002f800-\U0002fa1f"
    "\U00030000-\U0003134f"
)
_DEFAULT_TOKEN = re.compile(rf"[{_CJK}]|\d+(?:[.,]\d+)+|[^\W{_CJK}]+")


def _build_cleanup_table():
    """Map each format character to nothing and each non-whitespace control to a space.

    Also returns a regex character class of the combining marks (category M), found
    in the same pass over every code point.
    """
    table = {}
    mark_ranges = []
    for code in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(code))
        if category == "Cf":
            table[code] = None
        elif category == "Cc" and not chr(code).isspace():
            table[code] = " "
        elif category[0] == "M":
            if mark_ranges and mark_ranges[-1][1] == code - 1:
                mark_ranges[-1][1] = code
            else:
                mark_ranges.append([code, code])
    marks = "".join(f"{re.escape(chr(low))}-{re.escape(chr(high))}" for low, high in mark_ranges)
    return table, marks


_CLEANUP = None
_DEFAULT_TOKEN_UNICODE = None


def _cleanup_table():
    global _CLEANUP, _DEFAULT_TOKEN_UNICODE
    if _CLEANUP is None:
        _CLEANUP, marks = _build_cleanup_table()
        # Python's \w leaves out combining marks, so vowel signs (Devanagari, Thai) and
        # the dot of a lowercased "İ" would split words. Runs of marks join the token.
        _DEFAULT_TOKEN_UNICODE = re.compile(
            rf"[{_CJK}]|\d+(?:[.,]\d+)+|(?:[^\W{_CJK}]+|[{marks}]+)+"
        )
    return _CLEANUP


TOKENIZER_NAMES = ("default", "whitespace", "jieba")


class Tokenizer:
    """Split lines of text into tokens by one named, documented rule."""

    def __init__(self, name="default", lowercase=True):
        if name not in TOKENIZER_NAMES:
            raise EmbcliError(
                f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZER_NAMES)}"
            )
        self.name = name
        self.lowercase = lowercase
        self._jieba = None
        if name == "jieba":
            self._jieba = _import_jieba()

    @classmethod
    def from_config(cls, config):
        return cls(config.get("name", "default"), config.get("lowercase", True))

    def config(self):
        return {"name": self.name, "lowercase": self.lowercase}

    def normalize(self, text):
        """Return `text` normalized and cleaned as this tokenizer does before splitting."""
        form = "NFC" if self.name == "whitespace" else "NFKC"
        if not text.isascii():
            text = unicodedata.normalize(form, text).translate(_cleanup_table())
        elif not text.isprintable():
            text = text.translate(_cleanup_table())
        if self.lowercase:
            text = text.lower()
        return text

    def tokenize(self, text):
        """Return the list of tokens in `text` (one line or a piece of one)."""
        text = self.normalize(text)
        if self.name == "whitespace":
            return text.split()
        if self.name == "jieba":
            return [
                token
                for piece in text.split()
                for token in self._jieba.lcut(piece, HMM=True)
                if not token.isspace() and _has_word_char(token)
            ]
        if text.isascii():
            return _DEFAULT_TOKEN.findall(text)
        _cleanup_table()
        return _DEFAULT_TOKEN_UNICODE.findall(text)

    def query_token(self, query):
        """Return the single token that `query` stands for, or raise QueryError."""
        tokens = self.tokenize(query)
        if len(tokens) == 1:
            return tokens[0]
        if not tokens:
            raise QueryError(f"{query!r} contains no token under the {self.name} tokenizer")
        listed = " ".join(tokens)
        raise QueryError(
            f"{query!r} splits into {len(tokens)} tokens under the {self.name} "
            f"tokenizer: {listed}; query them one at a time"
        )


def _has_word_char(token):
    return any(ch.isalnum() for ch in token)


def _import_jieba():
    try:
        import jieba
    except ImportError:
        raise EmbcliError(
            "the jieba tokenizer needs the jieba package; install it with "
            "pip install 'embcli[zh]'"
        ) from None
    jieba.setLogLevel(60)
    return jieba
