"""Build a vocabulary from a corpus, and cache the corpus as word ids for training.

One streaming pass tokenizes the corpus, counts words and writes each token's
provisional id (order of first appearance) to a temporary file. When the vocabulary is
fixed, a second pass over that file (not over the text) maps provisional ids to final
rows, drops words below the threshold, and writes `tokens.npy`. Training then never
tokenizes again, and a corpus read from standard input can still be trained on.

Word order: by count, highest first; words with equal counts in Unicode code point
order of the word. `max_size` keeps exactly that many words from the top of this order.
"""

import os
from dataclasses import dataclass, field

import numpy as np

from embcli import store
from embcli.corpus import TextStream, describe_source
from embcli.errors import EmptyCorpus
from embcli.tokenize import review_tokens

_FLUSH_IDS = 1 << 20
_REMAP_BLOCK = 1 << 20


class _ProvisionalIndex(dict):
    """word -> provisional id, assigning the next id to each new word."""

    def __missing__(self, word):
        value = self[word] = len(self)
        return value


@dataclass
class Scan:
    """The result of one pass over a corpus."""

    words: list  # provisional id -> word
    counts: np.ndarray  # provisional id -> count, int64
    ids_path: str  # raw uint32 provisional ids with LINE_END markers
    tokens: int
    lines: int
    bytes_read: int
    sources: list = field(default_factory=list)
    cut_warning: str = ""  # warning text when a cut in a run without whitespace split a word




# Characters on each side of a cut that decide whether the cut split a token.
_CUT_CONTEXT = 64


def scan_corpus(paths, tokenizer, work_dir, encoding="utf-8", errors="strict", progress=None, index=None):
    """Tokenize `paths`, count words and write token ids to a temporary file in `work_dir`.

    With `index` (a dict word -> id), words missing from it are dropped instead of
    counted, and the ids written are final.
    """
    sources = [describe_source(path) for path in paths]
    stream = TextStream(paths, encoding=encoding, errors=errors)
    fixed = index is not None
    if fixed:
        lookup = index.get
    else:
        index = _ProvisionalIndex()
        lookup = index.__getitem__
    line_end = int(store.LINE_END)
    ids_path = store.temp_path(work_dir, "ids.u32")
    buffer = []
    token_total = 0
    counts = np.zeros(0, dtype=np.int64)
    line_has_tokens = False
    cuts_seen, tail = 0, None
    split_words, first_split = 0, None
    with store.removed_on_error(ids_path), open(ids_path, "wb") as handle:
        for text, ends_line in stream:
            if tail is not None:
                # The stream cut the text before `text` inside a run without whitespace.
                # Count the cut if it split a token in two.
                head = text[:_CUT_CONTEXT]
                if tokenizer.tokenize(tail + head) != tokenizer.tokenize(tail) + tokenizer.tokenize(head):
                    split_words += 1
                    first_split = first_split or stream.last_cut
                tail = None
            if stream.cuts != cuts_seen:
                cuts_seen, tail = stream.cuts, text[-_CUT_CONTEXT:]
            tokens = tokenizer.tokenize(text)
            if tokens:
                token_total += len(tokens)
                ids = list(map(lookup, tokens))
                if fixed:
                    ids = [i for i in ids if i is not None]
                buffer.extend(ids)
                line_has_tokens = line_has_tokens or bool(ids)
            if ends_line and line_has_tokens:
                buffer.append(line_end)
                line_has_tokens = False
            if len(buffer) >= _FLUSH_IDS:
                counts = _flush_ids(handle, buffer, counts, line_end)
                buffer = []
                if progress is not None:
                    progress(stream.bytes_read)
        if line_has_tokens:
            buffer.append(line_end)
        counts = _flush_ids(handle, buffer, counts, line_end)
        handle.flush()
    if progress is not None:
        progress(stream.bytes_read)
    if fixed:
        words = [None] * len(index)
        for word, i in index.items():
            words[i] = word
    else:
        words = list(index)
    if len(counts) < len(words):
        counts = np.concatenate([counts, np.zeros(len(words) - len(counts), np.int64)])
    cut_warning = ""
    if split_words:
        name, line = first_split
        cut_warning = (
            f"{name}: line {line:,}: a run of more than 64 KiB without a space, tab or line break is read in "
            f"pieces of about 1 MiB, and {_split_words(split_words)} counted as two tokens; put line breaks "
            "or spaces in such text"
        )
    return Scan(words, counts, ids_path, token_total, stream.lines_read, stream.bytes_read, sources, cut_warning)


def _split_words(count):
    return "a word across two pieces was" if count == 1 else f"{count:,} words across two pieces were each"


def _flush_ids(handle, buffer, counts, line_end):
    """Write the ids of `buffer` to `handle`; return `counts` plus their counts."""
    if not buffer:
        return counts
    ids = np.asarray(buffer, dtype=np.uint32)
    ids.tofile(handle)
    ids = ids[ids != line_end]
    if not len(ids):
        return counts
    new = np.bincount(ids, minlength=len(counts)).astype(np.int64)
    new[: len(counts)] += counts
    return new


def order_words(words, counts, min_count=5, max_size=None):
    """Return the provisional ids kept, in final vocabulary order."""
    kept = [i for i in range(len(words)) if counts[i] >= min_count]
    kept.sort(key=lambda i: (-int(counts[i]), words[i]))
    if max_size is not None:
        kept = kept[:max_size]
    return kept


def remap_ids(ids_path, lookup, out_path):
    """Write `out_path` as a uint32 .npy of `lookup[id]` for every id, dropping misses.

    `lookup` maps provisional id -> final id, or -1 for a dropped word. LINE_END markers
    are kept, but never two in a row and never at the start. Both files are read and
    written a block at a time with plain file I/O, not memory maps, so the process holds
    one block however large the corpus is.
    """
    line_end = np.int64(store.LINE_END)
    # First pass: count what survives, so the .npy header can be written up front.
    total = sum(len(block) for block in _remapped_blocks(ids_path, lookup, line_end))
    with store.removed_on_error(out_path), open(out_path, "wb") as out:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint32)),
                  "fortran_order": False, "shape": (total,)}
        np.lib.format.write_array_header_1_0(out, header)
        for block in _remapped_blocks(ids_path, lookup, line_end):
            block.tofile(out)
        out.flush()
        os.fsync(out.fileno())
    return total


def _remapped_blocks(ids_path, lookup, line_end):
    previous_end = True
    with open(ids_path, "rb") as source:
        while True:
            block = np.fromfile(source, dtype=np.uint32, count=_REMAP_BLOCK)
            if not len(block):
                return
            block = _remap_block(block, lookup, line_end, previous_end)
            if len(block):
                previous_end = bool(block[-1] == line_end)
                yield block


def _remap_block(block, lookup, line_end, previous_end):
    ids = block.astype(np.int64)
    is_end = ids == line_end
    mapped = np.where(is_end, line_end, lookup[np.where(is_end, 0, ids)])
    mapped = mapped[mapped >= 0]
    # Lines whose words were all dropped leave LINE_END markers in a row: keep one.
    ends = mapped == line_end
    if len(mapped):
        repeated = np.zeros(len(mapped), dtype=bool)
        repeated[1:] = ends[1:] & ends[:-1]
        repeated[0] = ends[0] and previous_end
        mapped = mapped[~repeated]
    return mapped.astype(np.uint32)


@dataclass
class VocabSummary:
    tokens: int
    distinct: int
    kept: int
    covered: int
    min_count: int
    lines: int
    bytes_read: int
    # Words that --min-count alone would keep; more than `kept` when --max-size cut the list.
    above_min_count: int = 0
    warnings: list = field(default_factory=list)  # the tokens look wrong for the text
    notes: list = field(default_factory=list)  # what the tokenizer did, where worth saying

    @property
    def coverage(self):
        return self.covered / self.tokens if self.tokens else 0.0


def build_vocab(
    model_dir,
    paths,
    tokenizer,
    min_count=5,
    max_size=None,
    encoding="utf-8",
    errors="strict",
    progress=None,
    replace_embeddings=False,
):
    """Build `vocab.tsv`, `tokens.npy` and `meta.json` in `model_dir` from `paths`.

    Returns a VocabSummary. Raises EmptyCorpus, leaving the directory as it was, when
    no token passes `min_count`.
    """
    from embcli.errors import EmbcliError

    if min_count < 1:
        raise EmbcliError(f"min_count must be at least 1, not {min_count}")
    if max_size is not None and max_size < 2:
        raise EmbcliError(f"a vocabulary of at most {max_size} word is too small, because word vectors "
                          "need at least 2 words; raise the size limit", options=("max_size",))
    foreign = _files_of_another_program(model_dir)
    if foreign and not replace_embeddings:
        raise EmbcliError(
            f"{model_dir} contains {', '.join(foreign)} but no model that embcli saved, so "
            "build-vocab would replace files of another program; choose another model "
            "directory, or replace them on purpose",
            options=("force",),
        )
    # Trained vectors and a training checkpoint are rows of the old vocabulary.
    trained = [
        name
        for name in (store.EMBEDDINGS, *store.CHECKPOINT_FILES)
        if os.path.exists(os.path.join(model_dir, name))
    ]
    # The n-gram rows of a subword model, and their bucket ids, go with its embeddings.
    from embcli.subwords import SUBWORD_BUCKETS, SUBWORDS

    if store.EMBEDDINGS in trained:
        trained += [name for name in (SUBWORDS, SUBWORD_BUCKETS) if os.path.exists(os.path.join(model_dir, name))]
    if trained and not replace_embeddings:
        what = "trained embeddings" if store.EMBEDDINGS in trained else "a training checkpoint"
        raise EmbcliError(
            f"{model_dir} already contains {what}, which a new vocabulary would orphan; "
            "choose another model directory, or replace them on purpose",
            options=("force",),
        )
    # Files computed from the old rows would describe the wrong words after the new
    # vocabulary is committed: the stored norms and an approximate index.
    from embcli.ann import INDEX_FILES, INDEX_META

    derived = [store.NORMS, INDEX_META, *INDEX_FILES.values()]
    trained += [name for name in derived if os.path.exists(os.path.join(model_dir, name))]
    with store.writer_lock(model_dir):
        return _build_vocab_locked(
            model_dir, paths, tokenizer, min_count, max_size, encoding, errors, progress, trained
        )


def _files_of_another_program(model_dir):
    """Return the names of model files in `model_dir` that no embcli save wrote there.

    They are there when meta.json is missing or is not embcli's (not JSON, or without a
    format version).
    """
    from embcli.errors import ModelCorrupt, ModelNotFound

    if not os.path.isdir(model_dir):
        return []
    present = [name for name in (store.META, store.VOCAB, store.EMBEDDINGS, store.TOKENS, store.NORMS)
               if os.path.exists(os.path.join(model_dir, name))]
    if not present:
        return []
    try:
        store.read_meta(model_dir)
    except (ModelCorrupt, ModelNotFound):
        return present
    return []


def _build_vocab_locked(model_dir, paths, tokenizer, min_count, max_size, encoding, errors,
                        progress, trained):
    scan = scan_corpus(paths, tokenizer, model_dir, encoding, errors, progress)
    temporaries = [scan.ids_path]
    try:
        names = ", ".join("<stdin>" if p == "-" else p for p in paths)
        if scan.tokens == 0:
            raise EmptyCorpus(
                f"{names}: contains no tokens (the text is empty, or only whitespace, "
                "punctuation or control characters); nothing was written"
            )
        review = review_tokens(scan.words, scan.counts, tokenizer.name)
        kept = order_words(scan.words, scan.counts, min_count, max_size)
        if len(kept) < 2:
            message = (
                f"{len(kept)} of {len(scan.words):,} distinct words occur at least "
                f"{'once' if min_count == 1 else f'{min_count:,} times'} in {names}, and word vectors need "
                "at least 2 words; "
                + ("lower the minimum count" if len(scan.words) > 1 else "use a larger corpus")
                + "; nothing was written"
            )
            # When the tokens are whole lines, the tokenizer is the fault, not the count.
            for warning in review.warnings:
                message += f". {warning[0].upper()}{warning[1:]}"
            raise EmptyCorpus(message, options=("min_count",) if len(scan.words) > 1 else ())
        lookup = np.full(len(scan.words), -1, dtype=np.int64)
        lookup[np.asarray(kept, dtype=np.int64)] = np.arange(len(kept))
        tokens_tmp = store.temp_path(model_dir, store.TOKENS)
        temporaries.append(tokens_tmp)
        cached = remap_ids(scan.ids_path, lookup, tokens_tmp)
        words = [scan.words[i] for i in kept]
        counts = scan.counts[np.asarray(kept)]
        vocab_tmp = store.save_vocab_temp(model_dir, words, counts)
        temporaries.append(vocab_tmp)

        summary = VocabSummary(
            tokens=scan.tokens,
            distinct=len(scan.words),
            kept=len(words),
            covered=int(counts.sum()),
            min_count=min_count,
            lines=scan.lines,
            bytes_read=scan.bytes_read,
            above_min_count=int(np.count_nonzero(scan.counts >= min_count)),
            warnings=review.warnings + ([scan.cut_warning] if scan.cut_warning else []),
            notes=review.notes,
        )
        meta = store.new_meta(tokenizer.config())
        meta["vocab"] = {
            "size": len(words),
            "min_count": min_count,
            "max_size": max_size,
            "tokens_read": scan.tokens,
            "distinct_words": len(scan.words),
            "tokens_covered": summary.covered,
            "order": "count descending, then word in code point order",
            "token_review": review.to_json(),
        }
        meta["corpus"] = {
            "sources": [source.to_json() for source in scan.sources],
            "encoding": encoding,
            "decode_errors": errors,
            "lines": scan.lines,
            "bytes": scan.bytes_read,
        }
        meta["token_cache"] = {"tokens": cached, "line_end": int(store.LINE_END)}
        meta["files"] = {
            store.VOCAB: store.fingerprint(vocab_tmp),
            store.TOKENS: store.fingerprint(tokens_tmp),
        }
        meta_tmp = store.meta_temp(model_dir, meta)
        temporaries.append(meta_tmp)
        store.commit(
            model_dir,
            {store.VOCAB: vocab_tmp, store.TOKENS: tokens_tmp, store.META: meta_tmp},
            remove=trained,
        )
        temporaries = [scan.ids_path]
        return summary
    finally:
        for path in temporaries:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


def encode_corpus(model_dir, paths, tokenizer, words, encoding="utf-8", errors="strict", progress=None):
    """Tokenize `paths` with an existing vocabulary and return a temp path of tokens.npy."""
    index = {word: i for i, word in enumerate(words)}
    scan = scan_corpus(paths, tokenizer, model_dir, encoding, errors, progress, index=index)
    try:
        lookup = np.arange(len(words), dtype=np.int64)
        tokens_tmp = store.temp_path(model_dir, store.TOKENS)
        cached = remap_ids(scan.ids_path, lookup, tokens_tmp)
    finally:
        os.remove(scan.ids_path)
    return tokens_tmp, cached, scan
