"""The embcli command line: parse options, call the core, print results, map errors.

Results go to stdout as tab-separated text (JSON lines with --json). Progress,
summaries, warnings and errors go to stderr. Exit codes: 0 success, 1 error, 2 usage
error, 130 interrupted by SIGINT, 143 by SIGTERM.
"""

import functools
import json
import math
import os
import shlex
import sys
from typing import List, Optional

import typer

from embcli import __version__
from embcli.errors import DiskFull, EmbcliError, TrainingInterrupted, UnknownWord, is_disk_full, plural, shorten

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help text: rich markup would eat bracketed text such as 'embcli[zh]'.
    rich_markup_mode=None,
    help="Build, train and query word embeddings.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

STATE = {"quiet": False, "debug": False}

def _check_model_option(value):
    if value == "":
        raise typer.BadParameter("the model directory is empty; give a path, or leave the option out "
                                 "to use $EMBCLI_MODEL, else ./embcli-model")
    return value


ModelOption = typer.Option(
    None,
    "--model",
    "-m",
    envvar="EMBCLI_MODEL",
    help="Model directory. [default: $EMBCLI_MODEL, else ./embcli-model]",
    show_default=False,
    callback=_check_model_option,
)
JsonOption = typer.Option(False, "--json", help="Print JSON lines instead of tab-separated text.")
QuietOption = typer.Option(False, "--quiet", "-q", help="Print nothing on stderr but errors.")
NoSubwordsOption = typer.Option(
    False, "--no-subwords",
    help="Treat words outside the vocabulary as errors, even when the model has n-gram vectors.",
)


# Flags that the top-level command takes, shown at the end of each command's --help:
# they may also be given after the command (see _hoist_global_flags).
EPILOG = "Also accepted anywhere on the line: -q/--quiet (print only errors), --debug (tracebacks)."
EPILOG_OWN_QUIET = "Also accepted anywhere on the line: --debug (print the traceback of an internal error)."


# A message longer than this (a word of megabytes quoted from a damaged file) is cut.
MESSAGE_CHARS = 2000


def _stderr(message):
    if len(message) > MESSAGE_CHARS:
        message = f"{message[: MESSAGE_CHARS // 2]} ... ({len(message):,} characters in all) ... {message[-200:]}"
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        # The reader of stderr went away (`2>&1 | head -1`). The message is lost, but the
        # command goes on and its exit code still reports any failure.
        _point_at_devnull(sys.stderr)


def note(message):
    """Print a progress or summary line on stderr, unless --quiet."""
    if not STATE["quiet"]:
        _stderr(message)


_count = plural


def error(message):
    _stderr(f"embcli: error: {message}")
    _record_for_torchrun(f"embcli: error: {message}")


def _record_for_torchrun(message):
    """Write the first error of a torchrun rank to the error file that torchrun reads.

    torchrun then shows this message as the rank's failure in its summary, instead of a
    link to how to enable tracebacks. It names the file in TORCHELASTIC_ERROR_FILE, in
    the JSON layout of torch.distributed.elastic's ErrorHandler.record_exception.
    """
    import time

    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or STATE.get("torchrun_error_recorded"):
        return
    STATE["torchrun_error_recorded"] = True
    data = {"message": {"message": message, "extraInfo": {"py_callstack": message,
                                                          "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
    except OSError:
        pass  # the summary then shows torchrun's own text; the message is on stderr already


# The flags that change each setting named in EmbcliError.options.
OPTION_FLAGS = {
    "encoding": "--encoding",
    "decode_errors": "--decode-errors replace",
    "min_count": "--min-count",
    "lr": "--lr",
    "force": "--force",
    "resume": "--resume",
    "format_word2vec": "--format word2vec",
    "format_glove": "--format glove",
    "min_n": "--subwords",
    "max_n": "--subwords",
}


def error_message(failure):
    """Return the message of an EmbcliError with the flags that fix it appended."""
    message = str(failure)
    flags = [OPTION_FLAGS.get(name, "--" + name.replace("_", "-")) for name in failure.options]
    flags = list(dict.fromkeys(flags))  # min_n and max_n are both --subwords
    if flags:
        message += f" [{', '.join(flags)}]"
    return message


def _disk_full_message(path):
    return f"no space left on device while writing {path}; free some space or choose another --model directory"


class StdoutError(OSError):
    """A write to standard output failed, for example because it is a file on a full disk."""


class _CheckedStdout:
    """A proxy of sys.stdout whose failed writes raise StdoutError instead of a bare OSError.

    Without it, a full disk behind `> file` would be reported like a failed write in the
    model directory. BrokenPipeError passes through unchanged.
    """

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as failure:
            raise StdoutError(failure.errno, failure.strerror) from None

    def flush(self):
        try:
            return self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as failure:
            raise StdoutError(failure.errno, failure.strerror) from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _settle_stdout():
    """Flush stdout, or discard what it holds if that fails, so the exit adds no traceback."""
    try:
        sys.stdout.flush()
    except OSError:
        _discard_stdout()


def _discard_stdout():
    """Point stdout at os.devnull, so the flush at exit cannot fail a second time."""
    _point_at_devnull(sys.stdout)


def _point_at_devnull(stream):
    """Make the descriptor of `stream` write to os.devnull, so later writes and the flush at exit succeed."""
    try:
        descriptor = stream.fileno()
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor, for example in tests
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)


def _occupy_closed_descriptor(descriptor):
    """Open os.devnull as `descriptor`, which the process was started without (`>&-`).

    Otherwise the next file opened would get that number, and a library writing to
    stdout would write into it.
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    if devnull != descriptor:
        os.dup2(devnull, descriptor)
        os.close(devnull)


class _ClosedStream:
    """sys.stdout or sys.stdin of a process started with that stream closed: every
    read or write raises OSError EBADF, as on the closed descriptor."""

    def __init__(self, name):
        self.name = name

    def _fail(self, *args):
        import errno

        raise OSError(errno.EBADF, f"{os.strerror(errno.EBADF)}: {self.name} is closed")

    write = read = readline = readinto = _fail
    __iter__ = __next__ = _fail

    def flush(self):
        pass

    def isatty(self):
        return False

    fileno = _fail

    @property
    def buffer(self):
        return self


def _reported_by_another_rank(failure):
    """Return True for a model-directory error on a torchrun rank other than its node's first.

    Every rank of a node reads the same model directory and raises the same error. So
    only local rank 0 prints it, and the others exit with the same code.
    """
    from embcli.errors import ModelCorrupt, ModelNotFound

    if "WORLD_SIZE" not in os.environ or os.environ.get("LOCAL_RANK", "0") == "0":
        return False
    return isinstance(failure, (ModelCorrupt, ModelNotFound))


def handle_errors(function):
    """Turn EmbcliError into a one-line message and exit code; hide tracebacks."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            result = function(*args, **kwargs)
            sys.stdout.flush()  # so a failed write is reported here, not at interpreter exit
            return result
        except DiskFull as failure:
            error(_disk_full_message(failure.path))
            _settle_stdout()
            raise typer.Exit(1) from None
        except EmbcliError as failure:
            if isinstance(failure, TrainingInterrupted) and failure.checkpoint is not None:
                # A stop that saved a checkpoint is not an error: the run goes on with --resume.
                _stderr(f"embcli: stopped: {error_message(failure)}")
            elif not _reported_by_another_rank(failure):
                error(error_message(failure))
            raise typer.Exit(failure.exit_code) from None
        except BrokenPipeError:
            # The reader of stdout went away (for example `| head`): stop quietly.
            _discard_stdout()
            raise typer.Exit(0) from None
        except StdoutError as failure:
            error(f"cannot write to standard output ({failure.strerror or failure})")
            _discard_stdout()
            raise typer.Exit(1) from None
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
            if isinstance(failure, OSError) and is_disk_full(failure):
                error(_disk_full_message(failure.filename or "a file"))
                _settle_stdout()
                raise typer.Exit(1) from None
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


@app.command("build-vocab", epilog=EPILOG_OWN_QUIET)
@handle_errors
def build_vocab(
    corpus: List[str] = typer.Argument(..., help="Text files, .gz files, or - for stdin.", show_default=False),
    model: Optional[str] = ModelOption,
    min_count: int = typer.Option(5, "--min-count", min=1, help="Keep words that occur at least this many times."),
    max_size: Optional[int] = typer.Option(None, "--max-size", min=2,
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
        f"read {_count(summary.tokens, 'token')} on {_count(summary.lines, 'line')}; "
        f"{_count(summary.distinct, 'distinct word')}; kept {summary.kept:,} with count >= {summary.min_count}"
        + (" (the most frequent, --max-size)" if summary.kept < summary.above_min_count else "")
        + f" ({summary.coverage:.1%} of tokens) in {model_dir}"
    )
    for line in summary.notes:
        note(f"note: {line}")
    for line in summary.warnings:
        note(f"warning: {line}")
    dropped = 1 - summary.above_min_count / summary.distinct if summary.distinct else 0.0
    if dropped > 0.9:
        note(f"warning: --min-count {summary.min_count} dropped {dropped:.0%} of distinct words")


def _given(flag):
    """Return whether `flag` is on the command line, as `--flag value` or `--flag=value`."""
    return any(arg == flag or arg.startswith(flag + "=") for arg in sys.argv)


def _check_subwords(value):
    from embcli.subwords import parse_range

    try:
        parse_range(value)
    except EmbcliError as failure:
        raise typer.BadParameter(str(failure)) from None
    return value


@app.command(epilog=EPILOG_OWN_QUIET)
@handle_errors
def train(
    corpus: Optional[List[str]] = typer.Argument(
        None, help="Corpus files to train on. [default: the corpus build-vocab read]", show_default=False),
    model: Optional[str] = ModelOption,
    method: str = typer.Option("skipgram", "--method", help="skipgram or cbow."),
    dim: int = typer.Option(100, "--dim", min=1, help="Vector size (number of dimensions)."),
    window: int = typer.Option(5, "--window", min=1, max=1000,
                               help="Maximum distance in words between a word and its context."),
    negative: int = typer.Option(5, "--negative", min=1, max=1000, help="Negative samples per positive example."),
    sample: float = typer.Option(1e-3, "--sample", min=0.0, help="Subsampling threshold for frequent words; 0 turns it off."),
    epochs: int = typer.Option(5, "--epochs", min=1, help="Passes over the corpus."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Initial learning rate, decaying linearly. [default: 0.025 skipgram, 0.05 cbow]"),
    ns_exponent: float = typer.Option(0.75, "--ns-exponent", help="Negatives are drawn from word counts raised to this power, from -1 to 1."),
    negatives: str = typer.Option("shared", "--negatives",
                                  help="shared: the pairs of a step share their negatives (faster); per-pair: word2vec's objective."),
    # The range of embcli.train.SEED_RANGE, which this module does not import (torch).
    seed: int = typer.Option(1, "--seed", min=-(2**63), max=2**64 - 1,
                             help="Random seed. Runs with --threads 1 are reproducible."),
    threads: int = typer.Option(0, "--threads", min=0, show_default=False,
                                help="Worker processes on the CPU. [default: 0, one per core, at most 8]"),
    chunk_order: Optional[str] = typer.Option(
        None, "--chunk-order", show_default=False,
        help="How workers split the corpus: in-turn (they read it side by side) or slices (one contiguous "
             "slice each, as word2vec.c). [default: in-turn; slices under torchrun]"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint that an interrupted run saved."),
    sync_tokens: int = typer.Option(65536, "--sync-tokens", min=1,
                                    help="Under torchrun: tokens each rank trains between two synchronizations."),
    force: bool = typer.Option(False, "--force",
                               help="Start from scratch even if an interrupted run left a checkpoint (it is discarded)."),
    checkpoint_every: float = typer.Option(10.0, "--checkpoint-every", min=0.0,
                                           help="Minutes between checkpoints during training; 0 saves one only on SIGINT or SIGTERM."),
    subwords: str = typer.Option("off", "--subwords", callback=_check_subwords,
                                 help="Character n-gram lengths MIN-MAX, as fastText's (e.g. 3-6), or off."),
    buckets: int = typer.Option(2_000_000, "--buckets", min=1, max=2**32 - 1,  # hashes are 32-bit
                                help="Hash buckets (rows) for the n-grams."),
    combination: str = typer.Option("sum", "--combination",
                                    help="How a word's row and n-gram rows make its vector: sum, or mean (fastText's)."),
    encoding: str = typer.Option("utf-8", "--encoding", help="Text encoding of CORPUS files."),
    decode_errors: str = typer.Option("strict", "--decode-errors", help="strict or replace, for CORPUS files."),
    quiet: bool = QuietOption,
):
    """Train word vectors on the corpus and save them in the model directory."""
    from embcli.store import resolve_model_path

    STATE["quiet"] = STATE["quiet"] or quiet
    model_dir = resolve_model_path(model)
    for value, name, choices in ((method, "--method", ("skipgram", "cbow")),
                                 (negatives, "--negatives", ("shared", "per-pair")),
                                 (combination, "--combination", ("sum", "mean")),
                                 (decode_errors, "--decode-errors", ("strict", "replace")),
                                 (chunk_order or "in-turn", "--chunk-order", ("in-turn", "slices"))):
        if value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}", param_hint=name)
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise typer.BadParameter(f"{device!r} is not one of auto, cpu, cuda, cuda:N", param_hint="--device")
    if not (math.isfinite(ns_exponent) and -1 <= ns_exponent <= 1):
        raise typer.BadParameter(f"{ns_exponent:g} is outside the accepted range -1 to 1 (0.75 is word2vec's "
                                 "value, 0 draws negatives uniformly, 1 in proportion to the counts)",
                                 param_hint="--ns-exponent")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise typer.BadParameter(f"{lr:g} is not a positive finite number", param_hint="--lr")
    cores = os.cpu_count() or 1
    if threads > 4 * cores:
        raise typer.BadParameter(f"{threads} worker processes on {_count(cores, 'core')} would only slow training",
                                 param_hint="--threads")

    from embcli.subwords import parse_range
    from embcli.train import TrainConfig, train_model

    min_n, max_n = parse_range(subwords)
    if not min_n and not resume:
        for flag in ("--buckets", "--combination"):
            if _given(flag):
                note(f"warning: {flag} applies only with --subwords, which this run does not use")
    if not corpus and not resume:
        for flag in ("--encoding", "--decode-errors"):
            if _given(flag):
                note(f"warning: {flag} applies only to CORPUS files, and this run reads the token cache")
    launch = _distributed_launch()
    if chunk_order is None:
        # Ranks train contiguous shards, which multi-node setups expect for reading.
        chunk_order = "in-turn" if launch is None else "slices"
    config = TrainConfig(method=method, dim=dim, window=window, negative=negative, sample=sample,
                         epochs=epochs, lr=lr, ns_exponent=ns_exponent, negatives=negatives,
                         seed=seed, threads=threads, device=device, min_n=min_n, max_n=max_n,
                         buckets=buckets, combination=combination, chunk_order=chunk_order)
    if resume and force:
        raise typer.BadParameter("--resume continues the checkpoint and --force discards it; give one of them",
                                 param_hint="--force")
    if resume:
        from embcli.train import read_checkpoint_state

        # Before any warning about the options: a missing checkpoint is the error to report.
        saved = read_checkpoint_state(model_dir)
        saved_ranks = saved.get("workers")
        saved_processes = _count_of(saved_ranks, "worker process", "worker processes")
        if launch is None and saved.get("distributed"):
            note(f"warning: {model_dir} was checkpointed by a torchrun run of {_count_of(saved_ranks, 'rank')}; "
                 f"it goes on as {saved_processes} on this machine, which share the vectors instead of "
                 "synchronizing them")
        elif launch is not None and not saved.get("distributed") and launch.rank == 0:
            note(f"warning: {model_dir} was checkpointed by 'embcli train' with {saved_processes}; "
                 "the ranks go on from where those stopped")
        # A resumed run takes every training setting from its checkpoint, so a value that
        # differs from the saved one is ignored. The rerun of the same command (as
        # torchrun resumes) gives the same values and gets no warning.
        from embcli.train import _config_json

        requested, saved_config = _config_json(config), saved.get("config") or {}
        settings = {"--method": ("method",), "--dim": ("dim",), "--window": ("window",),
                    "--negative": ("negative",), "--sample": ("sample",), "--epochs": ("epochs",),
                    "--lr": ("lr",), "--ns-exponent": ("ns_exponent",), "--negatives": ("negatives",),
                    "--seed": ("seed",), "--threads": ("threads",), "--subwords": ("min_n", "max_n"),
                    "--buckets": ("buckets",), "--combination": ("combination",), "--chunk-order": ("chunk_order",)}
        ignored = [flag for flag, names in settings.items()
                   if _given(flag) and any(requested.get(name) != saved_config.get(name) for name in names)]
        if ignored and (launch is None or launch.rank == 0):
            note(f"warning: --resume continues with the settings saved in the checkpoint; ignoring {', '.join(ignored)}")
    if not corpus and (launch is None or launch.rank == 0):
        _warn_corpus_changed(model_dir)
    if launch is not None and launch.rank == 0 and _given("--threads"):
        note("warning: --threads has no effect under torchrun, where each rank is one process with one thread; "
             "torchrun's --nproc-per-node sets the number of processes")
    if launch is None and _given("--sync-tokens"):
        note("warning: --sync-tokens applies only under torchrun; worker processes share the vectors instead")
    if launch is None and threads != 1 and not STATE["quiet"] and _given("--seed"):
        note("warning: with more than one thread, results vary between runs even with --seed; use --threads 1 to reproduce them")
    if launch is not None:
        stats = _train_distributed(model_dir, config, launch, corpus, resume, sync_tokens,
                                   checkpoint_every * 60)
        note(
            f"trained {_count(stats.epochs_done, 'epoch')} over {_count(stats.words // stats.epochs_done, 'word')} "
            f"on {_count(launch.world_size, 'rank')} in "
            f"{stats.seconds:.1f} s ({stats.words_per_second:,.0f} words/s{_loss_text(stats.final_loss)}); "
            f"saved {model_dir}"
        )
        return
    progress, finish = _training_progress()
    meta_before = _file_identity(os.path.join(model_dir, "meta.json"))
    try:
        stats = train_model(model_dir, config, corpus or None, encoding, decode_errors, resume=resume,
                            progress=progress, discard_checkpoint=force,
                            checkpoint_seconds=checkpoint_every * 60, warn=lambda message: note(f"warning: {message}"))
    except (KeyboardInterrupt, Terminated):
        # A signal that arrives once the model is committed, before train_model returns,
        # interrupts nothing: the run's model is complete, so report it as saved.
        stats = _stats_if_saved(model_dir, meta_before)
        if stats is None:
            raise
    finally:
        finish()
    note(
        f"trained {_count(stats.epochs_done, 'epoch')} over {_count(stats.words // stats.epochs_done, 'word')} "
        f"in {stats.seconds:.1f} s "
        f"({stats.words_per_second:,.0f} words/s{_loss_text(stats.final_loss)}); saved {model_dir}"
    )


def _count_of(value, noun, plural_noun=None):
    """Return _count(value, noun, plural_noun) for an int read from a file, else "? PLURAL"."""
    if not isinstance(value, int) or isinstance(value, bool):
        return f"? {plural_noun or noun + 's'}"
    return _count(value, noun, plural_noun)


def _file_identity(path):
    """Return (inode, modification time in ns) of `path`, or None when it does not exist."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns


def _stats_if_saved(model_dir, meta_before):
    """Return the TrainStats in meta.json if this run committed its model, else None.

    The run committed it when meta.json was replaced since `meta_before` (its
    _file_identity then), records a training run, and no checkpoint is left.
    """
    from embcli.store import read_meta
    from embcli.train import CHECKPOINT, TrainStats

    path = os.path.join(model_dir, "meta.json")
    if _file_identity(path) == meta_before or os.path.exists(os.path.join(model_dir, CHECKPOINT)):
        return None
    try:
        record = read_meta(model_dir)["training"]["stats"]
        stats = TrainStats(**record)
    except (EmbcliError, KeyError, TypeError):
        return None
    if stats.final_loss is None:
        stats.final_loss = float("nan")
    return stats


def _loss_text(loss):
    """Return ", final loss X" for a summary line, or "" when no batch was trained (a resumed
    run with nothing left to train)."""
    if loss is None or not math.isfinite(loss):
        return ""
    return f", final loss {loss:.4f}"


def _warn_corpus_changed(model_dir):
    from embcli import store
    from embcli.corpus import corpus_change
    from embcli.errors import EmbcliError

    try:
        meta = store.read_meta(model_dir)
    except EmbcliError:
        return  # training itself reports what is wrong with the model directory
    sources = meta.get("corpus", {}).get("sources", [])
    cached = meta.get("token_cache", {}).get("sources")
    if cached and cached != sources:
        names = ", ".join(source.get("path", "?") for source in cached)
        note(f"warning: the token cache holds {names}, which an earlier 'embcli train CORPUS' encoded, not "
             "the corpus that build-vocab read; training uses it. To train on build-vocab's corpus, run "
             "'embcli build-vocab' again")
        sources = cached
    for source in sources:
        change = corpus_change(source)
        if change and change.endswith("is gone"):
            note(f"warning: {change}; training reads the token ids that build-vocab saved from it")
        elif change:
            note(f"warning: {change}; training reads the token ids that build-vocab saved from it then. "
                 "To train on the text as it is now, run 'embcli build-vocab' again")


def _distributed_launch():
    """Return the torchrun launch this process belongs to, or None; imports torch only under torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return None
    from embcli.distributed import launched

    return launched()


def _train_distributed(model_dir, config, launch, corpus, resume, sync_tokens, checkpoint_seconds):
    from embcli.distributed import train_distributed

    if corpus:
        raise EmbcliError(
            "under torchrun, train reads the token cache of the model directory; run "
            f"'embcli build-vocab -m {shlex.quote(model_dir)} " + " ".join(map(shlex.quote, corpus))
            + "' first, then train without files"
        )
    if launch.rank != 0:
        STATE["quiet"] = True

    def started(backend, syncs):
        note(f"training on {_count(launch.world_size, 'rank')} ({backend}), {_count(syncs, 'synchronization')}")

    def waiting(seconds):
        # Every rank prints this, because the missing rank may be rank 0.
        _stderr(f"note: rank {launch.rank}: still waiting after {seconds:.0f} s for the other ranks to join at "
                f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}; if a rank failed to "
                "start, the others wait for up to 30 minutes, so stop them with Ctrl-C")

    progress, finish = _training_progress()
    try:
        return train_distributed(model_dir, config, launch, resume=resume, progress=progress,
                                 started=started, sync_tokens=sync_tokens,
                                 checkpoint_seconds=checkpoint_seconds, waiting=waiting)
    finally:
        finish()


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
        # Before the first chunk ends there is no loss to show, and no rate yet in use.
        shown_loss = f"{loss:.4f}" if math.isfinite(loss) else "-"
        shown_lr = f"{lr:.5f}" if words > 0 else "-"
        progress.update(task, total=total, completed=words, speed=speed, loss=shown_loss, lr=shown_lr)

    return update, progress.stop


def _note_out_of_vocabulary(word, ngram_count):
    note(f"note: {word}: not in vocabulary; its vector combines {_count(ngram_count, 'character n-gram')}")


def _flush_stdout():
    sys.stdout.flush()


def _stdin_descriptor():
    """Return the file descriptor of stdin if select() can poll it, else None."""
    if os.name == "nt":
        return None  # NOTE: select() polls only sockets on Windows, so stdin is read line by line there.
    try:
        return sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # a stdin without a descriptor, for example in tests
        return None


def _stdin_raw_lines():
    """Yield the lines of stdin as bytes.

    Before a read that would wait for more input, call STATE["stdin_wait"]. Batch
    commands print the results of the queries read so far there and flush stdout, so
    a user or a program that writes one query and waits gets its result. Input that is
    already available (a file, a fast pipe) is still searched in full blocks.
    """
    stream = getattr(sys.stdin, "buffer", None)
    descriptor = _stdin_descriptor()
    if stream is None:  # a text-only stdin, for example in tests
        try:
            yield from (line.encode("utf-8", "surrogateescape") for line in sys.stdin)
        except OSError as failure:
            raise _stdin_read_error(failure) from None
        return
    if descriptor is None:
        try:
            yield from iter(stream.readline, b"")
        except OSError as failure:
            raise _stdin_read_error(failure) from None
        return
    import select

    # The pieces of a line whose end is not read yet, joined once the line ends, so a
    # line of many megabytes is copied once instead of once per read.
    pieces = []
    while True:
        ready, _, _ = select.select([descriptor], [], [], 0)
        if not ready:
            STATE.get("stdin_wait", _flush_stdout)()
        try:
            chunk = os.read(descriptor, 1 << 16)
        except BlockingIOError:  # the parent left stdin in non-blocking mode
            select.select([descriptor], [], [])
            continue
        except OSError as failure:
            raise _stdin_read_error(failure) from None
        if not chunk:
            break
        lines = chunk.split(b"\n")
        if len(lines) == 1:
            pieces.append(chunk)
            continue
        pieces.append(lines[0])
        lines[0] = b"".join(pieces)
        pieces = [lines.pop()]
        yield from lines
    rest = b"".join(pieces)
    if rest:
        yield rest


def _stdin_read_error(failure):
    """Return the EmbcliError for an OSError raised while reading stdin, worded as build-vocab's.

    The results of the queries read before the failure are printed first, so that they
    come before the error.
    """
    flush = STATE.get("stdin_wait")
    if flush is not None:
        flush()
    return EmbcliError(f"<stdin>: cannot read ({failure.strerror or failure})")


def _stdin_lines():
    """Yield (line number, text) for the non-blank lines of stdin; report each line that is not UTF-8 and skip it."""
    for number, raw in enumerate(_stdin_raw_lines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as failure:
            # Print the results of the earlier lines first, so that output and errors
            # keep the order of the input.
            flush = STATE.get("stdin_wait")
            if flush is not None:
                flush()
            error(f"<stdin>: line {number}: invalid UTF-8 (byte 0x{raw[failure.start]:02x} "
                  f"at byte {failure.start} of the line); queries must be UTF-8")
            STATE["stdin_failures"] += 1
            continue
        line = line.removeprefix("\ufeff") if number == 1 else line
        line = line.rstrip("\r\n")
        if line.strip():
            yield number, line


def _check_stdin_dash(words):
    """Raise a usage error when - (read the queries from stdin) is one of several words."""
    if "-" not in words or len(words) == 1:
        return
    if words.count("-") > 1:
        raise typer.BadParameter("stdin (-) can be read only once, so give - once, as the only word",
                                 param_hint="WORDS")
    raise typer.BadParameter("- reads the queries from stdin, so it must be the only word", param_hint="WORDS")


def _numbered_queries(words):
    """Return (queries, batch): each query a (word, stdin line number or None) pair, and
    batch True for several queries or queries from stdin."""
    STATE["stdin_failures"] = 0
    _check_stdin_dash(words)
    if words == ["-"]:
        return ((line, number) for number, line in _stdin_lines()), True
    queries = []
    for word in words:
        if _invalid_utf8_byte(word) is None:
            queries.append((word, None))
        else:
            error(str(_not_utf8_argument(word)))
            STATE["stdin_failures"] += 1
    return queries, len(words) > 1


def _invalid_utf8_byte(text):
    """Return the first byte of a command-line argument that is not UTF-8, or None.

    Python keeps such bytes of the command line as lone surrogates U+DC80 to U+DCFF.
    """
    for char in text:
        if "\udc80" <= char <= "\udcff":
            return ord(char) - 0xDC00
    return None


def _not_utf8_argument(word):
    """Return the QueryError for a query word given on the command line with invalid UTF-8."""
    from embcli.errors import QueryError

    raw = word.encode("utf-8", "surrogateescape")
    return QueryError(f"query {raw!r}: invalid UTF-8 (byte 0x{_invalid_utf8_byte(word):02x}); query words must be "
                      "UTF-8, so set the terminal or the calling program to a UTF-8 locale")


def _check_utf8_arguments(words):
    """Raise QueryError for the first of `words` that is not UTF-8."""
    for word in words:
        if _invalid_utf8_byte(word) is not None:
            raise _not_utf8_argument(word)


def _tsv_field(text):
    """Return a query or a word as one tab-separated field: its tabs become spaces.

    A word read from a vector file may contain a tab; --json output keeps it.
    """
    return text.replace("\t", " ")


def _with_line(failure, number):
    """Return `failure` itself for a command-line query, else a QueryError that starts with the stdin line."""
    from embcli.errors import QueryError

    if number is None:
        return failure
    return QueryError(f"<stdin>: line {number}: {failure}")


@app.command(epilog=EPILOG)
@handle_errors
def lookup(
    words: List[str] = typer.Argument(..., help="Words to look up, or - to read one per line from stdin.", show_default=False),
    model: Optional[str] = ModelOption,
    as_json: bool = JsonOption,
    no_subwords: bool = NoSubwordsOption,
):
    """Print the vector of each word: the word, then its values, tab-separated."""
    from embcli.model import Model

    _check_stdin_dash(words)
    opened = Model.open(model)
    queries, _ = _numbered_queries(words)
    failed = 0
    out = sys.stdout
    for word, number in queries:
        try:
            row, vector, ngram_count = opened.resolve(word, subwords=not no_subwords)
        except EmbcliError as failure:
            error(str(_with_line(failure, number)))
            failed += 1
            continue
        if row is None:
            _note_out_of_vocabulary(word, ngram_count)
        if as_json:
            # str() of a float32 is its shortest exact form: 0.7, not 0.699999988079071.
            values = [float(str(v)) for v in vector]
            fields = {"word": word, "vector": values}
            if row is None:
                fields["from_subwords"] = [word]
            out.write(json.dumps(fields, ensure_ascii=False) + "\n")
        else:
            # str() of a float32 is its shortest exact form, as in --json.
            out.write(_tsv_field(word) + "\t" + "\t".join([str(value) for value in vector]) + "\n")
    out.flush()
    if failed or STATE.get("stdin_failures"):
        raise typer.Exit(1)


@app.command(epilog=EPILOG)
@handle_errors
def neighbors(
    words: Optional[List[str]] = typer.Argument(None, help="Query words, or - to read one per line from stdin.",
                                                show_default=False),
    k: int = typer.Option(10, "-k", "--top", min=0, help="Number of neighbours per query."),
    restrict: Optional[int] = typer.Option(None, "--restrict", min=1,
                                           help="Search only the N most frequent words. [default: all]"),
    vector: Optional[str] = typer.Option(
        None, "--vector",
        help="Query by vector instead of words: - reads one vector per line from stdin (numbers separated "
             "by spaces or tabs), any other value is one vector. No word is left out of the results; "
             "each batch result starts with the query's line number."),
    model: Optional[str] = ModelOption,
    as_json: bool = JsonOption,
    approx: bool = typer.Option(False, "--approx", help="Search the approximate index that 'embcli index' built."),
    ef: Optional[int] = typer.Option(None, "--ef", min=1,
                                     help="With --approx on an hnsw index: candidates kept during the search "
                                          "(more is slower and more exact). [default: 64]"),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", min=1,
                                         help="With --approx on an ivf index: lists scanned per query "
                                              "(more is slower and more exact). [default: 30% of the lists]"),
    rerank: Optional[int] = typer.Option(None, "--rerank", min=1,
                                         help="With --approx on an ivf index: candidates re-scored exactly "
                                              "against the embeddings (more is slower and more exact). "
                                              "[default: 400, or 200 for an index of projected rows]"),
    no_subwords: bool = NoSubwordsOption,
):
    """Print the k nearest words by cosine similarity, leaving the query word out."""
    _neighbors(words, k, restrict, vector, model, as_json, approx, (ef, nprobe, rerank), subwords=not no_subwords)


def _approximate_neighbors(opened, words, k, ef, nprobe, rerank, as_json):
    """Print the approximate neighbours of each query word; return how many queries failed."""
    from embcli.ann import open_index
    from embcli.errors import QueryError

    approximate = open_index(opened)
    if approximate.kind == "ivf" and ef is not None:
        raise typer.BadParameter(f"{opened.path} has an ivf index, which takes --nprobe, not --ef",
                                 param_hint="--ef")
    for value, flag in ((nprobe, "--nprobe"), (rerank, "--rerank")):
        if approximate.kind == "hnsw" and value is not None:
            raise typer.BadParameter(f"{opened.path} has an hnsw index, which takes --ef, not {flag}",
                                     param_hint=flag)
    effort = nprobe if approximate.kind == "ivf" else ef
    settings = {} if rerank is None else {"rerank": rerank}
    if effort is not None and effort < 1:
        raise typer.BadParameter(f"must be at least 1, not {effort}",
                                 param_hint="--nprobe" if approximate.kind == "ivf" else "--ef")
    queries, batch = _numbered_queries(words)

    def resolve(query):
        word, number = query
        try:
            row = opened.row(word)
            approximate.check_query(word, row)
        except EmbcliError as failure:
            message = str(_with_line(failure, number))
            if isinstance(failure, UnknownWord) and opened.meta.get("subwords"):
                message += "; --approx searches vocabulary words only, and without it the query is built from its n-grams"
            raise QueryError(message) from None
        return row

    possible = min(k, len(opened) - 1)
    short = []

    def emit(query, result):
        word = query[0]
        if len(result) < possible:
            short.append(word)
        for neighbor, score in result:
            if as_json:
                _json_line({"query": word, "word": neighbor, "score": round(score, 6)})
            elif batch:
                sys.stdout.write(f"{_tsv_field(word)}\t{_tsv_field(neighbor)}\t{score:.4f}\n")
            else:
                sys.stdout.write(f"{_tsv_field(neighbor)}\t{score:.4f}\n")

    # Queries are searched together, QUERY_BLOCK at a time, as the exact search does.
    failed = _answer_in_blocks(opened, queries, resolve,
                               lambda rows: approximate.neighbors_of_rows(rows, k, effort, **settings), emit)
    if short:
        # The lists scanned (ivf) or the candidates kept (hnsw) held fewer words than -k.
        more = "--nprobe" if approximate.kind == "ivf" else "--ef"
        note(f"warning: --approx found fewer than {_count(possible, 'neighbour')} for {_count(len(short), 'word')} "
             f"(first: {short[0]!r}); a larger {more} searches more of the index")
    return failed


def _neighbors(words, k, restrict, vector, model, as_json, approx=False, efforts=(None, None, None), subwords=True):
    import numpy as np

    from embcli.errors import QueryError
    from embcli.model import Model

    if vector is not None and words:
        raise typer.BadParameter("give query words or --vector, not both", param_hint="--vector")
    if vector is None and not words:
        raise typer.BadParameter("give at least one query word, - for stdin, or --vector", param_hint="WORDS")
    _check_stdin_dash(words or [])
    if not approx and efforts != (None, None, None):
        raise typer.BadParameter("--ef, --nprobe and --rerank tune the approximate search, so they need --approx",
                                 param_hint="--approx")
    if approx and vector is not None:
        raise typer.BadParameter("--vector searches exactly, so it cannot be combined with --approx",
                                 param_hint="--approx")
    if approx and restrict is not None:
        raise typer.BadParameter("--restrict searches exactly, so it cannot be combined with --approx",
                                 param_hint="--approx")
    opened = Model.open(model)
    if vector is not None:
        failed = _vector_neighbors(opened, vector, k, restrict, as_json)
    elif approx:
        failed = _approximate_neighbors(opened, words, k, *efforts, as_json)
    else:
        queries, batch = _numbered_queries(words)

        def answer(inputs):
            # An input is a row, or the n-gram vector of a word outside the vocabulary.
            if k <= 0:
                return [[] for _ in inputs]
            rows = [(i, value) for i, value in enumerate(inputs) if not isinstance(value, np.ndarray)]
            vectors = [(i, value) for i, value in enumerate(inputs) if isinstance(value, np.ndarray)]
            results = [None] * len(inputs)
            if rows:
                for (i, _), result in zip(rows, opened.neighbors_of_rows([r for _, r in rows], k, restrict)):
                    results[i] = result
            if vectors:
                found = opened.neighbors_of_vectors(np.stack([v for _, v in vectors]), k, restrict)
                for (i, _), result in zip(vectors, found):
                    results[i] = result
            return results

        from_subwords = set()

        def resolve(query):
            word, number = query
            try:
                row, vector, ngram_count = opened.resolve(word, subwords=subwords)
                if row is None:
                    _note_out_of_vocabulary(word, ngram_count)
                    from_subwords.add(word)
                    if not np.any(vector):
                        raise QueryError(f"{word}: its vector is all zeros, so cosine similarity is undefined")
                    return vector
                opened.check_nonzero(word, row)
            except EmbcliError as failure:
                raise _with_line(failure, number) from None
            return row

        def emit(query, result):
            word = query[0]
            for neighbor, score in result:
                if as_json:
                    _json_line({"query": word, "word": neighbor, "score": round(score, 6),
                                **_subword_field((word,), from_subwords)})
                elif batch:
                    sys.stdout.write(f"{_tsv_field(word)}\t{_tsv_field(neighbor)}\t{score:.4f}\n")
                else:
                    sys.stdout.write(f"{_tsv_field(neighbor)}\t{score:.4f}\n")

        failed = _answer_in_blocks(opened, queries, resolve, answer, emit)
    if failed or STATE.get("stdin_failures"):
        raise typer.Exit(1)


@app.command(epilog=EPILOG)
@handle_errors
def info(
    model: Optional[str] = ModelOption,
    as_json: bool = typer.Option(False, "--json", help="Print the metadata as one JSON object on one line."),
):
    """Print the model's metadata: vocabulary, dimensions, settings, corpus, statistics.

    If the model's files are damaged or do not belong together, info still prints the
    metadata. It then reports the error that a query would report and exits with status 1.
    """
    from embcli import store

    model_dir = store.resolve_model_path(model)
    meta = store.read_meta(model_dir)
    word_count, problem = _check_model_files(model_dir, meta)
    vocab = meta.get("vocab")
    _warn_vocab_size(vocab.get("size") if isinstance(vocab, dict) else None, word_count)
    try:
        if as_json:
            sys.stdout.write(json.dumps(meta, ensure_ascii=False) + "\n")  # one line, as every --json output
        else:
            damaged = _print_info(model_dir, meta, word_count)
            problem = problem or damaged
        sys.stdout.flush()  # the metadata first, then the error
    except BrokenPipeError:
        # `info | head -3`: the reader went away, but the exit status still reports a damaged model.
        if problem is None:
            raise
        _discard_stdout()
    if problem is not None:
        raise problem


def _check_model_files(model_dir, meta):
    """Open the model's files with the checks that queries make; return (word count, error).

    The word count is the length of vocab.tsv, or None when it cannot be read. The error
    is the EmbcliError that a query would raise, or None. A model that is not trained yet
    has no embeddings, which is not an error here.
    """
    from embcli import store
    from embcli.model import Model, Vocabulary

    embeddings = os.path.join(model_dir, store.EMBEDDINGS)
    trained = os.path.exists(embeddings) or store.EMBEDDINGS in meta.get("files", {})
    try:
        if not trained:
            store.check_fingerprint(model_dir, meta, store.VOCAB)
            return len(Vocabulary.read(os.path.join(model_dir, store.VOCAB))), None
        opened = Model.open(model_dir)
    except EmbcliError as failure:
        return None, failure
    if opened.has_subwords:
        try:
            opened.subwords  # noqa: B018 - opens the n-gram files as a query outside the vocabulary does
        except EmbcliError as failure:
            return len(opened), failure
    return len(opened), None


def _warn_vocab_size(recorded, word_count):
    """Warn when meta.json's vocab.size is not the number of words in vocab.tsv."""
    if word_count is None or recorded == word_count:
        return
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        recorded = f"{recorded:,}"
    else:
        recorded = repr(recorded)
    note(f"warning: meta.json gives vocab.size {recorded}, but vocab.tsv has {_count(word_count, 'word')}; "
         "info shows the count of vocab.tsv, which queries use")


def _print_info(model_dir, meta, word_count):
    """Print the lines of `info`: one key, a tab and a value each.

    Return the ModelCorrupt for the parts of meta.json that do not have the layout embcli
    writes, or None. Such a part prints as "?", and the other lines print as usual.
    """
    from embcli import store
    from embcli.errors import ModelCorrupt

    lines, damaged = [], []

    def part(name, build):
        try:
            build()
        except (KeyError, TypeError, AttributeError, ValueError):
            damaged.append(name)
            lines.append((name.split(".")[0], "?"))

    lines.append(("model", os.path.abspath(model_dir)))
    vocab = meta.get("vocab") if isinstance(meta.get("vocab"), dict) else {}
    if word_count is not None:
        size = _count(word_count, "word")
    else:
        size = _count_of(vocab.get("size"), "word")

    def vocabulary():
        if "imported" in meta:
            imported = meta["imported"]
            lines.append(("vocabulary", f"{size}, imported"))
            lines.append(("imported", f"{imported['path']} ({imported['format']}, "
                                      f"{_count_of(imported['bytes'], 'byte')})"))
        else:
            lines.append(("vocabulary", f"{size} (min count {vocab.get('min_count', '?')})"))

    part("imported" if "imported" in meta else "vocab", vocabulary)
    lines.append(("tokenizer", json.dumps(meta.get("tokenizer", {}))))
    if "dim" in meta:
        lines.append(("dim", str(meta["dim"])))

    def fasttext_line():
        fasttext = (meta.get("imported") or {}).get("fasttext")
        if fasttext:
            described = (f"{fasttext.get('model')} model, {_count_of(fasttext.get('epoch'), 'epoch')}, "
                         f"window {fasttext.get('ws')}, "
                         f"min count {fasttext.get('min_count')}")
            if fasttext.get("labels"):
                described += f", {_count(fasttext['labels'], 'label')} left out"
            lines.append(("fastText", described))

    part("imported.fasttext", fasttext_line)

    def subwords_line():
        subword_settings = meta.get("subwords")
        if subword_settings:
            stored = "the rows of the used buckets" if subword_settings.get("rows") == "used" else "every bucket's row"
            lines.append(("subwords", f"n-grams {subword_settings['min_n']}-{subword_settings['max_n']}, "
                                      f"{_count_of(subword_settings['buckets'], 'bucket')} ({stored}), "
                                      f"{subword_settings.get('combination', 'mean')} of a word's rows"))

    part("subwords", subwords_line)

    def corpus_lines():
        for source in meta.get("corpus", {}).get("sources", []):
            lines.append(("corpus", f"{source['path']} ({_count_of(source['size'], 'byte')})"
                          if source["size"] is not None else source["path"]))

    part("corpus", corpus_lines)
    if "vocab" in meta and "imported" not in meta:
        part("vocab", lambda: lines.append(
            ("tokens", f"{vocab.get('tokens_read', 0):,} read, {vocab.get('tokens_covered', 0):,} in vocabulary")))

    def training_lines():
        training = meta.get("training")
        trained_on = (training or {}).get("corpus") or []
        if trained_on and trained_on != meta.get("corpus", {}).get("sources", []):
            # `train CORPUS` trained on other files than the ones the vocabulary came from.
            for source in trained_on:
                lines.append(("trained on", source.get("path", "?")))
        if training:
            settings = training["settings"]
            lines.append(("training", " ".join(f"{key}={value}" for key, value in settings.items())))
            stats = training["stats"]
            run = (f"{stats['seconds']:.1f} s, {stats['words_per_second']:,.0f} words/s, "
                   f"{_loss_text(stats['final_loss'])[2:] or 'no final loss'}, device {training['device']}")
            # The settings keep threads=0 when the default chose the count; this is what ran.
            if isinstance(training.get("workers"), int):
                unit = "rank" if training.get("distributed") else "worker"
                run += f", {_count(training['workers'], unit)}"
            lines.append(("run", run))
        elif "imported" in meta:
            lines.append(("training", "none: imported vectors"))
        elif store.EMBEDDINGS in (meta.get("files") or {}):
            lines.append(("training", "not recorded in meta.json"))
        else:
            lines.append(("training", "not trained yet"))

    part("training", training_lines)
    if os.path.exists(os.path.join(model_dir, store.CHECKPOINT)):
        checkpoint = os.path.join(model_dir, store.CHECKPOINT)
        resume = f"embcli train --resume -m {model_dir}"
        try:
            with open(checkpoint, encoding="utf-8") as handle:
                ranks = (json.load(handle).get("distributed") or {}).get("world_size")
        except (OSError, ValueError, AttributeError):
            ranks = None
        if isinstance(ranks, int):
            resume = f"torchrun with {_count(ranks, 'rank')} in all and {resume}"
        lines.append(("checkpoint", f"{checkpoint} (continue with: {resume})"))
    lines.append(("embcli", meta.get("embcli_version", "?")))
    for key, value in lines:
        sys.stdout.write(f"{key}\t{value}\n")
    if damaged:
        return ModelCorrupt(f"{os.path.join(model_dir, store.META)}: {', '.join(damaged)} "
                            f"{'does' if len(damaged) == 1 else 'do'} not have the layout that embcli writes; "
                            "retrain or re-import the model")
    return None


@app.command(epilog=EPILOG_OWN_QUIET)
@handle_errors
def index(
    model: Optional[str] = ModelOption,
    kind: str = typer.Option("ivf", "--kind", help="Index kind: ivf (faiss inverted file) or hnsw (hnswlib graph)."),
    nlist: Optional[int] = typer.Option(None, "--nlist", min=1,
                                        help="ivf: number of k-means lists. [default: about sqrt(words)]"),
    m: Optional[int] = typer.Option(None, "--m", min=2,
                                    help="hnsw: links per word in the graph (more: better recall, larger index). "
                                         "[default: 16]"),
    ef_construction: Optional[int] = typer.Option(None, "--ef-construction", min=1,
                                                  help="hnsw: candidates kept while building (more: better recall, "
                                                       "slower build). [default: 100]"),
    threads: int = typer.Option(0, "--threads", min=0, show_default=False,
                                help="Build threads. [default: 0, one per core]"),
    quiet: bool = QuietOption,
):
    """Build an approximate nearest-neighbour index (IVF or HNSW) for 'neighbors --approx'."""
    from embcli import ann
    from embcli.model import Model

    if kind not in ann.KINDS:
        raise typer.BadParameter(f"{kind!r} is not an index kind; choose ivf or hnsw", param_hint="--kind")
    if kind == "ivf" and (m is not None or ef_construction is not None):
        raise typer.BadParameter("--m and --ef-construction apply to --kind hnsw only", param_hint="--kind")
    if kind == "hnsw" and nlist is not None:
        raise typer.BadParameter("--nlist applies to --kind ivf only", param_hint="--kind")
    STATE["quiet"] = STATE["quiet"] or quiet
    opened = Model.open(model)
    description = ann.build_index(
        opened, kind=kind, nlist=nlist,
        m=ann.DEFAULT_M if m is None else m,
        ef_construction=ann.DEFAULT_EF_CONSTRUCTION if ef_construction is None else ef_construction,
        threads=threads,
        warn=lambda message: note(f"warning: {message}"),
    )
    if kind == "ivf":
        settings = f"ivf, nlist {description['nlist']}"
    else:
        settings = f"hnsw, M {description['M']}, ef_construction {description['ef_construction']}"
    note(
        f"indexed {_count(description['rows'], 'word')} ({settings}) in "
        f"{description['build_seconds']:.1f} s; saved in {opened.path}"
    )


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that cleanup code runs as for Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


# Queries answered in blocks: analogy, similarity, and the batch paths of neighbors.

QUERY_BLOCK = 1024


def _json_line(record):
    sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")


def _answer_in_blocks(opened, queries, resolve, answer, emit, block=QUERY_BLOCK):
    """Answer `queries` in order, `block` at a time; return how many failed.

    `resolve(query)` turns one query into its input for `answer` or raises EmbcliError,
    which is reported for that query alone. `answer(inputs)` returns one result per
    input, computed together as matrix products; `emit(query, result)` prints one.
    """
    failed = 0
    pending = []

    def flush():
        if not pending:
            sys.stdout.flush()
            return
        resolved = [item for item in pending if not isinstance(item[1], EmbcliError)]
        results = iter(answer([value for _, value in resolved]) if resolved else [])
        for query, value in pending:
            if isinstance(value, EmbcliError):
                sys.stdout.flush()
                error(str(value))
            else:
                emit(query, next(results))
        sys.stdout.flush()
        pending.clear()

    # Reading stdin calls this before it waits for input, so the queries read so far get their results.
    waiting = STATE.get("stdin_wait")
    STATE["stdin_wait"] = flush
    try:
        for count, query in enumerate(queries):
            if count == 32:
                # Past a few queries, a word -> row dict is cheaper than byte searches.
                opened.vocabulary.build_index()
            try:
                pending.append((query, resolve(query)))
            except EmbcliError as failure:
                pending.append((query, failure))
                failed += 1
            if len(pending) >= block:
                flush()
        flush()
    finally:
        if waiting is None:
            STATE.pop("stdin_wait", None)
        else:
            STATE["stdin_wait"] = waiting
    return failed


def _parse_vector(text, dim, where):
    from embcli.errors import QueryError

    fields = text.replace("\t", " ").split()
    bad = next((f for f in fields if not _is_float(f)), None)
    if bad is not None:
        raise QueryError(f"{where}: {bad[:40]!r} is not a number")
    values = [float(field) for field in fields]
    if len(values) != dim:
        raise QueryError(f"{where}: the vector has {_count(len(values), 'value')}, but the model has "
                         f"{_count(dim, 'dimension')}")
    if not all(abs(v) < float("inf") for v in values):
        raise QueryError(f"{where}: the vector contains NaN or infinity")
    # Values up to half the smallest float32 subnormal (1.4e-45) round to 0 in float32.
    if not any(abs(v) > 7.006492321624085e-46 for v in values):
        raise QueryError(f"{where}: the vector is all zeros in float32, so cosine similarity is undefined")
    float32_max = 3.4028234663852886e38
    large = next((f for f, v in zip(fields, values) if abs(v) > float32_max), None)
    if large is not None:
        raise QueryError(f"{where}: the value {large[:40]} is outside the float32 range (about -3.4e38 to 3.4e38)")
    return values


def _is_float(text):
    """True for an ASCII decimal number; float() alone also takes 1_0 and other scripts' digits."""
    if not text.isascii() or "_" in text:
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def _vector_neighbors(opened, vector, k, restrict, as_json):
    import numpy as np

    if vector == "-":
        STATE["stdin_failures"] = 0
        queries = _stdin_lines()
        batch = True
    else:
        queries = [(1, vector)]
        batch = False

    def resolve(query):
        number, line = query
        return _parse_vector(line, opened.dim, f"<stdin>: line {number}" if batch else "--vector")

    def answer(vectors):
        if k == 0:
            return [[] for _ in vectors]
        return opened.neighbors_of_vectors(np.asarray(vectors, dtype=np.float32), k, restrict)

    def emit(query, result):
        number = query[0]
        for neighbor, score in result:
            if as_json:
                _json_line({"query": number, "word": neighbor, "score": round(score, 6)})
            elif batch:
                sys.stdout.write(f"{number}\t{_tsv_field(neighbor)}\t{score:.4f}\n")
            else:
                sys.stdout.write(f"{_tsv_field(neighbor)}\t{score:.4f}\n")

    return _answer_in_blocks(opened, queries, resolve, answer, emit)


def _stdin_fields(count):
    """Yield (line, fields, line number) for each non-blank stdin line; fields is None if malformed."""
    for number, line in _stdin_lines():
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [field.strip() for field in fields]
        yield line, (fields if len(fields) == count and all(fields) else None), number


def _inputs_of_fields(opened, query, expected, subwords, from_subwords):
    """Return the inputs of the words of one analogy or similarity query, as Model.query_input does.

    A word outside the vocabulary is built from its n-grams when `subwords` is true and
    the model has them: it gets a note on stderr and is added to the set `from_subwords`.
    A stdin query's errors start with its line number; `expected` describes a
    well-formed line.
    """
    from embcli.errors import QueryError

    line, fields, number = query
    where = "" if number is None else f"<stdin>: line {number}: "
    if fields is None:
        raise QueryError(f"{where}{shorten(line)!r}: expected {expected}")
    try:
        if not (subwords and opened.has_subwords):
            return _rows_naming_every_unknown(opened, fields)
        inputs = []
        for word in fields:
            row, vector, ngram_count = opened.resolve(word, subwords=True)
            if row is None:
                if word not in fields[: len(inputs)]:
                    _note_out_of_vocabulary(word, ngram_count)
                from_subwords.add(word)
            inputs.append(vector if row is None else row)
        return inputs
    except EmbcliError as failure:
        if number is None:
            raise
        raise QueryError(f"{where}{failure}") from None


def _rows_naming_every_unknown(opened, words):
    """Return the rows of `words`; an error for unknown words names all of them, not only the first."""
    from embcli.errors import UnknownWord

    rows, unknown = [], []
    for word in words:
        try:
            rows.append(opened.row(word))
        except UnknownWord as failure:
            unknown.append(failure)
    names = list(dict.fromkeys(failure.word for failure in unknown))
    if len(names) == 1:
        raise unknown[0]  # keeps the details of one word, such as the token it was looked up as
    if names:
        raise UnknownWord(", ".join(names), opened.path, len(opened))
    return rows


def _subword_field(words, from_subwords):
    """Return {"from_subwords": [...]} naming those of `words` built from n-grams, or {} if none is."""
    built = [word for word in words if word in from_subwords]
    return {"from_subwords": built} if built else {}


@app.command(epilog=EPILOG)
@handle_errors
def analogy(
    words: List[str] = typer.Argument(..., help="A B C for 'A is to B as C is to ?', or - to read one "
                                      "triple per line from stdin.", show_default=False),
    k: int = typer.Option(10, "-k", "--top", min=0, help="Number of answers per question."),
    method: str = typer.Option("3cosadd", "--method",
                               help="3cosadd: cosine with B - A + C; 3cosmul: Levy and Goldberg's "
                                    "multiplicative objective."),
    include_inputs: bool = typer.Option(False, "--include-inputs", help="Allow A, B and C among the answers."),
    restrict: Optional[int] = typer.Option(None, "--restrict", min=1,
                                           help="Search only the N most frequent words. [default: all]"),
    model: Optional[str] = ModelOption,
    as_json: bool = JsonOption,
    no_subwords: bool = NoSubwordsOption,
):
    """Answer 'A is to B as C is to ?' with the k best words, e.g. analogy man king woman."""
    import numpy as np

    from embcli.model import ANALOGY_METHODS, Model

    if method not in ANALOGY_METHODS:
        raise typer.BadParameter(f"use one of {', '.join(ANALOGY_METHODS)}", param_hint="--method")
    _check_stdin_dash(words)
    STATE["stdin_failures"] = 0  # also counts the lines whose search failed
    if words == ["-"]:
        batch = True
        queries = _stdin_fields(3)
    elif len(words) == 3:
        _check_utf8_arguments(words)
        batch = False
        queries = [(" ".join(words), words, None)]
    else:
        raise typer.BadParameter(f"expected three words A B C, or -, got {_count(len(words), 'argument')}",
                                 param_hint="WORDS")
    opened = Model.open(model)

    from_subwords = set()

    def resolve(query):
        inputs = _inputs_of_fields(opened, query, "three words A B C separated by spaces or tabs",
                                   not no_subwords, from_subwords)
        # As in neighbors, a word whose vector is all zeros has no direction to add.
        try:
            for word, item in zip(query[1], inputs):
                if not isinstance(item, np.ndarray):
                    opened.check_nonzero(word, item)
        except EmbcliError as failure:
            raise _with_line(failure, query[2]) from None
        return query[1], inputs

    def answer(resolved):
        triples = [inputs for _, inputs in resolved]
        if k == 0:
            return [[] for _ in triples]
        if from_subwords:
            results = opened.analogy_of_inputs(triples, k, method, not include_inputs, restrict)
        else:
            results = opened.analogy_of_rows(triples, k, method, not include_inputs, restrict)
        # An empty result can mean that B - A + C cancelled, so only those lines are checked.
        for (words, inputs), result in zip(resolved, results):
            if not result:
                try:
                    opened.check_analogy(words, inputs, method)
                except EmbcliError as failure:
                    result.append(failure)
        return results

    def emit(query, result):
        fields = query[1]
        if result and isinstance(result[0], EmbcliError):
            error(str(_with_line(result[0], query[2])))
            STATE["stdin_failures"] = STATE.get("stdin_failures", 0) + 1
            return
        for word, score in result:
            if as_json:
                _json_line({"query": fields, "word": word, "score": round(score, 6),
                            **_subword_field(fields, from_subwords)})
            elif batch:
                sys.stdout.write("\t".join(map(_tsv_field, fields)) + f"\t{_tsv_field(word)}\t{score:.4f}\n")
            else:
                sys.stdout.write(f"{_tsv_field(word)}\t{score:.4f}\n")

    if _answer_in_blocks(opened, queries, resolve, answer, emit) or STATE.get("stdin_failures"):
        raise typer.Exit(1)


@app.command(epilog=EPILOG)
@handle_errors
def similarity(
    words: List[str] = typer.Argument(..., help="Two words, or - to read one pair per line from stdin, "
                                      "separated by a tab or spaces.", show_default=False),
    model: Optional[str] = ModelOption,
    as_json: bool = JsonOption,
    no_subwords: bool = NoSubwordsOption,
):
    """Print the cosine similarity of two words (0 when a vector is all zeros)."""
    import numpy as np

    from embcli.model import Model

    _check_stdin_dash(words)
    STATE["stdin_failures"] = 0  # also counts the lines whose search failed
    if words == ["-"]:
        batch = True
        queries = _stdin_fields(2)
    elif len(words) == 2:
        _check_utf8_arguments(words)
        batch = False
        queries = [(" ".join(words), words, None)]
    else:
        raise typer.BadParameter(f"expected two words, or -, got {_count(len(words), 'argument')}", param_hint="WORDS")
    opened = Model.open(model)

    from_subwords = set()

    def resolve(query):
        return _inputs_of_fields(opened, query, "two words separated by spaces or a tab",
                                 not no_subwords, from_subwords)

    def answer(pairs):
        columns = list(zip(*pairs))
        if from_subwords:
            scores = opened.similarity_of_inputs(columns[0], columns[1], damaged="nan")
        else:
            scores = opened.similarity_of_rows(columns[0], columns[1], damaged="nan")
        # NaN marks a pair with a damaged row: find it for that line alone.
        results = scores.tolist()
        for index in np.flatnonzero(np.isnan(scores)):
            try:
                opened.similarity_of_inputs([pairs[index][0]], [pairs[index][1]])
            except EmbcliError as failure:
                results[index] = failure
        return results

    def emit(query, score):
        if isinstance(score, EmbcliError):
            error(str(_with_line(score, query[2])))
            STATE["stdin_failures"] = STATE.get("stdin_failures", 0) + 1
            return
        first, second = query[1]
        if as_json:
            _json_line({"word1": first, "word2": second, "score": round(score, 6),
                        **_subword_field((first, second), from_subwords)})
        elif batch:
            sys.stdout.write(f"{_tsv_field(first)}\t{_tsv_field(second)}\t{score:.4f}\n")
        else:
            sys.stdout.write(f"{score:.4f}\n")

    if _answer_in_blocks(opened, queries, resolve, answer, emit) or STATE.get("stdin_failures"):
        raise typer.Exit(1)


@app.command(epilog=EPILOG)
@handle_errors
def evaluate(
    analogies: List[str] = typer.Option([], "--analogies", help="Analogy file in the questions-words format "
                                        "(': section' lines, then four words per line). Repeatable."),
    similarity_files: List[str] = typer.Option([], "--similarity", help="Word-pair file: word, word, score per "
                                               "line, tab- or space-separated, # comments. Repeatable."),
    restrict: int = typer.Option(300_000, "--restrict", min=1,
                                 help="Only the N most frequent words count as known (word2vec uses 30000)."),
    case_sensitive: bool = typer.Option(False, "--case-sensitive",
                                        help="Compare words as they are instead of in upper case."),
    method: str = typer.Option("3cosadd", "--method", help="Analogy method: 3cosadd or 3cosmul."),
    score_column: Optional[int] = typer.Option(
        None, "--score-column", min=3, show_default=False,
        help="Field (1-based) of the score in --similarity files, whose other fields are then ignored; "
             "4 reads SimLex-999.txt. Without it a line must have exactly three fields, as gensim requires."),
    encoding: str = typer.Option("utf-8", "--encoding", help="Text encoding of the test sets, such as latin-1 "
                                 "or cp1252."),
    model: Optional[str] = ModelOption,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with all results instead of "
                                 "tables."),
):
    """Score the model on analogy and word-similarity test sets, as gensim does.

    Files may be gzip, bzip2 or xz compressed; - reads one of them from stdin. A file with
    nothing to score is reported on stderr while the others are scored, and the exit status is 1.
    """
    from embcli import evaluate as evaluation
    from embcli.model import ANALOGY_METHODS, Model

    if not analogies and not similarity_files:
        raise typer.BadParameter("give at least one --analogies or --similarity file", param_hint="--analogies")
    if method not in ANALOGY_METHODS:
        raise typer.BadParameter(f"use one of {', '.join(ANALOGY_METHODS)}", param_hint="--method")
    if [*analogies, *similarity_files].count("-") > 1:
        raise typer.BadParameter("stdin (-) can be read only once; give the other files by name",
                                 param_hint="--analogies/--similarity")
    # Every file is read before the model is opened, so that a wrong name fails at once.
    analogy_sets = [evaluation.read_test_set(path, encoding) for path in analogies]
    pair_sets = [evaluation.read_test_set(path, encoding) for path in similarity_files]
    opened = Model.open(model)
    cutoff = min(restrict, len(opened))
    analogy_results = [_score_test_set(evaluation.score_analogies, opened, path, lines, restrict, case_sensitive,
                                       method) for path, lines in analogy_sets]
    pair_results = [_score_test_set(evaluation.score_pairs, opened, path, lines, restrict, case_sensitive,
                                    score_column) for path, lines in pair_sets]
    failed = any(isinstance(result, _FailedTestSet) for result in analogy_results + pair_results)
    if as_json:
        sys.stdout.write(json.dumps({
            "model": os.path.abspath(opened.path),
            "restrict": restrict,
            "vocabulary_cutoff": cutoff,
            "case_sensitive": case_sensitive,
            "method": method,
            "analogies": [_test_set_json(result) for result in analogy_results],
            "similarity": [_test_set_json(result) for result in pair_results],
        }, ensure_ascii=False) + "\n")
    else:
        _print_evaluation(opened, restrict, cutoff, case_sensitive, method, analogy_results, pair_results)
    if failed:
        raise typer.Exit(1)


class _FailedTestSet:
    """A test set that was read but had nothing to score; its error was printed on stderr."""

    def __init__(self, path, message):
        self.path = path
        self.message = message


def _score_test_set(score_function, opened, path, lines, *settings):
    """Return `score_function`'s result for one test set, or a _FailedTestSet after printing its error.

    Warnings about skipped lines go to stderr here, so they appear with --json too.
    """
    from embcli.evaluate import AnalogyResult, EvaluationError

    try:
        result = score_function(opened, path, lines, *settings)
    except EvaluationError as failure:
        message = error_message(failure)
        error(message)
        return _FailedTestSet(path, message)
    if result.skipped_lines:
        if isinstance(result, AnalogyResult):
            lacking = "without four words"
        else:
            lacking = "without two words and a finite score"
        note(f"warning: {result.path}: skipped {_count(len(result.skipped_lines), 'line')} {lacking}, "
             f"{_first_lines(result.skipped_lines)}")
    return result


def _test_set_json(result):
    """Return one file's JSON entry: its scores and "error": null, or only the file and its error."""
    if isinstance(result, _FailedTestSet):
        return {"file": result.path, "error": result.message}
    return {**result.to_json(), "error": None}


def _print_evaluation(opened, restrict, cutoff, case_sensitive, method, analogy_results, pair_results):
    """Print the tables of the test sets that were scored; nothing if none was."""
    analogy_results = [result for result in analogy_results if not isinstance(result, _FailedTestSet)]
    pair_results = [result for result in pair_results if not isinstance(result, _FailedTestSet)]
    if not analogy_results and not pair_results:
        return
    case_rule = "case-sensitive" if case_sensitive else "case-insensitive (words compared in upper case)"
    out = [f"model: {os.path.abspath(opened.path)}",
           f"vocabulary cutoff: the {_count(cutoff, 'most frequent word')} (--restrict {restrict:,}, "
           f"vocabulary {len(opened):,})",
           f"case: {case_rule}"]
    for result in analogy_results:
        out.append("")
        out.append(f"analogies: {result.path} ({method})")
        rows = [_analogy_row(section) for section in result.sections]
        rows.append(None)
        rows.extend(_analogy_row(total) for total in (result.semantic, result.syntactic, result.overall))
        out.extend(_table(("section", "accuracy", "correct", "answered", "questions", "coverage"), rows))
    if pair_results:
        out.append("")
        out.append("similarity:")
        rows = [(r.path, _correlation(r.spearman), _correlation(r.pearson), f"{r.pairs:,}", f"{100 * r.oov_share:.1f}%")
                for r in pair_results]
        out.extend(_table(("file", "spearman", "pearson", "pairs", "oov"), rows))
    sys.stdout.write("\n".join(out) + "\n")


def _correlation(value):
    """Format a correlation, or n/a where it is undefined (NaN: a constant list, or no pairs)."""
    return "n/a" if value != value else f"{value:.4f}"


def _first_lines(numbers, shown=5):
    """Return "line 3" or "the first are lines 3, 8, 9" for a list of line numbers."""
    if len(numbers) == 1:
        return f"line {numbers[0]}"
    return "the first are lines " + ", ".join(str(n) for n in numbers[:shown])


def _analogy_row(section):
    """Return one table row; accuracy is n/a when no question of the section was answered."""
    accuracy = f"{100 * section.accuracy:.1f}%" if section.answered else "n/a"
    return (section.name, accuracy, f"{section.correct:,}", f"{section.answered:,}", f"{section.total:,}",
            f"{100 * section.coverage:.1f}%")


def _table(header, rows):
    """Return lines of a plain-text table, columns padded; None in rows draws a rule."""
    widths = [max(len(str(row[i])) for row in [header] + [r for r in rows if r]) for i in range(len(header))]

    def line(row):
        cells = [str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
                 for i, (cell, width) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return [line(header), rule] + [rule if row is None else line(row) for row in rows]


@app.command(epilog=EPILOG_OWN_QUIET)
@handle_errors
def export(
    output: str = typer.Argument(..., help="File to write, or - for stdout; for --format projector, a directory "
                                 "that receives vectors.tsv and metadata.tsv.", show_default=False),
    format: str = typer.Option("auto", "--format", "-f",
                               help="auto (from the name: .bin word2vec-binary, .npy npy, .vec fasttext, "
                                    "otherwise word2vec), word2vec (text), word2vec-binary, glove (text, no "
                                    "header), fasttext "
                                    "(.vec, the word2vec text format), npy (a .npy matrix plus a word "
                                    "list beside it, NAME.words.txt) or projector."),
    model: Optional[str] = ModelOption,
    quiet: bool = QuietOption,
):
    """Write the model's vectors in another tool's file format."""
    from embcli.formats import WRITE_FORMATS, write_vectors
    from embcli.model import Model, check_export_target, export_format

    STATE["quiet"] = STATE["quiet"] or quiet
    if not output:
        raise typer.BadParameter("the output path is empty; give a file name, or - for stdout", param_hint="OUTPUT")
    if format == "auto":
        format = export_format(output)
    if format not in WRITE_FORMATS:
        raise typer.BadParameter(f"use auto or one of {', '.join(WRITE_FORMATS)}", param_hint="--format")
    if output == "-" and format in ("projector", "npy"):
        raise typer.BadParameter(f"the {format} format writes two files, so it cannot write to stdout (-); "
                                 "give a file or directory name, or choose another --format",
                                 param_hint="--format")
    opened = Model.open(model)
    if output != "-":
        check_export_target(opened.path, output, format)
    target = _CheckedStdout(sys.stdout.buffer) if output == "-" else output
    written = write_vectors(target, opened.words, opened.matrix, format)
    if opened.meta.get("subwords") and format != "projector":
        note("note: the export holds each word's vector; the n-gram rows that give vectors to unseen "
             "words stay in the model directory (subwords.npy), which no exported format holds")
    note(f"wrote {_count(len(opened), 'word')} x {_count(opened.dim, 'dimension')} as {format}: "
         f"{', '.join(written)}")


@app.command("import", epilog=EPILOG_OWN_QUIET)
@handle_errors
def import_vectors(
    path: str = typer.Argument(..., help="Vector file: word2vec text or binary, GloVe, fastText .vec or .bin, or .npy.",
                               show_default=False),
    format: str = typer.Option("auto", "--format", "-f",
                               help="auto, word2vec, word2vec-binary, glove, fasttext (.vec), fasttext-bin (a "
                                    "fastText .bin model, with its n-grams), npy or projector (vectors.tsv of "
                                    "the Embedding Projector, with its metadata.tsv)."),
    words: Optional[str] = typer.Option(None, "--words", help="Word list of a .npy matrix or a projector "
                                        "vectors.tsv: one word per line in row order, or word<TAB>count lines "
                                        "(metadata.tsv: a header line and the word first, when it has several "
                                        "columns). [default: NAME.words.txt beside NAME.npy, metadata.tsv beside "
                                        "vectors.tsv, as export writes them]", show_default=False),
    lenient: bool = typer.Option(False, "--lenient",
                                 help="Warn and go on instead of stopping: skip ragged, non-finite and duplicate "
                                      "rows, keep the rows present whatever the header says, and replace "
                                      "invalid UTF-8 in words with U+FFFD."),
    force: bool = typer.Option(False, "--force", help="Replace the model already in the model directory."),
    model: Optional[str] = ModelOption,
    quiet: bool = QuietOption,
):
    """Make a model directory from a vector file, auto-detecting its format."""
    import time

    from embcli.formats import READ_FORMATS, import_file
    from embcli.store import resolve_model_path

    STATE["quiet"] = STATE["quiet"] or quiet
    if format != "auto" and format not in READ_FORMATS:
        raise typer.BadParameter(f"use auto or one of {', '.join(READ_FORMATS)}", param_hint="--format")
    model_dir = resolve_model_path(model)
    if os.path.exists(os.path.join(model_dir, "meta.json")) and not force:
        from embcli.store import read_meta

        try:
            read_meta(model_dir)
            what = "a model"
        except EmbcliError:
            what = "a meta.json that embcli did not write"
        raise EmbcliError(f"{model_dir} already contains {what}; choose another directory with -m, "
                          "or pass --force to replace it")
    started = time.perf_counter()
    size = os.path.getsize(path) if os.path.isfile(path) else None
    # A bar only for files that take more than a moment to read.
    if size is not None and size >= (32 << 20):
        update, finish = _progress_bar(size, "importing")
    else:
        update, finish = None, (lambda: None)
    try:
        vectors = import_file(model_dir, path, None if format == "auto" else format, lenient, words, progress=update,
                              replace=force)
    finally:
        finish()
    for message in vectors.warnings:
        note(f"warning: {message}")
    if vectors.warning_count > len(vectors.warnings):
        more = vectors.warning_count - len(vectors.warnings)
        note(f"warning: {_count(more, 'more problem')} {'was' if more == 1 else 'were'} skipped")
    note(f"imported {_count(len(vectors.words), 'word')} x {_count(vectors.matrix.shape[1], 'dimension')} "
         f"({vectors.format}) "
         f"from {'<stdin>' if path == '-' else path} into {model_dir} in {time.perf_counter() - started:.1f} s")


def _fast_neighbors_arguments(argv):
    """Return the arguments of a plain `neighbors` command line, or None.

    typer builds a pydantic adapter for each parameter before running a command, which
    costs more than the whole query. A `neighbors` call that uses only words, -k/--top,
    --restrict, -m/--model, --vector and --json, with valid numbers, is parsed here
    instead; anything else (help, other forms, bad values) goes through typer.
    """
    if len(argv) < 2 or argv[0] != "neighbors":
        return None
    options = {"words": [], "k": 10, "restrict": None, "vector": None,
               "model": os.environ.get("EMBCLI_MODEL") or None, "as_json": False}
    arguments = iter(argv[1:])
    for argument in arguments:
        if argument == "--json":
            options["as_json"] = True
        elif argument in ("-k", "--top", "--restrict", "-m", "--model", "--vector"):
            value = next(arguments, None)
            if value is None:
                return None
            if argument in ("-k", "--top", "--restrict"):
                if not value.isdigit() or (argument == "--restrict" and int(value) < 1):
                    return None
                options["k" if argument != "--restrict" else "restrict"] = int(value)
            elif argument == "--vector":
                options["vector"] = value
            elif not value:
                return None  # typer reports the empty model directory
            else:
                options["model"] = value
        elif argument.startswith("-") and argument != "-":
            return None
        else:
            options["words"].append(argument)
    if bool(options["words"]) == (options["vector"] is not None):
        return None
    if "-" in options["words"] and len(options["words"]) > 1:
        return None  # a usage error, which typer prints
    return options


def _limit_blas_threads(argv):
    """Run one-off queries, import and export on one OpenBLAS thread unless the user chose a count.

    A single query is a matrix-vector product: waking a second thread costs more than it
    saves (30 ms instead of 200 ms for a 100k x 300 matrix on a busy machine), and
    numpy starts faster with one. Batches from stdin (`-`) and `evaluate` are matrix
    products that use every core: 10,000 queries on 100k x 300 took 4.1 s with two
    threads and 6.4 s with one on the idle machine. Import and export make no BLAS call,
    so an idle OpenBLAS thread would only spin. Set OPENBLAS_NUM_THREADS to override it.
    It must run before numpy is imported.
    """
    if not argv or "OPENBLAS_NUM_THREADS" in os.environ or "OMP_NUM_THREADS" in os.environ:
        return
    single_query = argv[0] in ("neighbors", "analogy", "similarity", "lookup") and "-" not in argv[1:]
    if single_query or argv[0] in ("import", "export"):
        os.environ["OPENBLAS_NUM_THREADS"] = "1"


def _hoist_global_flags(argv):
    """Move --debug, and --quiet for commands that lack their own, before the command.

    Users append them to any command (`embcli neighbors king --debug`), and messages
    suggest doing so, but typer only accepts them before the command name.
    """
    if not argv or argv[0].startswith("-"):
        return argv
    own_quiet = argv[0] in ("build-vocab", "train", "import", "index", "export")
    hoisted, rest = [], [argv[0]]
    for position, argument in enumerate(argv[1:], 1):
        if argument == "--":
            rest.extend(argv[position:])
            break
        if argument == "--debug" or (argument in ("--quiet", "-q") and not own_quiet):
            hoisted.append(argument)
        else:
            rest.append(argument)
    return hoisted + rest


def main():
    """Console entry point. A plain `neighbors` query ends the process with os._exit."""
    import signal

    if sys.stderr is None:
        # Started with stderr closed (`2>&-`), as some job runners start programs: the
        # command runs, its messages are lost, and its exit code reports the outcome.
        _occupy_closed_descriptor(2)
        sys.stderr = open(os.devnull, "w", encoding="utf-8")
    if sys.stdout is None:
        # Started with stdout closed (`>&-`): commands that print nothing there still
        # run, and a command that prints results fails with "cannot write to standard output".
        _occupy_closed_descriptor(1)
        sys.stdout = _ClosedStream("standard output")
    if sys.stdin is None:
        _occupy_closed_descriptor(0)
        sys.stdin = _ClosedStream("standard input")
    sys.argv[1:] = _hoist_global_flags(sys.argv[1:])
    sys.stdout = _CheckedStdout(sys.stdout)

    # Training routes SIGTERM to its own handler while it runs, and restores this one.
    signal.signal(signal.SIGTERM, _raise_terminated)
    _limit_blas_threads(sys.argv[1:])
    fast = _fast_neighbors_arguments(sys.argv[1:])
    if fast is not None:
        try:
            handle_errors(_neighbors)(**fast)
        except typer.Exit as stop:
            sys.exit(stop.exit_code)
        except KeyboardInterrupt:
            error("interrupted")
            sys.exit(130)
        except Terminated:
            error("stopped by SIGTERM")
            sys.exit(143)
        # The results are printed. What remains is the interpreter's teardown, which took
        # 20 ms here (a sixth of the command) and has nothing to save or close.
        _settle_stdout()
        sys.stderr.flush()
        os._exit(0)
    try:
        app(prog_name="embcli")
    except KeyboardInterrupt:
        error("interrupted")
        sys.exit(130)
    except Terminated:
        error("stopped by SIGTERM")
        sys.exit(143)
    except SystemExit as done:
        # Commands that only read skip the teardown too; commands that write, and
        # training's worker processes, keep it.
        if sys.argv[1:2] and sys.argv[1] in _READ_ONLY_COMMANDS and isinstance(done.code, (int, type(None))):
            _settle_stdout()
            sys.stderr.flush()
            os._exit(done.code or 0)
        if not done.code:
            # The command's work is committed; a signal now would only turn its exit
            # status into 143 or a traceback from the interpreter's teardown.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise


_READ_ONLY_COMMANDS = ("neighbors", "lookup", "similarity", "analogy", "evaluate", "info")
