"""Turn a batch of windows into raw scores (logits), one float per window.

- :class:`PackedModernBertScorer`: ModernBERT backbones. Every layer runs on packed tokens, so no work is spent on
  padding except inside attention's grid on the ``sdpa`` backend. Two layouts: the Ettin rerankers (Sentence
  Transformers modules: ModernBERT -> Pooling(cls|mean) -> head modules) and ``ModernBertForSequenceClassification``
  checkpoints such as gte-reranker-modernbert-base and granite-embedding-reranker-english-r2 (pooling per
  ``classifier_pooling`` -> dense -> activation -> norm -> classifier), which transformers itself runs padded.
- The pooled vector and the head run in float32 whatever the encoder's dtype (the scorer's own float32 copy of the
  head): a bf16 head rounds logits to steps of 0.0625-0.125 in the released models' range (-12..22), so top
  documents would tie. The cost is negligible (one hidden x hidden matrix per window).
- :class:`PaddedScorer`: any other Sentence Transformers cross-encoder (classic BERT/MiniLM/bge
  sequence-classification models): length-sorted padded batches through the model's own forward.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Protocol

import torch

from ettin_rerank.engine.attention import AttentionFn, resolve_attention
from ettin_rerank.engine.packing import PackedBatch, pack
from ettin_rerank.engine.tokenization import Window

_SUPPORTED_POOLING = ("cls", "mean")


class Scorer(Protocol):
    def __call__(self, windows: list[Window]) -> torch.Tensor: ...


def select_scorer(cross_encoder, device: torch.device, dtype: torch.dtype,
                  attention: str | None) -> tuple[Scorer, str]:
    """The scorer for a loaded checkpoint and the attention backend it runs: packed for ModernBERT (``attention``
    as asked, else the fastest usable), padded with ``sdpa`` for any other cross-encoder."""
    if PackedModernBertScorer.supports(cross_encoder):
        name, attention_fn = resolve_attention(attention, device, dtype)
        return PackedModernBertScorer(cross_encoder, device, attention_fn), name
    if attention not in (None, "sdpa"):
        msg = f"attention={attention!r} needs a ModernBERT checkpoint; this model runs padded with sdpa"
        raise ValueError(msg)
    return PaddedScorer(cross_encoder, device, cross_encoder.tokenizer.pad_token_id or 0), "sdpa"


class PaddedScorer:
    """Runs the Sentence Transformers module chain itself on padded batches."""

    def __init__(self, cross_encoder, device: torch.device, pad_token_id: int) -> None:
        self._model = cross_encoder
        self._device = device
        self._pad = pad_token_id
        self._uses_token_types = "token_type_ids" in cross_encoder.tokenizer.model_input_names

    def __call__(self, windows: list[Window]) -> torch.Tensor:
        length = max(len(w.input_ids) for w in windows)
        ids = torch.full((len(windows), length), self._pad, dtype=torch.long)
        types = torch.zeros_like(ids)
        mask = torch.zeros_like(ids)
        for row, window in enumerate(windows):
            n = len(window.input_ids)
            ids[row, :n] = torch.tensor(window.input_ids)
            types[row, :n] = torch.tensor(window.token_type_ids)
            mask[row, :n] = 1
        features = {"input_ids": ids, "attention_mask": mask}
        if self._uses_token_types:
            features["token_type_ids"] = types
        features = {key: value.to(self._device) for key, value in features.items()}
        return self._model(features)["scores"].float().reshape(len(windows), -1)[:, 0]


def encoder_pooling_head(cross_encoder) -> tuple[torch.nn.Module, str, Callable[[torch.Tensor], torch.Tensor]]:
    """The ``ModernBertModel``, its pooling (``"cls"`` or ``"mean"``) and the head as a float32 function of the
    pooled vectors, for a checkpoint :meth:`PackedModernBertScorer.supports`."""
    inner = cross_encoder[0].model
    if _is_sequence_classifier(inner):
        head, classifier = _float32_copy(inner.head), _float32_copy(inner.classifier)
        return inner.model, inner.config.classifier_pooling, lambda pooled: classifier(head(pooled))[:, 0]
    modules = [_float32_copy(cross_encoder[i]) for i in range(2, len(cross_encoder))]
    return inner, cross_encoder[1].pooling_mode, lambda pooled: _run_modules(modules, pooled)


class PackedModernBertScorer:
    """ModernBERT forward on packed tokens, then the checkpoint's own pooling and head (see :meth:`supports`)."""

    def __init__(self, cross_encoder, device: torch.device, attention: AttentionFn) -> None:
        self._model, self._pooling, self._head = encoder_pooling_head(cross_encoder)
        self._device = device
        self._attention = attention
        config = self._model.config
        self._heads = config.num_attention_heads
        self._head_dim = config.hidden_size // config.num_attention_heads
        self._half_window = config.local_attention // 2

    @staticmethod
    def supports(cross_encoder) -> bool:
        """Whether ``cross_encoder`` is ModernBERT -> Pooling(cls|mean) -> modules on the pooled vector (Ettin), or
        a one-label ``ModernBertForSequenceClassification`` pooling by ``cls`` or ``mean``."""
        from sentence_transformers.sentence_transformer.modules import Pooling
        from transformers import ModernBertModel

        modules = list(cross_encoder)
        inner = getattr(modules[0], "model", None) if modules else None
        if len(modules) == 1 and _is_sequence_classifier(inner):
            return inner.config.classifier_pooling in _SUPPORTED_POOLING and inner.config.num_labels == 1
        return (
            len(modules) >= 2
            and isinstance(inner, ModernBertModel)
            and isinstance(modules[1], Pooling)
            and modules[1].pooling_mode in _SUPPORTED_POOLING
        )

    def __call__(self, windows: list[Window]) -> torch.Tensor:
        batch = pack([w.input_ids for w in windows], self._device)
        hidden = self.encode(batch)
        if self._pooling == "cls":
            pooled = hidden[batch.first_token].float()
        else:
            sums = hidden.new_zeros(batch.num_sequences, hidden.shape[1], dtype=torch.float32)
            sums.index_add_(0, batch.sequence_ids, hidden.float())
            pooled = sums / batch.lengths.to(sums.device, sums.dtype)[:, None]
        return self._head(pooled).reshape(len(windows))

    def encode(self, batch: PackedBatch) -> torch.Tensor:
        """Last hidden states ``(T, hidden)`` of the packed tokens: the same function as ``ModernBertModel``."""
        model = self._model
        hidden = model.embeddings(input_ids=batch.input_ids)
        kinds = set(model.config.layer_types)
        rotary = {kind: _rotary_tables(model, hidden, batch.position_ids, kind) for kind in kinds}
        tokens = hidden.shape[0]
        for layer in model.layers:
            local = layer.attention_type == "sliding_attention"
            qkv = layer.attn.Wqkv(layer.attn_norm(hidden)).view(tokens, 3, self._heads, self._head_dim)
            qkv[:, :2] = _rotate(qkv[:, :2], *rotary[layer.attention_type])
            out = self._attention(qkv, batch, self._half_window if local else None)
            hidden = hidden + layer.attn.Wo(out.reshape(tokens, -1))
            hidden = hidden + layer.mlp(layer.mlp_norm(hidden))
        return model.final_norm(hidden)


def _rotary_tables(model, hidden: torch.Tensor, position_ids: torch.Tensor, kind: str):
    """cos and sign-folded sin, ``(T, 1, 1, head_dim)`` in the model dtype, as transformers computes them."""
    cos, sin = (t[0, :, None, None, :] for t in model.rotary_emb(hidden, position_ids[None], kind))
    half = sin.shape[-1] // 2
    return cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (rotate-half form), computed in float32 as transformers does."""
    xf = x.float()
    return torch.addcmul(xf * cos, xf.roll(x.shape[-1] // 2, dims=-1), signed_sin).to(x.dtype)


def _is_sequence_classifier(model) -> bool:
    from transformers import ModernBertForSequenceClassification

    return isinstance(model, ModernBertForSequenceClassification)


def _float32_copy(module: torch.nn.Module) -> torch.nn.Module:
    """The head module in float32 (a copy: the loaded model keeps its dtype for anyone else who runs it)."""
    if all(p.dtype == torch.float32 for p in module.parameters()):
        return module
    return copy.deepcopy(module).float()


def _run_modules(modules: list, pooled: torch.Tensor) -> torch.Tensor:
    features = {"sentence_embedding": pooled}
    for module in modules:
        features = module(features)
    return features["scores"].reshape(len(pooled), -1)[:, 0]
