"""The model directory on disk: atomic writes, a commit journal, and checked reads.

A model directory holds:
- `vocab.tsv`: one `word<TAB>count` line per word; line i is row i of the matrix;
- `embeddings.npy`: float32 matrix, shape (vocabulary size, dim), plain .npy;
- `meta.json`: format version, a model id, tokenizer, corpus, training settings and
  statistics, and a fingerprint of each data file;
- `tokens.npy` (optional): the corpus as uint32 word ids, `LINE_END` between lines.

Every file is written to a temporary name in the same directory and fsynced. A set of
files becomes visible together through `commit()`: it first writes a journal that lists
the renames, then renames, then deletes the journal. A process killed before the
journal exists leaves the previous model intact (plus temporary files, removed by the
next write); one killed after it leaves a journal that the next `open` completes. Readers
then check every data file against the fingerprint recorded in `meta.json`, so a matrix
never pairs with the metadata or vocabulary of another save.
"""

import hashlib
import json
import os
import uuid

import numpy as np

from embcli import __version__
from embcli.errors import ModelCorrupt, ModelNotFound

FORMAT_VERSION = 1
META = "meta.json"
VOCAB = "vocab.tsv"
EMBEDDINGS = "embeddings.npy"
TOKENS = "tokens.npy"
NORMS = "norms.npy"
JOURNAL = ".commit-journal.json"
TMP_PREFIX = ".tmp-"
LINE_END = np.uint32(0xFFFFFFFF)
DEFAULT_MODEL = "embcli-model"


def resolve_model_path(path=None):
    """Return the model directory: `path`, else $EMBCLI_MODEL, else ./embcli-model."""
    if path:
        return str(path)
    return os.environ.get("EMBCLI_MODEL") or DEFAULT_MODEL


def fingerprint(path):
    """Return a short hash of a file's size and its first and last MiB.

    Cheap enough for every query, and different for two saves of the same shape
    with overwhelming probability, since trained floats differ in every block.
    """
    digest = hashlib.blake2b(digest_size=12)
    size = os.path.getsize(path)
    digest.update(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        if size > 2 << 20:
            handle.seek(-(1 << 20), os.SEEK_END)
            digest.update(handle.read(1 << 20))
        elif size > 1 << 20:
            digest.update(handle.read())
    return digest.hexdigest()


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


def write_bytes_synced(path, data):
    with open(path, "wb") as handle:
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
    with open(path, "wb") as handle:
        np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def save_norms_temp(directory, matrix, meta):
    """Write the L2 norm of each row of `matrix` under a temporary name; return that path.

    Queries read norms.npy instead of recomputing the norms, but only while
    meta["norms_of"] equals the fingerprint of embeddings.npy, so a matrix saved later
    without new norms makes queries ignore the stale file. Sets meta["norms_of"] and
    meta["files"][NORMS]; call it after meta["files"][EMBEDDINGS] is set.
    """
    from embcli.search import row_norms

    path = save_npy_temp(directory, NORMS, row_norms(matrix))
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
    lines = "".join(f"{word}\t{int(count)}\n" for word, count in zip(words, counts))
    write_bytes_synced(path, lines.encode("utf-8"))
    return path


def ensure_directory(directory):
    os.makedirs(directory, exist_ok=True)
    clean_temporaries(directory)


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
    longer match a rebuilt vocabulary).
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
    for name, tmp_name in journal["renames"].items():
        tmp = os.path.join(directory, tmp_name)
        if os.path.exists(tmp):
            os.replace(tmp, os.path.join(directory, name))
    for name in journal.get("remove", ()):
        try:
            os.remove(os.path.join(directory, name))
        except FileNotFoundError:
            pass
    _fsync_dir(directory)
    os.remove(os.path.join(directory, JOURNAL))
    _fsync_dir(directory)


def recover(directory):
    """Finish a commit that a killed process left half done. Return True if there was one."""
    path = os.path.join(directory, JOURNAL)
    try:
        with open(path, "rb") as handle:
            journal = json.loads(handle.read())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        # The journal is written to a temporary name and renamed, so it is whole or absent.
        raise ModelCorrupt(f"{path}: unreadable commit journal") from None
    try:
        _apply_journal(directory, journal)
    except PermissionError:
        raise ModelCorrupt(
            f"{directory}: a save was interrupted and the directory is read-only, "
            "so it cannot be completed; make it writable and retry"
        ) from None
    return True


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
    if os.path.exists(os.path.join(directory, JOURNAL)):
        recover(directory)
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
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ModelCorrupt(f"{path}: no format_version")
    if version > FORMAT_VERSION:
        raise ModelCorrupt(
            f"{path} has format version {version}, but this embcli {__version__} reads "
            f"up to version {FORMAT_VERSION}; upgrade embcli"
        )
    return meta


def check_fingerprint(directory, meta, name):
    """Raise ModelCorrupt unless file `name` is the one `meta` was saved with."""
    expected = meta.get("files", {}).get(name)
    path = os.path.join(directory, name)
    if expected is None:
        return
    if not os.path.exists(path):
        raise ModelCorrupt(f"{path} is missing; the model directory is incomplete")
    if fingerprint(path) != expected:
        raise ModelCorrupt(
            f"{path} does not belong to this model's {META} (it was changed or "
            "replaced after the model was saved); retrain or re-import the model"
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


def load_matrix(path, expected_rows=None, mmap=True):
    """Return a float32 2-D matrix from a .npy file, memory-mapped when possible.

    Never unpickles: object arrays raise ModelCorrupt.
    """
    try:
        matrix = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise ModelNotFound(f"{path} is missing; run 'embcli train' first") from None
    except ValueError as error:
        if "pickle" in str(error) or "Object arrays" in str(error):
            raise ModelCorrupt(
                f"{path} holds an object (pickled) array, which embcli never loads "
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
