"""embcli index and neighbors --approx: IVF and HNSW indexes tied to the model's embeddings."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import embcli
from embcli import store
from embcli.ann import INDEX_FILES, open_index, principal_projection
from embcli.cli import app
from embcli.train import TrainConfig, train_model

runner = CliRunner()
QUERIES = ["lord", "god", "land", "king", "house", "people", "son", "day"]
KINDS = ["ivf", "hnsw"]


def invoke(*args):
    return runner.invoke(app, list(args))


@pytest.fixture
def model_copy(trained_model, tmp_path):
    return shutil.copytree(trained_model, tmp_path / "model")


def write_synthetic_model(directory, rows, dim=48, seed=5):
    """Write a model of random mixes of 12 directions plus noise, as in bench/ann.py."""
    generator = np.random.default_rng(seed)
    basis = generator.standard_normal((12, dim)).astype(np.float32) / np.sqrt(12)
    matrix = generator.standard_normal((rows, 12)).astype(np.float32) @ basis
    matrix += generator.standard_normal((rows, dim)).astype(np.float32) * 0.3
    os.makedirs(directory)
    np.save(os.path.join(directory, store.EMBEDDINGS), matrix, allow_pickle=False)
    with open(os.path.join(directory, store.VOCAB), "w", encoding="utf-8") as handle:
        for row in range(rows):
            handle.write(f"w{row}\t{rows - row}\n")
    meta = store.new_meta({"name": "whitespace", "lowercase": False})
    meta["dim"] = dim
    meta["vocab"] = {"size": rows}
    meta["files"] = {name: store.fingerprint(os.path.join(directory, name))
                     for name in (store.VOCAB, store.EMBEDDINGS)}
    store.commit(directory, {store.META: store.meta_temp(directory, meta)})


@pytest.fixture(scope="module")
def synthetic_model(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("synthetic") / "model")
    write_synthetic_model(directory, 4000)
    return directory


def neighbour_lines(output):
    return [line.split("\t") for line in output.splitlines()]


def recall_at_10(model, index, words, nprobe):
    exact = model.neighbors_batch(words, 10)
    approx = index.neighbors_batch(words, 10, nprobe)
    hits = sum(len({w for w, _ in a} & {w for w, _ in e}) for a, e in zip(approx, exact))
    return hits / (10 * len(words))


@pytest.mark.parametrize("kind", KINDS)
def test_approx_neighbors_match_exact(model_copy, kind):
    built = invoke("index", "-m", str(model_copy), "--kind", kind)
    assert built.exit_code == 0, built.stderr
    assert f"({kind}, " in built.stderr

    found = total = 0
    for word in QUERIES:
        approx = invoke("neighbors", "-m", str(model_copy), word, "-k", "10", "--approx")
        exact = invoke("neighbors", "-m", str(model_copy), word, "-k", "10")
        assert approx.exit_code == 0, approx.stderr
        approx_rows = neighbour_lines(approx.stdout)
        exact_scores = dict((w, float(s)) for w, s in neighbour_lines(exact.stdout))
        assert len(approx_rows) == 10
        assert all(w != word for w, _ in approx_rows)
        scores = [float(s) for _, s in approx_rows]
        assert scores == sorted(scores, reverse=True)
        for neighbor, score in approx_rows:
            if neighbor in exact_scores:
                assert float(score) == pytest.approx(exact_scores[neighbor], abs=2e-4)
        found += len({w for w, _ in approx_rows} & set(exact_scores))
        total += 10
    assert found / total >= 0.8


def test_ivf_recall_grows_with_nprobe(synthetic_model, tmp_path):
    model_dir = shutil.copytree(synthetic_model, tmp_path / "model")
    built = invoke("index", "-m", str(model_dir), "--kind", "ivf", "--nlist", "40", "-q")
    assert built.exit_code == 0, built.stderr
    model = embcli.load(str(model_dir))
    index = open_index(model)
    assert index.description["nlist"] == 40
    # The rows vary along 12 directions, so the lists code those 12, one per 4-bit code.
    assert index.description["projected_dim"] == 12
    words = [model.words[row] for row in range(0, 4000, 40)]

    one_list = recall_at_10(model, index, words, 1)
    default = recall_at_10(model, index, words, None)
    every_list = recall_at_10(model, index, words, 40)
    assert one_list < default <= every_list
    assert default >= 0.8
    # With every list scanned, a neighbour is missed only when its 4-bit code score
    # ranks it below the 200 candidates that are re-scored with 8-bit codes, or its
    # 8-bit score below the 25 that are re-scored exactly.
    assert every_list >= 0.95


def test_ivf_scores_are_exact_cosines(synthetic_model, tmp_path):
    model_dir = shutil.copytree(synthetic_model, tmp_path / "model")
    assert invoke("index", "-m", str(model_dir), "--nlist", "20", "-q").exit_code == 0
    model = embcli.load(str(model_dir))
    index = open_index(model)
    for word, score in index.neighbors_batch(["w7"], 10, 20)[0]:
        assert score == pytest.approx(model.similarity("w7", word), abs=1e-5)


def test_ivf_index_without_refine_stage(synthetic_model, tmp_path):
    # Indexes built before the 8-bit refine stage hold only the IVF lists; their
    # candidates are all re-scored from embeddings.npy.
    import faiss

    model_dir = shutil.copytree(synthetic_model, tmp_path / "model")
    assert invoke("index", "-m", str(model_dir), "--nlist", "20", "-q").exit_code == 0
    model = embcli.load(str(model_dir))
    assert isinstance(open_index(model).index, faiss.IndexRefine)
    description = json.loads((model_dir / "ann.json").read_text(encoding="utf-8"))
    rows = np.load(model_dir / store.EMBEDDINGS)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    factory = "IVF20,PQ12x4fs"
    older = faiss.index_factory(48, factory, faiss.METRIC_INNER_PRODUCT)
    older.train(rows)
    older.add(rows)
    path = str(model_dir / INDEX_FILES["ivf"])
    faiss.write_index(older, path)
    description.update(index_factory=factory, index=store.fingerprint(path))
    (model_dir / "ann.json").write_text(json.dumps(description), encoding="utf-8")

    index = open_index(embcli.load(str(model_dir)))
    assert not isinstance(index.index, faiss.IndexRefine)
    words = [model.words[row] for row in range(0, 4000, 40)]
    assert recall_at_10(model, index, words, 20) >= 0.95
    for word, score in index.neighbors_batch(["w7"], 10, 20)[0]:
        assert score == pytest.approx(model.similarity("w7", word), abs=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_retrained_model_rejects_stale_index(model_copy, kind):
    assert invoke("index", "-m", str(model_copy), "--kind", kind, "-q").exit_code == 0
    train_model(str(model_copy), TrainConfig(dim=32, epochs=1, threads=1, seed=9))
    result = invoke("neighbors", "-m", str(model_copy), "lord", "--approx")
    assert result.exit_code == 1
    assert "built from other embeddings" in result.stderr
    assert "embcli index" in result.stderr
    assert invoke("neighbors", "-m", str(model_copy), "lord").exit_code == 0


def test_changed_index_file_is_rejected(model_copy):
    assert invoke("index", "-m", str(model_copy), "-q").exit_code == 0
    with open(model_copy / "ann-ivf.faiss", "ab") as handle:
        handle.write(b"\0" * 16)
    result = invoke("neighbors", "-m", str(model_copy), "lord", "--approx")
    assert result.exit_code == 1
    assert "does not match ann.json" in result.stderr


def test_missing_index_names_command(model_copy):
    result = invoke("neighbors", "-m", str(model_copy), "lord", "--approx")
    assert result.exit_code == 1
    assert "embcli index" in result.stderr


@pytest.mark.parametrize(
    "args, option",
    [
        (["neighbors", "lord", "--approx", "--restrict", "100"], "--restrict"),
        (["neighbors", "lord", "--nprobe", "4"], "--approx"),
        (["neighbors", "lord", "--ef", "4"], "--approx"),
        (["neighbors", "lord", "--rerank", "50"], "--approx"),
        (["neighbors", "--vector", "1 2", "--approx"], "--vector"),
        (["index", "--kind", "lsh"], "--kind"),
        (["index", "--kind", "hnsw", "--nlist", "8"], "--nlist"),
        (["index", "--kind", "ivf", "--m", "8"], "--m"),
        (["index", "--nlist", "0"], "--nlist"),
    ],
)
def test_approx_flag_misuse_is_usage_error(model_copy, args, option):
    result = invoke(*args, "-m", str(model_copy))
    assert result.exit_code == 2
    assert option in result.stderr


@pytest.mark.parametrize("kind, wrong, right", [("ivf", "--ef", "--nprobe"), ("hnsw", "--nprobe", "--ef")])
def test_tuning_flag_must_match_index_kind(model_copy, kind, wrong, right):
    assert invoke("index", "-m", str(model_copy), "--kind", kind, "-q").exit_code == 0
    rejected = invoke("neighbors", "-m", str(model_copy), "lord", "--approx", wrong, "8")
    assert rejected.exit_code == 2
    assert f"takes {right}" in rejected.stderr
    accepted = invoke("neighbors", "-m", str(model_copy), "lord", "--approx", right, "8", "-k", "3")
    assert accepted.exit_code == 0, accepted.stderr
    assert len(accepted.stdout.splitlines()) == 3


def test_rerank_applies_to_ivf_only(model_copy):
    assert invoke("index", "-m", str(model_copy), "--kind", "hnsw", "-q").exit_code == 0
    rejected = invoke("neighbors", "-m", str(model_copy), "lord", "--approx", "--rerank", "50")
    assert rejected.exit_code == 2
    assert "not --rerank" in rejected.stderr
    assert invoke("index", "-m", str(model_copy), "--kind", "ivf", "-q").exit_code == 0
    accepted = invoke("neighbors", "-m", str(model_copy), "lord", "--approx", "--rerank", "50", "-k", "3")
    assert accepted.exit_code == 0, accepted.stderr
    assert len(accepted.stdout.splitlines()) == 3


def test_nlist_too_large_is_rejected(model_copy):
    result = invoke("index", "-m", str(model_copy), "--nlist", "100000")
    assert result.exit_code == 1
    assert "nlist 100000 is too large" in result.stderr
    assert "--nlist" in result.stderr
    assert not (model_copy / "ann.json").exists()


def test_ivf_on_tiny_model_is_rejected(tmp_path):
    model_dir = str(tmp_path / "tiny")
    write_synthetic_model(model_dir, 20)
    result = invoke("index", "-m", model_dir)
    assert result.exit_code == 1
    assert "has 20 words, too few to train an ivf index" in result.stderr
    assert invoke("index", "-m", model_dir, "--kind", "hnsw", "-q").exit_code == 0


@pytest.mark.parametrize("module, package", [("faiss", "faiss-cpu"), ("hnswlib", "hnswlib")])
def test_index_without_library_says_how_to_install(model_copy, module, package):
    kind = "ivf" if module == "faiss" else "hnsw"
    # A None entry in sys.modules makes the import raise ImportError, as if not installed.
    code = (
        "import sys\n"
        f"sys.modules[{module!r}] = None\n"
        "from embcli.cli import app\n"
        f"app(['index', '-m', {str(model_copy)!r}, '--kind', {kind!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"needs the {package} package" in result.stderr
    assert "pip install 'embcli[ann]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_approx_query_without_faiss_says_how_to_install(model_copy):
    assert invoke("index", "-m", str(model_copy), "-q").exit_code == 0
    code = (
        "import sys\n"
        "sys.modules['faiss'] = None\n"
        "from embcli.cli import app\n"
        f"app(['neighbors', '-m', {str(model_copy)!r}, 'lord', '--approx'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "pip install 'embcli[ann]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_approx_query_does_not_import_torch(model_copy):
    assert invoke("index", "-m", str(model_copy), "-q").exit_code == 0
    code = (
        "import sys\n"
        "from embcli.cli import app\n"
        "try:\n"
        f"    app(['neighbors', '-m', {str(model_copy)!r}, 'lord', '-k', '3', '--approx'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert len(result.stdout.splitlines()) == 3
    assert result.stderr.strip().endswith("NO-TORCH")


def test_index_files_are_committed_next_to_model(model_copy):
    assert invoke("index", "-m", str(model_copy), "-q").exit_code == 0
    names = {path.name for path in model_copy.iterdir()}
    assert {"ann-ivf.faiss", "ann.json"} <= names
    assert not any(name.startswith(".tmp-") for name in names)
    model = embcli.load(str(model_copy))
    index = open_index(model)
    assert index.kind == "ivf"
    assert index.description["rows"] == len(model.words)
    assert index.description["embeddings"] == model.meta["files"]["embeddings.npy"]
    assert index.description["model_id"] == model.meta["model_id"]


def test_rebuilding_other_kind_removes_old_index(model_copy):
    assert invoke("index", "-m", str(model_copy), "--kind", "ivf", "-q").exit_code == 0
    assert invoke("index", "-m", str(model_copy), "--kind", "hnsw", "-q").exit_code == 0
    names = {path.name for path in model_copy.iterdir()}
    assert INDEX_FILES["hnsw"] in names
    assert INDEX_FILES["ivf"] not in names
    with open(model_copy / "ann.json", encoding="utf-8") as handle:
        assert json.load(handle)["kind"] == "hnsw"


def test_format_1_description_opens_as_hnsw(model_copy):
    assert invoke("index", "-m", str(model_copy), "--kind", "hnsw", "-q").exit_code == 0
    path = model_copy / "ann.json"
    description = json.loads(path.read_text(encoding="utf-8"))
    del description["kind"]
    description["format_version"] = 1
    path.write_text(json.dumps(description), encoding="utf-8")
    result = invoke("neighbors", "-m", str(model_copy), "lord", "--approx", "-k", "3")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3


def test_ivf_full_scan_matches_exact(model_copy):
    # A trained model whose vectors mostly point one way: 8-bit codes alone cannot order
    # its rows, so the exact step must take a share of the --rerank candidates.
    assert invoke("index", "-m", str(model_copy), "-q").exit_code == 0
    model = embcli.load(str(model_copy))
    index = open_index(model)
    assert index.description["projected_dim"] is None
    words = model.words[::7]
    exact = model.neighbors_batch(words, 10)
    approx = index.neighbors_batch(words, 10, effort=int(index.description["nlist"]), rerank=len(model))
    hits = sum(len({w for w, _ in a} & {w for w, _ in e}) for a, e in zip(approx, exact))
    assert hits / sum(len(e) for e in exact) >= 0.99


def test_ivf_short_answer_notes_nprobe(model_copy):
    # One scanned list contains fewer words than -k requests.
    assert invoke("index", "-m", str(model_copy), "-q").exit_code == 0
    result = invoke("neighbors", "-m", str(model_copy), "--approx", "--nprobe", "1", "-k", "400", "lord")
    assert result.exit_code == 0
    assert 0 < len(result.stdout.splitlines()) < 400
    assert "fewer than 400 neighbours for 1 word" in result.stderr
    assert "--nprobe" in result.stderr
    full = invoke("neighbors", "-m", str(model_copy), "--approx", "-k", "5", "lord")
    assert "fewer than" not in full.stderr


def test_principal_projection_keeps_the_varying_directions():
    generator = np.random.default_rng(3)
    basis = np.linalg.qr(generator.standard_normal((64, 64)))[0]
    mix = generator.standard_normal((5000, 8)) * np.linspace(3.0, 1.0, 8)
    # Every row also shares one large direction, which does not order them.
    rows = (mix @ basis[:, :8].T + 10.0 * basis[:, 8] + 0.1 * generator.standard_normal((5000, 64)))
    rows = rows.astype(np.float32)
    projection = principal_projection(rows, 16)
    assert projection.shape == (64, 8)
    # The projection spans the 8 mixed directions, not the shared one.
    spanned = projection.T @ basis[:, :9]
    assert np.allclose(np.linalg.norm(spanned[:, :8], axis=0), 1.0, atol=0.01)
    assert np.linalg.norm(spanned[:, 8]) < 0.05
    # More directions than codes, or directions of equal variance: no projection.
    assert principal_projection(rows, 4) is None
    assert principal_projection(generator.standard_normal((5000, 64)).astype(np.float32), 16) is None
    # Exactly rank 2: the other directions hold only rounding noise.
    low_rank = (generator.standard_normal((1000, 2)) @ generator.standard_normal((2, 100))).astype(np.float32)
    assert principal_projection(low_rank, 25).shape == (100, 4)
    # Identical rows vary along nothing.
    assert principal_projection(np.ones((50, 8), dtype=np.float32), 2) is None


def test_index_of_few_rows_warns_once(tmp_path):
    # faiss prints a k-means warning per 4-bit quantizer from C++, past --quiet.
    directory = str(tmp_path / "model")
    write_synthetic_model(directory, 300)
    command = [sys.executable, "-m", "embcli", "index", "-m", directory]
    quiet = subprocess.run(command + ["-q"], capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    loud = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert loud.returncode == 0, loud.stderr
    assert "WARNING clustering" not in loud.stderr
    assert loud.stderr.count("rows are few to train the index") == 1
    assert "indexed 300 words" in loud.stderr


def test_ivf_defaults_on_concentrated_rows(model_copy):
    # The trained test model's vectors share one direction (mean pairwise cosine about
    # 0.9), so coding the rows as they are leaves 4-bit codes that cannot order them.
    model = embcli.load(str(model_copy))
    units = model.matrix / np.linalg.norm(model.matrix, axis=1, keepdims=True)
    sample = units[::5]
    assert float((sample @ sample.T).mean()) > 0.8
    assert invoke("index", "-m", str(model_copy), "-q").exit_code == 0
    index = open_index(model)
    words = model.words[::7]
    exact = model.neighbors_batch(words, 10)
    approx = index.neighbors_batch(words, 10)
    hits = sum(len({w for w, _ in a} & {w for w, _ in e}) for a, e in zip(approx, exact))
    assert hits / sum(len(e) for e in exact) >= 0.9
