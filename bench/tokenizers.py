"""Measure tokenizer throughput in MB/s next to Python's str.split on the same text.

    .venv/bin/python bench/tokenizers.py                 # 5 MB of English, all the Chinese
    .venv/bin/python bench/tokenizers.py --en-mb 2 --zh-mb 2 --repeat 3

Each corpus is decompressed and decoded into memory first, then each tokenizer splits
it line by line, as build-vocab does. MB counts UTF-8 bytes of the decoded text (1 MB =
10^6 bytes). The time is the best of --repeat runs. embcli's Unicode tables and
jieba's dictionary are loaded before timing starts. "jieba.lcut, whole line" is jieba
alone on each line, without embcli's normalization or its default rule between
Chinese runs.
"""

import argparse
import gzip
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from embcli.tokenize import Tokenizer  # noqa: E402



def find_shared_data():
    """Return the first shared/data folder found beside the repository or above it."""
    folder = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    while True:
        parent = os.path.dirname(folder)
        candidate = os.path.join(parent, "shared", "data")
        if os.path.isdir(candidate) or parent == folder:
            return candidate
        folder = parent


SHARED = find_shared_data()


def read_lines(path, megabytes):
    """Return the first `megabytes` MB (all if None) of a gzip text file as a list of lines."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        text = handle.read() if megabytes is None else handle.read(int(megabytes * 1_000_000))
    if megabytes is not None:
        # read() counted characters; cut at the byte budget and at a line end.
        data = text.encode("utf-8")[: int(megabytes * 1_000_000)]
        text = data.decode("utf-8", "ignore")
        text = text[: text.rfind("\n") + 1] or text
    return text.splitlines()


def best_time(function, lines, repeat):
    function("warm-up: 預熱 ウォームアップ")  # builds embcli's Unicode tables outside the timing
    best = float("inf")
    tokens = 0
    for _ in range(repeat):
        started = time.perf_counter()
        tokens = 0
        for line in lines:
            tokens += len(function(line))
        best = min(best, time.perf_counter() - started)
    return best, tokens


def splitters(with_jieba):
    yield "str.split", str.split
    yield "default", Tokenizer("default").tokenize
    yield "whitespace", Tokenizer("whitespace").tokenize
    if with_jieba:
        tokenizer = Tokenizer("jieba")
        segmenter = tokenizer._jieba()
        yield "jieba", tokenizer.tokenize
        yield "jieba.lcut, whole line", segmenter.lcut


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--en", default=os.path.join(SHARED, "corpus_en.txt.gz"))
    parser.add_argument("--zh", default=os.path.join(SHARED, "corpus_zh.txt.gz"))
    parser.add_argument("--en-mb", type=float, default=5.0, help="MB of English to read (default 5)")
    parser.add_argument("--zh-mb", type=float, default=None, help="MB of Chinese to read (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tokenizer; the best counts")
    parser.add_argument("--no-jieba", action="store_true", help="leave out the jieba rows")
    args = parser.parse_args()

    with_jieba = not args.no_jieba and importlib.util.find_spec("jieba") is not None
    if not args.no_jieba and not with_jieba:
        print("jieba is not installed (pip install 'embcli[zh]'): leaving out its rows", file=sys.stderr)
    corpora = [("English", args.en, args.en_mb), ("Chinese", args.zh, args.zh_mb)]
    print("| corpus | tokenizer | MB/s | speed / str.split | tokens | seconds |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for label, path, megabytes in corpora:
        lines = read_lines(path, megabytes)
        size = sum(len(line.encode("utf-8")) + 1 for line in lines) / 1_000_000
        label = f"{label} ({size:.1f} MB)"
        reference = None
        for name, function in splitters(with_jieba):
            seconds, tokens = best_time(function, lines, args.repeat)
            speed = size / seconds
            reference = reference or speed
            print(
                f"| {label} | {name} | {speed:.2f} | {speed / reference:.3f} | {tokens:,} "
                f"| {seconds:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
