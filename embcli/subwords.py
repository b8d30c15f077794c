"""fastText's character n-grams: hashing, n-gram extraction and word vectors (numpy only).

A subword model represents a word by its own row plus one row per character n-gram of
the word wrapped in '<' and '>' (Bojanowski et al. 2017, "Enriching Word Vectors with
Subword Information"). N-grams are hashed into a fixed number of buckets exactly as
fastText 0.9 does (src/dictionary.cc), so bucket ids agree with fastText's:
- the hash is 32-bit FNV-1a over the UTF-8 bytes, except that each byte is
  sign-extended before the XOR (fastText casts it through `int8_t`), so bytes >= 0x80
  hash differently from textbook FNV-1a;
- n counts characters (UTF-8 code points), not bytes;
- with n = 1, the lone '<' and '>' are skipped;
- bucket = hash % buckets, stored at row vocabulary size + bucket of the input matrix.

The word's vector is the sum (embcli's default) or the mean (fastText's) of those rows. A word outside the
vocabulary gets the same combination of its n-gram rows alone, as fastText's
`get_word_vector` does.
"""

import numpy as np

from embcli.errors import EmbcliError, ModelCorrupt

HASH_NAME = "fasttext-fnv1a-32"
FNV_OFFSET = 2166136261
FNV_PRIME = 16777619
BOW = "<"
EOW = ">"
COMBINATIONS = ("mean", "sum")
DEFAULT_MIN_N = 3
DEFAULT_MAX_N = 6
DEFAULT_BUCKETS = 2_000_000
# fastText's 2 M buckets; see the Subwords section of docs/benchmarks.md for the measurement.
SUBWORDS = "subwords.npy"
# The bucket of each row of subwords.npy, when it contains only the used buckets' rows.
SUBWORD_BUCKETS = "subword-buckets.npy"


def parse_range(text):
    """Return (min_n, max_n) from 'MIN-MAX' such as '3-6'; '0' or 'off' gives (0, 0)."""
    value = str(text).strip().lower()
    if value in ("0", "off", "none"):
        return 0, 0
    low, dash, high = value.partition("-")
    try:
        min_n, max_n = int(low), int(high if dash else low)
    except ValueError:
        raise EmbcliError(f"n-gram range {text!r} is not MIN-MAX, for example 3-6") from None
    if not 1 <= min_n <= max_n:
        raise EmbcliError(f"n-gram range {text!r} needs 1 <= MIN <= MAX, for example 3-6")
    return min_n, max_n


def fnv1a(data):
    """Return fastText's 32-bit hash of `data` (bytes or str, str as UTF-8) as an int."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    h = FNV_OFFSET
    for byte in data:
        # fastText XORs int8_t(byte) widened to uint32: bytes >= 0x80 carry 24 high ones.
        h ^= byte | 0xFFFFFF00 if byte >= 0x80 else byte
        h = (h * FNV_PRIME) & 0xFFFFFFFF
    return h


def ngrams(word, min_n, max_n):
    """Return the character n-grams of '<' + word + '>' in fastText's order (a list of str)."""
    wrapped = BOW + word + EOW
    found = []
    for start in range(len(wrapped)):
        for n in range(1, max_n + 1):
            stop = start + n
            if stop > len(wrapped):
                break
            if n >= min_n and not (n == 1 and (start == 0 or stop == len(wrapped))):
                found.append(wrapped[start:stop])
    return found


def ngram_hashes(words, min_n, max_n):
    """Return (offsets, hashes) for the n-grams of each word, in `ngrams`' order.

    `hashes` (uint32) holds the fastText hashes of all words' n-grams one word after
    another; word i owns hashes[offsets[i]:offsets[i + 1]]. A word may also be bytes,
    hashed as they are (fastText's words are bytes). Vectorized over all words:
    every character start is extended one byte at a time, because FNV-1a of a longer
    n-gram continues from the hash of its prefix.
    """
    encoded = [(BOW + word + EOW).encode("utf-8") if isinstance(word, str) else b"<" + word + b">" for word in words]
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    word_of_byte = np.repeat(np.arange(len(encoded), dtype=np.int64), lengths)
    word_end = np.cumsum(lengths)  # one past each word's last byte
    word_start = word_end - lengths
    is_char_start = (data & 0xC0) != 0x80
    starts = np.flatnonzero(is_char_start)
    signed = data.astype(np.int8).astype(np.int32).astype(np.uint32)

    # Column k holds the hash of the bytes starts..starts+k, the character count so far,
    # and whether an n-gram of that many characters ends at that byte.
    hashes = np.full(len(starts), FNV_OFFSET, dtype=np.uint32)
    chars = np.zeros(len(starts), dtype=np.int64)
    ends = word_end[word_of_byte[starts]]
    begins = word_start[word_of_byte[starts]]
    found_start, found_n, found_hash = [], [], []
    alive = np.ones(len(starts), dtype=bool)
    position = starts.copy()
    for _ in range(4 * max_n):
        alive &= position < ends
        if not alive.any():
            break
        index = np.flatnonzero(alive)
        byte_at = position[index]
        chars[index] += is_char_start[byte_at]
        alive[index] &= chars[index] <= max_n
        index = index[chars[index] <= max_n]
        byte_at = position[index]
        hashes[index] = (hashes[index] ^ signed[byte_at]) * np.uint32(FNV_PRIME)
        following = byte_at + 1
        complete = following >= ends[index]
        complete[~complete] = is_char_start[following[~complete]]
        n = chars[index]
        keep = complete & (n >= min_n)
        keep &= ~((n == 1) & ((starts[index] == begins[index]) | (following >= ends[index])))
        found_start.append(starts[index[keep]])
        found_n.append(n[keep])
        found_hash.append(hashes[index[keep]].copy())
        position += 1

    found_start = np.concatenate(found_start) if found_start else np.zeros(0, np.int64)
    found_n = np.concatenate(found_n) if found_n else np.zeros(0, np.int64)
    found_hash = np.concatenate(found_hash) if found_hash else np.zeros(0, np.uint32)
    order = np.lexsort((found_n, found_start))
    found_hash = found_hash[order]
    owner = word_of_byte[found_start[order]]
    counts = np.bincount(owner, minlength=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, found_hash


class SubwordTable:
    """The rows that make up each vocabulary word: its own row, then its n-gram rows.

    A CSR layout over a compact input matrix of shape (vocabulary size + used buckets,
    dim): word i owns rows[offsets[i]:offsets[i + 1]], whose first entry is i itself.
    Only the buckets that some vocabulary word hashes to get a row: row
    vocabulary size + k is bucket `bucket_ids[k]`. The other buckets never receive
    a gradient, so training leaves them at their initial values and does not hold
    them (155 k of 2 M buckets are used by a 32 k-word vocabulary with n-grams 3-6).
    """

    def __init__(self, offsets, rows, vocab_size, min_n, max_n, buckets, combination="mean",
                 bucket_ids=None):
        self.offsets = offsets  # (V + 1,) int64
        self.rows = rows  # (offsets[-1],) int64
        self.vocab_size = vocab_size
        self.min_n = min_n
        self.max_n = max_n
        self.buckets = buckets
        self.combination = combination
        # (used buckets,) int64, sorted; None means the full layout, row V + bucket.
        self.bucket_ids = bucket_ids

    @property
    def input_rows(self):
        """The number of rows of the input matrix that this layout indexes."""
        used = self.buckets if self.bucket_ids is None else len(self.bucket_ids)
        return self.vocab_size + used

    @classmethod
    def build(cls, words, min_n, max_n, buckets, combination="mean", compact=True):
        check_settings(min_n, max_n, buckets, combination)
        vocab_size = len(words)
        offsets, hashes = ngram_hashes(words, min_n, max_n)
        buckets_of = (hashes % np.uint32(buckets)).astype(np.int64)
        bucket_ids = None
        if compact:
            bucket_ids, buckets_of = np.unique(buckets_of, return_inverse=True)
            buckets_of = buckets_of.reshape(-1)
        counts = np.diff(offsets) + 1
        table_offsets = np.zeros(vocab_size + 1, dtype=np.int64)
        np.cumsum(counts, out=table_offsets[1:])
        rows = np.empty(table_offsets[-1], dtype=np.int64)
        rows[table_offsets[:-1]] = np.arange(vocab_size)
        is_ngram = np.ones(len(rows), dtype=bool)
        is_ngram[table_offsets[:-1]] = False
        rows[is_ngram] = buckets_of + vocab_size
        return cls(table_offsets, rows, vocab_size, min_n, max_n, buckets, combination, bucket_ids)

    def to_meta(self):
        return subword_meta(self.min_n, self.max_n, self.buckets, self.combination,
                            used_rows=self.bucket_ids is not None)


MAX_BUCKETS = 2**32 - 1


def check_settings(min_n, max_n, buckets, combination):
    if not 1 <= min_n <= max_n:
        raise EmbcliError(f"n-gram range {min_n}-{max_n} needs 1 <= MIN <= MAX")
    if buckets < 1:
        raise EmbcliError(f"the number of buckets must be at least 1, not {buckets}")
    if buckets > MAX_BUCKETS:
        raise EmbcliError(f"the number of buckets must be at most {MAX_BUCKETS:,}, because n-gram hashes "
                          f"are 32-bit, not {buckets:,}", options=("buckets",))
    if combination not in COMBINATIONS:
        raise EmbcliError(f"combination must be mean or sum, not {combination!r}")


def subword_meta(min_n, max_n, buckets, combination, used_rows=False):
    """Return the meta.json record that queries need to rebuild n-gram vectors.

    With `used_rows`, subwords.npy contains one row per used bucket, in bucket order, and
    SUBWORD_BUCKETS their bucket ids; otherwise one row per bucket.
    """
    settings = {
        "file": SUBWORDS,
        "hash": HASH_NAME,
        "hash_parameters": {"offset_basis": FNV_OFFSET, "prime": FNV_PRIME, "bytes": "int8 sign-extended"},
        "min_n": min_n,
        "max_n": max_n,
        "buckets": buckets,
        "bow": BOW,
        "eow": EOW,
        "combination": combination,
    }
    if used_rows:
        settings["rows"] = "used"
        settings["bucket_ids_file"] = SUBWORD_BUCKETS
    return settings


class SubwordVectors:
    """Vectors for words outside the vocabulary, from a model's n-gram bucket matrix.

    `stored_buckets` (sorted) gives the bucket of each row of `matrix` when it contains only
    the buckets that vocabulary words use; None means one row per bucket. A bucket
    without a row never received a gradient, so it adds nothing to a vector.
    """

    def __init__(self, buckets_matrix, settings, stored_buckets=None, path=SUBWORDS):
        self.matrix = buckets_matrix  # (rows, D) float32, memory-mapped
        self.path = path  # of the matrix, for messages
        self.stored_buckets = stored_buckets
        self.min_n = int(settings["min_n"])
        self.max_n = int(settings["max_n"])
        self.buckets = int(settings["buckets"])
        self.combination = settings.get("combination", "mean")
        if settings.get("hash") != HASH_NAME:
            raise EmbcliError(f"unknown n-gram hash {settings.get('hash')!r}; expected {HASH_NAME}")

    def bucket_ids(self, word):
        """Return the bucket ids (int64) of the n-grams of `word`."""
        _, hashes = ngram_hashes([word], self.min_n, self.max_n)
        return (hashes % np.uint32(self.buckets)).astype(np.int64)

    def vector(self, word):
        """Return (vector, count of the n-grams that make it) for `word`; the vector is
        None when no n-gram of `word` has a row."""
        ids = self.bucket_ids(word)
        total_ngrams = len(ids)
        if self.stored_buckets is not None and not len(self.stored_buckets):
            ids = ids[:0]
        elif self.stored_buckets is not None and len(ids):
            position = np.searchsorted(self.stored_buckets, ids).clip(max=len(self.stored_buckets) - 1)
            ids = position[self.stored_buckets[position] == ids]
        if len(ids) == 0:
            return None, 0
        rows = np.asarray(self.matrix[ids], dtype=np.float32)
        if not np.isfinite(rows).all():
            raise ModelCorrupt(f"{self.path}: the n-gram rows of {word!r} contain NaN or infinite values; "
                               "retrain the model")
        # Summed one row after another in n-gram order, then multiplied by the float32
        # reciprocal of the count, as fastText computes a vector: a model imported from
        # fastText gives the same float32 values as fastText itself.
        total = np.cumsum(rows, axis=0, dtype=np.float32)[-1]
        if self.combination == "mean":
            # fastText's mean over all the word's n-grams, with 0 for those without a row.
            total *= np.float32(1.0 / total_ngrams)
        return total, len(ids)
