"""The example notebooks run top to bottom, offline, in the test suite (nbclient), and are stored without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def test_the_four_notebooks_are_there():
    assert [n.name[:2] for n in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch, untrained_cache):
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "clear outputs"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ETTIN_RERANK_CACHE", str(untrained_cache))
    monkeypatch.delenv("ETTIN_MODEL", raising=False)
    resources = {"metadata": {"path": str(tmp_path)}}
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources=resources)
    client.execute()
    printed = "".join(
        output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
    )
    assert "UNTRAINED" in printed  # no hub here: the fallback is announced
    assert os.environ.get("ETTIN_MODEL") is None
