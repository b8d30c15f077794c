"""Write the fastText .bin fixtures of tests/test_fasttext_bin.py and their reference vectors.

Run from the repository root with the bench extra installed (pip install -e '.[bench]'):
    python tests/data/fasttext/make_fixtures.py
The reference vectors are what the fastText package's get_word_vector returns, so the
tests compare embcli's import with fastText itself. The .bin files are small: dim 10 and
a few thousand buckets.
"""

import json
import os
import random

import fasttext

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = os.path.join(HERE, "..", "kjv_small.txt")
# Words inside and outside the vocabulary: inflections, misspellings, other scripts,
# words with no n-gram of the range, and other Unicode forms of vocabulary words (a
# full-width "The", a ligature, a zero-width space), which fastText hashes as given.
QUERIES_OUT = ["begat", "begatt", "Jerusalemm", "kingdoms", "unrighteousnesses", "über", "日本語", "x", "ab",
               "</s>x", "lovingkindness", "Ｔｈｅ", "ﬁsh", "ki\u200bng"]


def reference(model, words):
    return {word: [float(v) for v in model.get_word_vector(word)] for word in words}


def save(model, name, extra_words):
    path = os.path.join(HERE, name + ".bin")
    model.save_model(path)
    words = model.get_words(include_freq=False)
    chosen = list(words[:12]) + list(words[-6:]) + extra_words
    with open(os.path.join(HERE, name + ".json"), "w", encoding="utf-8") as handle:
        json.dump({"words": len(words), "vectors": reference(model, chosen)}, handle, ensure_ascii=False, indent=0)


def main():
    common = dict(dim=10, epoch=2, minCount=5, thread=1, verbose=0)
    save(fasttext.train_unsupervised(TEXT, model="skipgram", minn=3, maxn=6, bucket=3000, **common),
         "skipgram-3-6", QUERIES_OUT)
    save(fasttext.train_unsupervised(TEXT, model="cbow", minn=0, maxn=0, **common), "cbow-words", [])
    # A supervised model: label entries follow the words in its dictionary.
    lines = open(TEXT, encoding="utf-8").read().splitlines()
    rng = random.Random(3)
    labelled = os.path.join(HERE, "labelled.txt")
    with open(labelled, "w", encoding="utf-8") as handle:
        for line in lines[:2000]:
            handle.write(f"__label__{rng.choice(['law', 'song', 'story'])} {line}\n")
    try:
        model = fasttext.train_supervised(labelled, dim=5, epoch=2, minCount=3, minn=2, maxn=3, bucket=500,
                                          wordNgrams=2, thread=1, verbose=0)
    finally:
        os.remove(labelled)
    save(model, "supervised-2-3", ["Aaron", "Aarons", "zzz"])


if __name__ == "__main__":
    main()
