"""The training engine: pair generation, subsampling, learning and reproducibility."""

import json
import math
import os
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from embcli import store
from embcli.cli import app
from embcli.errors import EmbcliError
from embcli.train import Corpus, TrainConfig, Trainer, init_vectors, keep_probabilities

CPU = torch.device("cpu")


def tiny_corpus(tmp_path, line_lengths):
    """A corpus whose every token is a distinct word id, so an id names its position."""
    tokens, line_of = [], {}
    next_id = 0
    for line, length in enumerate(line_lengths):
        for _ in range(length):
            line_of[next_id] = line
            tokens.append(next_id)
            next_id += 1
        tokens.append(int(store.LINE_END))
    path = tmp_path / "tokens.npy"
    np.save(path, np.asarray(tokens, dtype=np.uint32))
    return Corpus(str(path), np.ones(next_id, dtype=np.int64)), line_of


def chunk_examples(trainer, chunk_index, seed):
    """Load one chunk, drop the line ends (sample=0) and return its tensors and reduced windows."""
    raw, sentence, core, is_end, _ = trainer._load_chunk(trainer.chunks[chunk_index])
    kept = ~is_end
    ids, sentence, core = raw[kept], sentence[kept], core[kept]
    replay = torch.Generator().manual_seed(seed)
    window = trainer.config.window
    reduced = torch.randint(1, window + 1, (ids.shape[0],), generator=replay)
    return ids, sentence, core, dict(zip(ids.tolist(), reduced.tolist()))


def naive_contexts(center, reduced, line_of):
    """Positions within `reduced` of `center` on the same line, as word2vec.c visits them."""
    return [
        position
        for position in range(center - reduced, center + reduced + 1)
        if position != center and line_of.get(position) == line_of[center]
    ]


@pytest.mark.parametrize("chunk_tokens", [7, 64])
def test_skipgram_pairs_match_naive_reference(tmp_path, chunk_tokens):
    corpus, line_of = tiny_corpus(tmp_path, [1, 12, 3, 0, 9, 2, 15])
    config = TrainConfig(window=3, sample=0, chunk_tokens=chunk_tokens)
    trainer = Trainer(config, corpus, *init_vectors(len(corpus.counts), 4, 1), CPU)
    found, expected = [], []
    for chunk_index in range(len(trainer.chunks)):
        ids, sentence, core, reduced = chunk_examples(trainer, chunk_index, seed=chunk_index)
        inputs, outputs = trainer.skipgram_pairs(ids, sentence, core, torch.Generator().manual_seed(chunk_index))
        found += list(zip(inputs.tolist(), outputs.tolist()))
        for center in ids[core].tolist():
            # The context word's input vector predicts the center word, as in word2vec.c.
            expected += [(context, center) for context in naive_contexts(center, reduced[center], line_of)]
    assert sorted(found) == sorted(expected)
    assert all(line_of[a] == line_of[b] for a, b in found)
    assert max(abs(a - b) for a, b in found) <= 3
    assert len(found) < 2 * 3 * len(line_of)  # the reduced windows dropped some pairs


@pytest.mark.parametrize("chunk_tokens", [7, 64])
def test_grouped_pairs_match_offset_pairs(tmp_path, chunk_tokens):
    corpus, line_of = tiny_corpus(tmp_path, [1, 12, 3, 0, 9, 2, 15])
    config = TrainConfig(window=3, sample=0, chunk_tokens=chunk_tokens)
    trainer = Trainer(config, corpus, *init_vectors(len(corpus.counts), 4, 1), CPU)
    for chunk_index in range(len(trainer.chunks)):
        ids, sentence, core, _ = chunk_examples(trainer, chunk_index, seed=chunk_index)
        inputs, outputs = trainer.skipgram_pairs(ids, sentence, core, torch.Generator().manual_seed(chunk_index))
        positions, offsets, targets = trainer.skipgram_pairs_by_input(ids, sentence, core,
                                                                      torch.Generator().manual_seed(chunk_index))
        sizes = (offsets[1:] - offsets[:-1]).tolist()
        assert min(sizes, default=1) >= 1

        grouped = []
        for position, size, begin in zip(positions.tolist(), sizes, offsets.tolist()):
            for center in targets[begin:begin + size].tolist():
                grouped.append((ids[position].item(), center))
        assert sorted(grouped) == sorted(zip(inputs.tolist(), outputs.tolist()))

        # Each position comes once, in strides of 2 * window + 1: ordered by the
        # remainder of the division by the stride, then by place.
        stride = 2 * config.window + 1
        order = [(position % stride, position) for position in positions.tolist()]
        assert order == sorted(set(order))


def test_grouped_skipgram_step_sums_pair_changes(tmp_path):
    """With one set of negatives per step, the grouped step makes the same change as
    summing every pair's own gradient, computed from the vectors before the step."""
    corpus, _ = tiny_corpus(tmp_path, [40, 25])
    config = TrainConfig(window=2, sample=0, dim=8, shared_negatives=4, block=1024, batch=1024)
    start = init_vectors(len(corpus.counts), 8, 3)
    start[1].normal_(0, 0.1, generator=torch.Generator().manual_seed(4))
    trainer = Trainer(config, corpus, start[0].clone(), start[1].clone(), CPU)
    ids, sentence, core, _ = chunk_examples(trainer, 0, seed=0)
    lr = 0.05
    trainer._train_skipgram_by_input(ids, sentence, core, lr, torch.Generator().manual_seed(9))

    # Replay the draws: the reduced windows, then one step's negatives.
    replay = torch.Generator().manual_seed(9)
    positions, offsets, targets = trainer.skipgram_pairs_by_input(ids, sentence, core, replay)
    shared = trainer.step_negatives()
    negatives = trainer._draw_negatives((shared,), replay)

    expected_in, expected_out = start[0].clone(), start[1].clone()
    sizes = (offsets[1:] - offsets[:-1]).tolist()
    for position, size, begin in zip(positions.tolist(), sizes, offsets.tolist()):
        word = ids[position].item()
        h = start[0][word]
        for center in targets[begin:begin + size].tolist():
            g = (1 - torch.sigmoid(h @ start[1][center])) * lr
            expected_in[word] += g * start[1][center]
            expected_out[center] += g * h
            for negative in negatives.tolist():
                g = -torch.sigmoid(h @ start[1][negative]) * lr * config.negative / shared
                expected_in[word] += g * start[1][negative]
                expected_out[negative] += g * h

    assert targets.shape[0] < config.batch  # one step
    assert torch.allclose(trainer.input_vectors, expected_in, atol=1e-6)
    assert torch.allclose(trainer.output_vectors, expected_out, atol=1e-6)


def test_cbow_windows_match_naive_reference(tmp_path):
    corpus, line_of = tiny_corpus(tmp_path, [1, 12, 3, 0, 9, 2, 15])
    config = TrainConfig(method="cbow", window=3, sample=0, chunk_tokens=10)
    trainer = Trainer(config, corpus, *init_vectors(len(corpus.counts), 4, 1), CPU)
    found, expected, centers_seen = {}, {}, []
    for chunk_index in range(len(trainer.chunks)):
        ids, sentence, core, reduced = chunk_examples(trainer, chunk_index, seed=chunk_index)
        context, mask, centers = trainer.cbow_windows(ids, sentence, core, torch.Generator().manual_seed(chunk_index))
        for row, center in enumerate(centers.tolist()):
            found[center] = sorted(context[row][mask[row]].tolist())
        centers_seen += centers.tolist()
        for center in ids[core].tolist():
            contexts = naive_contexts(center, reduced[center], line_of)
            if contexts:  # a one-word line gives no CBOW example
                expected[center] = contexts
    assert found == expected
    assert len(centers_seen) == len(set(centers_seen))


def test_cbow_windows_in_one_step_do_not_overlap(tmp_path):
    corpus, _ = tiny_corpus(tmp_path, [200])
    config = TrainConfig(method="cbow", window=5, sample=0)
    trainer = Trainer(config, corpus, *init_vectors(len(corpus.counts), 4, 1), CPU)
    ids, sentence, core, _ = chunk_examples(trainer, 0, seed=0)
    _, _, centers = trainer.cbow_windows(ids, sentence, core, torch.Generator().manual_seed(0))
    # Centers that follow each other in the returned order are at least 2 * window + 1 apart
    # unless the order wraps to the next residue.
    gaps = np.diff(centers.numpy())
    assert (gaps[gaps > 0] >= 11).all()
    assert sorted(centers.tolist()) == list(range(200))


def test_keep_probability_is_word2vec_formula():
    counts = np.array([50_000, 5_000, 100, 1], dtype=np.int64)
    sample = 1e-3
    threshold = sample * counts.sum()
    keep = keep_probabilities(counts, sample)
    for count, probability in zip(counts, keep):
        expected = min(1.0, (math.sqrt(count / threshold) + 1) * threshold / count)
        assert probability == pytest.approx(expected, rel=1e-6)
    assert keep[0] < 0.4
    assert keep[-1] == 1.0
    assert (keep_probabilities(counts, 0) == 1).all()


def test_subsampling_keeps_frequent_word_at_formula_rate(tmp_path):
    # Word 0 is 90 % of the corpus; its kept fraction must match the formula.
    rng = np.random.default_rng(0)
    tokens = np.where(rng.random(60_000) < 0.9, 0, rng.integers(1, 200, 60_000)).astype(np.uint32)
    path = tmp_path / "tokens.npy"
    np.save(path, tokens)
    counts = np.bincount(tokens, minlength=200)
    corpus = Corpus(str(path), counts)
    trainer = Trainer(TrainConfig(sample=1e-3, chunk_tokens=60_000), corpus,
                      *init_vectors(200, 4, 1), CPU)
    raw, sentence, core, is_end, _ = trainer._load_chunk(0)
    ids, _, _ = trainer._subsample(raw, sentence, core, is_end, torch.Generator().manual_seed(1))
    kept = int((ids == 0).sum()) / int(counts[0])
    assert kept == pytest.approx(float(keep_probabilities(counts, 1e-3)[0]), abs=0.01)


def mean_cosine(matrix, pairs):
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return float(np.mean([unit[a] @ unit[b] for a, b in pairs]))


@pytest.mark.parametrize("method,negatives", [("skipgram", "shared"), ("cbow", "shared"), ("skipgram", "per-pair")])
def test_training_brings_cooccurring_words_closer(small_corpus, method, negatives):
    from embcli.tokenize import Tokenizer
    from embcli.train import train_model
    from embcli.vocab import build_vocab

    build_vocab("model", [small_corpus], Tokenizer(), min_count=5)
    # After 3 epochs, per-pair skip-gram's margin below was 0.09 to 0.105, depending on
    # how the chunks were cut. After 5 it is 0.15 to 0.16 (shared: 0.21, CBOW: 0.27).
    config = TrainConfig(method=method, negatives=negatives, dim=32, epochs=5, threads=1, device="cpu")
    stats = train_model("model", config)
    matrix = np.load("model/embeddings.npy")
    tokens = np.load("model/tokens.npy")
    # Neighbouring tokens of the corpus, skipping the 20 most frequent words, against
    # random pairs of the same words.
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(tokens) - 1, 20_000)
    first, second = tokens[starts], tokens[starts + 1]
    useful = (first < len(matrix)) & (second < len(matrix)) & (first >= 20) & (second >= 20) & (first != second)
    neighbours = list(zip(first[useful], second[useful]))[:2000]
    shuffled = rng.permutation([b for _, b in neighbours])
    random_pairs = [(a, b) for (a, _), b in zip(neighbours, shuffled) if a != b]
    assert mean_cosine(matrix, neighbours) > mean_cosine(matrix, random_pairs) + 0.1
    # At the start every score is 0, so the loss per example is (1 + negative) * ln 2.
    assert 0 < stats.final_loss < 6 * math.log(2)


def train_cli(*options):
    result = CliRunner().invoke(app, ["train", "--dim", "16", "--epochs", "1", "--quiet", *options])
    assert result.exit_code == 0, result.stderr
    with open("embcli-model/embeddings.npy", "rb") as handle:
        return handle.read()


@pytest.mark.parametrize("method", ["skipgram", "cbow"])
def test_one_thread_same_seed_is_byte_identical(small_corpus, method):
    result = CliRunner().invoke(app, ["build-vocab", small_corpus, "--quiet"])
    assert result.exit_code == 0, result.stderr
    options = ["--threads", "1", "--device", "cpu", "--method", method]
    first = train_cli(*options, "--seed", "7")
    second = train_cli(*options, "--seed", "7")
    other_seed = train_cli(*options, "--seed", "8")
    assert first == second
    assert first != other_seed


def test_two_threads_train_on_cpu(small_corpus):
    result = CliRunner().invoke(app, ["build-vocab", small_corpus, "--quiet"])
    assert result.exit_code == 0, result.stderr
    matrix_bytes = train_cli("--threads", "2", "--device", "cpu")
    meta = store.read_meta("embcli-model")
    assert meta["training"]["workers"] == 2
    assert meta["training"]["reproducible"] is False
    assert len(matrix_bytes) > 0


def test_default_threads_follow_cpu_affinity():
    import shutil
    import subprocess
    import sys

    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs taskset and at least 2 usable cores")
    code = "from embcli.train import default_threads; print(default_threads())"
    pinned = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code],
                            capture_output=True, text=True, check=True)
    free = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert pinned.stdout.strip() == "1"
    assert int(free.stdout.strip()) == min(len(os.sched_getaffinity(0)), 8)


def test_cgroup_quota_caps_default_threads(tmp_path):
    from embcli.train import _cgroup_cpu_quota

    limited = tmp_path / "cpu.max"
    limited.write_text("150000 100000\n")
    unlimited = tmp_path / "unlimited"
    unlimited.write_text("max 100000\n")
    assert _cgroup_cpu_quota(str(limited)) == 1.5
    assert _cgroup_cpu_quota(str(unlimited)) is None
    assert _cgroup_cpu_quota(str(tmp_path / "missing")) is None


def test_chunk_pieces_train_each_center_once(tmp_path, monkeypatch):
    import embcli.train as train_module

    corpus, line_of = tiny_corpus(tmp_path, [1, 12, 3, 0, 9, 2, 15, 30, 8])
    monkeypatch.setattr(train_module, "PIECE_TOKENS", 16)
    config = TrainConfig(window=3, sample=0, chunk_tokens=64)
    pieces = []

    class Recording(Trainer):
        def train_skipgram_chunk(self, ids, sentence, core, lr, generator):
            inputs, outputs = self.skipgram_pairs(ids, sentence, core, generator)
            pieces.append(list(zip(inputs.tolist(), outputs.tolist())))
            return torch.zeros((), dtype=torch.float64), inputs.shape[0]

    trainer = Recording(config, corpus, *init_vectors(len(corpus.counts), 4, 1), CPU)
    words, examples, _ = trainer.train_chunk(0, 0, 0.025, 0)
    tokens = corpus.tokens[:64].tolist()
    in_chunk = [t for t in tokens if t != int(store.LINE_END)]
    position = {token: index for index, token in enumerate(tokens)}
    assert len(pieces) == 4
    assert words == len(in_chunk)
    assert examples == sum(len(pairs) for pairs in pieces)
    centers = [{center for _, center in pairs} for pairs in pieces]
    # Every word with a neighbour on its line is a center in exactly one piece.
    assert sum(len(c) for c in centers) == len(set().union(*centers))
    assert set().union(*centers) == {t for t in in_chunk if naive_contexts(t, 1, line_of)}
    for index, pairs in enumerate(pieces):
        assert all(line_of[a] == line_of[b] and abs(a - b) <= 3 for a, b in pairs)
        assert all(16 * index <= position[center] < 16 * (index + 1) for _, center in pairs)
    # The margins give a center near a piece's edge its contexts in the next piece.
    assert any(position[context] // 16 != position[center] // 16 for pairs in pieces for context, center in pairs)


@pytest.mark.parametrize("chunk_order", ["in-turn", "slices"])
def test_two_workers_cover_every_token_once(tmp_path, chunk_order):
    from embcli.train import _new_trainer

    corpus, _ = tiny_corpus(tmp_path, [37] * 40)
    config = TrainConfig(chunk_tokens=64, sample=0, chunk_order=chunk_order)
    V = len(corpus.counts)
    seen = []
    for worker in range(2):
        trainer = _new_trainer(config, corpus, torch.zeros(V, 4), torch.zeros(V, 4), CPU, worker, 2, None)
        starts = trainer.chunks
        for begin in starts:
            raw, _, core, _, _ = trainer._load_chunk(begin)
            seen.extend(raw[core].tolist())
        if chunk_order == "in-turn":
            assert starts == list(range(worker * 64, len(corpus), 128))
        else:
            assert starts == list(range(trainer.start, trainer.stop, 64))
    assert sorted(seen) == list(range(V))


def test_checkpoint_config_without_chunk_order_resumes_in_slices():
    from embcli.train import _config_from_json, _config_json

    saved = _config_json(TrainConfig())
    del saved["chunk_order"]
    assert _config_from_json(saved, TrainConfig()).chunk_order == "slices"
    assert _config_from_json(_config_json(TrainConfig()), TrainConfig()).chunk_order == "in-turn"


def test_negative_cdf_without_warnings():
    from embcli.train import negative_cdf

    counts = np.array([10**12, 10**9, 1000, 5, 1, 0], dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for exponent in (-1.0, 0.0, 0.75, 1.0):
            cdf = negative_cdf(counts, exponent)
            assert np.all(np.isfinite(cdf)), exponent
            assert np.all(np.diff(cdf) >= 0), exponent
            assert cdf[-1] == pytest.approx(1.0)
            assert cdf[-1] == cdf[-2], "a count of 0 is never drawn"
    uniform = negative_cdf(counts[:5], 0.0)
    np.testing.assert_allclose(np.diff(uniform, prepend=0), 0.2)
    proportional = negative_cdf(np.array([1, 3]), 1.0)
    np.testing.assert_allclose(proportional, [0.25, 1.0])


@pytest.mark.parametrize("exponent", ["100", "1e30", "-1.5", "1.01"])
def test_ns_exponent_outside_range_rejected(exponent):
    result = CliRunner().invoke(app, ["train", "-m", "nothing-here", "--ns-exponent", exponent])
    assert result.exit_code == 2
    assert "--ns-exponent" in result.output
    assert "range -1 to 1" in result.output
    with pytest.raises(EmbcliError, match="ns_exponent must be between -1.0 and 1.0"):
        TrainConfig(ns_exponent=float(exponent)).validate()


def test_burst_weights_word_filling_step(tmp_path):
    corpus, _ = tiny_corpus(tmp_path, [40])
    trainer = Trainer(TrainConfig(), corpus, *init_vectors(len(corpus.counts), 4, 1), CPU)
    limit = trainer.burst_limit
    assert limit == 64  # lr 0.025, one worker
    # Step 0: word 3 is the input of 200 of 300 pairs, word 5 the output of 100. Step 1:
    # every word at most 50 times.
    inputs = torch.tensor([3] * 200 + [4] * 100 + list(range(40)) * 5)
    outputs = torch.tensor([5] * 100 + [6] * 200 + list(range(40)) * 5)
    steps = torch.tensor([0] * 300 + [1] * 200)
    weight = trainer.burst_weights(inputs, outputs, steps)
    expected = torch.ones(500)
    expected[:100] = limit / 200  # word 3 as input and word 5 as output: the smaller
    expected[100:200] = limit / 200
    expected[200:300] = limit / 200  # word 6 as output, 200 times
    torch.testing.assert_close(weight, expected)
    # Ordinary text: no weights at all.
    assert trainer.burst_weights(torch.arange(500) % 40, torch.arange(500) % 37, torch.arange(500) // 100) is None


BURST_OPTIONS = [
    ["--method", "skipgram", "--threads", "1"],
    ["--method", "cbow", "--threads", "1"],
    ["--method", "skipgram", "--threads", "2", "--subwords", "3-6", "--buckets", "100000"],
]


@pytest.mark.parametrize("options", BURST_OPTIONS, ids=["skipgram", "cbow", "subwords"])
def test_train_run_of_one_repeated_word(tmp_path, options):
    # A table or a line of one repeated token fills whole update steps with one word.
    # Summed over a step, its hundreds of same-direction changes overshot, and every one
    # of these runs diverged in its first epoch at the default learning rate.
    lines = open(os.path.join(os.path.dirname(__file__), "data", "kjv_small.txt"), encoding="utf-8").readlines()
    corpus = tmp_path / "burst.txt"
    third = len(lines) // 3
    corpus.write_text("".join(lines[:third]) + " ".join(["zero"] * 20000) + "\n" + "".join(lines[third:]),
                      encoding="utf-8")
    model = str(tmp_path / "model")
    runner = CliRunner()
    assert runner.invoke(app, ["build-vocab", str(corpus), "-m", model, "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["train", "-m", model, "--epochs", "1", "--dim", "32", "--quiet", *options])
    assert result.exit_code == 0, result.stderr
    vectors = np.load(os.path.join(model, "embeddings.npy"))
    assert np.isfinite(vectors).all()
    assert np.abs(vectors).max() < 10


@pytest.mark.parametrize("method", [["--method", "skipgram"], ["--method", "cbow"],
                                    ["--subwords", "3-6", "--buckets", "50000"]], ids=["skipgram", "cbow", "subwords"])
def test_train_with_many_negatives(tmp_path, method):
    # With a fixed 16 shared negatives per 256 pairs, and a word's pair limit set for
    # --negative 5, all three diverged in their first epoch at --negative 25.
    corpus = os.path.join(os.path.dirname(__file__), "data", "kjv_small.txt")
    model = str(tmp_path / "model")
    runner = CliRunner()
    assert runner.invoke(app, ["build-vocab", corpus, "-m", model, "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["train", "-m", model, "--epochs", "3", "--dim", "32", "--threads", "1",
                                 "--negative", "25", *method, "--quiet"])
    assert result.exit_code == 0, result.stderr

    vectors = np.load(os.path.join(model, "embeddings.npy"))
    assert np.isfinite(vectors).all()
    assert np.abs(vectors).max() < 10


@pytest.mark.parametrize("lines, sample, advice", [
    # Two words that make up the whole corpus: subsampling keeps about 1 in 21 of each,
    # which with the default seed leaves no line with both.
    (["alpha beta"] * 500, "1e-3", "--sample 0"),
    (["alpha", "beta", "gamma"] * 200, "1e-3", "more than one word on a line"),
    (["alpha", "beta", "gamma"] * 200, "0", "more than one word on a line"),
])
def test_corpus_without_pairs_names_the_fix(tmp_path, lines, sample, advice):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    model = str(tmp_path / "model")
    runner = CliRunner()
    assert runner.invoke(app, ["build-vocab", str(corpus), "-m", model, "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["train", "-m", model, "--epochs", "1", "--threads", "1", "--sample", sample])

    assert result.exit_code == 1
    assert "found no (word, context) pairs" in result.stderr
    assert advice in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(model, "embeddings.npy"))


def test_tiny_corpus_trains_without_subsampling(tmp_path):
    # 6 words at --sample 0.001: each word is more frequent than 1 in 1,000, so
    # word2vec's formula would keep each with a chance of 6 % to 8 % and leave no pairs.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat\nthe dog sat\n", encoding="utf-8")
    model = str(tmp_path / "model")
    runner = CliRunner()
    assert runner.invoke(app, ["build-vocab", str(corpus), "-m", model, "--min-count", "1", "-q"]).exit_code == 0
    result = runner.invoke(app, ["train", "-m", model, "--threads", "1"])
    assert result.exit_code == 0, result.stderr
    assert "the corpus has 6 words, fewer than 1 / --sample (1,000)" in result.stderr
    assert "training without it (--sample 0)" in result.stderr
    with open(os.path.join(model, "meta.json"), encoding="utf-8") as handle:
        assert json.load(handle)["training"]["settings"]["sample"] == 0
    assert runner.invoke(app, ["lookup", "the", "-m", model]).exit_code == 0


@pytest.mark.parametrize("seed", ["18446744073709551616", "-9223372036854775809"])
def test_seed_outside_64_bits_is_usage_error(small_corpus, seed):
    result = CliRunner().invoke(app, ["train", "--epochs", "1", "--threads", "1", "-q", f"--seed={seed}"])
    assert result.exit_code == 2
    assert "--seed" in result.stderr
    with pytest.raises(EmbcliError, match="seed must be between"):
        TrainConfig(seed=int(seed)).validate()


@pytest.mark.parametrize("options", [[], ["--sample", "0"], ["--sample", "0", "--method", "cbow"]],
                         ids=["default", "sample-0", "cbow-sample-0"])
def test_train_corpus_mostly_one_word(tmp_path, options):
    # When one word is 90 % of the text, it is also most of every step's negatives, and
    # their summed changes diverged even at a 5 times lower learning rate.
    import random

    generator = random.Random(1)
    words = open(os.path.join(os.path.dirname(__file__), "data", "kjv_small.txt"), encoding="utf-8").read().split()
    tokens = ["spam" if generator.random() < 0.9 else generator.choice(words) for _ in range(150_000)]
    corpus = tmp_path / "spam.txt"
    corpus.write_text("".join(" ".join(tokens[i : i + 30]) + "\n" for i in range(0, len(tokens), 30)),
                      encoding="utf-8")
    model = str(tmp_path / "model")
    runner = CliRunner()
    assert runner.invoke(app, ["build-vocab", str(corpus), "-m", model, "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["train", "-m", model, "--epochs", "1", "--dim", "32", "--threads", "1",
                                 "--quiet", *options])
    assert result.exit_code == 0, result.stderr
    assert np.isfinite(np.load(os.path.join(model, "embeddings.npy"))).all()


@pytest.mark.parametrize("form", [["--seed", "7"], ["--seed=7"]])
def test_seed_warning_both_forms(small_corpus, tmp_path, form, monkeypatch):
    import sys

    model = str(tmp_path / "model")
    runner = CliRunner()
    assert runner.invoke(app, ["build-vocab", small_corpus, "-m", model, "--quiet"]).exit_code == 0
    arguments = ["train", "-m", model, "--epochs", "1", "--dim", "8", "--threads", "2", *form]
    # The warning looks at the command line as the shell passed it.
    monkeypatch.setattr(sys, "argv", ["embcli", *arguments])
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.stderr
    assert "results vary between runs even with --seed" in result.stderr


@pytest.mark.parametrize("count_negatives", [False, True])
def test_step_by_word_matches_per_pair_step(tmp_path, count_negatives):
    # Scoring each distinct input once against the step's negatives is the same update
    # as scoring every pair against them (one block of _negative_step): same negatives,
    # same sums, another order of float additions. The step draws 8 * 100 // 32 = 25.
    corpus, _ = tiny_corpus(tmp_path, [300])
    config = TrainConfig(block=32, shared_negatives=8, batch=100)
    one_block = TrainConfig(block=100, shared_negatives=25, batch=100)
    generator = torch.Generator().manual_seed(4)
    words = torch.randn(7, 16, generator=generator) * 0.3
    pair_word = torch.randint(0, 7, (100,), generator=generator)
    targets = torch.randint(0, 300, (100,), generator=generator)
    weight = torch.rand(100, generator=generator)
    initial_outputs = torch.randn(300, 16, generator=torch.Generator().manual_seed(5)) * 0.3

    results = []
    for by_word in (False, True):
        inputs, outputs = init_vectors(300, 16, 1)
        outputs.copy_(initial_outputs)
        trainer = Trainer(config if by_word else one_block, corpus, inputs, outputs, CPU)
        if count_negatives:
            # Word 0 is 90 % of the negatives, drawn more often than the limit per step.
            probability = torch.full((300,), 0.1 / 299, dtype=torch.float64)
            probability[0] = 0.9
            trainer.cdf = torch.cumsum(probability, 0)
        trainer.count_negatives = count_negatives
        draws = torch.Generator().manual_seed(9)
        if by_word:
            grad, loss = trainer._shared_negative_step_by_word(words, pair_word, targets, 0.025, draws, True, weight)
        else:
            per_pair, loss = trainer._negative_step(words[pair_word], targets, 0.025, draws, True, weight)
            grad = torch.zeros(7, 16).index_add_(0, pair_word, per_pair)
        results.append((grad, float(loss), outputs))

    (grad, loss, outputs), (grad_by_word, loss_by_word, outputs_by_word) = results
    assert not torch.equal(outputs, initial_outputs)
    torch.testing.assert_close(grad_by_word, grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(outputs_by_word, outputs, rtol=1e-5, atol=1e-7)
    assert loss_by_word == pytest.approx(loss, rel=1e-5)


def test_tickets_two_readers_each_once():
    """More tickets than the pipe holds: the parent refills it, and two forked readers
    together get every ticket once, each in increasing order."""
    import multiprocessing

    from embcli.train import _Tickets

    tickets = _Tickets(start=3, chunks=1000, epochs=12)  # 11,997 tickets; the pipe takes 8,192
    assert tickets.next < tickets.total
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    def reader():
        tickets.in_worker()
        taken = []
        while (ticket := tickets.take()) is not None:
            taken.append(ticket)
        results.put(taken)

    processes = [context.Process(target=reader) for _ in range(2)]
    for process in processes:
        process.start()
    while tickets.write_fd is not None:
        tickets.fill()
    first, second = results.get(timeout=60), results.get(timeout=60)
    for process in processes:
        process.join(timeout=60)
    tickets.release()
    assert sorted(first + second) == list(range(3, 12_000))
    assert first == sorted(first)
    assert second == sorted(second)


def test_ticket_resume_point_keeps_untrained_tickets():
    from embcli.train import _Tickets

    tickets = _Tickets(start=10, chunks=7, epochs=4)
    # Per worker: last ticket taken, busy, tickets taken.
    assert tickets.resume_point([10, 0, 0, 10, 0, 0], 2) == 10
    # Worker 0 trained 10 and is training 12; worker 1 trained 11 and 13.
    assert tickets.resume_point([12, 1, 2, 13, 0, 2], 2) == 12
    # Both idle after training 10-13.
    assert tickets.resume_point([12, 0, 2, 13, 0, 2], 2) == 14
    # Worker 1 is reading its next ticket: busy, still showing the trained 13.
    assert tickets.resume_point([14, 0, 3, 13, 1, 2], 2) == 13
    # All 28 - 10 tickets taken and trained.
    assert tickets.resume_point([27, 0, 9, 26, 0, 9], 2) == 28
    assert tickets.positions(28, 2) == [4, 0, 4, 0]
    assert tickets.positions(12, 2) == [1, 5, 1, 5]
    tickets.release()


def test_ticket_positions_convert_to_and_from_fixed_shares():
    from embcli.train import shares_from_ticket, ticket_from_positions

    # 7 chunks per epoch in turn: worker 0 trains 0, 2, 4, 6; worker 1 trains 1, 3, 5.
    assert ticket_from_positions([1, 5, 1, 5], 2, 7, dispatched=True) == 12
    # Fixed shares: worker 0 next trains its 3rd chunk (4) of epoch 1, worker 1 its 2nd (3).
    assert ticket_from_positions([1, 2, 1, 1], 2, 7, dispatched=False) == 7 + 3
    # A finished worker does not hold the others back.
    assert ticket_from_positions([3, 0, 2, 3], 2, 7, dispatched=False) == 14 + 7
    assert shares_from_ticket(12, 2, 7, epochs=3) == [1, 3, 1, 2]
    assert shares_from_ticket(13, 2, 7, epochs=3) == [1, 3, 2, 0]
    assert shares_from_ticket(21, 2, 7, epochs=3) == [3, 0, 3, 0]
    for ticket in range(22):
        shares = shares_from_ticket(ticket, 2, 7, epochs=3)
        # Each share resumes at its first chunk at or after the ticket.
        assert ticket_from_positions(shares, 2, 7, dispatched=False) == min(ticket, 21)


def test_two_workers_with_tickets_train_every_chunk_once(small_corpus, tmp_path):
    """Tiny chunks make 8 epochs of tickets outnumber what the pipe takes at once."""
    from embcli.tokenize import Tokenizer
    from embcli.train import _words_in, train_model
    from embcli.vocab import build_vocab

    vocab_dir = str(tmp_path / "model")
    build_vocab(vocab_dir, [small_corpus], Tokenizer(), min_count=3)
    tokens = np.load(os.path.join(vocab_dir, store.TOKENS), mmap_mode="r")
    chunk_tokens = max(16, len(tokens) // 1100)
    stats = train_model(vocab_dir, TrainConfig(dim=8, epochs=8, threads=2, chunk_tokens=chunk_tokens))
    counts = [int(line.split("\t")[1]) for line in open(os.path.join(vocab_dir, store.VOCAB), encoding="utf-8")]
    assert len(range(0, len(tokens), chunk_tokens)) * 8 > 8192
    assert stats.words == _words_in(Corpus(os.path.join(vocab_dir, store.TOKENS), counts)) * 8


def test_stats_without_loss_write_valid_json():
    """A resumed run with no chunk left has no loss: meta.json gets null, not NaN."""
    import json

    from embcli.train import TrainStats

    stats = TrainStats(words=10, examples=5, seconds=1.0, words_per_second=10.0, final_loss=float("nan"),
                       epochs_done=1)
    text = json.dumps(stats.to_json(), allow_nan=False)
    assert json.loads(text)["final_loss"] is None


@pytest.mark.parametrize("option, value", [("--window", "100000"), ("--negative", "100000")])
def test_window_and_negative_have_a_maximum(small_corpus, option, value):
    # Beyond them a piece's tensors or a step's negatives need gigabytes; 100,000 asked
    # for 52 GB (window) or ran one chunk for over 10 minutes (negative).
    result = CliRunner().invoke(app, ["train", "--epochs", "1", "--threads", "1", "-q", option, value])
    assert result.exit_code == 2
    assert option in result.stderr
    assert "1000" in result.stderr
    name = option.lstrip("-")
    with pytest.raises(EmbcliError, match=f"{name} must be at most 1,000"):
        TrainConfig(**{name: int(value)}).validate()


@pytest.mark.parametrize("method", ["skipgram", "cbow"])
@pytest.mark.parametrize("length", [0, 1, 3, 11])
def test_pieces_shorter_than_a_window_train(tmp_path, method, length):
    # Subsampling can leave a piece with no word at all, or fewer than a window's.
    counts = np.array([50, 40, 30, 20, 10])
    tokens = np.arange(max(length, 1), dtype=np.uint32)[:length] % 5
    path = str(tmp_path / "tokens.npy")
    np.save(path, tokens)
    config = TrainConfig(method=method, dim=8, window=5, sample=0)
    trainer = Trainer(config, Corpus(path, counts), *init_vectors(5, 8, 1), "cpu")
    ids = torch.from_numpy(tokens.astype(np.int64))
    sentence = torch.zeros(length, dtype=torch.int64)
    core = torch.ones(length, dtype=torch.bool)
    train = trainer.train_cbow_chunk if method == "cbow" else trainer.train_skipgram_chunk
    loss, examples = train(ids, sentence, core, 0.025, torch.Generator().manual_seed(1))
    assert (examples == 0) == (length < 2)  # CBOW counts centers, skip-gram pairs
    if method == "cbow":
        assert examples == (0 if length < 2 else length)
    assert math.isfinite(float(loss))
