"""Train fastText-style subword vectors on the word2vec engine of embcli.train.

The input matrix has one row per vocabulary word followed by one row per n-gram bucket,
shape (V + buckets, D). A word's input vector combines its own row with the rows of its
character n-grams (embcli.subwords). The output matrix stays (V, D). As in
fastText 0.9 (src/model.cc), the gradient of a combined vector is added in full to each
row that went into it, for the mean as well as the sum.

How it differs from fastText, and why:
- N-gram rows are updated once per chunk of the corpus, not after every pair. At the
  start of a chunk, each distinct input word of the chunk gets its combined vector in a
  small chunk-local table; the chunk's steps read and update that table the way the
  word-level trainer reads and updates word rows. At the end of the chunk, each word's
  accumulated change is added to each of its rows. A word's own updates show in its
  vector at once, because adding g to each of its rows moves their mean by g (and their
  sum by g times the row count). Updates that reach a word through n-grams it shares
  with other words arrive at the next chunk. This gathers and scatters each distinct
  word's rows twice per chunk, where fastText does it for every (center, context) pair,
  which is where most of fastText's time goes.
- The pairs, negatives and steps are the word-level trainer's: shared negatives per
  block, `batch` pairs per step, and, as in word2vec.c, the context word's input
  vector predicts the center word. fastText predicts the context from the center's
  n-grams; the set of pairs is the same up to whose reduced window applies.
- CBOW averages the context words' combined vectors, where fastText averages all the
  n-gram rows of all context words together, so long words weigh more in fastText.
"""

import torch

from embcli.train import Trainer


def init_subword_vectors(vocab_size, buckets, dim, seed):
    """fastText's initialisation: input rows uniform in ±1/dim, output rows zero."""
    generator = torch.Generator().manual_seed(seed)
    # The matrix moves to shared memory before it is filled in place, so it never exists
    # twice. Hogwild workers need it there anyway.
    input_vectors = torch.empty(vocab_size + buckets, dim)
    input_vectors.share_memory_()
    input_vectors.uniform_(-1.0 / dim, 1.0 / dim, generator=generator)
    output_vectors = torch.zeros(vocab_size, dim)
    return input_vectors, output_vectors


class SubwordTrainer(Trainer):
    """A Trainer whose input vector for a word is the mean or sum of its subword rows."""

    def __init__(self, config, corpus, input_vectors, output_vectors, device, worker=0, workers=1,
                 table=None):
        super().__init__(config, corpus, input_vectors, output_vectors, device, worker, workers)
        self.row_offsets = torch.from_numpy(table.offsets[:-1]).to(device)
        self.row_counts = torch.from_numpy(table.offsets[1:] - table.offsets[:-1]).to(device)
        self.rows = torch.from_numpy(table.rows).to(device)
        self.mean = table.combination == "mean"
        # Scratch space for _open_chunk and _close_chunk, kept zero between chunks.
        self._word_slot = torch.zeros(self.vocab_size, dtype=torch.int64, device=device)
        self._row_hits = torch.zeros(input_vectors.shape[0], dtype=torch.float32, device=device)

    def _word_rows(self, words):
        """Return (rows, owner, counts) for distinct `words`: their input-matrix rows,
        the index in `words` that each row belongs to, and each word's row count."""
        counts = self.row_counts.index_select(0, words)
        owner = torch.repeat_interleave(torch.arange(words.shape[0], device=self.device), counts)
        # Row k of the result is entry (k - first row of its word) of that word's list.
        shift = self.row_offsets.index_select(0, words) - (torch.cumsum(counts, 0) - counts)
        position = torch.arange(owner.shape[0], device=self.device) + shift.index_select(0, owner)
        return self.rows.index_select(0, position), owner, counts

    def _blocks(self, distinct):
        # Blocks of words whose gathered rows take about 4 MB, because larger temporaries
        # are slow to allocate on the CPU.
        step = max(1, (1 << 20) // (16 * self.input_vectors.shape[1]))
        for first in range(0, distinct.shape[0], step):
            yield first, distinct[first : first + step]

    def _open_chunk(self, words):
        """Return (local ids of `words`, the distinct words, their (U, D) combined vectors)."""
        # torch.unique sorts; marking words in a vocabulary-sized array is linear.
        slot = self._word_slot
        slot.index_fill_(0, words.reshape(-1), 1)
        distinct = slot.nonzero().squeeze(1)
        slot.index_copy_(0, distinct, torch.arange(distinct.shape[0], device=self.device))
        local = slot.index_select(0, words.reshape(-1)).view(words.shape)
        slot.index_fill_(0, distinct, 0)
        table = torch.empty(distinct.shape[0], self.input_vectors.shape[1], device=self.device)
        for first, block in self._blocks(distinct):
            rows, owner, counts = self._word_rows(block)
            part = table[first : first + block.shape[0]].zero_()
            part.index_add_(0, owner, self.input_vectors.index_select(0, rows))
            if self.mean:
                part /= counts[:, None]
        return local, distinct, table

    def _close_chunk(self, distinct, table, start):
        """Add each word's accumulated change to its rows, split among the chunk's words.

        A row shared by h distinct words of the chunk gets the mean of their changes,
        not the sum: these changes were made without seeing each other, and their sum
        made training diverge.
        """
        change = table.sub_(start)
        rows, _, counts = self._word_rows(distinct)
        hits = self._row_hits
        hits.index_add_(0, rows, torch.ones(rows.shape[0], device=self.device))
        share = hits.index_select(0, rows).reciprocal_()
        hits.index_fill_(0, rows, 0)
        if not self.mean:
            change /= counts[:, None]
        done = 0
        for first, block in self._blocks(distinct):
            rows, owner, _ = self._word_rows(block)
            pushed = change[first : first + block.shape[0]].index_select(0, owner)
            pushed *= share[done : done + rows.shape[0], None]
            self.input_vectors.index_add_(0, rows, pushed)
            done += rows.shape[0]

    def _apply(self, table, local, grad):
        # Adding grad to each of a word's n rows moves their mean by grad, their sum by n * grad.
        if not self.mean:
            grad = grad * self.row_counts.index_select(0, self._distinct.index_select(0, local))[:, None]
        table.index_add_(0, local, grad)

    def train_skipgram_chunk(self, ids, sentence, core, lr, generator):
        inputs, outputs = self.skipgram_pairs(ids, sentence, core, generator)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        if inputs.shape[0] == 0:
            return loss, 0
        local, distinct, table = self._open_chunk(inputs)
        start = table.clone()
        self._distinct = distinct
        batch = self.config.batch
        for begin in range(0, inputs.shape[0], batch):
            word = local[begin : begin + batch]
            hidden = table.index_select(0, word)
            grad, step_loss = self._negative_step(hidden, outputs[begin : begin + batch], lr, generator)
            self._apply(table, word, grad)
            loss += step_loss
        self._close_chunk(distinct, table, start)
        return loss, inputs.shape[0]

    def train_cbow_chunk(self, ids, sentence, core, lr, generator):
        context, mask, centers = self.cbow_windows(ids, sentence, core, generator)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        if centers.shape[0] == 0:
            return loss, 0
        local_context, distinct, table = self._open_chunk(context)
        start = table.clone()
        self._distinct = distinct
        batch = max(1, self.config.batch // (2 * self.config.window) * 2)
        dim = table.shape[1]
        for begin in range(0, centers.shape[0], batch):
            words = local_context[begin : begin + batch]
            used = mask[begin : begin + batch]
            flat = words[used]
            sizes = used.sum(1)
            example = torch.repeat_interleave(torch.arange(words.shape[0], device=self.device), sizes)
            hidden = torch.zeros(words.shape[0], dim, device=self.device)
            hidden.index_add_(0, example, table.index_select(0, flat))
            hidden /= sizes[:, None]
            grad, step_loss = self._negative_step(hidden, centers[begin : begin + batch], lr, generator)
            self._apply(table, flat, grad.index_select(0, example))
            loss += step_loss
        self._close_chunk(distinct, table, start)
        return loss, centers.shape[0]
