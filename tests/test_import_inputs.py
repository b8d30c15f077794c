"""import on files as users get them: a byte-order mark, gzip, strict-mode errors."""

import gzip
import os

from typer.testing import CliRunner

from embcli.cli import app

runner = CliRunner()
ROWS = b"the 0.1 0.2\ncat 0.3 0.4\n"


def invoke(*args, **kwargs):
    return runner.invoke(app, list(args), **kwargs)


def test_import_word2vec_text_with_bom(tmp_path):
    path = tmp_path / "bom2.txt"
    path.write_bytes(b"\xef\xbb\xbf2 2\n" + ROWS)
    result = invoke("import", str(path), "-m", "model")
    assert result.exit_code == 0, result.stderr
    assert "2 words x 2 dimensions (word2vec)" in result.stderr


def test_glove_with_header_names_format_flag(tmp_path):
    path = tmp_path / "header.txt"
    path.write_bytes(b"2 2\n" + ROWS)
    result = invoke("import", str(path), "--format", "glove", "-m", "model")
    assert result.exit_code == 1
    assert "--format word2vec" in result.stderr


def test_import_gzip_vec_file(tmp_path):
    path = tmp_path / "x.vec.gz"
    path.write_bytes(gzip.compress(b"2 2\n" + ROWS))
    result = invoke("import", str(path), "-m", "model")
    assert result.exit_code == 0, result.stderr
    assert "2 words x 2 dimensions (word2vec)" in result.stderr


def test_import_gzip_glove_without_suffix(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_bytes(gzip.compress(ROWS))
    result = invoke("import", str(path), "-m", "model")
    assert result.exit_code == 0, result.stderr
    assert "(glove)" in result.stderr


def test_import_gzip_binary_with_format(tmp_path):
    # Decompressed next to the model, since binary files are read through a memory map.
    path = tmp_path / "x.bin.gz"
    path.write_bytes(gzip.compress(b"1 2\nthe " + bytes(8)))
    result = invoke("import", str(path), "-m", str(tmp_path / "model"), "--format", "word2vec-binary")
    assert result.exit_code == 0, result.stderr
    assert "1 word x 2 dimensions (word2vec-binary)" in result.stderr


def test_import_truncated_gzip_is_error(tmp_path):
    data = gzip.compress(b"2 2\n" + ROWS * 2000)
    path = tmp_path / "x.vec.gz"
    path.write_bytes(data[: len(data) // 2])
    result = invoke("import", str(path), "-m", "model")
    assert result.exit_code == 1
    assert "truncated" in result.stderr
    assert "bug" not in result.stderr


def test_strict_errors_name_lenient(tmp_path):
    cases = {
        "count.txt": b"3 2\n" + ROWS,
        "ragged.txt": b"2 2\nthe 0.1 0.2\ncat 0.3\n",
        "utf8.txt": b"2 2\nthe 0.1 0.2\nc\xffat 0.3 0.4\n",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        result = invoke("import", str(path), "-m", str(tmp_path / ("model-" + name)))
        assert result.exit_code == 1, name
        assert "--lenient" in result.stderr, name


def test_truncated_binary_names_lenient(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"2 2\nthe " + bytes(8) + b"\ncat " + bytes(3))
    result = invoke("import", str(path), "-m", "model")
    assert result.exit_code == 1
    assert "--lenient" in result.stderr


def test_npy_without_words_names_flag(tmp_path):
    import numpy as np

    path = tmp_path / "x.npy"
    np.save(path, np.ones((2, 2), dtype=np.float32))
    result = invoke("import", str(path), "-m", "model")
    assert result.exit_code == 1
    assert "--words" in result.stderr


def test_import_from_stdin_and_fifo(tmp_path):
    # Format detection and reading each need the file, so a stream is copied once first.
    import json
    import os
    import subprocess
    import sys
    import threading

    text = "3 2\nking 1 0\nqueen 0 1\nman 1 1\n"
    result = runner.invoke(app, ["import", "-", "-m", str(tmp_path / "from-stdin")], input=text)
    assert result.exit_code == 0, result.stderr
    assert "from <stdin>" in result.stderr
    meta = json.loads((tmp_path / "from-stdin" / "meta.json").read_text())
    assert meta["imported"]["path"] == "<stdin>"
    assert meta["vocab"]["size"] == 3
    fifo = tmp_path / "vectors.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(text))
    writer.start()
    done = subprocess.run([sys.executable, "-m", "embcli", "import", str(fifo), "-m", str(tmp_path / "from-fifo")],
                          capture_output=True, timeout=60)
    writer.join()
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "from-fifo")) == [".lock", "embeddings.npy", "meta.json", "norms.npy",
                                                          "vocab.tsv"]
    bad = runner.invoke(app, ["import", "-", "-m", str(tmp_path / "bad")], input="2 3\na 1 2\n")
    assert bad.exit_code == 1
    assert "-: line 2: 'a' has 2 values, expected 3" in bad.stderr
    assert "import-input" not in bad.stderr


def test_word_list_mixing_layouts_names_line(tmp_path):
    import numpy as np

    np.save(tmp_path / "m.npy", np.eye(3, dtype=np.float32))
    words = tmp_path / "words.txt"
    words.write_text("a\t5\nb\nc\t1\n", encoding="utf-8")
    result = invoke("import", str(tmp_path / "m.npy"), "--words", str(words), "-m", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "line 1 is word<TAB>count but line 2 ('b') is not" in result.stderr
    assert not (tmp_path / "out").exists()


def test_numeric_first_line_is_a_damaged_header(tmp_path):
    path = tmp_path / "extra.txt"
    path.write_bytes(b"3 3 7\na 0.1 0.2 0.3\nb 0.4 0.5 0.6\nc 0.7 0.8 0.9\n")
    for lenient in ([], ["--lenient"]):
        result = invoke("import", str(path), "-m", str(tmp_path / "out"), *lenient)
        assert result.exit_code == 1
        assert "line 1 ('3 3 7') is not a valid header: it contains only numbers" in result.stderr
        assert not (tmp_path / "out").exists()


def test_lenient_stops_on_wrong_first_row(tmp_path):
    path = tmp_path / "short-first.txt"
    path.write_bytes(b"first 0.1 0.2\n" + b"".join(b"w%d 0.1 0.2 0.3\n" % i for i in range(50)))
    result = invoke("import", str(path), "-m", str(tmp_path / "out"), "--lenient")
    assert result.exit_code == 1
    assert "50 rows of 51 do not have 2 values, the count on line 1" in result.stderr
    assert not (tmp_path / "out").exists()


def test_import_takes_the_lock_before_reading(tmp_path):
    from embcli import store

    path = tmp_path / "ragged.txt"
    path.write_bytes(b"a 0.1 0.2\nb 0.3\n")
    model_dir = str(tmp_path / "busy")
    with store.writer_lock(model_dir):
        result = invoke("import", str(path), "-m", model_dir)
    # Another writer has the lock, so the file is not read at all.
    assert result.exit_code == 1
    assert "is being written by another embcli process" in result.stderr
    assert "ragged" not in result.stderr


def test_error_quoting_a_huge_word_is_cut(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "longword.bin"
    path.write_bytes(b"1 3\n" + b"a" * 3_000_000)
    result = subprocess.run([sys.executable, "-m", "embcli", "import", str(path), "-m", str(tmp_path / "out")],
                            capture_output=True, timeout=120)
    assert result.returncode == 1
    assert 0 < len(result.stderr) < 5000
    assert b"characters in all" in result.stderr


def test_import_bzip2_and_xz_vec_files(tmp_path):
    import bz2
    import lzma

    for name, compress in (("x.vec.bz2", bz2.compress), ("x.vec.xz", lzma.compress), ("plain-name.txt", lzma.compress)):
        path = tmp_path / name
        path.write_bytes(compress(b"2 2\n" + ROWS))
        result = invoke("import", str(path), "-m", str(tmp_path / f"model-{name}"))
        assert result.exit_code == 0, result.stderr
        assert "2 words x 2 dimensions (word2vec)" in result.stderr


def test_truncated_xz_vec_file_is_named(tmp_path):
    import lzma

    path = tmp_path / "cut.vec.xz"
    data = lzma.compress(b"2000 2\n" + b"".join(b"w%d 0.1 0.2\n" % i for i in range(2000)))
    path.write_bytes(data[: len(data) // 2])
    result = invoke("import", str(path), "-m", str(tmp_path / "model"))
    assert result.exit_code == 1
    assert "the xz data is damaged or truncated" in result.stderr
    assert not (tmp_path / "model").exists()


def test_lenient_replaces_invalid_utf8_in_word_list(tmp_path):
    import numpy as np

    np.save(tmp_path / "m.npy", np.eye(2, dtype=np.float32))
    words = tmp_path / "words.txt"
    words.write_bytes(b"a\nb\xff\n")
    strict = invoke("import", str(tmp_path / "m.npy"), "--words", str(words), "-m", str(tmp_path / "strict"))
    assert strict.exit_code == 1
    assert "line 2, byte offset 3: invalid UTF-8" in strict.stderr
    lenient = invoke("import", str(tmp_path / "m.npy"), "--words", str(words), "-m", str(tmp_path / "out"),
                     "--lenient")
    assert lenient.exit_code == 0, lenient.stderr
    assert "replaced with U+FFFD" in lenient.stderr
    vocab = (tmp_path / "out" / "vocab.tsv").read_text(encoding="utf-8")
    assert vocab.split("\n")[1].split("\t")[0] == "b\ufffd"


def test_lenient_with_every_row_skipped_says_why(tmp_path):
    path = tmp_path / "wrong-dim.txt"
    path.write_bytes(b"3 4\na 0.1 0.2 0.3\nb 0.4 0.5 0.6\nc 0.7 0.8 0.9\n")
    result = invoke("import", str(path), "-m", str(tmp_path / "out"), "--lenient")
    assert result.exit_code == 1
    assert "contains no vectors once" in result.stderr
    assert "'a' has 3 values, expected 4" in result.stderr


def test_nfc_query_finds_imported_nfd_word(tmp_path):
    path = tmp_path / "nfd.txt"
    path.write_bytes("2 3\ncafe\u0301 0.1 0.2 0.3\nb 0.4 0.5 0.6\n".encode("utf-8"))
    assert invoke("import", str(path), "-m", str(tmp_path / "out"), "-q").exit_code == 0
    for query in ("caf\u00e9", "cafe\u0301"):
        result = invoke("lookup", "-m", str(tmp_path / "out"), query)
        assert result.exit_code == 0, result.stderr
        assert [round(float(value), 3) for value in result.stdout.split("\t")[1:]] == [0.1, 0.2, 0.3]


def test_text_file_forced_as_binary_is_named(tmp_path):
    path = tmp_path / "text.txt"
    path.write_bytes(b"3 3\nthe 0.1 0.2 0.3\ncat 0.3 0.4 0.5\ndog 0.5 0.6 0.7\n")
    result = invoke("import", str(path), "--format", "word2vec-binary", "-m", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "the values after the first word 'the' are text" in result.stderr
    assert "--format word2vec" in result.stderr
    assert not (tmp_path / "out").exists()


def test_import_compressed_binary_and_npy(tmp_path):
    import bz2
    import gzip as gzip_module

    import numpy as np

    from embcli.formats import write_vectors

    words = ["the", "cat", "sat"]
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    write_vectors(str(tmp_path / "v.bin"), words, matrix, "word2vec-binary")
    (tmp_path / "v.bin.gz").write_bytes(gzip_module.compress((tmp_path / "v.bin").read_bytes()))
    result = invoke("import", str(tmp_path / "v.bin.gz"), "-m", str(tmp_path / "from-bin"))
    assert result.exit_code == 0, result.stderr
    assert "3 words x 4 dimensions (word2vec-binary)" in result.stderr
    assert np.array_equal(np.load(tmp_path / "from-bin" / "embeddings.npy"), matrix)
    assert not [name for name in os.listdir(tmp_path / "from-bin") if name.startswith(".import")]

    np.save(tmp_path / "m.npy", matrix)
    (tmp_path / "m.npy.bz2").write_bytes(bz2.compress((tmp_path / "m.npy").read_bytes()))
    (tmp_path / "words.txt").write_text("the\ncat\nsat\n", encoding="utf-8")
    result = invoke("import", str(tmp_path / "m.npy.bz2"), "--words", str(tmp_path / "words.txt"),
                    "-m", str(tmp_path / "from-npy"))
    assert result.exit_code == 0, result.stderr
    assert np.array_equal(np.load(tmp_path / "from-npy" / "embeddings.npy"), matrix)


def test_truncated_bin_gz_is_named(tmp_path):
    import gzip as gzip_module

    import numpy as np

    from embcli.formats import write_vectors

    matrix = np.random.default_rng(0).standard_normal((3000, 50)).astype(np.float32)
    write_vectors(str(tmp_path / "v.bin"), [f"w{i}" for i in range(3000)], matrix, "word2vec-binary")
    packed = gzip_module.compress((tmp_path / "v.bin").read_bytes())
    (tmp_path / "cut.bin.gz").write_bytes(packed[: len(packed) // 2])
    result = invoke("import", str(tmp_path / "cut.bin.gz"), "-m", str(tmp_path / "model"))
    assert result.exit_code == 1
    assert "cut.bin.gz: the gzip data is damaged or truncated" in result.stderr
    assert not (tmp_path / "model" / "embeddings.npy").exists()


def test_failed_import_leaves_no_directory(tmp_path):
    path = tmp_path / "cr.vec"
    path.write_bytes(b"2 2\na\rb 0.1 0.2\nc 0.3 0.4\n")
    result = invoke("import", str(path), "-m", str(tmp_path / "strict"))
    assert result.exit_code == 1
    assert f"{path}: line 2: the word 'a\\rb' contains a carriage return" in result.stderr
    assert not (tmp_path / "strict").exists()
    result = invoke("import", "-", "-m", str(tmp_path / "piped"), input=b"2 2\na\rb 0.1 0.2\n")
    assert result.exit_code == 1
    assert not (tmp_path / "piped").exists()
    # Leniently, the row is skipped.
    result = invoke("import", str(path), "-m", str(tmp_path / "lenient"), "--lenient")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "lenient" / "vocab.tsv").read_text(encoding="utf-8") == "c\t0\n"
