"""Train fastText-style subword vectors on the word2vec engine of embcli.train.

The input matrix has one row per vocabulary word followed by one row per n-gram bucket
that some vocabulary word uses (the compact layout of embcli.subwords.SubwordTable). A
word's input vector combines its own row with the rows of its character n-grams. The
output matrix stays (V, D). With the mean, as in fastText 0.9 (src/model.cc), the
gradient of the combined vector is added in full to each row that went into it. With the
sum, each row takes that gradient divided by the word's row count. Either way a step
moves the combined vector equally far.

What differs from fastText, and why:
- Rows combine by their sum by default, not by fastText's mean. Then a shared n-gram
  row moves less for each word that uses it. This matters here because a step adds
  the changes of all its words to that row at once. On text8_en_5M with 2 workers,
  five runs with the sum scored 2.8-3.4 analogy points and 0.005-0.046 WS-353 above
  fastText. Two runs with the mean scored 0.8-1.9 points and 0.002-0.035 below it
  (docs/benchmarks.md, Subwords, fifth round). `--combination mean` gives fastText's rule.
- Skip-gram pairs are grouped by center word, whose n-grams form the input, as in
  fastText. All pairs of a step are scored before any update, and the input vector of
  each distinct word in a step is combined once and updated once with the sum of its
  gradients. fastText recombines and updates the n-gram rows after every (center,
  context) pair, which costs the n-gram gather and scatter once per pair; this costs it
  once per distinct word per step. The word's scores against the step's shared
  negatives are computed once per step too (Trainer._shared_negative_step_by_word).
- N-gram rows are updated after every step, not deferred. Deferring them to the end of
  each chunk of the corpus used 2.6 times less CPU than fastText, but the sum of many
  words' changes to a shared n-gram row, made without seeing each other, diverged, and
  their mean lost most of the accuracy (analogies 16 % instead of 49 % on a 5 M-token
  text; the Subwords section of docs/benchmarks.md has the numbers).
- A step adds the changes of all its words to each n-gram row at once. A row that many
  of a step's words share (a small --buckets, or words made of few characters, such as
  numbers) takes a reduced change, see SubwordTrainer._shared_row_scale. On text8_en_5M
  with two workers this touches 54 of about 187,000 rows, the most common n-grams.
- A word that fills a step, as in a table of numbers, has its pairs' changes limited as
  in the word-level trainer (embcli.train.BURST_PAIRS). Without it, text8_en_5M diverged
  in its first epoch at the default --sample 1e-3.
- Negatives are shared, as in the word-level trainer: one set per skip-gram step, one
  per block of CBOW examples. They are drawn from counts raised to 0.75 (fastText uses
  0.5, which scored lower here).
- The default learning rate is word2vec's 0.025, not fastText's 0.05: in summed steps,
  0.05 diverges on text where a rare word repeats within one step. Averaging such a
  word's gradients made 0.05 stable and raised WS-353 above fastText's, but cost 9
  analogy points (docs/benchmarks.md, Subwords, has the runs).
- CBOW averages the context words' combined vectors, where fastText averages all the
  n-gram rows of all context words together, so long words weigh more in fastText.
"""

import numpy as np
import torch

from embcli.train import LOSS_EVERY, Trainer, is_shared_memory_full


# A shared input row takes in full the changes of at most about this many words of one
# step (see SubwordTrainer._shared_row_scale). With 8, a corpus of 300 four-digit numbers
# still diverged on two workers at 100 buckets. With 4 it trained, and text8_en_5M's
# scores stayed the same.
SHARED_ROW_CAP = 4


def init_subword_vectors(table, dim, seed):
    """fastText's initialisation: input rows uniform in ±1/dim, output rows zero.

    The input matrix has the compact layout of `table`: the word rows, then one row per
    used bucket, all drawn from one generator.
    """
    generator = torch.Generator().manual_seed(seed)
    # The matrix moves to shared memory before it is filled in place, so it never exists
    # twice. Hogwild workers need it there anyway; one process does not, so a full
    # /dev/shm leaves it in private memory (and _share_vectors reports it to workers).
    input_vectors = torch.empty(table.input_rows, dim)
    try:
        input_vectors.share_memory_()
    except RuntimeError as error:
        if not is_shared_memory_full(error):
            raise
        input_vectors = torch.empty(table.input_rows, dim)
    input_vectors.uniform_(-1.0 / dim, 1.0 / dim, generator=generator)
    output_vectors = torch.zeros(table.vocab_size, dim)
    return input_vectors, output_vectors


def combine_word_vectors(vectors, table):
    """Return the (V, D) float32 sum or mean of each vocabulary word's rows of compact `vectors`.

    embedding_bag does not gather the rows first: 1 s less than gathering them for
    31,642 words with 2,000,000 buckets. A word without rows gets a zero vector.
    """
    combined = torch.nn.functional.embedding_bag(
        torch.from_numpy(table.rows.astype(np.int64, copy=False)), torch.from_numpy(vectors),
        torch.from_numpy(table.offsets[:-1].astype(np.int64, copy=False)), mode=table.combination)
    return combined.numpy()


class SubwordTrainer(Trainer):
    """A Trainer whose input vector for a word is the mean or sum of its subword rows."""

    def __init__(self, config, corpus, input_vectors, output_vectors, device, worker=0, workers=1,
                 table=None):
        super().__init__(config, corpus, input_vectors, output_vectors, device, worker, workers)
        self.row_offsets = torch.from_numpy(table.offsets[:-1]).to(device)
        self.row_counts = torch.from_numpy(table.offsets[1:] - table.offsets[:-1]).to(device)
        self.rows = torch.from_numpy(table.rows).to(device)
        self.mean = table.combination == "mean"
        self.row_scale = self._shared_row_scale()

    def _shared_row_scale(self):
        """Return, per input row, the factor applied to its summed change in a step.

        A step adds the changes of all its words to a shared n-gram row at once, each
        computed from the row's value before the step, where fastText applies them one
        after another. When many words of a step share a row (a small --buckets, or a
        vocabulary of words made from few characters, such as numbers), their sum
        overshoots and training diverged. A row's factor is SHARED_ROW_CAP over the
        expected number of its words in one step of each worker, at most 1. Word rows
        and the n-gram rows of a text such as text8 keep a factor of 1 or close to it.
        """
        counts = torch.as_tensor(self.corpus.counts, dtype=torch.float64, device=self.device)
        kept_counts = counts * self.keep.to(torch.float64)
        centers = self.config.batch / (self.config.window + 1) * self.workers
        present = -torch.expm1(-centers * kept_counts / kept_counts.sum().clamp(min=1.0))
        owner = torch.repeat_interleave(torch.arange(self.row_counts.shape[0], device=self.device), self.row_counts)
        sharing = torch.zeros(self.input_vectors.shape[0], dtype=torch.float64, device=self.device)
        sharing.index_add_(0, self.rows, present.index_select(0, owner))
        scale = (SHARED_ROW_CAP / sharing.clamp(min=1e-12)).clamp(max=1.0)
        return scale.to(self.input_vectors.dtype)

    def _word_rows(self, words):
        """Return (rows, owner) for distinct `words`: their input-matrix rows, and the
        position in `words` that each row belongs to."""
        counts = self.row_counts.index_select(0, words)
        owner = torch.repeat_interleave(torch.arange(words.shape[0], device=self.device), counts)
        # Row k of the result is entry (k - first row of its word) of that word's list.
        shift = self.row_offsets.index_select(0, words) - (torch.cumsum(counts, 0) - counts)
        position = torch.arange(owner.shape[0], device=self.device) + shift.index_select(0, owner)
        return self.rows.index_select(0, position), owner, counts

    def _combine(self, words):
        """Return (distinct words' vectors (U, D), inverse (len(words),), rows, owner, counts)."""
        distinct, inverse = torch.unique(words, return_inverse=True)
        rows, owner, counts = self._word_rows(distinct)
        gathered = self.input_vectors.index_select(0, rows)
        combined = torch.zeros(distinct.shape[0], gathered.shape[1], device=self.device)
        combined.index_add_(0, owner, gathered)
        if self.mean:
            combined /= counts[:, None]
        return combined, inverse, rows, owner, counts

    def _scatter(self, grad, inverse, rows, owner, counts):
        """Add the gradient of each input occurrence to every row of its word.

        With the sum, each row gets the gradient divided by the word's row count, so a
        step moves the sum as far as it moves the mean. The full gradient on each of
        n rows moves the sum n times as far, and training diverged at lr 0.025.
        """
        per_word = torch.zeros(counts.shape[0], grad.shape[1], device=self.device)
        per_word.index_add_(0, inverse, grad)
        if not self.mean:
            per_word /= counts[:, None]
        row_grad = per_word.index_select(0, owner)
        row_grad *= self.row_scale.index_select(0, rows)[:, None]
        self.input_vectors.index_add_(0, rows, row_grad)

    def center_pairs(self, ids, sentence, core, generator):
        """Return (center positions in `ids`, context ids) of a chunk's skip-gram pairs,
        grouped by center position in text order."""
        n = ids.shape[0]
        window = self.config.window
        reduced = torch.randint(1, window + 1, (n,), generator=generator, device=self.device)
        offsets = torch.cat([torch.arange(-window, 0), torch.arange(1, window + 1)]).to(self.device)
        position = torch.arange(n, device=self.device)[:, None] + offsets[None, :]  # (n, 2W)
        inside = (position >= 0) & (position < n)
        position = position.clamp(0, max(n - 1, 0))
        mask = inside & (offsets.abs()[None, :] <= reduced[:, None]) & core[:, None]
        mask &= sentence[position] == sentence[:, None]
        center_index, slot = mask.nonzero(as_tuple=True)
        return center_index, ids[position[center_index, slot]]

    def _skipgram_plan(self, ids, sentence, core, generator):
        """Lay out a chunk's skip-gram pairs as update steps of about `batch` pairs.

        Pairs are grouped by center word, and each step takes the center occurrences
        whose first pair falls in its `batch` pairs, so a step contains `batch` pairs give
        or take 2 * window - 1. Within a step,
        the occurrences of one word share one combined vector and one gradient, which
        is the same update as combining each occurrence on its own, because all of a
        step's scores read the vectors from before the step.

        Returns a dict of index tensors for the whole chunk and `bounds`, a list of
        (first pair, end pair, first word, end word, first row, end row, first scaled,
        end scaled) per step, where "scaled" lists the rows whose factor from
        _shared_row_scale is below 1. The "local" tensors index within their own step,
        so a step needs little arithmetic on them.
        """
        device = self.device
        batch = self.config.batch
        center_position, outputs = self.center_pairs(ids, sentence, core, generator)
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        if center_position.shape[0] == 0:
            return {"outputs": outputs}, []
        # Occurrences: runs of pairs with the same center position.
        occurrence_position, pair_counts = torch.unique_consecutive(center_position, return_counts=True)
        pair_starts = torch.cumsum(pair_counts, 0) - pair_counts
        occurrence_step = torch.div(pair_starts, batch, rounding_mode="floor")
        # Distinct (step, word) keys, sorted by step, so each step's words are contiguous.
        key = occurrence_step * self.vocab_size + ids.index_select(0, occurrence_position)
        distinct, occurrence_word = torch.unique(key, return_inverse=True)
        distinct_word = distinct % self.vocab_size
        distinct_step = torch.div(distinct, self.vocab_size, rounding_mode="floor")
        rows, row_owner, row_counts = self._word_rows(distinct_word)
        pair_word = torch.repeat_interleave(occurrence_word, pair_counts)

        steps = int(occurrence_step[-1]) + 1
        step_ids = torch.arange(steps + 1, device=device)
        word_bounds = torch.searchsorted(distinct_step, step_ids)
        row_starts = torch.cumsum(row_counts, 0) - row_counts
        row_bounds = torch.cat([row_starts, row_starts.new_tensor([rows.shape[0]])]).index_select(0, word_bounds)
        pair_bounds = torch.cat([pair_starts, pair_starts.new_tensor([center_position.shape[0]])])
        pair_bounds = pair_bounds.index_select(0, torch.searchsorted(occurrence_step, step_ids))
        first_word = word_bounds.index_select(0, distinct_step)  # first word of each word's step
        local_word = torch.arange(distinct.shape[0], device=device) - first_word
        plan = {
            "outputs": outputs,
            "rows": rows,
            "row_word": local_word.index_select(0, row_owner),
            "bag_offsets": row_starts - row_bounds.index_select(0, distinct_step),
            "pair_word": local_word.index_select(0, pair_word),
        }
        # A word that occurs k times in a step gets the sum of its k gradients. Their mean
        # let lr 0.05 train stably, but at lr 0.025 it lowered analogy
        # and WS-353 on text8 (the Subwords section of docs/benchmarks.md has the runs).
        scale = torch.ones(distinct.shape[0], dtype=self.input_vectors.dtype, device=device)
        if not self.mean:
            # See _scatter: with the sum, each row takes the gradient / row count.
            scale /= row_counts.to(self.input_vectors.dtype)
        plan["scale"] = scale
        # Few rows take a factor below 1, so a step scales only those of its rows.
        row_scale = self.row_scale.index_select(0, rows)
        scaled = (row_scale < 1).nonzero().squeeze(1)
        plan["scaled"] = scaled
        plan["scaled_by"] = row_scale.index_select(0, scaled)[:, None]
        scaled_bounds = torch.searchsorted(scaled, row_bounds)
        pair_step = torch.repeat_interleave(occurrence_step, pair_counts)
        plan["weight"] = self.burst_weights(ids.index_select(0, center_position), outputs, pair_step)
        bounds = torch.stack([pair_bounds[:-1], pair_bounds[1:], word_bounds[:-1], word_bounds[1:],
                              row_bounds[:-1], row_bounds[1:], scaled_bounds[:-1], scaled_bounds[1:]], 1).tolist()
        return plan, bounds

    def train_skipgram_chunk(self, ids, sentence, core, lr, generator):
        plan, bounds = self._skipgram_plan(ids, sentence, core, generator)
        mode = "mean" if self.mean else "sum"
        dim = self.input_vectors.shape[1]
        losses, sampled = [], 0
        for step, (p0, p1, w0, w1, r0, r1, s0, s1) in enumerate(bounds):
            rows = plan["rows"][r0:r1]
            # Gather and sum (or average) each word's rows in one kernel.
            combined = torch.nn.functional.embedding_bag(rows, self.input_vectors, plan["bag_offsets"][w0:w1],
                                                         mode=mode)
            pair_word = plan["pair_word"][p0:p1]
            with_loss = step % LOSS_EVERY == 0
            weight = None if plan["weight"] is None else plan["weight"][p0:p1]
            if self.config.negatives == "shared":
                per_word, loss = self._shared_negative_step_by_word(combined, pair_word, plan["outputs"][p0:p1], lr,
                                                                    generator, with_loss, weight)
            else:
                hidden = combined.index_select(0, pair_word)
                grad, loss = self._negative_step(hidden, plan["outputs"][p0:p1], lr, generator, with_loss, weight)
                per_word = torch.zeros(w1 - w0, dim, device=self.device).index_add_(0, pair_word, grad)
            per_word *= plan["scale"][w0:w1, None]
            row_grad = per_word.index_select(0, plan["row_word"][r0:r1])
            if s1 > s0:
                scaled = plan["scaled"][s0:s1] - r0
                row_grad.index_copy_(0, scaled, row_grad.index_select(0, scaled) * plan["scaled_by"][s0:s1])
            self.input_vectors.index_add_(0, rows, row_grad)
            if with_loss:
                losses.append(loss)
                sampled += p1 - p0
        return self._chunk_loss(losses, sampled, plan["outputs"].shape[0]), plan["outputs"].shape[0]

    def train_cbow_chunk(self, ids, sentence, core, lr, generator):
        context, mask, centers = self.cbow_windows(ids, sentence, core, generator)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        batch = max(1, self.config.batch // (2 * self.config.window) * 2)
        dim = self.input_vectors.shape[1]
        example_of_slot = torch.repeat_interleave(torch.arange(centers.shape[0], device=self.device), mask.sum(1))
        weight = self.cbow_burst_weights(context[mask], example_of_slot, centers, batch)
        for begin in range(0, centers.shape[0], batch):
            words = context[begin : begin + batch]
            used = mask[begin : begin + batch]
            flat = words[used]
            sizes = used.sum(1)
            example = torch.repeat_interleave(torch.arange(words.shape[0], device=self.device), sizes)
            combined, inverse, rows, owner, counts = self._combine(flat)
            hidden = torch.zeros(words.shape[0], dim, device=self.device)
            hidden.index_add_(0, example, combined.index_select(0, inverse))
            hidden /= sizes[:, None]
            grad, step_loss = self._negative_step(hidden, centers[begin : begin + batch], lr, generator, True,
                                                  None if weight is None else weight[begin : begin + batch])
            self._scatter(grad.index_select(0, example), inverse, rows, owner, counts)
            loss += step_loss
        return loss, centers.shape[0]
