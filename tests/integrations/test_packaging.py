"""Each adapter is its own installable package that pulls the engine."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = {
    "llama-index-postprocessor-ettin-rerank": "llama_index/postprocessor/ettin_rerank/base.py",
    "langchain-ettin": "langchain_ettin/rerank.py",
    "ettin-haystack": "src/haystack_integrations/components/rankers/ettin/ranker.py",
}


@pytest.mark.parametrize("package", list(ADAPTERS))
def test_wheel_requires_the_engine(package, tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(ROOT / "integrations" / package)],
        check=True,
    )
    [wheel] = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(archive.read(n).decode() for n in archive.namelist() if n.endswith("METADATA"))
        names = archive.namelist()
    requirement = next(line for line in metadata.splitlines() if line.startswith("Requires-Dist: ettin-rerank"))
    engine_path = requirement.split("file://", 1)[1]
    assert Path(engine_path).resolve() == (ROOT / "packages" / "ettin-rerank").resolve()
    assert any(name.endswith(ADAPTERS[package].removeprefix("src/")) for name in names)
    assert not any(name.startswith(("llama_index/__init__", "llama_index/postprocessor/__init__",
                                    "haystack_integrations/__init__")) for name in names), "namespace levels"

