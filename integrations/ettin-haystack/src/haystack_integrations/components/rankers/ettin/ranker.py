"""EttinRanker: a Haystack ranker component backed by the ettin-rerank engine."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from ettin_rerank import Reranker, RerankResult, shared_reranker
from ettin_rerank.validation import check_top_k
from haystack import Document, component, default_from_dict, default_to_dict
from haystack.utils import ComponentDevice, Secret, deserialize_secrets_inplace

_PLAIN_INIT_PARAMETERS = (
    "model", "top_k", "query_prefix", "document_prefix", "meta_fields_to_embed", "embedding_separator",
    "scale_score", "score_threshold", "dtype", "max_length", "long_document_strategy", "window_overlap",
    "batch_tokens", "trust_remote_code",
)


@component
class EttinRanker:
    """
    Ranks documents by relevance to a query with an Ettin cross-encoder (or any Sentence Transformers CrossEncoder).

    Documents are read whole up to the model's 8K-token window; longer ones follow `long_document_strategy`.
    Every input document is scored (no deduplication by id); the output holds copies with `score` set.

    ### Usage example

    ```python
    from haystack import Document
    from haystack_integrations.components.rankers.ettin import EttinRanker

    ranker = EttinRanker(model="17m", top_k=2)
    result = ranker.run(query="What is Ettin?", documents=[Document(content="..."), Document(content="...")])
    ```
    """

    def __init__(
        self,
        *,
        model: str = "17m",
        device: ComponentDevice | None = None,
        token: Secret | None = Secret.from_env_var(["HF_API_TOKEN", "HF_TOKEN"], strict=False),  # noqa: B008
        top_k: int = 10,
        query_prefix: str = "",
        document_prefix: str = "",
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
        scale_score: bool = True,
        score_threshold: float | None = None,
        dtype: str | None = None,
        max_length: int | None = None,
        long_document_strategy: str = "max",
        window_overlap: int = 128,
        batch_tokens: int | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        """
        Creates an EttinRanker; nothing is loaded until `warm_up()` or the first `run()`.

        :param model: Ettin size (`17m` ... `1b`), local folder or Hugging Face hub id.
        :param device: The device to run on; `None` picks the default device.
        :param token: Hugging Face token for private models.
        :param top_k: Maximum number of documents to return.
        :param query_prefix: Text put before the query (some models are trained with an instruction).
        :param document_prefix: Text put before each document.
        :param meta_fields_to_embed: Metadata fields read together with the document content.
        :param embedding_separator: Separator between the metadata fields and the content.
        :param scale_score: Return sigmoid-scaled scores in (0, 1) instead of raw logits.
        :param score_threshold: Drop documents scoring below this (after scaling).
        :param dtype: `float32`, `bfloat16` or `float16`; `None` picks automatically.
        :param max_length: Tokens per window; `None` uses the model's limit.
        :param long_document_strategy: `max`, `mean` or `truncate` for documents longer than the window.
        :param window_overlap: Tokens shared by consecutive windows of a long document.
        :param batch_tokens: Token budget of one forward pass.
        :param trust_remote_code: Allow custom modelling code from the checkpoint.
        :raises ValueError: If `top_k` is not > 0.
        """
        check_top_k(top_k)
        self.model = model
        self.device = device
        self.token = token
        self.top_k = top_k
        self.query_prefix = query_prefix
        self.document_prefix = document_prefix
        self.meta_fields_to_embed = meta_fields_to_embed or []
        self.embedding_separator = embedding_separator
        self.scale_score = scale_score
        self.score_threshold = score_threshold
        self.dtype = dtype
        self.max_length = max_length
        self.long_document_strategy = long_document_strategy
        self.window_overlap = window_overlap
        self.batch_tokens = batch_tokens
        self.trust_remote_code = trust_remote_code
        self._reranker: Reranker | None = None

    def warm_up(self) -> None:
        """Loads the model (once; components with the same load arguments share it)."""
        if self._reranker is None:
            self._reranker = shared_reranker(
                self.model,
                device=ComponentDevice.resolve_device(self.device).to_torch_str(),
                dtype=self.dtype,
                batch_tokens=self.batch_tokens,
                token=self.token.resolve_value() if self.token else None,
                trust_remote_code=self.trust_remote_code,
            )

    def to_dict(self) -> dict[str, Any]:
        """
        Serializes the component to a dictionary.

        :returns: Dictionary with serialized data.
        """
        plain = {name: getattr(self, name) for name in _PLAIN_INIT_PARAMETERS}
        return default_to_dict(
            self,
            device=self.device.to_dict() if self.device else None,
            token=self.token.to_dict() if self.token else None,
            **plain,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EttinRanker:
        """
        Deserializes the component from a dictionary.

        :param data: Dictionary to deserialize from.
        :returns: Deserialized component.
        """
        init_params = dict(data.get("init_parameters", {}))  # leave the caller's dictionary as it was
        data = {**data, "init_parameters": init_params}
        if init_params.get("device") is not None:
            init_params["device"] = ComponentDevice.from_dict(init_params["device"])
        deserialize_secrets_inplace(init_params, keys=["token"])
        return default_from_dict(cls, data)

    def _prepare(self, query: str, documents: list[Document], top_k: int | None, scale_score: bool | None,
                 score_threshold: float | None) -> tuple[str, list[str], dict[str, Any]]:
        """Texts and engine options for one call; overrides are checked with `is not None` (0 and False count)."""
        top_k = check_top_k(top_k if top_k is not None else self.top_k)
        scale = scale_score if scale_score is not None else self.scale_score
        threshold = score_threshold if score_threshold is not None else self.score_threshold
        texts = [self.document_prefix + self.embedding_separator.join(
            [*(str(doc.meta[f]) for f in self.meta_fields_to_embed if doc.meta.get(f) is not None), doc.content or ""]
        ) for doc in documents]
        options = {"top_k": top_k, "score_threshold": threshold, "activation": "sigmoid" if scale else "none",
                   "max_length": self.max_length, "long_document_strategy": self.long_document_strategy,
                   "window_overlap": self.window_overlap}
        return self.query_prefix + query, texts, options

    @staticmethod
    def _scored(documents: list[Document], results: list[RerankResult]) -> dict[str, list[Document]]:
        return {"documents": [replace(documents[r.index], score=r.score) for r in results]}

    @component.output_types(documents=list[Document])
    def run(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        scale_score: bool | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """
        Returns the documents ranked by relevance to the query, best first.

        :param query: The query.
        :param documents: Documents to rank.
        :param top_k: Maximum number of documents to return (overrides the init value).
        :param scale_score: Sigmoid-scale the scores (overrides the init value; `False` is honoured).
        :param score_threshold: Minimum score to keep (overrides the init value; `0.0` is honoured).
        :returns: A dictionary with `documents`: copies of the input documents with `score` set.
        :raises ValueError: If `top_k` is not > 0 or the query is empty.
        """
        query, texts, options = self._prepare(query, documents, top_k, scale_score, score_threshold)
        self.warm_up()
        return self._scored(documents, self._reranker.rerank(query, texts, **options))

    @component.output_types(documents=list[Document])
    async def run_async(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        scale_score: bool | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """Asynchronously ranks the documents, without blocking the event loop; same parameters and result as `run`."""
        query, texts, options = self._prepare(query, documents, top_k, scale_score, score_threshold)
        if self._reranker is None:
            await asyncio.to_thread(self.warm_up)
        return self._scored(documents, await self._reranker.arerank(query, texts, **options))
