"""Finding and loading checkpoints: short names, folders, hub ids offline, and broken folders."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from ettin_rerank import ETTIN_SHAPES, ModelLoadError, ModelNotFoundError, Reranker, ettin_shape, is_untrained
from ettin_rerank.loading import HubOptions, hub_id_for, resolve_model_path


def test_six_sizes_with_published_shapes():
    assert list(ETTIN_SHAPES) == ["17m", "32m", "68m", "150m", "400m", "1b"]
    assert (ettin_shape("150m").layers, ettin_shape("150m").hidden, ettin_shape("150m").heads) == (22, 768, 12)
    assert ettin_shape("1b").intermediate == 3840
    assert hub_id_for("400m") == "cross-encoder/ettin-reranker-400m-v1"
    assert hub_id_for("not-a-size") is None


def test_short_name_offline_fails_fast_and_names_what_was_tried(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model_path("17m", HubOptions(cache_folder=str(tmp_path)))
    assert time.perf_counter() - start < 10
    message = str(error.value)
    assert "'17m'" in message and "cross-encoder/ettin-reranker-17m-v1" in message and "offline" in message


def test_hub_id_is_read_from_the_cache_offline(monkeypatch, tmp_path, tiny_checkpoint):
    """A model already in the Hugging Face cache loads with the hub offline (the users' normal case)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--someone--tiny-ettin"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_checkpoint, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    path = resolve_model_path("someone/tiny-ettin", HubOptions(cache_folder=str(tmp_path)))
    assert path == snapshot
    engine = Reranker("someone/tiny-ettin", device="cpu", cache_folder=str(tmp_path))
    assert len(engine.score("q", ["d"])) == 1


@pytest.mark.parametrize("name", ["not-a-model", "./missing-folder", "/no/such/dir"])
def test_unknown_model_names_are_rejected(name):
    with pytest.raises(ModelNotFoundError, match="not an Ettin size"):
        Reranker(name, device="cpu")


@pytest.mark.parametrize("model", [None, 17, ""])
def test_model_argument_type(model):
    with pytest.raises((TypeError, ValueError), match="model must"):
        Reranker(model, device="cpu")


@pytest.fixture
def broken_copy(tmp_path, tiny_checkpoint):
    target = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, target)
    return target


def test_missing_weights_are_named(broken_copy):
    (broken_copy / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights file"):
        Reranker(broken_copy, device="cpu")


def test_corrupt_weights_are_reported(broken_copy):
    (broken_copy / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="could not load the cross-encoder"):
        Reranker(broken_copy, device="cpu")


def test_corrupt_config_is_named(broken_copy):
    (broken_copy / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match=r"config\.json is not valid JSON"):
        Reranker(broken_copy, device="cpu")


def test_corrupt_modules_json_is_named(broken_copy):
    (broken_copy / "modules.json").write_text("[{")
    with pytest.raises(ModelLoadError, match=r"modules\.json is not valid JSON"):
        Reranker(broken_copy, device="cpu")


def test_missing_tokenizer_is_named(broken_copy):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (broken_copy / name).unlink()
    with pytest.raises(ModelLoadError, match="no tokenizer files"):
        Reranker(broken_copy, device="cpu")


def test_empty_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        Reranker(tmp_path, device="cpu")


def test_untrained_checkpoints_are_marked(tiny_checkpoint):
    assert is_untrained(tiny_checkpoint)
    modules = json.loads((tiny_checkpoint / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Dense", "3_LayerNorm", "4_Dense"]


def test_dtype_defaults(tiny_checkpoint):
    import torch
    from ettin_rerank.device import cpu_has_native_bf16

    engine = Reranker(tiny_checkpoint, device="cpu")
    assert engine.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert Reranker(tiny_checkpoint, device="cpu", dtype="float32").dtype == torch.float32


def test_trust_remote_code_is_off_by_default():
    import inspect

    assert inspect.signature(Reranker).parameters["trust_remote_code"].default is False
