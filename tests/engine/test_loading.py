"""Finding and loading checkpoints: short names, folders, hub ids offline, and broken folders."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from ettin_rerank import ETTIN_SHAPES, ModelLoadError, ModelNotFoundError, Reranker, ettin_shape, is_untrained
from ettin_rerank.engine.loading import HubOptions, hub_id_for, resolve_model_path


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
    from ettin_rerank.engine.device import cpu_has_native_bf16

    engine = Reranker(tiny_checkpoint, device="cpu")
    assert engine.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert Reranker(tiny_checkpoint, device="cpu", dtype="float32").dtype == torch.float32


def test_trust_remote_code_is_off_by_default():
    import inspect

    assert inspect.signature(Reranker).parameters["trust_remote_code"].default is False


# ---------------------------------------------------------------- incomplete, inconsistent, unreadable checkpoints


def test_a_folder_without_modules_json_is_refused_not_randomly_completed(broken_copy):
    (broken_copy / "modules.json").unlink()
    with pytest.raises(ModelLoadError) as error:
        Reranker(broken_copy, device="cpu")
    message = str(error.value)
    assert str(broken_copy) in message and "classifier.weight" in message and "would be random" in message
    assert "no modules.json" in message


def test_a_config_that_does_not_match_the_weights_is_refused(broken_copy):
    config = json.loads((broken_copy / "config.json").read_text())
    bert = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": config["hidden_size"],
            "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 384,
            "vocab_size": config["vocab_size"]}
    (broken_copy / "config.json").write_text(json.dumps(bert))
    with pytest.raises(ModelLoadError, match=r"not in the checkpoint and would be random .*fit no weight"):
        Reranker(broken_copy, device="cpu")


@pytest.mark.parametrize("content", ['{"not": "a list"}', "[1, 2]", '[{"path": ""}]'])
def test_modules_json_with_the_wrong_structure_is_named(broken_copy, content):
    (broken_copy / "modules.json").write_text(content)
    with pytest.raises(ModelLoadError, match=r"modules\.json must be a list of modules"):
        Reranker(broken_copy, device="cpu")


def test_a_weights_path_that_is_a_folder_is_named(broken_copy):
    (broken_copy / "model.safetensors").unlink()
    (broken_copy / "model.safetensors").mkdir()
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is a folder, not a file"):
        Reranker(broken_copy, device="cpu")


def test_unreadable_weights_say_permission_denied_not_missing(broken_copy, monkeypatch):
    """As root every file is readable, so the operating system's refusal is simulated for this one file."""
    import pathlib

    weights = broken_copy / "model.safetensors"
    real_open = pathlib.Path.open

    def refuse(self, *args, **kwargs):
        if self == weights:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", refuse)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors cannot be read: permission denied"):
        Reranker(broken_copy, device="cpu")


def test_built_checkpoints_are_readable_by_everyone(tiny_checkpoint):
    for path in [tiny_checkpoint, *tiny_checkpoint.rglob("*")]:
        needed = 0o055 if path.is_dir() else 0o044
        assert path.stat().st_mode & needed == needed, f"{path} is {oct(path.stat().st_mode)}"


# ---------------------------------------------------------------- hub ids and an unresponsive hub


@pytest.mark.parametrize("name", ["BAAI/bge-reranker-v2.5-gemma2-lightweight", "owner/model-v1.5", "o/m.x"])
def test_hub_ids_with_dots_reach_the_cache(name, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"is not in the local Hugging Face cache"):
        resolve_model_path(name, HubOptions(cache_folder=str(tmp_path)))


def test_a_hub_that_accepts_connections_but_never_answers_costs_seconds(silent_hub, tmp_path):
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as error:
        Reranker("someone/not-cached", device="cpu", cache_folder=str(tmp_path))
    assert time.perf_counter() - start < 10
    message = str(error.value)
    assert f"the hub at {silent_hub} did not answer within 1 s" in message and "someone/not-cached" in message


def test_behind_a_silent_hub_a_cached_model_still_loads(silent_hub, cached_hub_model):
    name, cache = cached_hub_model
    assert len(Reranker(name, device="cpu", cache_folder=cache).score("q", ["d"])) == 1
