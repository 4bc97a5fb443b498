"""EttinRerank: a LlamaIndex node postprocessor backed by the ettin-rerank engine."""

from __future__ import annotations

import copy
import os
from typing import Any

import llama_index.core.instrumentation as instrument
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, model_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from ettin_rerank.adapters import (
    ADAPTER_MAX_TOKENS_PER_DOC,
    API_KEY_ENV,
    METADATA_KEYS,
    Activation,
    Backend,
    BackendUser,
    EngineArgs,
    Fusion,
    RemoteSpec,
    RerankResult,
    Strategy,
    check_fusion_weight,
    check_list_of,
    check_query,
    check_threshold,
)

dispatcher = instrument.get_dispatcher(__name__)


class EttinRerank(BackendUser, BaseNodePostprocessor):
    """Rerank nodes with an Ettin cross-encoder (or any Sentence Transformers CrossEncoder).

    ``node.score`` is a relevance in [0, 1] by default (``activation="sigmoid"``: the sigmoid of the logit, as
    Cohere's rerank gives), the raw logit with ``activation="none"`` (what ``SentenceTransformerRerank`` returns for
    these checkpoints, whose activation is the identity); the order always follows the raw logit. Long nodes are read
    whole, up to the model's 8K-token window; longer ones follow ``long_document_strategy``. Each returned node's
    metadata says what was read (``ettin_num_tokens``, ``ettin_num_windows``, ``ettin_truncated``,
    ``ettin_passage_start``/``ettin_passage_end``: the character span of the best window, ``ettin_logit``); these
    keys are excluded from the LLM and embedding views of the node. The caller's nodes are never modified.

    With ``base_url``, the work goes to an ettin-rerank server (``ettin-rerank serve``) with the same results;
    ``api_key`` defaults to the ``ETTIN_API_KEY`` environment variable. ``api_key`` and ``token`` never show in
    ``repr()``, ``str()`` or ``to_dict()``.

    Example:
        ```python
        from llama_index.postprocessor.ettin_rerank import EttinRerank

        query_engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[EttinRerank(top_n=5)])
        # or, against a shared server: EttinRerank(top_n=5, base_url="http://127.0.0.1:8080")
        ```
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model: str = Field(default="17m", description="Ettin size (17m ... 1b), local folder or hub id; with base_url, "
                       "the served model that scores (its served name, or as given to `serve --model`).")
    top_n: int = Field(default=2, gt=0, description="Number of nodes to return, best first.")
    activation: Activation = Field(
        default="sigmoid", description="'sigmoid': scores in [0, 1]; 'none': raw logits; 'calibrated': fitted map."
    )
    score_threshold: float | None = Field(default=None, description="Drop nodes scoring below this.")
    fusion_weight: float | None = Field(
        default=None, description="Rank by fusion_weight * retrieval score + (1 - fusion_weight) * reranker score "
        "(each min-max normalised per query; tune it with `ettin-rerank eval --fusion`); None: the reranker alone.")
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the retrieval score in the returned node's metadata as 'retrieval_score'."
    )
    device: str | None = Field(default=None, description="'cpu', 'cuda', 'mps'...; None picks CUDA, MPS, then CPU.")
    dtype: str | None = Field(default=None, description="'float32', 'bfloat16' or 'float16'; None is automatic.")
    max_length: int | None = Field(default=None, description="Tokens per window; None uses the model's limit.")
    long_document_strategy: Strategy = Field(
        default="max", description="What to do past the window: best window, mean of windows, or the head only."
    )
    window_overlap: int | None = Field(default=None, ge=0, description="Tokens shared by consecutive windows.")
    max_tokens_per_doc: int | None = Field(
        default=ADAPTER_MAX_TOKENS_PER_DOC, description="Read at most this many tokens of a node (None: all)."
    )
    batch_tokens: int | None = Field(default=None, description="Token budget of one forward pass.")
    attention: str | None = Field(default=None, description="'sdpa', 'flash_attn', 'varlen'; None: fastest.")
    runtime: str | None = Field(
        default=None, description="'torch' or 'openvino' (CPU, ettin-rerank[openvino]); None: the one measured "
        "fastest on this CPU kind.")
    precision: str | None = Field(
        default=None, description="'int8' to quantize the linear layers (OpenVINO; faster, not exact); None: dtype.")
    threads: int | None = Field(
        default=None, description="CPU threads of a forward pass; None: the CPUs this process may use.")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit) of the model.")
    token: str | None = Field(default=None, exclude=True, repr=False,
                              description="Hugging Face token for private models.")
    cache_folder: str | None = Field(default=None, description="Hugging Face cache folder.")
    local_files_only: bool = Field(default=False, description="Never contact the Hugging Face hub.")
    trust_remote_code: bool = Field(default=False, description="Allow custom modelling code from the checkpoint.")
    base_url: str | None = Field(
        default=None, description="An ettin-rerank server (`ettin-rerank serve`) to send the work to, instead of "
        "loading the model here; the results are the same.")
    api_key: str | None = Field(
        default_factory=lambda: os.environ.get(API_KEY_ENV) or None, exclude=True, repr=False,
        description=f"The server's API key, if it needs one (default: the {API_KEY_ENV} environment variable).")
    timeout: float = Field(default=60.0, gt=0, description="Seconds to wait for the server.")

    _backend: Backend | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_arguments(self) -> EttinRerank:
        """Every argument is checked at construction, before any model is loaded."""
        self._engine_spec()
        self._call_options()
        check_threshold(self.score_threshold)
        check_fusion_weight(self.fusion_weight)
        return self

    @classmethod
    def class_name(cls) -> str:
        return "EttinRerank"

    def _engine_spec(self) -> EngineArgs | RemoteSpec:
        if self.base_url is not None:
            return RemoteSpec(self.base_url, model=self.model, api_key=self.api_key, timeout=self.timeout)
        return EngineArgs(
            model=self.model, device=self.device, dtype=self.dtype, revision=self.revision, token=self.token,
            cache_folder=self.cache_folder, local_files_only=self.local_files_only, attention=self.attention,
            batch_tokens=self.batch_tokens, trust_remote_code=self.trust_remote_code, runtime=self.runtime,
            precision=self.precision, threads=self.threads,
        )

    def _texts(self, nodes: Any, query_bundle: QueryBundle | None) -> list[str]:
        if query_bundle is None:
            msg = "Missing query bundle in extra info."
            raise ValueError(msg)
        check_query(query_bundle.query_str, "query_str")
        check_list_of(nodes, NodeWithScore, "nodes", "NodeWithScore", "a NodeWithScore")
        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n, model_name=self.model)
        )
        return [node.node.get_content(metadata_mode=MetadataMode.EMBED) for node in nodes]

    def _new_nodes(self, nodes: list[NodeWithScore], results: list[RerankResult]) -> list[NodeWithScore]:
        """New ``NodeWithScore`` objects on copies of the nodes; the caller's nodes are left as they were."""
        reranked = []
        for result in results:
            original = nodes[result.index]
            node = original.node
            metadata = {**copy.deepcopy(node.metadata), **result.metadata()}
            if self.keep_retrieval_score:
                metadata["retrieval_score"] = original.score
            hidden = [*METADATA_KEYS, *(["retrieval_score"] if self.keep_retrieval_score else [])]
            node = node.model_copy(update={
                "metadata": metadata,
                "excluded_llm_metadata_keys": _union(node.excluded_llm_metadata_keys, hidden),
                "excluded_embed_metadata_keys": _union(node.excluded_embed_metadata_keys, hidden),
            })
            reranked.append(NodeWithScore(node=node, score=result.score))
        dispatcher.event(ReRankEndEvent(nodes=reranked))
        return reranked

    def _fusion(self, nodes: list[NodeWithScore]) -> Fusion | None:
        return Fusion.of(self.fusion_weight, [node.score for node in nodes])

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
            results = self._open().rerank(query_bundle.query_str, texts, self._call_options(), top_k=self.top_n,
                                          score_threshold=self.score_threshold, fusion=self._fusion(nodes))
            reranked = self._new_nodes(nodes, results)
            e.on_end(payload={EventPayload.NODES: reranked})
        return reranked

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        texts = self._texts(nodes, query_bundle)
        if not nodes:
            return self._new_nodes(nodes, [])
        backend = await self._aopen()
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._event_payload(nodes, query_bundle)) as e:
            results = await backend.arerank(query_bundle.query_str, texts, self._call_options(),
                                                  top_k=self.top_n, score_threshold=self.score_threshold,
                                                  fusion=self._fusion(nodes))
            reranked = self._new_nodes(nodes, results)
            e.on_end(payload={EventPayload.NODES: reranked})
        return reranked


def _union(keys: list[str], extra: list[str]) -> list[str]:
    return [*keys, *(key for key in extra if key not in keys)]
