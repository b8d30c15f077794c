"""The embcli command line: parse options, call the core, print results, map errors.

Results go to stdout as tab-separated text (JSON lines with --json). Progress,
summaries, warnings and errors go to stderr. Exit codes: 0 success, 1 error, 2 usage
error, 130 interrupted by SIGINT, 143 by SIGTERM.
"""

import functools
import json
import os
import sys
from typing import List, Optional

import typer

from embcli import __version__
from embcli.errors import EmbcliError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Build, train and query word embeddings.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

STATE = {"quiet": False, "debug": False}

ModelOption = typer.Option(
    None,
    "--model",
    "-m",
    envvar="EMBCLI_MODEL",
    help="Model directory. [default: $EMBCLI_MODEL, else ./embcli-model]",
    show_default=False,
)
JsonOption = typer.Option(False, "--json", help="Print JSON lines instead of tab-separated text.")
QuietOption = typer.Option(False, "--quiet", "-q", help="Print nothing on stderr but errors.")
NoSubwordsOption = typer.Option(
    False, "--no-subwords",
    help="Treat words outside the vocabulary as errors, even when the model has n-gram vectors.",
)


def _stderr(message):
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def note(message):
    """Print a progress or summary line on stderr, unless --quiet."""
    if not STATE["quiet"]:
        _stderr(message)


def error(message):
    _stderr(f"embcli: error: {message}")


# The flags that change each setting named in EmbcliError.options.
OPTION_FLAGS = {
    "encoding": "--encoding",
    "decode_errors": "--decode-errors replace",
    "min_count": "--min-count",
    "lr": "--lr",
    "force": "--force",
    "resume": "--resume",
}


def error_message(failure):
    """Return the message of an EmbcliError with the flags that fix it appended."""
    message = str(failure)
    flags = [OPTION_FLAGS.get(name, "--" + name.replace("_", "-")) for name in failure.options]
    if flags:
        message += f" [{', '.join(flags)}]"
    return message


def handle_errors(function):
    """Turn EmbcliError into a one-line message and exit code; hide tracebacks."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except EmbcliError as failure:
            error(error_message(failure))
            raise typer.Exit(failure.exit_code) from None
        except BrokenPipeError:
            # The reader of stdout went away (for example `| head`): stop quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(0) from None
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(130) from None
        except Terminated:
            error("stopped by SIGTERM")
            raise typer.Exit(143) from None
        except (typer.Exit, typer.Abort, SystemExit, typer.BadParameter):
            # typer prints a bad option value as a usage error and exits 2.
            raise
        except Exception as failure:
            if STATE["debug"] or os.environ.get("EMBCLI_DEBUG"):
                raise
            if isinstance(failure, OSError) and failure.strerror:
                # The environment failed (disk full, permission denied), not embcli.
                where = f"{failure.filename}: " if failure.filename else ""
                error(f"{where}{failure.strerror}")
                raise typer.Exit(1) from None
            if isinstance(failure, MemoryError):
                error("out of memory; use a smaller corpus, vocabulary (--min-count) or --dim")
                raise typer.Exit(1) from None
            error(
                f"internal error: {type(failure).__name__}: {failure}. This is a bug in "
                "embcli; run again with EMBCLI_DEBUG=1 (or --debug) to see the traceback"
            )
            raise typer.Exit(1) from None

    wrapper.handles_errors = True
    return wrapper


def _version_callback(value: bool):
    if value:
        typer.echo(f"embcli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing on stderr but errors."),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of internal errors."),
):
    """Build, train and query word embeddings."""
    STATE["quiet"] = quiet
    STATE["debug"] = debug or bool(os.environ.get("EMBCLI_DEBUG"))


def _progress_bar(total_bytes, label):
    """Return (update, finish) callbacks that draw a byte progress bar on stderr."""
    if STATE["quiet"] or not sys.stderr.isatty():
        return (lambda done: None), (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    console = Console(stderr=True)
    progress = Progress(TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=console, transient=True)
    task = progress.add_task(label, total=total_bytes)
    progress.start()

    def update(done):
        progress.update(task, completed=done)

    return update, progress.stop


def _input_size(paths):
    total = 0
    for path in paths:
        if path == "-" or not os.path.isfile(path):
            return None
        total += os.path.getsize(path)
    return total


@app.command("build-vocab")
@handle_errors
def build_vocab(
    corpus: List[str] = typer.Argument(..., help="Text files, .gz files, or - for stdin.", show_default=False),
    model: Optional[str] = ModelOption,
    min_count: int = typer.Option(5, "--min-count", min=1, help="Keep words that occur at least this many times."),
    max_size: Optional[int] = typer.Option(None, "--max-size", min=1,
                                           help="Keep at most this many words, the most frequent. [default: no limit]"),
    tokenizer: str = typer.Option(
        "default", "--tokenizer",
        help="How text becomes tokens: default (Unicode words, one token per CJK character), "
             "whitespace (text already segmented) or jieba (Chinese words; pip install 'embcli[zh]')."),
    keep_case: bool = typer.Option(False, "--keep-case", help="Keep letter case instead of lowercasing."),
    encoding: str = typer.Option("utf-8", "--encoding", help="Text encoding of the corpus, e.g. latin-1 or cp1252."),
    decode_errors: str = typer.Option("strict", "--decode-errors",
                                      help="strict: stop at an invalid byte; replace: decode it as U+FFFD."),
    force: bool = typer.Option(False, "--force",
                               help="Replace the model directory's trained embeddings, which no longer match."),
    quiet: bool = QuietOption,
):
    """Count the words of a corpus and write the model's vocabulary and token cache."""
    from embcli.tokenize import TOKENIZER_NAMES, Tokenizer
    from embcli.vocab import build_vocab as run_build_vocab
    from embcli.store import resolve_model_path

    STATE["quiet"] = STATE["quiet"] or quiet
    if decode_errors not in ("strict", "replace"):
        raise typer.BadParameter("use strict or replace", param_hint="--decode-errors")
    if tokenizer not in TOKENIZER_NAMES:
        raise typer.BadParameter(f"use one of {', '.join(TOKENIZER_NAMES)}", param_hint="--tokenizer")
    model_dir = resolve_model_path(model)
    tok = Tokenizer(tokenizer, lowercase=not keep_case)
    update, finish = _progress_bar(_input_size(corpus), "reading")
    try:
        summary = run_build_vocab(model_dir, corpus, tok, min_count, max_size, encoding, decode_errors,
                                  progress=update, replace_embeddings=force)
    finally:
        finish()
    note(
        f"read {summary.tokens:,} tokens on {summary.lines:,} lines; {summary.distinct:,} distinct "
        f"words; kept {summary.kept:,} with count >= {summary.min_count} "
        f"({summary.coverage:.1%} of tokens) in {model_dir}"
    )
    for line in summary.notes:
        note(f"note: {line}")
    for line in summary.warnings:
        note(f"warning: {line}")
    dropped = 1 - summary.kept / summary.distinct
    if dropped > 0.9:
        note(f"warning: --min-count {summary.min_count} dropped {dropped:.0%} of distinct words")


def _check_subwords(value):
    from embcli.subwords import parse_range

    try:
        parse_range(value)
    except EmbcliError as failure:
        raise typer.BadParameter(str(failure)) from None
    return value


@app.command()
@handle_errors
def train(
    corpus: Optional[List[str]] = typer.Argument(
        None, help="Corpus files to train on. [default: the corpus build-vocab read]", show_default=False),
    model: Optional[str] = ModelOption,
    method: str = typer.Option("skipgram", "--method", help="skipgram or cbow."),
    dim: int = typer.Option(100, "--dim", min=1, help="Vector size (number of dimensions)."),
    window: int = typer.Option(5, "--window", min=1, help="Maximum distance in words between a word and its context."),
    negative: int = typer.Option(5, "--negative", min=1, help="Negative samples per positive example."),
    sample: float = typer.Option(1e-3, "--sample", min=0.0, help="Subsampling threshold for frequent words; 0 turns it off."),
    epochs: int = typer.Option(5, "--epochs", min=1, help="Passes over the corpus."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Initial learning rate, decaying linearly. [default: 0.025 skipgram, 0.05 cbow]"),
    ns_exponent: float = typer.Option(0.75, "--ns-exponent", help="Negatives are drawn from word counts raised to this power."),
    negatives: str = typer.Option("shared", "--negatives",
                                  help="shared: each block of pairs shares its negatives (faster); per-pair: word2vec's objective."),
    seed: int = typer.Option(1, "--seed", help="Random seed. Runs with --threads 1 are reproducible."),
    threads: int = typer.Option(0, "--threads", min=0, help="Worker processes on the CPU. [default: 0, one per core, at most 8]"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint that an interrupted run saved."),
    force: bool = typer.Option(False, "--force",
                               help="Start from scratch even if an interrupted run left a checkpoint (it is discarded)."),
    checkpoint_every: float = typer.Option(10.0, "--checkpoint-every", min=0.0,
                                           help="Minutes between checkpoints during training; 0 saves one only on SIGINT or SIGTERM."),
    subwords: str = typer.Option("off", "--subwords", callback=_check_subwords,
                                 help="Character n-gram lengths MIN-MAX, as fastText's (e.g. 3-6), or off."),
    buckets: int = typer.Option(2_000_000, "--buckets", min=1, help="Hash buckets (rows) for the n-grams."),
    combination: str = typer.Option("mean", "--combination",
                                    help="How a word's row and n-gram rows make its vector: mean (fastText) or sum."),
    encoding: str = typer.Option("utf-8", "--encoding", help="Text encoding of CORPUS files."),
    decode_errors: str = typer.Option("strict", "--decode-errors", help="strict or replace, for CORPUS files."),
    quiet: bool = QuietOption,
):
    """Train word vectors on the corpus and save them in the model directory."""
    from embcli.store import resolve_model_path

    STATE["quiet"] = STATE["quiet"] or quiet
    model_dir = resolve_model_path(model)

    from embcli.subwords import parse_range
    from embcli.train import TrainConfig, train_model

    min_n, max_n = parse_range(subwords)
    config = TrainConfig(method=method, dim=dim, window=window, negative=negative, sample=sample,
                         epochs=epochs, lr=lr, ns_exponent=ns_exponent, negatives=negatives,
                         seed=seed, threads=threads, device=device, min_n=min_n, max_n=max_n,
                         buckets=buckets, combination=combination)
    if threads != 1 and not STATE["quiet"] and "--seed" in sys.argv:
        note("warning: with more than one thread, results vary between runs even with --seed; use --threads 1 to reproduce them")
    progress, finish = _training_progress()
    try:
        stats = train_model(model_dir, config, corpus or None, encoding, decode_errors, resume=resume,
                            progress=progress, discard_checkpoint=force,
                            checkpoint_seconds=checkpoint_every * 60)
    finally:
        finish()
    note(
        f"trained {stats.epochs_done} epochs over {stats.words // stats.epochs_done:,} words in {stats.seconds:.1f} s "
        f"({stats.words_per_second:,.0f} words/s, final loss {stats.final_loss:.4f}); saved {model_dir}"
    )


def _training_progress():
    if STATE["quiet"] or not sys.stderr.isatty():
        return None, (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("training"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[speed]} words/s  loss {task.fields[loss]}  lr {task.fields[lr]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
    )
    task = progress.add_task("training", total=1, speed="-", loss="-", lr="-")
    import time

    started = [None, 0.0]

    def update(words, total, examples, loss, lr):
        now = time.time()
        if started[0] is None:
            started[0], started[1] = now, words
            progress.start()
        elapsed = now - started[0]
        speed = f"{(words - started[1]) / elapsed:,.0f}" if elapsed > 0 else "-"
        progress.update(task, total=total, completed=words, speed=speed, loss=f"{loss:.4f}", lr=f"{lr:.5f}")

    return update, progress.stop


def _note_out_of_vocabulary(word, ngram_count):
    note(f"embcli: note: {word}: not in vocabulary; its vector combines {ngram_count} character n-grams")


def _read_stdin_queries():
    """Yield the non-blank lines of stdin; report each line that is not UTF-8 and skip it."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text-only stdin, for example in tests
        lines = (line.encode("utf-8", "surrogateescape") for line in sys.stdin)
    else:
        lines = iter(stream.readline, b"")
    for number, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as failure:
            error(f"<stdin>: line {number}: invalid UTF-8 (byte 0x{raw[failure.start]:02x} "
                  f"at byte {failure.start} of the line); queries must be UTF-8")
            STATE["stdin_failures"] += 1
            continue
        line = line.removeprefix("\ufeff") if number == 1 else line
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def _queries(words):
    """Return (queries, batch) where batch is True when queries come from stdin."""
    STATE["stdin_failures"] = 0
    if words == ["-"]:
        return _read_stdin_queries(), True
    return words, len(words) > 1


@app.command()
@handle_errors
def lookup(
    words: List[str] = typer.Argument(..., help="Words to look up, or - to read one per line from stdin.", show_default=False),
    model: Optional[str] = ModelOption,
    as_json: bool = JsonOption,
    no_subwords: bool = NoSubwordsOption,
):
    """Print the vector of each word: the word, then its values, tab-separated."""
    from embcli.model import Model

    opened = Model.open(model)
    queries, _ = _queries(words)
    failed = 0
    out = sys.stdout
    for word in queries:
        try:
            row, vector, ngram_count = opened.resolve(word, subwords=not no_subwords)
        except EmbcliError as failure:
            error(str(failure))
            failed += 1
            continue
        if row is None:
            _note_out_of_vocabulary(word, ngram_count)
        if as_json:
            out.write(json.dumps({"word": word, "vector": [float(v) for v in vector]}, ensure_ascii=False) + "\n")
        else:
            out.write(word + "\t" + "\t".join(f"{v:.6g}" for v in vector.tolist()) + "\n")
    out.flush()
    if failed or STATE.get("stdin_failures"):
        raise typer.Exit(1)


@app.command()
@handle_errors
def neighbors(
    words: List[str] = typer.Argument(..., help="Query words, or - to read one per line from stdin.", show_default=False),
    k: int = typer.Option(10, "-k", "--top", min=0, help="Number of neighbours per query."),
    restrict: Optional[int] = typer.Option(None, "--restrict", min=1,
                                           help="Search only the N most frequent words. [default: all]"),
    model: Optional[str] = ModelOption,
    as_json: bool = JsonOption,
    no_subwords: bool = NoSubwordsOption,
):
    """Print the k nearest words by cosine similarity, leaving the query word out."""
    from embcli.model import Model

    opened = Model.open(model)
    queries, batch = _queries(words)
    failed = 0
    out = sys.stdout
    for word in queries:
        try:
            # With -k 0 the word is still looked up, so an unknown word still fails.
            row, vector, ngram_count = opened.resolve(word, subwords=not no_subwords)
            if row is None:
                _note_out_of_vocabulary(word, ngram_count)
            result = opened.neighbors(word, k, restrict, subwords=not no_subwords)
        except EmbcliError as failure:
            error(str(failure))
            failed += 1
            continue
        for neighbor, score in result:
            if as_json:
                record = {"query": word, "word": neighbor, "score": round(score, 6)}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            elif batch:
                out.write(f"{word}\t{neighbor}\t{score:.4f}\n")
            else:
                out.write(f"{neighbor}\t{score:.4f}\n")
    out.flush()
    if failed or STATE.get("stdin_failures"):
        raise typer.Exit(1)


@app.command()
@handle_errors
def info(
    model: Optional[str] = ModelOption,
    as_json: bool = JsonOption,
):
    """Print the model's metadata: vocabulary, dimensions, settings, corpus, statistics."""
    from embcli import store

    model_dir = store.resolve_model_path(model)
    meta = store.read_meta(model_dir)
    if as_json:
        sys.stdout.write(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        return
    lines = [("model", os.path.abspath(model_dir))]
    vocab = meta.get("vocab", {})
    lines.append(("vocabulary", f"{vocab.get('size', '?')} words (min count {vocab.get('min_count', '?')})"))
    lines.append(("tokenizer", json.dumps(meta.get("tokenizer", {}))))
    if "dim" in meta:
        lines.append(("dim", str(meta["dim"])))
    for source in meta.get("corpus", {}).get("sources", []):
        lines.append(("corpus", f"{source['path']} ({source['size']} bytes)" if source["size"] is not None else source["path"]))
    if "vocab" in meta:
        lines.append(("tokens", f"{vocab.get('tokens_read', 0):,} read, {vocab.get('tokens_covered', 0):,} in vocabulary"))
    training = meta.get("training")
    if training:
        settings = training["settings"]
        lines.append(("training", " ".join(f"{key}={value}" for key, value in settings.items())))
        stats = training["stats"]
        lines.append(("run", f"{stats['seconds']:.1f} s, {stats['words_per_second']:,.0f} words/s, "
                             f"final loss {stats['final_loss']:.4f}, device {training['device']}"))
    else:
        lines.append(("training", "not trained yet"))
    if os.path.exists(os.path.join(model_dir, store.CHECKPOINT)):
        checkpoint = os.path.join(model_dir, store.CHECKPOINT)
        lines.append(("checkpoint", f"{checkpoint} (continue with: embcli train --resume -m {model_dir})"))
    lines.append(("embcli", meta.get("embcli_version", "?")))
    for key, value in lines:
        sys.stdout.write(f"{key}\t{value}\n")


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that cleanup code runs as for Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main():
    """Console entry point."""
    import signal

    # Training routes SIGTERM to its own handler while it runs, and restores this one.
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        app(prog_name="embcli")
    except KeyboardInterrupt:
        error("interrupted")
        sys.exit(130)
    except Terminated:
        error("stopped by SIGTERM")
        sys.exit(143)
