"""Queries never import torch, so they start in the time numpy and typer take."""

import subprocess
import sys


def test_neighbors_does_not_import_torch(trained_model):
    code = (
        "import sys\n"
        "from embcli.cli import app\n"
        "try:\n"
        f"    app(['neighbors', '-m', {trained_model!r}, 'lord', '-k', '3'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert len(result.stdout.splitlines()) == 3
    assert result.stderr.strip().endswith("NO-TORCH")


def test_import_embcli_is_light():
    code = "import sys, embcli; print(sorted(m for m in ('numpy', 'torch', 'rich') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]"
