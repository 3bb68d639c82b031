"""The notebooks run top to bottom at small settings and show what they promise.

Each notebook reads its sizes from ``TLKIT_NB_*`` environment variables; here they are set small
so the three run in a couple of minutes together. The committed copies hold the outputs of a run
at the notebooks' own (full) settings.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

#: Small settings per notebook (environment variables the first code cell reads).
SMALL = {
    "quickstart.ipynb": {
        "TLKIT_NB_EPOCHS": "10",
        "TLKIT_NB_IMAGE_SIZE": "32",
        "TLKIT_NB_SHOTS": "5",
    },
    "strategy_matrix.ipynb": {
        "TLKIT_NB_LARGE_EPOCHS": "1",
        "TLKIT_NB_IMAGE_SIZE": "32",
        "TLKIT_NB_SHOTS": "5",
        "TLKIT_NB_ADVISE_PER_CLASS": "10",
        "TLKIT_NB_ADVISE_REPEATS": "1",
    },
    "snapshot_ensembles.ipynb": {
        "TLKIT_NB_EPOCHS": "3",
        "TLKIT_NB_CYCLES": "3",
        "TLKIT_NB_IMAGE_SIZE": "32",
        "TLKIT_NB_SHOTS": "5",
    },
}

pytestmark = pytest.mark.slow


def _execute(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Run a working copy of ``notebooks/NAME`` in ``tmp_path`` with the small settings."""
    copy = tmp_path / name
    shutil.copy(NOTEBOOKS / name, copy)
    notebook = nbformat.read(copy, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    for key, value in SMALL[name].items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TLKIT_NB_WORKDIR", str(tmp_path / "work"))
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    return notebook


def _outputs(notebook: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]


def _stdout(notebook: nbformat.NotebookNode) -> str:
    return "".join(
        out["text"]
        for out in _outputs(notebook)
        if out["output_type"] == "stream" and out["name"] == "stdout"
    )


def _pngs(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for out in _outputs(notebook))


def _number(text: str, pattern: str) -> float:
    match = re.search(pattern, text)
    assert match, f"no output matches {pattern!r}"
    return float(match.group(1))


@pytest.fixture
def repo_unchanged():
    """The notebooks write only below their work folder, never into the repository."""
    before = {p.name: p.read_bytes() for p in NOTEBOOKS.iterdir()}
    yield
    assert {p.name: p.read_bytes() for p in NOTEBOOKS.iterdir()} == before


def test_every_notebook_has_small_settings():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(SMALL)
    for name in SMALL:
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        first_code = next(c for c in notebook.cells if c.cell_type == "code")
        for key in SMALL[name]:
            assert key in first_code.source, f"{name} does not read {key}"
        assert notebook.cells[0].cell_type == "markdown"


def test_quickstart(tmp_path, monkeypatch, repo_unchanged):
    notebook = _execute("quickstart.ipynb", tmp_path, monkeypatch)
    assert _number(_stdout(notebook), r"test accuracy: (\d\.\d+)") > 0.3
    assert _pngs(notebook) >= 3  # predictions, confusion matrix, per-class accuracy
    run_dir = tmp_path / "work" / "runs" / "small-similar"
    assert (run_dir / "metrics.json").is_file()
    assert (run_dir / "plots" / "confusion_matrix.png").is_file()


def test_strategy_matrix(tmp_path, monkeypatch, repo_unchanged):
    notebook = _execute("strategy_matrix.ipynb", tmp_path, monkeypatch)
    text = _stdout(notebook)
    cells = ("small-similar", "small-different", "large-similar", "large-different")
    verdicts = dict(re.findall(r"--- (demo|digits): cell (\S+)", text))
    assert set(verdicts) == {"demo", "digits"}
    assert set(verdicts.values()) <= set(cells)
    assert verdicts["demo"].startswith("small-")  # 20 images per class
    tables = [
        out["data"]["text/markdown"]
        for out in _outputs(notebook)
        if "text/markdown" in out.get("data", {})
    ]
    assert len(tables) == 1
    rows = [line for line in tables[0].splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(cells)
    # the exact probes (no epochs) score well above chance even at the test's small settings
    frozen = [float(row.split("|")[4]) for row in rows if row.split("|")[3].strip() == "0"]
    assert len(frozen) == 2 and min(frozen) > 0.3
    # the fine-tuning runs name what they shipped: the probe, their network or the ensemble
    shipped = [row.split("|")[8].strip() for row in rows if row.split("|")[3].strip() != "0"]
    assert len(shipped) == 2 and set(shipped) <= {"probe", "finetuned", "ensemble"}
    assert _pngs(notebook) >= 3  # samples, per-stage probes, accuracy bars


def test_snapshot_ensembles(tmp_path, monkeypatch, repo_unchanged):
    notebook = _execute("snapshot_ensembles.ipynb", tmp_path, monkeypatch)
    text = _stdout(notebook)
    assert "snapshots of cycles [1, 2, 3]" in text
    ensemble = re.search(r"ensemble of all 3: (\d\.\d+) \(callback: (\d\.\d+)\)", text)
    assert ensemble, "the per-snapshot evaluation did not run"
    assert float(ensemble.group(1)) == pytest.approx(float(ensemble.group(2)), abs=2e-3)
    assert _number(text, r"ensemble test accuracy: (\d\.\d+)") > 0.1
    assert _pngs(notebook) >= 2  # LR and loss, accuracy against the number of snapshots
