"""import on files as users get them: a byte-order mark, gzip, strict-mode errors."""

import gzip

from typer.testing import CliRunner

from embcli.cli import app

runner = CliRunner()
ROWS = b"the 0.1 0.2\ncat 0.3 0.4\n"


def invoke(*args):
    return runner.invoke(app, list(args))


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
