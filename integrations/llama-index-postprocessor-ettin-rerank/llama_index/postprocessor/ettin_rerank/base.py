"""EttinRerank: a LlamaIndex node postprocessor backed by the ettin-rerank engine."""

from __future__ import annotations

import asyncio
from typing import Any

import llama_index.core.instrumentation as instrument
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from ettin_rerank import Reranker, RerankResult, shared_reranker

dispatcher = instrument.get_dispatcher(__name__)


class EttinRerank(BaseNodePostprocessor):
    """Rerank nodes with an Ettin cross-encoder (or any Sentence Transformers CrossEncoder).

    Long nodes are read whole, up to the model's 8K-token window; longer ones follow ``long_document_strategy``.

    Example:
        ```python
        from llama_index.postprocessor.ettin_rerank import EttinRerank

        query_engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[EttinRerank(top_n=5)])
        ```
    """

    model: str = Field(default="17m", description="Ettin size (17m ... 1b), local folder or hub id.")
    top_n: int = Field(default=2, gt=0, description="Number of nodes to return, best first.")
    device: str | None = Field(default=None, description="'cpu', 'cuda', 'cuda:1'...; None picks CUDA if present.")
    dtype: str | None = Field(default=None, description="'float32', 'bfloat16' or 'float16'; None is automatic.")
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the retrieval score in the returned node's metadata as 'retrieval_score'."
    )
    max_length: int | None = Field(default=None, description="Tokens per window; None uses the model's limit.")
    long_document_strategy: str = Field(default="max", description="'max', 'mean' or 'truncate' past the window.")
    window_overlap: int = Field(default=128, ge=0, description="Tokens shared by consecutive windows.")
    batch_tokens: int | None = Field(default=None, description="Token budget of one forward pass.")
    trust_remote_code: bool = Field(default=False, description="Allow custom modelling code from the checkpoint.")

    _reranker: Reranker | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "EttinRerank"

    def _engine(self) -> Reranker:
        if self._reranker is None:
            self._reranker = shared_reranker(
                self.model, device=self.device, dtype=self.dtype, batch_tokens=self.batch_tokens,
                trust_remote_code=self.trust_remote_code,
            )
        return self._reranker

    def _call_options(self) -> dict[str, Any]:
        return {
            "max_length": self.max_length,
            "long_document_strategy": self.long_document_strategy,
            "window_overlap": self.window_overlap,
        }

    def _texts(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> list[str]:
        if query_bundle is None:
            msg = "Missing query bundle in extra info."
            raise ValueError(msg)
        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n, model_name=self.model)
        )
        return [node.node.get_content(metadata_mode=MetadataMode.EMBED) for node in nodes]

    def _new_nodes(self, nodes: list[NodeWithScore], results: list[RerankResult]) -> list[NodeWithScore]:
        """New ``NodeWithScore`` objects; the caller's nodes and their metadata are left as they were."""
        reranked = []
        for result in results:
            original = nodes[result.index]
            node = original.node
            if self.keep_retrieval_score:
                node = node.model_copy(update={"metadata": {**node.metadata, "retrieval_score": original.score}})
            reranked.append(NodeWithScore(node=node, score=result.score))
        dispatcher.event(ReRankEndEvent(nodes=reranked))
        return reranked

    def _event_payload(self, nodes: list[NodeWithScore], query_bundle: QueryBundle) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model,
            EventPayload.QUERY_STR: query_bundle.query_str,
            EventPayload.TOP_K: self.top_n,
        }

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        texts = self._texts(nodes, query_bundle)
        if not nodes:
            return self._new_nodes(nodes, [])
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._event_payload(nodes, query_bundle)) as e:
            results = self._engine().rerank(query_bundle.query_str, texts, top_k=self.top_n, **self._call_options())
            reranked = self._new_nodes(nodes, results)
            e.on_end(payload={EventPayload.NODES: reranked})
        return reranked

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        texts = self._texts(nodes, query_bundle)
        if not nodes:
            return self._new_nodes(nodes, [])
        engine = self._reranker or await asyncio.to_thread(self._engine)
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._event_payload(nodes, query_bundle)) as e:
            results = await engine.arerank(query_bundle.query_str, texts, top_k=self.top_n, **self._call_options())
            reranked = self._new_nodes(nodes, results)
            e.on_end(payload={EventPayload.NODES: reranked})
        return reranked
