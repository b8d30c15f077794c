"""The model directory on disk: atomic writes, a commit journal, and checked reads.

A model directory holds:
- `vocab.tsv`: one `word<TAB>count` line per word; line i is row i of the matrix;
- `embeddings.npy`: float32 matrix, shape (vocabulary size, dim), plain .npy;
- `meta.json`: format version, a model id, tokenizer, corpus, training settings and
  statistics, and a fingerprint of each data file;
- `tokens.npy` (optional): the corpus as uint32 word ids, `LINE_END` between lines.

Every file is written to a temporary name in the same directory and fsynced. A set of
files becomes visible together through `commit()`: it first writes a journal that lists
the removals and renames, then applies them, then deletes the journal. A process killed
before the journal exists leaves the previous model intact (plus temporary files,
removed by the next write). One killed after it leaves a journal that the next reader
or writer completes. Readers then check every data file against the fingerprint recorded in
`meta.json`, and reject a data file that `meta.json` does not list, so a matrix never
pairs with the metadata or vocabulary of another save.

One process writes a directory at a time: writers hold an exclusive `flock` on
`.lock` (`writer_lock`). Readers take no lock. A reader that finds a journal while a
writer has the lock waits for the commit to finish instead of applying it.
"""

import contextlib
import errno
import fcntl
import json
import mmap
import os
import time
import uuid

import numpy as np

from embcli import __version__
from embcli.errors import DiskFull, EmbcliError, ModelBusy, ModelCorrupt, ModelNotFound, is_disk_full

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

FORMAT_VERSION = 1
META = "meta.json"
VOCAB = "vocab.tsv"
EMBEDDINGS = "embeddings.npy"
TOKENS = "tokens.npy"
NORMS = "norms.npy"
CHECKPOINT = "checkpoint.json"
CHECKPOINT_INPUT = "checkpoint-input.npy"
CHECKPOINT_OUTPUT = "checkpoint-output.npy"
CHECKPOINT_TOKENS = "checkpoint-tokens.npy"
CHECKPOINT_FILES = (CHECKPOINT, CHECKPOINT_INPUT, CHECKPOINT_OUTPUT, CHECKPOINT_TOKENS)
# Data files that meta.json must list with a fingerprint whenever they exist.
DATA_FILES = (VOCAB, EMBEDDINGS, TOKENS)
JOURNAL = ".commit-journal.json"
LOCK = ".lock"
TMP_PREFIX = ".tmp-"
# How long a reader waits for another process's commit to finish, in seconds.
COMMIT_WAIT_SECONDS = 30.0
LINE_END = np.uint32(0xFFFFFFFF)
DEFAULT_MODEL = "embcli-model"


def resolve_model_path(path=None):
    """Return the model directory: `path`, else $EMBCLI_MODEL, else ./embcli-model."""
    if path:
        return str(path)
    return os.environ.get("EMBCLI_MODEL") or DEFAULT_MODEL


try:
    # hashlib would also load OpenSSL's module, which costs a query 2-3 ms of startup.
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - CPython builds without _blake2
    from hashlib import blake2b

# Fingerprints from embcli 0.1 hash the first and last MiB and have no prefix. The
# current ones hash the first and last FINGERPRINT_WINDOW bytes and start with "2:".
FINGERPRINT_WINDOW = 64 << 10
LEGACY_FINGERPRINT_WINDOW = 1 << 20


def fingerprint(path, window=FINGERPRINT_WINDOW):
    """Return a short hash of a file's size and its first and last `window` bytes.

    Cheap enough for every query, and different for two saves of the same shape
    with overwhelming probability, since trained floats differ in every block.
    """
    digest = blake2b(digest_size=12)
    size = os.path.getsize(path)
    digest.update(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(window))
        if size > 2 * window:
            handle.seek(-window, os.SEEK_END)
            digest.update(handle.read(window))
        elif size > window:
            digest.update(handle.read())
    value = digest.hexdigest()
    return value if window == LEGACY_FINGERPRINT_WINDOW else "2:" + value


def fingerprint_matches(path, expected):
    """True if file `path` has the fingerprint `expected`, in either of its versions."""
    if not isinstance(expected, str):
        return False
    window = FINGERPRINT_WINDOW if expected.startswith("2:") else LEGACY_FINGERPRINT_WINDOW
    return fingerprint(path, window) == expected


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(directory, name):
    """Return a fresh temporary path in `directory` for a file that will become `name`."""
    return os.path.join(directory, f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{name}")


def final_name(path):
    """Return the path that the temporary file `path` (see temp_path) becomes on commit."""
    directory, base = os.path.split(path)
    if base.startswith(TMP_PREFIX) and base[len(TMP_PREFIX) + 8 : len(TMP_PREFIX) + 9] == "-":
        return os.path.join(directory, base[len(TMP_PREFIX) + 9 :])
    return path


@contextlib.contextmanager
def removed_on_error(path):
    """Remove the partly written file `path` if the block raises (disk full, signal).

    A full disk raises DiskFull naming the file that `path` would have become.
    """
    try:
        yield
    except BaseException as failure:
        with contextlib.suppress(OSError):
            os.remove(path)
        if isinstance(failure, OSError) and is_disk_full(failure):
            raise DiskFull(final_name(path)) from failure
        raise


def write_bytes_synced(path, data):
    with removed_on_error(path), open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_npy_temp(directory, name, array):
    """Write `array` as a plain .npy under a temporary name; return that path."""
    path = temp_path(directory, name)
    with removed_on_error(path), open(path, "wb") as handle:
        np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    return path


class NpyRowWriter:
    """Write a float32 (rows, dim) .npy under a temporary name, appending blocks of rows.

    For matrices whose row count is known only at the end: the header is written for
    `max_rows` rows and rewritten by `finish()` for the rows appended, padded with
    spaces to the same length, as the .npy format allows. Use it as a context manager:
    the file is removed if the block raises.

    Where the file system allows it, the rows bypass the page cache (O_DIRECT): they
    are copied into page-aligned buffers of CHUNK_BYTES that a thread hands to the disk
    while the caller prepares the next rows. Copying 1.2 GB into the page cache with
    write() took 0.3 to 3.4 s of CPU from one run to the next on this machine; direct
    writes of the same bytes took 0.04 s of CPU and 0.6 s in all. The pages are then
    not cached, so the first query after an import reads the matrix from disk. Without
    O_DIRECT, rows are written with write() and the kernel is asked to start writing
    back each WRITEBACK_BYTES, so the final fsync waits only for the last part.
    """

    WRITEBACK_BYTES = 64 << 20
    CHUNK_BYTES = 8 << 20
    ALIGN = 4096  # O_DIRECT offsets, lengths and buffer addresses are multiples of this
    BUFFERS = 3

    def __init__(self, directory, name, dim, max_rows):
        self.path = temp_path(directory, name)
        self.dim = dim
        self.rows = 0
        self.header_bytes = len(_npy_header((max_rows, dim)))
        self._fd = None
        self._direct = False
        self._started = 0  # bytes of data already handed to the kernel for writeback
        self._buffer = None  # the page-aligned buffer being filled (direct mode)
        self._filled = 0  # bytes of _buffer in use
        self._offset = 0  # file offset of _buffer's first byte
        self._free = None  # buffers ready to be filled
        self._pending = None  # (buffer, length, offset) for the writing thread; None stops it
        self._thread = None
        self._failure = None  # what stopped the writing thread

    def __enter__(self):
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        direct = getattr(os, "O_DIRECT", 0)
        if direct:
            try:
                self._fd = os.open(self.path, flags | direct, 0o644)
                self._direct = True
            except OSError as error:
                if error.errno != errno.EINVAL:  # EINVAL: this file system does not support O_DIRECT
                    raise
        if self._fd is None:
            self._fd = os.open(self.path, flags, 0o644)
        header = _npy_header((0, self.dim), self.header_bytes)
        if self._direct:
            self._start_thread()
            self._take_buffer()
            self._copy(memoryview(header))
        else:
            _write_all(self._fd, header)
        return self

    def __exit__(self, kind, value, traceback):
        self._stop_thread()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if kind is not None:
            with contextlib.suppress(OSError):
                os.remove(self.path)
            if isinstance(value, OSError) and is_disk_full(value):
                raise DiskFull(final_name(self.path)) from value
        return False

    def append(self, rows):
        """Append the (n, dim) float32 rows `rows` to the file."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        data = memoryview(rows).cast("B")
        self.rows += rows.shape[0]
        if self._direct:
            self._copy(data)
            return
        _write_all(self._fd, data)
        written = 4 * self.dim * self.rows
        if hasattr(os, "posix_fadvise") and written - self._started >= self.WRITEBACK_BYTES:
            # On Linux, POSIX_FADV_DONTNEED starts writeback of the range's dirty pages
            # without waiting for it. It drops only clean pages from the page cache, and
            # the range was just written, so its pages stay cached for the queries.
            os.posix_fadvise(self._fd, self.header_bytes + self._started, written - self._started,
                             os.POSIX_FADV_DONTNEED)
            self._started = written

    def finish(self):
        """Write the final header, fsync and close the file; return its path."""
        size = self.header_bytes + 4 * self.dim * self.rows
        if self._direct:
            # The last buffer is written padded to a whole block. Then the file is cut
            # to its size, and the header is rewritten through the page cache.
            padded = -(-self._filled // self.ALIGN) * self.ALIGN
            self._buffer[self._filled : padded] = bytes(padded - self._filled)
            self._submit(padded)
            self._stop_thread()
            self._raise_failure()
            os.ftruncate(self._fd, size)
            self._clear_direct()
        os.pwrite(self._fd, _npy_header((self.rows, self.dim), self.header_bytes), 0)
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        return self.path

    # Direct mode: the buffers and the writing thread.

    def _copy(self, data):
        while len(data):
            self._raise_failure()
            take = min(len(data), self.CHUNK_BYTES - self._filled)
            self._buffer[self._filled : self._filled + take] = data[:take]
            self._filled += take
            data = data[take:]
            if self._filled == self.CHUNK_BYTES:
                self._submit(self.CHUNK_BYTES)
                self._take_buffer()

    def _submit(self, length):
        self._pending.put((self._buffer, length, self._offset))
        self._offset += length
        self._buffer = None
        self._filled = 0

    def _take_buffer(self):
        self._buffer = self._free.get()

    def _start_thread(self):
        import queue
        import threading

        self._free = queue.Queue()
        for _ in range(self.BUFFERS):
            self._free.put(mmap.mmap(-1, self.CHUNK_BYTES))  # anonymous maps are page-aligned
        self._pending = queue.Queue()
        self._thread = threading.Thread(target=self._write_buffers, name="embcli-npy-writer", daemon=True)
        self._thread.start()

    def _write_buffers(self):
        while True:
            item = self._pending.get()
            if item is None:
                return
            buffer, length, offset = item
            if self._failure is None:
                try:
                    view = memoryview(buffer)[:length]
                    while len(view):
                        try:
                            done = os.pwrite(self._fd, view, offset)
                        except OSError as error:
                            # Some file systems accept O_DIRECT when opening but not when
                            # writing: go on through the page cache.
                            if error.errno != errno.EINVAL or not self._clear_direct():
                                raise
                            continue
                        view, offset = view[done:], offset + done
                except BaseException as failure:  # noqa: BLE001 - raised again in the caller's thread
                    self._failure = failure
            self._free.put(buffer)

    def _clear_direct(self):
        """Turn O_DIRECT off for the open file; return whether it was on."""
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        if not flags & os.O_DIRECT:
            return False
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        return True

    def _stop_thread(self):
        if self._thread is not None:
            self._pending.put(None)
            self._thread.join()
            self._thread = None

    def _raise_failure(self):
        if self._failure is not None:
            raise self._failure


def _write_all(fd, data):
    view = memoryview(data)
    while len(view):
        view = view[os.write(fd, view) :]


def _npy_header(shape, length=None):
    """Return a version 1.0 .npy header for a float32 C-order array of `shape`.

    The header is padded with spaces to `length` bytes, or to the next multiple of 64
    (as numpy writes it) when `length` is None.
    """
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (np.lib.format.dtype_to_descr(
        np.dtype(np.float32)), tuple(shape))
    fixed = len(np.lib.format.magic(1, 0)) + 2  # magic string, version and the 2-byte header length
    if length is None:
        length = -(-(fixed + len(text) + 1) // 64) * 64
    if fixed + len(text) + 1 > length or length - fixed >= 1 << 16:
        raise ValueError(f"a .npy header for shape {shape} does not fit in {length} bytes")
    body = text.ljust(length - fixed - 1) + "\n"
    return np.lib.format.magic(1, 0) + (length - fixed).to_bytes(2, "little") + body.encode("latin1")


def save_norms_temp(directory, matrix, meta, norms=None):
    """Write the L2 norm of each row of `matrix` under a temporary name; return that path.

    `norms` are those norms when the caller has them already, and `matrix` is not read.

    Queries read norms.npy instead of recomputing the norms, but only while
    meta["norms_of"] equals the fingerprint of embeddings.npy, so a matrix saved later
    without new norms makes queries ignore the stale file. Sets meta["norms_of"] and
    meta["files"][NORMS]; call it after meta["files"][EMBEDDINGS] is set.
    """
    from embcli.search import row_norms

    norms = row_norms(matrix) if norms is None else norms
    # A norm above the float32 maximum is stored as infinity, and Model recomputes it.
    with np.errstate(over="ignore"):
        norms = np.asarray(norms).astype(np.float32)
    path = save_npy_temp(directory, NORMS, norms)
    meta["norms_of"] = meta["files"][EMBEDDINGS]
    meta["files"][NORMS] = fingerprint(path)
    return path


def load_norms(directory, meta, rows):
    """Return the stored row norms (float32) if they belong to the current matrix, else None."""
    if NORMS not in meta.get("files", {}) or meta.get("norms_of") != meta["files"].get(EMBEDDINGS):
        return None
    path = os.path.join(directory, NORMS)
    if not os.path.exists(path):
        return None
    check_fingerprint(directory, meta, NORMS)
    norms = load_matrix_1d(path)
    if norms.shape != (rows,):
        raise ModelCorrupt(f"{path} has {norms.shape[0]:,} norms but the matrix has {rows:,} rows")
    return norms


def load_matrix_1d(path):
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ModelCorrupt(f"{path}: not a valid .npy file ({error})") from None
    if array.ndim != 1 or array.dtype != np.float32:
        raise ModelCorrupt(f"{path}: expected a 1-D float32 array, found {array.dtype} {array.shape}")
    return array


def save_vocab_temp(directory, words, counts):
    path = temp_path(directory, VOCAB)
    counts = np.asarray(counts)
    if len(words) and not counts.any():
        lines = "\t0\n".join(words) + "\t0\n"  # imported vectors without counts: the fast common case
    else:
        lines = "".join(map("{}\t{}\n".format, words, counts.tolist()))
    if lines.count("\n") != len(words) or "\r" in lines:
        # One word per line is the file's format: a line break in a word would misalign
        # every later word with its row, so no such vocabulary is ever saved.
        bad = next(word for word in words if "\n" in word or "\r" in word)
        raise EmbcliError(f"the word {bad[:60]!r} contains a line break, which {VOCAB} cannot hold")
    write_bytes_synced(path, lines.encode("utf-8"))
    return path


def remove_if_unused(directory):
    """Remove `directory` if it contains nothing but a lock file, as a failed first write leaves it."""
    with contextlib.suppress(OSError):
        if set(os.listdir(directory)) <= {LOCK}:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, LOCK))
            os.rmdir(directory)


def ensure_directory(directory):
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise EmbcliError(f"{directory} exists and is not a directory; choose another model directory")
    os.makedirs(directory, exist_ok=True)
    clean_temporaries(directory)


def _try_lock(directory, create):
    """Return a file descriptor holding the exclusive lock of `directory`, or None.

    Returns None when another process has it. Raises OSError when the lock file
    cannot be opened (for example `create` is False and it does not exist).
    """
    flags = os.O_RDWR | os.O_CREAT if create else os.O_RDONLY
    fd = os.open(os.path.join(directory, LOCK), flags, 0o644)
    if fcntl is None:
        return fd  # NOTE: no locking on platforms without fcntl (Windows).
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock(fd):
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def writer_lock(directory):
    """Create `directory` if needed and hold its write lock for the block.

    Completes an interrupted commit and removes stale temporary files first. Raises
    ModelBusy if another process holds the lock. A directory created here and left
    empty by a failed write is removed again.
    """
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise EmbcliError(f"{directory} exists and is not a directory; choose another model directory")
    created = not os.path.exists(directory)
    os.makedirs(directory, exist_ok=True)
    fd = _try_lock(directory, create=True)
    if fd is None:
        raise ModelBusy(
            f"{directory} is being written by another embcli process; wait for it to "
            "finish, or use another model directory"
        )
    try:
        clean_temporaries(directory)
        yield
    except BaseException:
        # A write that failed leaves none of its temporary files.
        clean_temporaries(directory)
        raise
    finally:
        if created:
            remove_if_unused(directory)
        _unlock(fd)


def clean_temporaries(directory):
    """Remove temporary files left by a killed write, unless a journal still needs them."""
    if os.path.exists(os.path.join(directory, JOURNAL)):
        recover(directory)
    for name in os.listdir(directory):
        if name.startswith(TMP_PREFIX):
            try:
                os.remove(os.path.join(directory, name))
            except OSError:
                pass


def commit(directory, renames, remove=()):
    """Atomically make each temporary file in `renames` ({final name: temp path}) visible.

    Names in `remove` are deleted in the same commit (for example embeddings that no
    longer match a rebuilt vocabulary). The caller must have `writer_lock(directory)`.
    """
    journal = {
        "renames": {name: os.path.basename(tmp) for name, tmp in renames.items()},
        "remove": list(remove),
    }
    journal_tmp = temp_path(directory, JOURNAL)
    write_bytes_synced(journal_tmp, json.dumps(journal).encode())
    os.replace(journal_tmp, os.path.join(directory, JOURNAL))
    _fsync_dir(directory)
    _apply_journal(directory, journal)


def _apply_journal(directory, journal):
    # Each step can be repeated, so a commit killed halfway is completed by running
    # the whole journal again. Removals go first, so a reader that opens the model
    # while the journal is applied finds a file missing, never an old file beside new ones.
    for name in journal.get("remove", ()):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, name))
    for name, tmp_name in journal["renames"].items():
        tmp = os.path.join(directory, tmp_name)
        if os.path.exists(tmp):
            os.replace(tmp, os.path.join(directory, name))
    _fsync_dir(directory)
    os.remove(os.path.join(directory, JOURNAL))
    _fsync_dir(directory)


def _read_journal(path):
    try:
        with open(path, "rb") as handle:
            journal = json.loads(handle.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # The journal is written to a temporary name and renamed, so it is whole or absent.
        raise ModelCorrupt(f"{path}: unreadable commit journal; remove it and retrain") from None
    valid = (
        isinstance(journal, dict)
        and isinstance(journal.get("renames"), dict)
        and isinstance(journal.get("remove", []), list)
    )
    if not valid:
        raise ModelCorrupt(f"{path}: unreadable commit journal; remove it and retrain")
    return journal


def recover(directory):
    """Finish a commit that a killed process left half done. Return True if there was one.

    The caller must have the write lock, or be sure that no writer is running.
    """
    path = os.path.join(directory, JOURNAL)
    journal = _read_journal(path)
    if journal is None:
        return False
    try:
        _apply_journal(directory, journal)
    except PermissionError:
        raise ModelCorrupt(
            f"{directory}: a save was interrupted and the directory is read-only, "
            "so it cannot be completed; make it writable and retry"
        ) from None
    except FileNotFoundError:
        pass  # another process completed the same journal at the same time
    return True


def settle(directory, wait=COMMIT_WAIT_SECONDS):
    """Make sure no commit is half applied in `directory` before a reader reads it.

    If a writer is committing now, wait up to `wait` seconds for it; if the writer was
    killed, complete its journal.
    """
    journal = os.path.join(directory, JOURNAL)
    deadline = time.monotonic() + wait
    while os.path.exists(journal):
        try:
            fd = _try_lock(directory, create=False)
        except OSError:
            fd = -1  # no lock file to take: no writer of this embcli version is alive
        if fd is None:
            if time.monotonic() > deadline:
                raise ModelBusy(
                    f"{directory}: another embcli process has been saving for over "
                    f"{wait:.0f} s; retry when it has finished"
                )
            time.sleep(0.05)
            continue
        try:
            recover(directory)
        finally:
            if fd >= 0:
                _unlock(fd)


def new_meta(tokenizer_config):
    return {
        "format_version": FORMAT_VERSION,
        "model_id": uuid.uuid4().hex,
        "embcli_version": __version__,
        "tokenizer": tokenizer_config,
        "files": {},
    }


def meta_temp(directory, meta):
    path = temp_path(directory, META)
    text = json.dumps(meta, indent=2, ensure_ascii=False) + "\n"
    write_bytes_synced(path, text.encode("utf-8"))
    return path


def read_meta(directory):
    """Return the parsed meta.json of `directory`, completing an interrupted commit first."""
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise ModelNotFound(f"{directory}: not a model directory")
        raise ModelNotFound(
            f"no model at {directory}; run 'embcli build-vocab CORPUS' then "
            "'embcli train', or 'embcli import FILE'"
        )
    settle(directory)
    path = os.path.join(directory, META)
    try:
        with open(path, "rb") as handle:
            meta = json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        raise ModelNotFound(
            f"{directory} has no {META}; run 'embcli build-vocab CORPUS' first"
        ) from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelCorrupt(f"{path}: not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise ModelCorrupt(f"{path}: expected a JSON object")
    if "format_version" not in meta:
        raise ModelCorrupt(f"{path}: no format_version")
    version = meta["format_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelCorrupt(f"{path}: format_version should be an integer, not {version!r}")
    if version > FORMAT_VERSION:
        raise ModelCorrupt(
            f"{path} has format version {version}, but this embcli {__version__} reads "
            f"up to version {FORMAT_VERSION}; upgrade embcli"
        )
    _check_meta_types(path, meta)
    return meta


# The tokenizer names embcli.tokenize has a rule for, repeated here so that opening a
# model for queries need not import the tokenizer.
TOKENIZER_NAMES = ("default", "whitespace", "jieba")


def _check_meta_types(path, meta):
    """Raise ModelCorrupt if a field that embcli reads has the wrong JSON type."""
    expected = {"files": dict, "tokenizer": dict, "vocab": dict, "corpus": dict, "training": dict}
    for key, kind in expected.items():
        if key in meta and not isinstance(meta[key], kind):
            raise ModelCorrupt(f"{path}: field {key!r} should be a JSON {kind.__name__} object")
    for name, value in meta.get("files", {}).items():
        if not isinstance(value, str):
            raise ModelCorrupt(f"{path}: the fingerprint of {name} should be a string")
    if "dim" in meta and (not isinstance(meta["dim"], int) or meta["dim"] < 1):
        raise ModelCorrupt(f"{path}: dim should be a positive integer, not {meta['dim']!r}")
    tokenizer = meta.get("tokenizer", {})
    name = tokenizer.get("name", "default")
    if name not in TOKENIZER_NAMES:
        raise ModelCorrupt(f"{path}: unknown tokenizer {name!r} (this embcli has {', '.join(TOKENIZER_NAMES)}); "
                           "upgrade embcli if a newer version wrote the model, else build it again")
    if not isinstance(tokenizer.get("lowercase", True), bool):
        raise ModelCorrupt(f"{path}: tokenizer lowercase should be true or false, not {tokenizer['lowercase']!r}")


def check_fingerprint(directory, meta, name):
    """Raise ModelCorrupt unless file `name` is the one `meta` was saved with."""
    expected = meta.get("files", {}).get(name)
    path = os.path.join(directory, name)
    if expected is None:
        if name in DATA_FILES and os.path.exists(path):
            raise ModelCorrupt(
                f"{path} is not listed in {META}, so it was not saved with this model "
                "(a copied file, or a save from an older embcli); retrain the model"
            )
        return
    if not os.path.exists(path):
        raise ModelCorrupt(f"{path} is missing; the model directory is incomplete")
    if not fingerprint_matches(path, expected):
        advice = ("delete it, and queries compute the norms from the embeddings" if name == NORMS
                  else "retrain or re-import the model")
        raise ModelCorrupt(
            f"{path} does not belong to this model's {META} (it was changed or "
            f"replaced after the model was saved); {advice}"
        )


def read_vocab(directory, meta=None):
    """Return (words, counts) from vocab.tsv; counts is an int64 array."""
    path = os.path.join(directory, VOCAB)
    if meta is not None:
        check_fingerprint(directory, meta, VOCAB)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ModelNotFound(f"{path} is missing; run 'embcli build-vocab CORPUS' first") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ModelCorrupt(f"{path}: line {line}: invalid UTF-8") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    words = []
    counts = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line:
            continue
        word, tab, count = line.rpartition("\t")
        if not tab or not word:
            raise ModelCorrupt(f"{path}: line {number}: expected 'word<TAB>count', got {line[:60]!r}")
        try:
            counts.append(int(count))
        except ValueError:
            raise ModelCorrupt(f"{path}: line {number}: count {count!r} is not an integer") from None
        words.append(word)
    return words, np.asarray(counts, dtype=np.int64)


def read_npy_header(handle):
    """Return (shape, dtype) from the .npy header at the start of the binary file `handle`,
    which is left at the data; None for a format version other than 1.0 and 2.0.

    numpy parses the header as a Python literal: a damaged one can raise ValueError,
    SyntaxError and more.
    """
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        return None
    return shape, dtype


def _check_npy_header(path):
    """Raise ModelCorrupt unless `path` starts with a .npy header of a plain numeric array."""
    try:
        with open(path, "rb") as handle:
            header = read_npy_header(handle)
            if header is None:
                return  # np.load(allow_pickle=False) still rejects object arrays
            dtype = header[1]
    except FileNotFoundError:
        raise ModelNotFound(f"{path} is missing; run 'embcli train' first") from None
    except OSError as error:
        raise ModelCorrupt(f"{path}: cannot read ({error.strerror})") from None
    except Exception as error:
        # numpy parses the header as a Python literal: a damaged one can raise
        # ValueError, SyntaxError, tokenize.TokenError and more.
        raise ModelCorrupt(f"{path}: not a valid .npy file ({type(error).__name__}: {error})") from None
    if dtype.hasobject:
        raise ModelCorrupt(
            f"{path} contains an object (pickled) array, which embcli never loads "
            "because unpickling can run code; expected a 2-D float array"
        )


def load_matrix(path, expected_rows=None, mmap=True):
    """Return a float32 2-D matrix from a .npy file, memory-mapped when possible.

    Never unpickles: object arrays raise ModelCorrupt.
    """
    _check_npy_header(path)
    try:
        matrix = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise ModelNotFound(f"{path} is missing; run 'embcli train' first") from None
    except ValueError as error:
        if "pickle" in str(error) or "Object arrays" in str(error):
            raise ModelCorrupt(
                f"{path} contains an object (pickled) array, which embcli never loads "
                "because unpickling can run code; expected a 2-D float array"
            ) from None
        raise ModelCorrupt(f"{path}: not a valid .npy file ({error})") from None
    except (OSError, EOFError) as error:
        raise ModelCorrupt(f"{path}: not a valid .npy file ({error})") from None
    if not isinstance(matrix, np.ndarray) or matrix.dtype.hasobject:
        raise ModelCorrupt(f"{path}: expected a 2-D float array")
    if matrix.ndim != 2:
        raise ModelCorrupt(f"{path}: expected a 2-D matrix, found {matrix.ndim} dimensions {matrix.shape}")
    if matrix.dtype != np.float32:
        if matrix.dtype.kind != "f":
            raise ModelCorrupt(f"{path}: expected float32 values, found {matrix.dtype}")
        matrix = np.asarray(matrix, dtype=np.float32)
    if expected_rows is not None and matrix.shape[0] != expected_rows:
        raise ModelCorrupt(
            f"{path} has {matrix.shape[0]:,} rows but the vocabulary has "
            f"{expected_rows:,} words; the files do not belong together"
        )
    return matrix
