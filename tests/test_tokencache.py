"""The token cache: memory-mapped reads that hand pages back, and a plain-I/O remap."""

import os

import numpy as np
import pytest

from embcli import store
from embcli.errors import ModelCorrupt
from embcli.tokencache import TokenCache
from embcli.tokenize import Tokenizer
from embcli.vocab import build_vocab


def mapped_kilobytes(path):
    """Return the resident kilobytes of this process's mappings of `path` (Linux smaps)."""
    total = 0
    inside = False
    with open("/proc/self/smaps", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:
                inside = fields[-1] == path
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
def test_reading_all_chunks_keeps_no_pages(tmp_path):
    path = str(tmp_path / "tokens.npy")
    values = np.arange(8 << 20, dtype=np.uint32)  # 32 MiB
    np.save(path, values)
    # Evict the file and read it back, so that its pages are cached as those of a file
    # that was read rather than just written. A fault then maps more neighbouring pages.
    # Reading each chunk with a margin before it then mapped about 6 MiB of pages again
    # after release() had dropped them (Linux 6.18, ext4), unless release() also drops the
    # pages before the slice.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)
    with open(path, "rb") as handle:
        while handle.read(1 << 20):
            pass

    cache = TokenCache(path)
    total = 0
    for begin in range(0, len(cache), 65536):
        chunk = cache[max(begin - 20, 0) : begin + 65536 + 20]
        total += int(chunk[-1])
    assert total > 0
    # What may stay mapped is the pages the kernel mapped ahead of the last fault, far
    # below the 32 MiB read.
    assert mapped_kilobytes(path) < 2 * 1024

    plain = np.load(path, mmap_mode="r")
    for begin in range(0, len(plain), 65536):
        np.array(plain[begin : begin + 65536])
    assert mapped_kilobytes(path) > 16 * 1024  # the plain memory map keeps what it read
    del plain


def test_slices_equal_the_array(tmp_path):
    path = str(tmp_path / "tokens.npy")
    values = np.random.default_rng(1).integers(0, 2**32, size=100_003, dtype=np.uint32)
    np.save(path, values)
    cache = TokenCache(path)
    assert len(cache) == len(values)
    np.testing.assert_array_equal(cache[:], values)
    np.testing.assert_array_equal(cache[4095:70_001], values[4095:70_001])
    assert cache[77] == values[77]
    np.testing.assert_array_equal(cache[10:20], values[10:20])  # after its pages were released


def test_wrong_dtype_is_model_corrupt(tmp_path):
    path = str(tmp_path / "tokens.npy")
    np.save(path, np.zeros(10, dtype=np.int64))
    with pytest.raises(ModelCorrupt, match="1-D uint32"):
        TokenCache(path)


def test_empty_cache_has_no_tokens(tmp_path):
    path = str(tmp_path / "tokens.npy")
    np.save(path, np.zeros(0, dtype=np.uint32))
    assert len(TokenCache(path)) == 0
    assert len(TokenCache(path)[0:10]) == 0


def test_build_vocab_cache_matches_text(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b a c\n\nzz a\nb b\n", encoding="utf-8")
    model_dir = str(tmp_path / "m")
    build_vocab(model_dir, [str(corpus)], Tokenizer(), min_count=2)
    words = [line.split("\t")[0] for line in open(os.path.join(model_dir, "vocab.tsv"), encoding="utf-8")]
    tokens = np.load(os.path.join(model_dir, "tokens.npy"), allow_pickle=False)
    end = int(store.LINE_END)
    text = [words[t] if t != end else "|" for t in tokens.tolist()]
    # c and zz fall below the minimum count; empty lines leave no marker.
    assert text == ["a", "b", "a", "|", "a", "|", "b", "b", "|"]
