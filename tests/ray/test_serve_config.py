"""A Ray Serve config for clusters: ``serve --ray --write-config`` writes the file ``serve deploy`` / ``serve run``
and KubeRay's ``RayService.spec.serveConfigV2`` take; the manifest in ``deploy/`` holds exactly that; the written
file deploys on a real local Ray and answers a Cohere v2 request."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ettin_rerank.cli import main

serve = pytest.importorskip("ray.serve")
cohere = pytest.importorskip("cohere")
MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "rayservice.yaml"


def _written(capsys, *flags: str) -> str:
    assert main(["serve", "--ray", *flags, "--write-config", "-"]) == 0
    return capsys.readouterr().out


def test_the_manifest_holds_what_write_config_writes(capsys):
    text = MANIFEST.read_text()
    command = next(line for line in text.splitlines() if line.startswith("# serveConfigV2: "))
    flags = shlex.split(command.removeprefix("# serveConfigV2: "))
    assert flags[:3] == ["ettin-rerank", "serve", "--ray"] and flags[-2:] == ["--write-config", "-"]
    manifest = yaml.safe_load(text)
    assert manifest["kind"] == "RayService" and manifest["apiVersion"] == "ray.io/v1"
    written = _written(capsys, *flags[3:-2])
    assert yaml.safe_load(manifest["spec"]["serveConfigV2"]) == yaml.safe_load(written)
    assert "api_key" not in written


def test_write_config_never_overwrites_a_file_it_did_not_write(tmp_path, capsys):
    mine, theirs = tmp_path / "serve.yaml", tmp_path / "theirs.yaml"
    assert main(["serve", "--ray", "--model", "150m", "--api-key", "s3cret", "--write-config", str(mine)]) == 0
    assert "s3cret" not in mine.read_text()
    assert main(["serve", "--ray", "--model", "32m", "--write-config", str(mine)]) == 0  # its own: rewritten
    assert yaml.safe_load(mine.read_text())["applications"][0]["args"]["model"] == "32m"
    theirs.write_text("# hand-written\n")
    assert main(["serve", "--ray", "--write-config", str(theirs)]) == 2
    assert theirs.read_text() == "# hand-written\n" and "was not written by --write-config" in capsys.readouterr().err
    assert main(["serve", "--write-config", str(mine)]) == 2  # without --ray there is no Serve config


def test_the_written_config_deploys_on_a_real_local_ray(serve_url, tiny_checkpoint, reranker, tmp_path, capsys):
    import ray

    port = serve_url.rsplit(":", 1)[1]
    config = tmp_path / "serve.yaml"
    assert main(["serve", "--ray", "--model", str(tiny_checkpoint), "--dtype", "float32", "--served-model-name",
                 "from-config", "--cpus-per-replica", "0.5", "--port", port, "--write-config", str(config)]) == 0
    capsys.readouterr()
    result = subprocess.run([sys.executable, "-m", "ray.serve.scripts", "run", "--non-blocking", "--address",
                             ray.get_runtime_context().gcs_address, str(config)], capture_output=True, text=True,
                            timeout=240, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        deadline = time.monotonic() + 120
        while serve.status().applications.get("ettin-rerank") is None or \
                serve.status().applications["ettin-rerank"].status != "RUNNING":
            assert time.monotonic() < deadline, serve.status()
            time.sleep(1)
        documents = ["a gene regulates the immune response", "pasta in salted water", "a receptor in the brain"]
        response = cohere.ClientV2(api_key="-", base_url=serve_url).rerank(model="from-config", query="gene",
                                                                           documents=documents)
        expected = reranker.rerank("gene", documents, activation="sigmoid")
        assert [r.index for r in response.results] == [r.index for r in expected]
        assert [r.relevance_score for r in response.results] == pytest.approx([r.score for r in expected], abs=1e-6)
    finally:
        serve.delete("ettin-rerank")
